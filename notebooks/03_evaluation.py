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
# # 03 · Evaluating and improving
#
# **Introduction.** A model is only as good as the numbers that describe it. For a classifier
# those are accuracy and, because accuracy hides what happens to the smaller class,
# precision, recall and F1 per class; for a language model it is the cross-entropy loss and
# its exponential, perplexity. And to *improve* a model one has to measure what a change buys:
# here, what pretraining on unlabelled text buys a sentiment classifier. This notebook
#
# 1. runs a small **transfer-learning study** (`keras_llm.evaluation.transfer_study`): the
#    same classifier trained from scratch, fine-tuned from a pretrained backbone, and with
#    that backbone frozen (a linear probe), against a TF-IDF + logistic-regression baseline;
# 2. evaluates the fine-tuned classifier with **`model.evaluate`** (accuracy, precision,
#    recall, F1), checked against scikit-learn;
# 3. prints the **per-class report and confusion matrix** (`classification_report`);
# 4. measures the **perplexity** of the pretrained language model;
# 5. shows the **transfer table and plot**.

# %% [markdown]
# ## Setup

# %%
import os
import shutil
import time
from pathlib import Path

import keras_llm  # first: selects the TensorFlow backend and quiets its start-up

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hide C++ notices (e.g. a oneDNN int64 fallback)

# %matplotlib inline
import keras
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display
from sklearn.metrics import precision_recall_fscore_support

from keras_llm import ModelConfig, TrainConfig, evaluation, training
from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import models as llm_models

plt.rcParams["figure.dpi"] = 80
print("keras", keras.__version__, "| keras_llm", keras_llm.__version__)

# %% [markdown]
# ## Settings
#
# `KERAS_LLM_QUICK=1` (CI) takes the `tiny` presets, a few dozen steps and one seed; the
# full setting a mid-sized model derived from the `small` preset, a few hundred pretraining
# steps and two seeds. Every neural arm of the study gets the same fine-tuning budget.

# %%
QUICK = os.environ.get("KERAS_LLM_QUICK") == "1"
if QUICK:
    MODEL_CONFIG = ModelConfig.preset("tiny")
    TRAIN_CONFIG = TrainConfig.preset("tiny", finetune_steps_per_epoch=20)
    SEEDS = (0,)
else:
    MODEL_CONFIG = ModelConfig.preset("mini")  # "small" narrowed: width 128, 2 layers
    TRAIN_CONFIG = TrainConfig.preset(
        "quick", pretrain_steps=600, finetune_epochs=2, finetune_steps_per_epoch=60,
        precision="float32",
    )
    SEEDS = (0, 1)
DATA = "rotten_tomatoes"

ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "keras_llm").is_dir()),
            Path.cwd())
RUN_DIR = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "03_evaluation"))
shutil.rmtree(RUN_DIR, ignore_errors=True)  # the study reuses finished runs; start fresh
print("quick setting:", QUICK, "| seeds:", SEEDS)
print(MODEL_CONFIG)
print(TRAIN_CONFIG)

# %% [markdown]
# ## Data
#
# `rotten_tomatoes`: short movie-review snippets labelled *rotten* or *fresh*, with train,
# validation and test splits, offline. The classes are not balanced, which is exactly why
# accuracy alone is not enough: a model that always answers the majority class already
# scores the majority share.

# %%
label_names = llm_data.label_names(DATA)
counts = {}
for split in ("train", "validation", "test"):
    labels = np.array([int(y) for _, y in llm_data.load_text_classification(DATA, split)
                       .as_numpy_iterator()])
    counts[split] = np.bincount(labels, minlength=len(label_names))
    print(f"{split:>10}: {len(labels):5d} reviews, "
          + ", ".join(f"{n} {name}" for name, n in zip(label_names, counts[split])))
majority = counts["test"].max() / counts["test"].sum()
print(f"always answering the majority class: test accuracy {majority:.3f}")
for text, label in llm_data.load_text_classification(DATA, "test").take(2).as_numpy_iterator():
    print(f"  [{label_names[label]}] {text.decode()[:110]}")

# %% [markdown]
# ## Model and training: the transfer-learning study
#
# `transfer_study` pretrains one causal LM on `keras_llm_corpus` (which holds only the
# *train* split's reviews, so no test review leaks into pretraining), then fine-tunes one
# `Classifier` per arm and seed with `training.finetune` (the same tokenizer, model size,
# epochs, steps, batch, sequence length and schedule; each arm with its own peak learning
# rate) and scores each on the test split at its best epoch by validation F1. The TF-IDF
# baseline picks its regularization on the validation split.

