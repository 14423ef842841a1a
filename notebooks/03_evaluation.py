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
# here, what pretraining on unlabelled text buys a sentiment classifier, and how that depends
# on how many labelled reviews there are. This notebook
#
# 1. runs the **label-budget study** (`keras_llm.transfer.transfer_study`, also
#    `keras-llm study transfer`): for 100, 300, 1,000, 3,000 and all labelled reviews, test
#    macro-F1 of TF-IDF + logistic regression, keras_llm's classifier from scratch, fine-tuned
#    from keras_llm's own causal-LM and masked-LM pretraining, and fine-tuned from the
#    published all-MiniLM-L6-v2 checkpoint, over seeds;
# 2. draws the **learning curve** and the **paired gains** of pretraining;
# 3. evaluates one fine-tuned classifier with **`model.evaluate`** (accuracy, precision,
#    recall, F1), checked against scikit-learn, with its **per-class report and confusion
#    matrix**;
# 4. measures the **perplexity** of the causal language model and the **masked accuracy**
#    of the masked one.

# %% [markdown]
# ## Setup

# %%
import dataclasses
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

from keras_llm import ModelConfig, TrainConfig, evaluation, training, transfer
from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import models as llm_models

plt.rcParams["figure.dpi"] = 80
print("keras", keras.__version__, "| keras_llm", keras_llm.__version__)

# %% [markdown]
# ## Settings
#
# The full setting *is* the study of the README: `keras-llm study transfer`'s defaults
# (`transfer.STUDY_MODEL_CONFIG`, width 128, 3 layers; 1,600 pretraining steps per objective;
# budgets 100 to all, three seeds below 3,000 labels and one from 3,000 on) in its default
# directory `runs/transfer`, so a study already run from the command line is reused run by
# run and this notebook only reads it (about an hour on 2 CPU cores otherwise).
# `KERAS_LLM_QUICK=1` (CI) takes the `tiny` model, two budgets (100 and all), one seed, a
# few dozen steps, and leaves out the checkpoint arm (its 22.7M-parameter encoder is what
# makes the full study take an hour).

# %%
QUICK = os.environ.get("KERAS_LLM_QUICK") == "1"
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "keras_llm").is_dir()),
            Path.cwd())
RUN_DIR = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "03_evaluation"))
shutil.rmtree(RUN_DIR, ignore_errors=True)
if QUICK:
    MODEL_CONFIG = ModelConfig.preset("tiny")
    TRAIN_CONFIG = dataclasses.replace(
        transfer.STUDY_TRAIN_CONFIG, pretrain_steps=60, finetune_epochs=1,
        finetune_steps_per_epoch=30, classifier_sequence_length=32,
    )
    STUDY = dict(budgets=(100, "all"), seeds=(0,), min_finetune_steps=20,
                 arms=("tfidf", "scratch", "causal", "mlm"))
    STUDY_DIR = RUN_DIR / "transfer"
else:
    MODEL_CONFIG, TRAIN_CONFIG = transfer.STUDY_MODEL_CONFIG, transfer.STUDY_TRAIN_CONFIG
    STUDY = {}  # transfer_study's defaults: keras-llm study transfer
    STUDY_DIR = Path(os.path.relpath(ROOT / "runs" / "transfer"))
DATA = "rotten_tomatoes"
print("quick setting:", QUICK, "| study directory:", STUDY_DIR, "| study settings:", STUDY)
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
# ### A label budget
#
# A budget of *n* labels is a class-stratified random subset of the train split
# (`data.stratified_indices`): each class keeps its share, the seed draws which reviews, and
# the same seed gives nested subsets as *n* grows (more labels add reviews, they do not swap
# them). Validation and test stay whole, so every budget is scored on the same reviews.

# %%
train_labels = llm_data.load_texts_and_labels(DATA, "train")[1]
previous = set()
for n in (100, 300, 1000):
    keep = llm_data.stratified_indices(train_labels, n, seed=0)
    shares = np.bincount(train_labels[keep], minlength=len(label_names)) / n
    print(f"{n:5d} labels: " + ", ".join(f"{name} {share:.1%}" for name, share in
                                         zip(label_names, shares))
          + f" | contains the smaller budget: {previous <= set(keep.tolist())}")
    previous = set(keep.tolist())
print("whole train split: " + ", ".join(
    f"{name} {share:.1%}" for name, share in
    zip(label_names, np.bincount(train_labels) / len(train_labels))))

# %% [markdown]
# ## Model and training: the label-budget study
#
# `transfer_study` trains one tokenizer on `keras_llm_corpus` (which holds only the *train*
# split's reviews, so no test review leaks into pretraining), pretrains the causal LM and the
# masked LM on it for the same number of steps and tokens, then fine-tunes one `Classifier`
# per arm, budget and seed with `training.finetune` (for keras_llm's arms the same model
# size, epochs, batch, sequence length, schedule and augmentation, each arm with its peak
# learning rate; for the checkpoint the `"checkpoint"` training preset), and scores each on
# the test split at its best epoch by validation macro-F1. Small budgets train for at least
# 90 steps (the subset repeats). The TF-IDF baseline picks its regularization on validation
# and sees the same subset as the neural arms of the same seed. Finished runs are reused.

