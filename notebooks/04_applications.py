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
# # 04 · Applications and their challenges
#
# **Introduction.** One pretrained Transformer kernel serves several applications; each one
# comes with its own challenge. This notebook builds four of them end to end:
#
# 1. **sentiment analysis**: a classifier fine-tuned from the pretrained backbone labels new
#    sentences (challenge: short, sarcastic, out-of-domain text);
# 2. **text generation** with each sampler: greedy, random with a temperature, top-k and
#    top-p (challenge: repetitive text on one side, incoherent text on the other);
# 3. **code completion**: the same model pretrained on Python source (challenge: exact
#    syntax, long-range structure);
# 4. **compression and serving**: the classifier exported with int8 weights, its size and F1
#    measured, and the exported SavedModel reloaded with nothing but TensorFlow and called
#    with raw strings (challenge: cost and latency without losing accuracy).

# %% [markdown]
# ## Setup

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
import tensorflow as tf

from keras_llm import ModelConfig, TrainConfig, export, training
from keras_llm import data as llm_data

plt.rcParams["figure.dpi"] = 80
tf.get_logger().setLevel("ERROR")  # hide TensorFlow's info lines (SavedModel asset writes)
print("keras", keras.__version__, "| tensorflow", tf.__version__,
      "| keras_llm", keras_llm.__version__)

# %% [markdown]
# ## Settings
#
# `KERAS_LLM_QUICK=1` (CI) takes the `tiny` presets and a few dozen steps; the full setting a
# mid-sized model derived from the `small` preset. Tiny models produce garbled text: the
# point in the quick setting is that every step runs, not that the text reads well.

# %%
QUICK = os.environ.get("KERAS_LLM_QUICK") == "1"
if QUICK:
    MODEL_CONFIG = ModelConfig.preset("tiny")
    TRAIN_CONFIG = TrainConfig.preset("tiny", finetune_steps_per_epoch=20)
else:
    MODEL_CONFIG = ModelConfig.preset("mini")  # "small" narrowed: width 128, 2 layers
    TRAIN_CONFIG = TrainConfig.preset(
        "quick", pretrain_steps=800, finetune_epochs=2, finetune_steps_per_epoch=80,
        precision="float32",
    )
NEW_TEXTS = [
    "A warm, funny and beautifully acted film.",
    "Two hours of my life I will never get back.",
    "The plot is thin, but the performances carry it.",
    "Dull, predictable and far too long.",
    "An unexpected delight from start to finish.",
]
TEXT_PROMPT = "the film is"
CODE_PROMPT = "def __init__(self,"
MAX_NEW_TOKENS = 16 if QUICK else 24
SAMPLERS = {  # name -> CausalLM.generate keyword arguments
    "greedy": dict(sampler="greedy"),
    "random, temperature 0.8": dict(sampler="random", temperature=0.8),
    "top_k = 10": dict(sampler="top_k", top_k=10),
    "top_p = 0.9": dict(sampler="top_p", top_p=0.9),
}

ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "keras_llm").is_dir()),
            Path.cwd())
RUN_DIR = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "04_applications"))
shutil.rmtree(RUN_DIR, ignore_errors=True)
print("quick setting:", QUICK)
print(MODEL_CONFIG)
print(TRAIN_CONFIG)

# %% [markdown]
# ## Data
#
# Three offline data sets: `keras_llm_corpus` (review sentences) to pretrain the text model,
# `rotten_tomatoes` (labelled reviews) to fine-tune the classifier, and `python_source` (the
# Python standard library's own modules, shipped with every Python) to pretrain the code
# model.

# %%
for name in ("keras_llm_corpus", "python_source"):
    text = next(llm_data.load_pretraining_text(name, "train").as_numpy_iterator()).decode()
    print(f"--- {name}: {text[:160]!r}")
print("--- rotten_tomatoes labels:", llm_data.label_names("rotten_tomatoes"))

# %% [markdown]
# ## Model and training
#
# Three runs with the public training API. The text model is pretrained once and serves
# both generation and, as the backbone of the classifier, sentiment analysis; the code model
# is the same architecture pretrained on `python_source` with its own tokenizer.

# %%
text_run = training.pretrain(MODEL_CONFIG, TRAIN_CONFIG, data="keras_llm_corpus",
                             run_dir=str(RUN_DIR / "text_lm"), verbose=0)