# %%
start = time.perf_counter()
study = evaluation.transfer_study(
    MODEL_CONFIG, TRAIN_CONFIG, str(RUN_DIR / "transfer"), seeds=SEEDS, data=DATA, verbose=1,
)
print(f"whole study: {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## Evaluation
#
# ### `model.evaluate`: accuracy, precision, recall, F1
#
# We reload the fine-tuned classifier of the first seed from its run directory
# (`training.load_run` attaches its tokenizer), build the test split exactly as serving will
# see it (`Tokenizer.encode`), and compile it with `keras_llm.metrics.classification_metrics`:
# `model.evaluate` then returns the loss and the four scores, each computed over the whole
# split from an accumulated confusion matrix (macro averages over the two classes).

# %%
finetune_dir = study["arms"]["pretrained"]["runs"][0]["run_dir"]
classifier = training.load_run(finetune_dir)
train_config = TrainConfig.load(os.path.join(finetune_dir, "train_config.json"))
test_data = llm_data.classification_dataset(
    llm_data.load_text_classification(DATA, "test"), classifier.tokenizer,
    train_config.classifier_sequence_length, train_config.batch_size,
).cache()
classifier.compile(
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=llm_metrics.classification_metrics(len(label_names)),
)
scores = classifier.evaluate(test_data, return_dict=True, verbose=0)
for name, value in scores.items():
    print(f"{name:>10}: {value:.4f}")

# %% [markdown]
# An independent check: the same four numbers from scikit-learn, on the model's arg-max
# predictions.

# %%
y_true = np.concatenate([y.numpy() for _, y in test_data])
y_pred = np.concatenate([np.argmax(classifier.predict_on_batch(x), -1) for x, _ in test_data])
precision, recall, f1, _ = precision_recall_fscore_support(
    y_true, y_pred, average="macro", zero_division=0
)
sklearn_scores = {"accuracy": float((y_true == y_pred).mean()), "precision": precision,
                  "recall": recall, "f1": f1}
worst = max(abs(scores[k] - v) for k, v in sklearn_scores.items())
print("scikit-learn:", {k: round(float(v), 4) for k, v in sklearn_scores.items()})
print(f"largest difference to model.evaluate: {worst:.1e}")

# %% [markdown]
# ### Per-class report and confusion matrix
#
# The macro averages above hide which class suffers. `classification_report` gives
# precision, recall, F1 and support per class plus the macro, micro and weighted rows (laid
# out like scikit-learn's), and writes the confusion matrix: rows are the true class,
# columns the prediction.

# %%
report = evaluation.classification_report(
    classifier, test_data, label_names, run_dir=str(RUN_DIR / "report"),
    title=f"Confusion matrix ({DATA}, test)",
)
print(evaluation.format_report(report))
display(Image(str(RUN_DIR / "report" / "confusion_matrix.png"), width=360))

# %% [markdown]
# ### Perplexity of the language model
#
# The pretrained model's job was to predict the next token. Its cross-entropy on held-out
# text, and the perplexity e^loss, say how well: perplexity is the number of tokens the
# model is, on average, as uncertain as a uniform choice among. An untrained model sits at
# about the vocabulary size; every point below that was learned. The held-out batches are
# gathered into arrays, so `evaluate` sees a known number of batches.

# %%
pretrain_dir = study["pretraining"]["runs"][0]["run_dir"]
lm = training.load_run(pretrain_dir)
sequence_length = lm.backbone.model_config.sequence_length
batches = list(llm_data.lm_dataset(
    llm_data.load_pretraining_text("keras_llm_corpus", "validation"), lm.tokenizer,
    sequence_length, train_config.batch_size, shuffle=False,
).as_numpy_iterator())
held_out_x = np.concatenate([x for x, _ in batches])
held_out_y = np.concatenate([y for _, y in batches])

untrained = llm_models.CausalLM(llm_models.TransformerBackbone(lm.backbone.model_config))
perplexities = {}
for name, model in (("untrained", untrained), ("pretrained", lm)):
    model.compile(metrics=llm_metrics.language_model_metrics())
    result = model.evaluate(held_out_x, held_out_y, batch_size=train_config.batch_size,
                            return_dict=True, verbose=0)
    perplexities[name] = result
    print(f"{name:>10}: loss {result['loss']:.3f}, exp(loss) {np.exp(result['loss']):.1f}, "
          f"perplexity metric {result['perplexity']:.1f}, next-token accuracy "
          f"{result['next_token_accuracy']:.3f}")
print(f"vocabulary size: {lm.tokenizer.vocabulary_size} "
      f"({held_out_x.size:,} held-out tokens)")

# %% [markdown]
# ### The transfer-learning table
#
# Every arm, its test macro-F1 and accuracy (mean ± standard deviation over the seeds),
# its training time and its peak learning rate; then the paired gain of pretraining over
# scratch. `transfer_study` writes the table as Markdown and the figure as a PNG.

# %%
display(Markdown(evaluation.format_transfer_table(study)))
display(Image(str(RUN_DIR / "transfer" / "transfer.png"), width=640))

# %% [markdown]
# ## Inference
#
# The scores describe the whole test split; here is what they mean for single reviews: the
# first test reviews with the fine-tuned classifier's prediction and confidence.

# %%
reviews = [(t.decode(), int(y)) for t, y in
           llm_data.load_text_classification(DATA, "test").take(6).as_numpy_iterator()]
ids = classifier.tokenizer.encode([t for t, _ in reviews], train_config.classifier_sequence_length)
probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(classifier.predict(ids, verbose=0)))
for (text, label), p in zip(reviews, probabilities):
    guess = int(p.argmax())
    mark = "ok " if guess == label else "ERR"
    print(f"{mark} true {label_names[label]:>6}, predicted {label_names[guess]:>6} "
          f"({p[guess]:.2f})  {text[:80]}")