# %%
start = time.perf_counter()
study = transfer.transfer_study(MODEL_CONFIG, TRAIN_CONFIG, str(STUDY_DIR), data=DATA,
                                verbose=1, **STUDY)
print(f"this call: {time.perf_counter() - start:.0f} s; every run of the study together "
      f"(reused ones included): {study['compute_seconds'] / 60:.1f} min")

# %% [markdown]
# ### The learning curve
#
# Test macro-F1 against the number of labelled reviews (log scale), one line per arm, error
# bars one seed-to-seed standard deviation (no bar: one seed).

# %%
display(Image(str(STUDY_DIR / "transfer.png"), width=720))

# %% [markdown]
# ### The table, the paired gains and the goals
#
# The same numbers, then the differences that matter, *paired by seed*: the same seed means
# the same labelled subset, so the difference between two arms at one seed is free of the
# luck of the draw, and its spread is smaller than either arm's own.

# %%
display(Markdown(transfer.format_transfer_table(study)))

# %% [markdown]
# ## Evaluation
#
# ### `model.evaluate`: accuracy, precision, recall, F1
#
# We reload the classifier fine-tuned from the causal LM on every labelled review (first
# seed) from its run directory
# (`training.load_run` attaches its tokenizer), build the test split exactly as serving will
# see it (`Tokenizer.encode`), and compile it with `keras_llm.metrics.classification_metrics`:
# `model.evaluate` then returns the loss and the four scores, each computed over the whole
# split from an accumulated confusion matrix (macro averages over the two classes).

# %%
every_label = str(study["budgets"][-1])
finetune_dir = study["arms"]["causal"]["budgets"][every_label]["runs"][0]["run_dir"]
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
pretrain_dir = next(run["run_dir"] for run in study["pretraining"]["runs"]
                    if run["objective"] == "causal")
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
# The masked LM is scored on what it was trained for: the share of chosen positions whose
# original token it ranks first (`masked_accuracy`), on the same held-out text with
# `mlm_dataset`'s masks.

# %%
mlm_dir = next(run["run_dir"] for run in study["pretraining"]["runs"]
               if run["objective"] == "mlm")
mlm = training.load_run(mlm_dir)
masked_batches = list(llm_data.mlm_dataset(
    llm_data.load_pretraining_text("keras_llm_corpus", "validation"), mlm.tokenizer,
    sequence_length, train_config.batch_size, shuffle=False,
).as_numpy_iterator())
masked_x = np.concatenate([x for x, _ in masked_batches])
masked_y = np.concatenate([y for _, y in masked_batches])
mlm.compile(metrics=llm_metrics.language_model_metrics(accuracy_name="masked_accuracy"))
masked = mlm.evaluate(masked_x, masked_y, batch_size=train_config.batch_size,
                      return_dict=True, verbose=0)
print(f"masked LM: loss {masked['loss']:.3f} on {int((masked_y > 0).sum()):,} masked positions, "
      f"masked accuracy {masked['masked_accuracy']:.3f} (a uniform guess: "
      f"{1 / mlm.tokenizer.vocabulary_size:.4f})")

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
# errors fall on; perplexity and masked accuracy measure each language model on held-out
# text. And the study answers the question this notebook started from, budget by budget.
# The sentences below are computed from this run (in the quick setting, a tiny model trained
# for seconds: the machinery, not the answer; the README gives the full study's table).

# %%
arms = study["arms"]
columns = [str(b) for b in study["budgets"]]
print(f"- model.evaluate on the test split: accuracy {scores['accuracy']:.3f}, precision "
      f"{scores['precision']:.3f}, recall {scores['recall']:.3f}, F1 {scores['f1']:.3f}; "
      f"scikit-learn agrees to {worst:.0e}. Always answering the majority class would give "
      f"accuracy {majority:.3f}.")
per_class = ", ".join(f"{name} F1 {report['classes'][name]['f1']:.3f}" for name in label_names)
print(f"- Per class: {per_class}.")
print(f"- Perplexity: {perplexities['pretrained']['perplexity']:.1f} after pretraining vs "
      f"{perplexities['untrained']['perplexity']:.1f} untrained (vocabulary "
      f"{lm.tokenizer.vocabulary_size}); masked accuracy {masked['masked_accuracy']:.3f}.")
for labels in columns:
    ranked = sorted(arms, key=lambda a: -arms[a]["budgets"][labels]["f1_mean"])
    print(f"- {int(labels):,} labels: best {arms[ranked[0]]['title']} "
          f"({arms[ranked[0]]['budgets'][labels]['f1_mean']:.3f}), worst "
          f"{arms[ranked[-1]]['title']} ({arms[ranked[-1]]['budgets'][labels]['f1_mean']:.3f}).")
for name, gain in study["gains"].items():
    arm, baseline = name.split("-")
    print(f"- {arm} minus {baseline}: " + ", ".join(
        f"{gain[c]['f1_mean']:+.3f} at {int(c):,}" for c in columns if c in gain) + ".")
for goal, met in study["goals"].items():
    print(f"- Goal {goal.replace('_', ' ')}: {'met' if met else 'missed'}.")