classifier_run = training.finetune(TRAIN_CONFIG, data="rotten_tomatoes",
                                   run_dir=str(RUN_DIR / "classifier"),
                                   pretrained=text_run.run_dir, verbose=0)
code_run = training.pretrain(MODEL_CONFIG, TRAIN_CONFIG, data="python_source",
                             run_dir=str(RUN_DIR / "code_lm"), verbose=0)
for name, run in (("text LM", text_run), ("classifier", classifier_run), ("code LM", code_run)):
    shown = {k: round(v, 3) for k, v in run.metrics.items()
             if k in ("validation_perplexity", "test_f1", "test_accuracy")}
    print(f"{name:>10}: {run.seconds:5.0f} s  {shown}")

# %% [markdown]
# ## Inference
#
# ### 1. Sentiment analysis of new sentences
#
# The classifier carries its tokenizer (`classifier_run.model.tokenizer`), so new sentences
# go through `Tokenizer.encode` exactly as the training data did. Softmax turns the logits
# into probabilities.

# %%
classifier = classifier_run.model
label_names = llm_data.label_names("rotten_tomatoes")
length = TRAIN_CONFIG.classifier_sequence_length
new_ids = classifier.tokenizer.encode(NEW_TEXTS, length)
keras_probabilities = keras.ops.convert_to_numpy(
    keras.ops.softmax(classifier.predict(new_ids, verbose=0)))
for text, p in zip(NEW_TEXTS, keras_probabilities):
    print(f"{label_names[p.argmax()]:>7} ({p.max():.2f})  {text}")

# %% [markdown]
# ### 2. Text generation with each sampler
#
# `CausalLM.generate` decodes with a key/value cache. Greedy decoding always takes the most
# likely token (deterministic, prone to loops); random sampling draws from the softmax of
# logits / temperature (varied, can wander); top-k samples among the k most likely tokens
# and top-p among the smallest set whose probability reaches p (both cut off the unlikely
# tail). To put a number on the trade-off, each sampler writes four continuations with
# different seeds and we count the distinct ones and the share of distinct token pairs
# ("distinct-2", a standard diversity measure).

# %%
lm = text_run.model
diversity = {}
for name, kwargs in SAMPLERS.items():
    samples = [lm.generate(TEXT_PROMPT, max_new_tokens=MAX_NEW_TOKENS, seed=seed, **kwargs)
               for seed in range(4)]
    pairs = [tuple(pair) for s in samples for pair in zip(s.split()[:-1], s.split()[1:])]
    diversity[name] = {"distinct": len(set(samples)),
                       "distinct_2": len(set(pairs)) / max(len(pairs), 1)}
    print(f"[{name}] {len(set(samples))} distinct of 4, distinct-2 "
          f"{diversity[name]['distinct_2']:.2f}\n   {samples[0]}\n   {samples[1]}")

# %% [markdown]
# ### 3. Code completion
#
# The code model completes a Python prompt. Its tokenizer was trained on the standard
# library's source, so identifiers, keywords and operators are its vocabulary; for code it
# keeps case, newlines and indentation as tokens (`whitespace="keep"`, chosen by the
# `python_source` catalog entry), so the completion comes back laid out as code.

# %%
code_lm = code_run.model
# The prompt ([BOS] + its tokens) and the completion share the model's context window: a
# code tokenizer with a small vocabulary (the quick setting) spells the prompt in more pieces.
prompt_length = 1 + len(code_lm.tokenizer.tokenize(CODE_PROMPT))
new_tokens = min(MAX_NEW_TOKENS, code_lm.backbone.model_config.sequence_length - prompt_length)
print(f"prompt: {prompt_length} tokens, completion: {new_tokens} tokens")
for name in ("greedy", "top_p = 0.9"):
    completion = code_lm.generate(CODE_PROMPT, max_new_tokens=new_tokens, seed=0,
                                  **SAMPLERS[name])
    print(f"[{name}]\n{completion}\n")
print(f"code model validation perplexity {code_run.metrics['validation_perplexity']:.1f}, "
      f"next-token accuracy {code_run.metrics['validation_next_token_accuracy']:.3f} "
      f"(vocabulary {code_lm.tokenizer.vocabulary_size})")

# %% [markdown]
# ### 4. Compression and serving
#
# `export.export_all` turns the fine-tuning run into serving artifacts: a SavedModel that
# takes raw strings (the tokenizer is inside), the same with int8 weights
# (`quantize_classifier`, Keras' `quantize("int8")` on every Dense and EinsumDense layer),
# and TFLite flatbuffers (float and dynamic-range int8; these take token ids). It scores each
# one on the whole test split and compares it with the Keras model. The whole artifact counts
# toward its size, including the tokenizer's vocabulary and graph, so at small model sizes
# the weights are only part of the bytes.