# %% [markdown]
# ## Conclusion
#
# `model.evaluate` with keras_llm's metrics gives the same accuracy, precision, recall and
# F1 as scikit-learn; the per-class report and the confusion matrix show which class the
# errors fall on; perplexity measures the language model against the vocabulary size; and
# the study measures what pretraining buys, against a classical baseline that is hard to
# beat on a few thousand short reviews. The sentences below are computed from this run.
#
# How to read the study: what pretraining buys depends on the budget. A backbone pretrained
# for a few hundred steps has read little text, and a fine-tuned model from scratch can catch
# up on a few thousand labelled reviews, so at a notebook's budget the pretrained arms may
# tie or even trail; the gain is expected with much longer pretraining, and with scarcer
# labels. The standard deviations say how far to trust each difference, and the sign of the
# gain below is a measurement of *this* budget, not a general law.

# %%
arms = study["arms"]
best = max(arms, key=lambda a: arms[a]["f1_mean"])
print(f"- model.evaluate on the test split: accuracy {scores['accuracy']:.3f}, precision "
      f"{scores['precision']:.3f}, recall {scores['recall']:.3f}, F1 {scores['f1']:.3f}; "
      f"scikit-learn agrees to {worst:.0e}. Always answering the majority class would give "
      f"accuracy {majority:.3f}.")
per_class = ", ".join(f"{name} F1 {report['classes'][name]['f1']:.3f}" for name in label_names)
print(f"- Per class: {per_class}.")
print(f"- Perplexity: {perplexities['pretrained']['perplexity']:.1f} after pretraining vs "
      f"{perplexities['untrained']['perplexity']:.1f} untrained (vocabulary "
      f"{lm.tokenizer.vocabulary_size}).")
print("- Test macro-F1 by arm: " + "; ".join(
    f"{arms[a]['title']} {arms[a]['f1_mean']:.3f} ± {arms[a]['f1_std']:.3f}" for a in arms)
      + f". Best: {arms[best]['title']}.")
if "gain" in study:
    gain = study["gain"]["f1_mean"]
    spread = max(arms["scratch"]["f1_std"], arms["pretrained"]["f1_std"])
    if len(SEEDS) == 1:
        verdict = "from a single seed, so there is no seed-to-seed spread to judge it against"
    elif abs(gain) > 2 * spread:
        verdict = f"more than twice the largest seed-to-seed std ({spread:.3f})"
    else:
        verdict = f"within twice the largest seed-to-seed std ({spread:.3f}): not conclusive"
    print(f"- Pretraining changed test macro-F1 by {gain:+.3f} over scratch ({len(SEEDS)} "
          f"seeds, paired), {verdict}.")