# %%
report = export.export_all(classifier_run.run_dir, output_dir=str(RUN_DIR / "export"),
                           data="rotten_tomatoes")
evaluation = report["evaluation"]
artifacts = list(report["artifacts"])
print(f"Keras model: test macro-F1 {evaluation['keras']['macro_f1']:.4f}")
for name in artifacts:
    entry = evaluation[name]
    print(f"{name:>24}: {entry['bytes'] / 1e6:6.2f} MB, macro-F1 {entry['macro_f1']:.4f} "
          f"({entry['f1_delta']:+.2f} points), agrees with Keras on {entry['agreement']:.1%}, "
          f"max |prob. difference| {entry['max_abs_diff']:.1e}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].barh(artifacts, [evaluation[n]["bytes"] / 1e6 for n in artifacts], color="C0")
axes[0].set_xlabel("size on disk (MB)")
axes[1].barh(artifacts, [evaluation[n]["macro_f1"] for n in artifacts], color="C1")
axes[1].axvline(evaluation["keras"]["macro_f1"], color="gray", ls="--", label="Keras model")
axes[1].set_xlabel("test macro-F1")
axes[1].legend(loc="lower left")
for ax in axes:
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# The serving side needs neither keras_llm nor Keras: TensorFlow plus TensorFlow Text (which
# registers the tokenizer's ops) load the SavedModel, and its `serving_default` signature
# takes a batch of raw strings. Its probabilities should match the Keras model's on the same
# sentences.

# %%
import tensorflow_text  # noqa: F401,E402  (registers the tokenizer's ops)

serve = tf.saved_model.load(report["artifacts"]["classifier"]).signatures["serving_default"]
served = serve(text=tf.constant(NEW_TEXTS))
for text, label, p in zip(NEW_TEXTS, served["label"].numpy(), served["probabilities"].numpy()):
    print(f"{label.decode():>7} ({p.max():.2f})  {text}")
serving_difference = float(np.abs(served["probabilities"].numpy() - keras_probabilities).max())
print(f"max |SavedModel - Keras| probability difference: {serving_difference:.1e}")

# %% [markdown]
# ## Conclusion
#
# The same kernel did four jobs: the fine-tuned classifier labels unseen sentences, the
# language model writes continuations whose diversity each sampler trades against
# coherence, the code model completes Python, and the exported artifacts serve raw strings
# with their size and F1 measured. The sentences below are computed from this run; at small
# sizes and short training, generated text is rough and int8 saves less than the weights'
# 4x, because the tokenizer and graph are a fixed part of every artifact.

# %%
print(f"- Sentiment: the classifier scores test macro-F1 "
      f"{classifier_run.metrics['test_f1']:.3f}; on the new sentences it answered "
      + ", ".join(label_names[p.argmax()] for p in keras_probabilities) + ".")
most = max(diversity, key=lambda n: diversity[n]["distinct_2"])
least = min(diversity, key=lambda n: diversity[n]["distinct_2"])
print(f"- Generation: distinct-2 ranges from {diversity[least]['distinct_2']:.2f} ({least}) to "
      f"{diversity[most]['distinct_2']:.2f} ({most}); greedy gave "
      f"{diversity['greedy']['distinct']} distinct continuation(s) from 4 seeds.")
print(f"- Code: the code model reaches validation perplexity "
      f"{code_run.metrics['validation_perplexity']:.1f} on held-out standard-library modules.")
float_entry, int8_entry = evaluation["classifier"], evaluation["classifier_int8"]
ratio = float_entry["bytes"] / int8_entry["bytes"]
size_change = (f"{ratio:.2f}x smaller" if ratio > 1 else
               f"{1 / ratio:.2f}x larger: at this size the tokenizer and graph dominate")
print(f"- Compression: the int8 SavedModel is {int8_entry['bytes'] / 1e6:.2f} MB vs "
      f"{float_entry['bytes'] / 1e6:.2f} MB ({size_change}), with macro-F1 "
      f"{int8_entry['f1_delta']:+.2f} points against the float model.")
print(f"- Serving: the reloaded SavedModel matches the Keras model to "
      f"{serving_difference:.1e} in probability.")
