"""Classification reports and the transfer-learning study.

- `classification_report(model, dataset, label_names)`: per-class precision, recall, F1 and
  support, the macro / micro / weighted rows, accuracy and the confusion matrix, computed
  over a whole data set (numpy, from the confusion matrix; the same conventions as
  `keras_llm.metrics` and scikit-learn's `zero_division=0`). Optionally writes
  `report.json` and `confusion_matrix.png`. `format_report` prints it as a table.
- `evaluate_run(run_dir, split)`: reloads a fine-tuning run and returns both
  `model.evaluate`'s five numbers (loss, accuracy, precision, recall, f1) and the report.
- `transfer_study(...)`: what pretraining buys a classifier, measured. Four arms on one data
  set (default `rotten_tomatoes`), all with the same tokenizer and, for the neural arms, the
  same fine-tuning budget (epochs, batch size, sequence length, schedule), over several seeds:

      tfidf        TF-IDF + logistic regression (scikit-learn), C chosen on validation
      scratch      Classifier, backbone randomly initialised
      pretrained   Classifier on the causal-LM pretrained backbone, all weights trained
      probe        the pretrained backbone frozen for every epoch, only the head trained

  Pretraining runs once (with the first seed) and is shared by the `pretrained` and `probe`
  arms of every seed, unless `pretrain_per_seed=True`. Writes `transfer.md` (table),
  `transfer.json` (every run) and `transfer.png` (bars with seed-to-seed error bars).

Run directory of a study:

    transfer.md, transfer.json, transfer.png
    tfidf.json                     the baseline's C grid and scores
    pretrain/  (pretrain_seed<s>/) the pretraining run(s), tokenizer included
    <arm>/seed<s>/                 one fine-tuning run per neural arm and seed

Sub-runs that finished with the same settings are reused when the study is started again,
so an interrupted study continues where it stopped.
"""

import dataclasses
import os
import platform
import time

import keras
import numpy as np

from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import plots, training
from keras_llm._io import read_json, write_json
from keras_llm.config import ModelConfig, TrainConfig

REPORT = "report.json"
CONFUSION_MATRIX = "confusion_matrix.png"
RUN_METADATA = "run.json"
DEFAULT_DATASET = "rotten_tomatoes"
AVERAGE_ROWS = ("macro", "micro", "weighted")

# --------------------------------------------------------------------------- reports


def _confusion_matrix(labels, predictions, num_classes):
    """`matrix[i, j]`: examples of true class i predicted as j (scikit-learn's layout)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _divide(numerator, denominator):
    """Element-wise numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def report_from_confusion_matrix(matrix, label_names):
    """The report dict of `classification_report`, from a confusion matrix.

    Args:
        matrix: `(num_classes, num_classes)` counts, rows true class, columns predicted.
        label_names: list of str, one per class.

    Returns:
        The dict described in `classification_report`.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    true_positives = np.diag(matrix)
    predicted = matrix.sum(axis=0)  # tp + fp
    support = matrix.sum(axis=1)  # tp + fn
    total = int(matrix.sum())
    precision = _divide(true_positives, predicted)
    recall = _divide(true_positives, support)
    f1 = _divide(2 * true_positives, predicted + support)

    classes = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    # macro: mean over the classes that occur in the labels or the predictions, as
    # keras_llm.metrics and scikit-learn (labels=None) do.
    present = (support + predicted) > 0
    accuracy = float(_divide(true_positives.sum(), total))
    report = {
        "label_names": list(label_names),
        "classes": classes,
        "macro": {
            "precision": float(precision[present].mean()) if present.any() else 0.0,
            "recall": float(recall[present].mean()) if present.any() else 0.0,
            "f1": float(f1[present].mean()) if present.any() else 0.0,
            "support": total,
        },
        # Single-label data: every false positive is someone's false negative, so the micro
        # precision, recall and F1 all equal the accuracy.
        "micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": total},
        "weighted": {
            "precision": float(_divide((precision * support).sum(), total)),
            "recall": float(_divide((recall * support).sum(), total)),
            "f1": float(_divide((f1 * support).sum(), total)),
            "support": total,
        },
        "accuracy": accuracy,
        "num_examples": total,
        "confusion_matrix": matrix.tolist(),
    }
    return report


def _predict_labels(model, dataset):
    """(labels, predicted class ids) over one pass of a `(ids, labels)` data set."""
    labels, predictions = [], []
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "classification_report needs a data set of (ids, labels) batches, e.g. from "
                "keras_llm.data.classification_dataset. Received batches of type "
                f"{type(batch).__name__}."
            )
        ids, batch_labels = batch[0], batch[1]
        logits = model.predict_on_batch(ids)
        predictions.append(np.argmax(np.asarray(logits), axis=-1).reshape(-1))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not labels:
        raise ValueError("classification_report received an empty data set.")
    return np.concatenate(labels).astype(np.int64), np.concatenate(predictions).astype(np.int64)


def classification_report(model, dataset, label_names, run_dir=None, prefix="",
                          title="Confusion matrix"):
    """Per-class and averaged precision, recall and F1 of a classifier over a data set.

    Predictions are the arg-max of the model's outputs (logits or probabilities). The
    averaged rows follow scikit-learn (`zero_division=0`): `macro` is the plain mean over the
    classes that occur in the labels or the predictions, `weighted` weights each class by
    its support, `micro` pools the counts (equal to accuracy for single-label data). The
    macro F1 is what `model.evaluate` reports as `f1` with `keras_llm.metrics`.

    Args:
        model: a Keras classifier: int ids `(batch, seq)` -> scores `(batch, num_classes)`.
        dataset: iterable of `(ids, labels)` batches, e.g. from
            `keras_llm.data.classification_dataset`; read once.
        label_names: list of str. Class names in label order (`len` = number of classes).
        run_dir: str or None. When given, `report.json` and `confusion_matrix.png` are
            written there. Defaults to `None`.
        prefix: str. Put before both file names (e.g. `"validation_"`). Defaults to `""`.
        title: str. Title of the confusion-matrix figure.

    Returns:
        dict with `label_names`; `classes` (name -> `precision`, `recall`, `f1`,
        `support`); the rows `macro`, `micro`, `weighted` (same keys, support = all
        examples); `accuracy`; `num_examples`; `confusion_matrix` (list of lists, rows true
        class, columns predicted, as `sklearn.metrics.confusion_matrix`).

    Raises:
        ValueError: a label is outside `[0, len(label_names))`, or the model's output width
            differs from `len(label_names)`.
    """
    label_names = [str(name) for name in label_names]
    num_classes = len(label_names)
    if num_classes < 2:
        raise ValueError(
            f"label_names must name at least 2 classes. Received label_names={label_names!r}."
        )
    outputs = getattr(model, "output_shape", None)
    if isinstance(outputs, tuple) and outputs and outputs[-1] not in (None, num_classes):
        raise ValueError(
            f"The model outputs {outputs[-1]} scores per example but label_names has "
            f"{num_classes} names ({label_names}). Pass the label names of the data set the "
            "model was trained on (keras_llm.data.label_names(name) or the run's labels.json)."
        )
    labels, predictions = _predict_labels(model, dataset)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Labels must be class ids in [0, {num_classes}) for label_names={label_names}. "
            f"Received label {int(bad[0])}."
        )
    report = report_from_confusion_matrix(
        _confusion_matrix(labels, predictions, num_classes), label_names
    )
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, f"{prefix}{REPORT}"), report)
        plots.plot_confusion_matrix(
            report["confusion_matrix"], label_names,
            os.path.join(run_dir, f"{prefix}{CONFUSION_MATRIX}"), title=title,
        )
    return report


def format_report(report, digits=4):
    """The report as a printable table, laid out like scikit-learn's, plus the matrix.

    Args:
        report: dict from `classification_report`.
        digits: int. Decimals of the scores. Defaults to `4`.

    Returns:
        str, several lines, no trailing newline.
    """
    names = list(report["label_names"])
    rows = [(name, report["classes"][name]) for name in names]
    width = max(len("weighted avg"), *(len(name) for name in names))
    columns = ("precision", "recall", "f1-score", "support")
    score_width = max(len("precision"), digits + 2)
    header = " " * width + "".join(f" {c:>{score_width}}" for c in columns)

    def line(name, values):
        scores = "".join(f" {values[k]:>{score_width}.{digits}f}" for k in ("precision", "recall"))
        return (f"{name:>{width}}{scores} {values['f1']:>{score_width}.{digits}f}"
                f" {values['support']:>{score_width}}")

    lines = [header, ""]
    lines += [line(name, values) for name, values in rows]
    lines.append("")
    blank = " " * (score_width + 1)
    lines.append(
        f"{'accuracy':>{width}}{blank * 2} {report['accuracy']:>{score_width}.{digits}f}"
        f" {report['num_examples']:>{score_width}}"
    )
    for row in AVERAGE_ROWS:
        lines.append(line(f"{row} avg", report[row]))

    # Confusion matrix: rows true class, columns predicted.
    matrix = report["confusion_matrix"]
    cell = max(len(name) for name in names)
    cell = max(cell, *(len(str(v)) for r in matrix for v in r))
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * width + "".join(f" {name:>{cell}}" for name in names))
    for name, counts in zip(names, matrix):
        lines.append(f"{name:>{width}}" + "".join(f" {v:>{cell}}" for v in counts))
    return "\n".join(lines)


def _run_dataset_name(run_dir):
    path = os.path.join(run_dir, RUN_METADATA)
    if os.path.exists(path):
        return read_json(path).get("dataset", DEFAULT_DATASET)
    return DEFAULT_DATASET


def evaluate_run(run_dir, split="test", data_dir=None, write=True, verbose=0):
    """Evaluates the classifier of a fine-tuning run on one split of its data set.

    Reloads `classifier.keras` with its tokenizer (`training.load_run`), reads the class
    names (`labels.json`), the batch size and classifier sequence length
    (`train_config.json`) and the data set name (`run.json`, key `"dataset"`; defaults to
    `"rotten_tomatoes"`), builds the split with `keras_llm.data.classification_dataset`
    (exactly `Tokenizer.encode`, no augmentation), then runs `model.evaluate` and
    `classification_report` on it.

    Args:
        run_dir: str. A `keras-llm finetune` run directory.
        split: str. `"train"`, `"validation"`, `"test"` or a tfds split expression.
            Defaults to `"test"`.
        data_dir: str. tensorflow-datasets directory (default: see `keras_llm.data`).
        write: bool. Write `report.json` and `confusion_matrix.png` into `run_dir`
            (prefixed with `"<split>_"` for splits other than `"test"`). Defaults to `True`.
        verbose: passed to `model.evaluate`. Defaults to `0`.

    Returns:
        `(metrics, report)`: `metrics` is `model.evaluate(..., return_dict=True)` with the keys
        `loss`, `accuracy`, `precision`, `recall`, `f1` (macro averages) as floats; `report`
        is `classification_report`'s dict, with `"split"` and `"dataset"` added.
    """
    run_dir = os.fspath(run_dir)
    labels_path = os.path.join(run_dir, training.LABELS)
    if not os.path.exists(labels_path):
        raise FileNotFoundError(
            f"{run_dir!r} has no {training.LABELS}: evaluate_run needs a fine-tuning run "
            "directory (keras-llm finetune ...), not a pretraining run."
        )
    label_names = read_json(labels_path)
    train_config = TrainConfig.load(os.path.join(run_dir, training.TRAIN_CONFIG))
    dataset_name = _run_dataset_name(run_dir)
    model = training.load_run(run_dir)

    dataset = llm_data.classification_dataset(
        llm_data.load_text_classification(dataset_name, split, data_dir),
        model.tokenizer,
        train_config.classifier_sequence_length,
        train_config.batch_size,
    ).cache()
    # Compile afresh: the five keys are guaranteed whatever the saved compile state was.
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=llm_metrics.classification_metrics(len(label_names)),
    )
    metrics = model.evaluate(dataset, return_dict=True, verbose=verbose)
    metrics = {key: float(value) for key, value in metrics.items()}
    prefix = "" if split == "test" else f"{split}_".replace("/", "_").replace(":", "_")
    report = classification_report(
        model, dataset, label_names, run_dir=run_dir if write else None, prefix=prefix,
        title=f"Confusion matrix ({dataset_name}, {split})",
    )
    report["split"] = split
    report["dataset"] = dataset_name
    if write:
        write_json(os.path.join(run_dir, f"{prefix}{REPORT}"), {**report, "evaluate": metrics})
    return metrics, report


# --------------------------------------------------------------------------- transfer study

ARMS = ("tfidf", "scratch", "pretrained", "probe")
ARM_TITLES = {
    "tfidf": "TF-IDF + logistic regression",
    "scratch": "Classifier from scratch",
    "pretrained": "Classifier fine-tuned from the pretrained backbone",
    "probe": "Linear probe (pretrained backbone frozen)",
}
# The study's default model: the "small" preset narrowed (width 128, 3 layers, 4,096-token
# vocabulary, 64-token context) so that pretraining reads about 7M tokens, some nine passes
# over keras_llm_corpus, in minutes of CPU. With "small" itself the same minutes buy under
# two passes, and its fine-tuned classifier is no better than one trained from scratch.
STUDY_MODEL_CONFIG = ModelConfig.preset(
    "small",
    vocabulary_size=4096,
    sequence_length=64,
    hidden_dim=128,
    num_heads=4,
    num_layers=3,
    intermediate_dim=512,
)
# The shared budget: 3,600 pretraining steps of 32 x 64 tokens, then 3 fine-tuning epochs
# with token deletion and masking (10% each), which keeps the pretrained classifier from
# overfitting in its third epoch (and neither helps nor hurts the one from scratch).
STUDY_TRAIN_CONFIG = TrainConfig.preset(
    "small",
    pretrain_steps=3600,
    finetune_epochs=3,
    finetune_learning_rate=3e-4,
    augment_delete=0.1,
    augment_mask=0.1,
)
# Peak fine-tuning learning rates per arm. The classifier from scratch gets the same rate as
# the pretrained one: 1e-3 scored lower on validation. A lone linear head on frozen
# features needs a larger step.
DEFAULT_LEARNING_RATES = {"scratch": 3e-4, "pretrained": 3e-4, "probe": 1e-2}
TFIDF_C_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
STUDY_MARKER = "study_run.json"


def tfidf_baseline(data="rotten_tomatoes", data_dir=None, c_grid=TFIDF_C_GRID):
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression, C chosen on validation.

    Fitted on the train split only, with balanced class weights (the classes of
    `rotten_tomatoes` are 58/42, and unweighted models with strong regularisation predict the
    majority class, which costs macro-F1); the C with the best validation macro-F1 is kept
    (the smallest on ties) and its model scored on the test split. The text is split by
    scikit-learn's word analyzer, the classical baseline as usually run, not by the
    WordPiece tokenizer. The regression is one-vs-rest, so any number of classes works
    (scikit-learn's liblinear solver is binary-only); on two classes that is the very same
    single model.

    Args:
        data: str. Classification data set name. Defaults to `"rotten_tomatoes"`.
        data_dir: str. tensorflow-datasets directory.
        c_grid: tuple of float. Inverse regularisation strengths tried.

    Returns:
        dict with test `f1`, `precision`, `recall` (macro) and `accuracy`; `validation_f1`,
        `C`, `grid` (C -> validation macro-F1), `seconds` (features, grid search and final
        fit), and `report` (the test split's `report_from_confusion_matrix` dict).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier

    start = time.perf_counter()
    train_texts, train_labels, validation_texts, validation_labels, test_texts, test_labels = (
        part for split in ("train", "validation", "test")
        for part in llm_data.load_texts_and_labels(data, split, data_dir)
    )

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train_features = vectorizer.fit_transform(train_texts)
    validation_features = vectorizer.transform(validation_texts)
    grid, best = {}, None
    for c in c_grid:
        model = OneVsRestClassifier(
            LogisticRegression(C=c, solver="liblinear", class_weight="balanced")
        )
        model.fit(train_features, train_labels)
        score = f1_score(validation_labels, model.predict(validation_features), average="macro")
        grid[str(c)] = float(score)
        if best is None or score > best[1]:
            best = (c, score, model)
    c, validation_f1, model = best
    predictions = model.predict(vectorizer.transform(test_texts))
    names = list(llm_data.label_names(data))
    report = report_from_confusion_matrix(
        _confusion_matrix(np.asarray(test_labels), predictions, len(names)), names
    )
    return {
        **{key: float(report["macro"][key]) for key in ("f1", "precision", "recall")},
        "accuracy": float(report["accuracy"]),
        "validation_f1": float(validation_f1),
        "C": float(c),
        "grid": grid,
        "seconds": time.perf_counter() - start,
        "report": report,
    }


def _finished(run_dir, settings):
    """The run's metrics if it finished earlier with exactly these settings, else None."""
    marker = os.path.join(run_dir, STUDY_MARKER)
    metrics = os.path.join(run_dir, training.METRICS)
    if os.path.exists(marker) and os.path.exists(metrics) and read_json(marker) == settings:
        return read_json(metrics)
    return None


def _forget(run_dir):
    """Removes a run's finished-marker before it is (re)trained: a run stopped half-way
    must not pass for the earlier, finished one."""
    marker = os.path.join(run_dir, STUDY_MARKER)
    if os.path.exists(marker):
        os.remove(marker)


def _mark_finished(run_dir, settings):
    write_json(os.path.join(run_dir, STUDY_MARKER), settings)


def _summary(runs):
    """Mean and sample std (ddof=1; 0 for one run) of f1, accuracy and seconds."""
    out = {"n": len(runs)}
    for key in ("f1", "accuracy", "seconds"):
        values = np.asarray([run[key] for run in runs], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def _log(verbose, message):
    if verbose:
        print(f"[transfer] {message}", flush=True)


def transfer_study(
    model_config=None,
    train_config=None,
    run_dir="runs/transfer",
    *,
    seeds=(0, 1, 2),
    pretrain_steps=None,
    finetune_epochs=None,
    learning_rates=None,
    pooling="mean",
    data="rotten_tomatoes",
    pretrain_data="keras_llm_corpus",
    pretrained=None,
    pretrain_per_seed=False,
    arms=ARMS,
    tfidf_c_grid=TFIDF_C_GRID,
    data_dir=None,
    verbose=1,
):
    """Measures what causal-LM pretraining buys a classifier, against scratch and TF-IDF.

    Every neural arm uses the same tokenizer (trained by the pretraining run on
    `pretrain_data`), the same `ModelConfig` (the pretraining run's), the same pooling and
    the same fine-tuning budget: `train_config`'s epochs, steps per epoch, batch size,
    classifier sequence length, schedule, clipping, weight decay and precision. They differ
    only in the initial backbone weights, what is trained, and the peak learning rate
    (`learning_rates`, reported). Each is scored on the test split at its best epoch by
    validation macro-F1 (`training.finetune`).

    Args:
        model_config: `ModelConfig`, preset name, or None for `STUDY_MODEL_CONFIG`.
        train_config: `TrainConfig`, preset name, or None for `STUDY_TRAIN_CONFIG`: the
            shared budget. Its `freeze_backbone_epochs` applies to the `pretrained` arm
            (head-only warm-up); `scratch` never freezes; `probe` freezes all epochs.
        run_dir: str. Where the study writes. Defaults to `"runs/transfer"`.
        seeds: iterable of int. One fine-tuning run per neural arm and seed (weights, data
            order). Defaults to `(0, 1, 2)`.
        pretrain_steps: int or None. Overrides `train_config.pretrain_steps`.
        finetune_epochs: int or None. Overrides `train_config.finetune_epochs`.
        learning_rates: dict arm -> peak fine-tuning learning rate, merged over
            `DEFAULT_LEARNING_RATES`; a value of `None` uses
            `train_config.finetune_learning_rate`.
        pooling: str. `"mean"` or `"last"`, for every neural arm. Defaults to `"mean"`.
        data: str. Classification data set. Defaults to `"rotten_tomatoes"`.
        pretrain_data: str or `tf.data.Dataset` of strings. Pretraining text. Defaults to
            `"keras_llm_corpus"` (which holds only the train split's reviews).
        pretrained: str or None. An existing pretraining run directory to use instead of
            pretraining here (its tokenizer and model config then define the study).
        pretrain_per_seed: bool. Pretrain once per seed (the spread then includes
            pretraining's randomness) instead of once with the first seed; the tokenizer is
            still trained once. Defaults to `False`.
        arms: iterable of arm names, a subset of `ARMS`. Defaults to all four.
        tfidf_c_grid: tuple of float. The baseline's C values tried on validation.
        data_dir: str. tensorflow-datasets directory.
        verbose: int. 1 prints one line per finished run, 2 also Keras' progress bars.

    Returns:
        The dict written to `transfer.json`: settings, the pretraining run(s), per arm the
        runs (`seed`, `f1`, `accuracy`, `seconds`, `run_dir`) and their summary
        (`f1_mean`, `f1_std`, `accuracy_mean`, `accuracy_std`, `seconds_mean`, ...), and
        `gain` (paired `pretrained - scratch` test macro-F1 over seeds).
    """
    model_config = ModelConfig.coerce(
        STUDY_MODEL_CONFIG if model_config is None else model_config, "model_config"
    )
    train_config, seeds, arms, rates = check_transfer_study(
        train_config, seeds=seeds, arms=arms, pooling=pooling, pretrain_steps=pretrain_steps,
        finetune_epochs=finetune_epochs, learning_rates=learning_rates, pretrained=pretrained,
    )
    os.makedirs(run_dir, exist_ok=True)
    neural = [arm for arm in arms if arm != "tfidf"]
    results = {
        "data": data,
        "pretrain_data": pretrain_data if isinstance(pretrain_data, str) else "custom",
        "seeds": seeds,
        "arms": {},
        "learning_rates": {arm: rates[arm] for arm in neural},
        "pooling": pooling,
        "pretrain_per_seed": bool(pretrain_per_seed),
        "machine": _machine(),
    }
    started = time.perf_counter()

    # Pretraining (or the given run) defines the tokenizer and the model config.
    pretrain_runs, model_config = _study_pretraining(
        results, model_config, train_config, arms, seeds, run_dir, pretrained,
        pretrain_per_seed, pretrain_data, data_dir, verbose,
    )
    shared = {
        "model_config": model_config,
        "tokenizer": (os.path.join(pretrain_runs[seeds[0]], training.TOKENIZER)
                      if neural else None),
        "pooling": pooling, "data": data, "data_dir": data_dir, "verbose": verbose,
    }
    results["model_config"] = model_config.to_dict()
    results["train_config"] = train_config.to_dict()

    if "tfidf" in arms:
        results["arms"]["tfidf"] = _tfidf_arm(data, data_dir, tfidf_c_grid, run_dir, verbose)
    # Neural arms, seed-major so a partial study already compares arms.
    runs = {arm: [] for arm in neural}
    for seed in seeds:
        for arm in neural:
            source = pretrain_runs[seed] if arm != "scratch" else None
            runs[arm].append(_study_run(arm, seed, train_config, rates[arm], source,
                                        os.path.join(run_dir, arm, f"seed{seed}"), **shared))
    for arm in neural:
        results["arms"][arm] = {
            "title": ARM_TITLES[arm],
            "runs": runs[arm],
            **_summary(runs[arm]),
            "settings": {"learning_rate": rates[arm]},
        }
    if "scratch" in runs and "pretrained" in runs:
        results["gain"] = _paired_gain(runs["pretrained"], runs["scratch"])
    results["wall_seconds"] = time.perf_counter() - started  # this call (reused runs are free)
    results["compute_seconds"] = _compute_seconds(results)

    write_json(os.path.join(run_dir, "transfer.json"), results)
    with open(os.path.join(run_dir, "transfer.md"), "w") as f:
        f.write(format_transfer_table(results) + "\n")
    plots.plot_transfer_study(results, os.path.join(run_dir, "transfer.png"))
    return results


def _machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "keras": keras.__version__,
    }


def _compute_seconds(results):
    """Seconds of every pretraining and fine-tuning run in the study, reused ones included."""
    return float(
        sum(run.get("seconds", 0.0) for run in results.get("pretraining", {}).get("runs", []))
        + sum(r["seconds"] for arm in results["arms"].values() for r in arm["runs"])
    )


def check_transfer_study(train_config=None, *, seeds=(0, 1, 2), arms=ARMS, pooling="mean",
                         pretrain_steps=None, finetune_epochs=None, learning_rates=None,
                         pretrained=None):
    """Checks `transfer_study`'s arguments before anything is written or trained.

    `transfer_study` calls it first; the command line calls it too, to refuse a bad flag
    with one line. Arguments as in `transfer_study`.

    Returns:
        `(train_config, seeds, arms, learning rate per neural arm)`.

    Raises:
        ValueError: a value out of range; the message names it and what is accepted.
        FileNotFoundError: `pretrained` is not a pretraining run directory.
    """
    if pretrained is not None and not os.path.isdir(
        os.path.join(os.fspath(pretrained), training.TOKENIZER)
    ):
        raise FileNotFoundError(
            f"pretrained={os.fspath(pretrained)!r} has no tokenizer/: pass a pretraining run "
            "directory (keras-llm pretrain ...)."
        )
    return _study_settings(train_config, seeds, arms, pooling, pretrain_steps,
                           finetune_epochs, learning_rates)


def _study_settings(train_config, seeds, arms, pooling, pretrain_steps, finetune_epochs,
                    learning_rates):
    """Checks `transfer_study`'s arguments; returns `(train_config, seeds, arms, rates)`."""
    train_config = TrainConfig.coerce(
        STUDY_TRAIN_CONFIG if train_config is None else train_config, "train_config"
    )
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("transfer_study needs at least one seed. Received seeds=().")
    for seed in seeds:
        dataclasses.replace(train_config, seed=seed)  # TrainConfig's check: [0, 2**32)
    requested = [arms] if isinstance(arms, str) else list(arms)
    if not requested or set(requested) - set(ARMS):
        raise ValueError(
            f"arms must be a non-empty subset of {list(ARMS)}. Received arms={requested!r}."
        )
    arms = [arm for arm in ARMS if arm in requested]
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last'. Received pooling={pooling!r}.")
    overrides = {}
    if pretrain_steps is not None:
        overrides["pretrain_steps"] = pretrain_steps
    if finetune_epochs is not None:
        overrides["finetune_epochs"] = finetune_epochs
    train_config = dataclasses.replace(train_config, **overrides)
    unknown_rates = sorted(set(learning_rates or {}) - {"scratch", "pretrained", "probe"})
    if unknown_rates:
        raise ValueError(
            f"learning_rates keys must be among ['scratch', 'pretrained', 'probe']. "
            f"Received {unknown_rates}."
        )
    rates = {**DEFAULT_LEARNING_RATES, **(learning_rates or {})}
    rates = {
        arm: float(train_config.finetune_learning_rate if rate is None else rate)
        for arm, rate in rates.items()
    }
    bad_rates = {arm: rate for arm, rate in rates.items() if not 0 < rate < float("inf")}
    if bad_rates:
        raise ValueError(
            f"learning rates must be positive and finite (e.g. 3e-4). Received {bad_rates}."
        )
    return train_config, seeds, arms, rates


def _study_pretraining(results, model_config, train_config, arms, seeds, run_dir, pretrained,
                       pretrain_per_seed, pretrain_data, data_dir, verbose):
    """Pretrains (or reuses) what the arms start from; records it in
    `results["pretraining"]`. Returns `({seed: pretraining run dir}, model_config)`."""
    neural = [arm for arm in arms if arm != "tfidf"]
    needs_backbone = any(arm in ("pretrained", "probe") for arm in arms)
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if not os.path.isdir(os.path.join(pretrained, training.TOKENIZER)):
            raise FileNotFoundError(
                f"pretrained={pretrained!r} has no tokenizer/: pass a pretraining run "
                "directory (keras-llm pretrain ...)."
            )
        results["pretraining"] = {"runs": [_pretraining_summary(pretrained, None)]}
        model_config = ModelConfig.load(os.path.join(pretrained, training.MODEL_CONFIG))
        return {seed: pretrained for seed in seeds}, model_config
    if not neural:
        return {}, model_config
    pretrain_seeds = seeds if (pretrain_per_seed and needs_backbone) else seeds[:1]
    pretrain_runs, tokenizer, summaries = {}, None, []
    for seed in pretrain_seeds:
        directory = os.path.join(run_dir, f"pretrain_seed{seed}" if pretrain_per_seed
                                 else "pretrain")
        if needs_backbone:
            config = dataclasses.replace(train_config, seed=seed)
            _pretrain_cached(model_config, config, pretrain_data, directory, tokenizer,
                             data_dir, verbose)
        else:  # only `scratch`: the tokenizer is all that is needed
            scratch_config = _tokenizer_only(model_config, pretrain_data, directory, data_dir)
        tokenizer = tokenizer or os.path.join(directory, training.TOKENIZER)
        pretrain_runs[seed] = directory
        summaries.append(_pretraining_summary(directory, seed))
        _log(verbose, f"pretraining {directory}: {summaries[-1]}")
    first = pretrain_runs[pretrain_seeds[0]]
    for seed in seeds:
        pretrain_runs.setdefault(seed, first)
    results["pretraining"] = {"runs": summaries}
    if needs_backbone:
        return pretrain_runs, ModelConfig.load(os.path.join(first, training.MODEL_CONFIG))
    return pretrain_runs, scratch_config


def _tfidf_arm(data, data_dir, c_grid, run_dir, verbose):
    """The TF-IDF baseline as a study arm (its details in `tfidf.json`)."""
    baseline = tfidf_baseline(data, data_dir, c_grid=c_grid)
    write_json(os.path.join(run_dir, "tfidf.json"), baseline)
    run = {"seed": None, "f1": baseline["f1"], "accuracy": baseline["accuracy"],
           "seconds": baseline["seconds"], "C": baseline["C"],
           "validation_f1": baseline["validation_f1"]}
    _log(verbose, f"tfidf: test f1 {run['f1']:.4f} acc {run['accuracy']:.4f} "
                  f"(C={baseline['C']})")
    return {"title": ARM_TITLES["tfidf"], "runs": [run], **_summary([run]),
            "settings": {"C": baseline["C"]}}


def _study_run(arm, seed, train_config, learning_rate, source, directory, *, model_config,
               tokenizer, pooling, data, data_dir, verbose):
    """One neural arm's fine-tuning run for one seed (reused when it finished earlier with
    the same settings); returns its `seed`, test `f1`, `accuracy`, `seconds`, `run_dir`."""
    config = dataclasses.replace(
        train_config,
        seed=seed,
        finetune_learning_rate=learning_rate,
        freeze_backbone_epochs={
            "scratch": 0,
            "pretrained": train_config.freeze_backbone_epochs,
            "probe": train_config.finetune_epochs,
        }[arm],
    )
    settings = {
        "arm": arm,
        "train_config": config.to_dict(),
        "model_config": model_config.to_dict(),
        "pretrained": os.path.abspath(source) if source else None,
        # A pretraining run redone in place must not pass for the old one.
        "pretrained_at": (
            os.path.getmtime(os.path.join(source, training.BACKBONE)) if source else None
        ),
        "tokenizer": os.path.abspath(tokenizer),
        "pooling": pooling,
        "data": data,
    }
    metrics = _finished(directory, settings)
    if metrics is None:
        _forget(directory)
        keras.backend.clear_session()
        metrics = training.finetune(
            config,
            data=data,
            run_dir=directory,
            pretrained=source,
            model_config=None if source else model_config,
            tokenizer=tokenizer,
            data_dir=data_dir,
            pooling=pooling,
            verbose=2 if verbose >= 2 else 0,
        ).metrics
        _mark_finished(directory, settings)
    run = {
        "seed": seed,
        "f1": float(metrics["test_f1"]),
        "accuracy": float(metrics["test_accuracy"]),
        "seconds": float(metrics["seconds"]),
        "run_dir": directory,
    }
    _log(verbose, f"{arm} seed {seed}: test f1 {run['f1']:.4f} "
                  f"acc {run['accuracy']:.4f} ({run['seconds']:.0f} s)")
    return run


def _paired_gain(pretrained_runs, scratch_runs):
    """Paired `pretrained - scratch` test macro-F1 over seeds: mean, sample std, per seed."""
    differences = np.asarray(
        [p["f1"] - s["f1"] for p, s in zip(pretrained_runs, scratch_runs)]
    )
    return {
        "f1_mean": float(differences.mean()),
        "f1_std": float(differences.std(ddof=1)) if len(differences) > 1 else 0.0,
        "per_seed": differences.tolist(),
    }


def _pretrain_cached(model_config, train_config, pretrain_data, directory, tokenizer,
                     data_dir, verbose):
    settings = {
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "pretrain_data": pretrain_data if isinstance(pretrain_data, str) else "custom",
    }
    if (_finished(directory, settings) is not None
            and os.path.exists(os.path.join(directory, training.BACKBONE))):
        return
    _forget(directory)
    keras.backend.clear_session()
    training.pretrain(
        model_config, train_config, data=pretrain_data, run_dir=directory,
        tokenizer=tokenizer, data_dir=data_dir, verbose=2 if verbose >= 2 else 0,
    )
    _mark_finished(directory, settings)


def _tokenizer_only(model_config, pretrain_data, directory, data_dir):
    """Trains (or reuses) the tokenizer a pretraining run would train; returns the config
    with the tokenizer's real vocabulary size."""
    tokenizer_dir = os.path.join(directory, training.TOKENIZER)
    if not os.path.isdir(tokenizer_dir):
        os.makedirs(directory, exist_ok=True)
        texts = (llm_data.load_pretraining_text(pretrain_data, "train", data_dir)
                 if isinstance(pretrain_data, str) else pretrain_data)
        tokenizer = llm_data.Tokenizer.train(texts, model_config.vocabulary_size)
        tokenizer.save(tokenizer_dir)
    vocabulary_size = llm_data.Tokenizer.load(tokenizer_dir).vocabulary_size
    return dataclasses.replace(model_config, vocabulary_size=vocabulary_size)


def _pretraining_summary(directory, seed):
    summary = {"seed": seed, "run_dir": directory}
    config = os.path.join(directory, training.TRAIN_CONFIG)
    if os.path.exists(config):
        summary["pretrain_steps"] = int(read_json(config)["pretrain_steps"])
    path = os.path.join(directory, training.METRICS)
    if os.path.exists(path):
        metrics = read_json(path)
        summary["seconds"] = float(metrics.get("seconds", float("nan")))
        if "validation_perplexity" in metrics:
            summary["validation_perplexity"] = float(metrics["validation_perplexity"])
    return summary


def _mean_std(summary, key, digits=3):
    mean, std = summary[f"{key}_mean"], summary[f"{key}_std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_transfer_table(results):
    """The study's Markdown: the table, the settings, the pretrained-vs-scratch gain."""
    seeds = results["seeds"]
    lines = [
        f"# Transfer-learning study: {results['data']}",
        "",
        f"Test split, mean ± sample std over seeds {seeds} (TF-IDF is deterministic: one run).",
        "",
        "| Model | Test macro-F1 | Test accuracy | Runs | Training time (s) | Peak LR |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if arm not in results["arms"]:
            continue
        summary = results["arms"][arm]
        rate = summary["settings"].get("learning_rate")
        rate = f"{rate:g}" if rate is not None else f"C={summary['settings']['C']:g}"
        lines.append(
            f"| {summary['title']} | {_mean_std(summary, 'f1')} | "
            f"{_mean_std(summary, 'accuracy')} | {summary['n']} | "
            f"{summary['seconds_mean']:.0f} | {rate} |"
        )
    lines.append("")
    pretraining = results.get("pretraining", {}).get("runs", [])
    timed = [run["seconds"] for run in pretraining if "seconds" in run]
    if timed and any(arm in results["arms"] for arm in ("pretrained", "probe")):
        perplexity = [run.get("validation_perplexity") for run in pretraining]
        perplexity = ", ".join(f"{p:.1f}" for p in perplexity if p is not None) or "n/a"
        steps = pretraining[0].get("pretrain_steps", results["train_config"]["pretrain_steps"])
        lines.append(
            f"Pretraining ({results['pretrain_data']}, {steps} steps, "
            f"{'once per seed' if results['pretrain_per_seed'] else 'once, shared by all seeds'}"
            f"): {np.mean(timed):.0f} s{' each' if len(timed) > 1 else ''}, validation "
            f"perplexity {perplexity}; not included in the fine-tuning times above."
        )
    gain = results.get("gain")
    if gain is not None:
        spread = max(results["arms"]["scratch"]["f1_std"], results["arms"]["pretrained"]["f1_std"])
        lines.append(
            f"Gain of pretraining (fine-tuned minus scratch, paired by seed): "
            f"{gain['f1_mean']:+.3f} ± {gain['f1_std']:.3f} macro-F1; largest seed std of the "
            f"two arms: {spread:.3f}."
        )
    model, train = results["model_config"], results["train_config"]
    lines += [
        "",
        "Settings: "
        f"model hidden_dim={model['hidden_dim']}, num_layers={model['num_layers']}, "
        f"num_heads={model['num_heads']}, vocabulary_size={model['vocabulary_size']}; "
        f"fine-tuning {train['finetune_epochs']} epochs, batch {train['batch_size']}, "
        f"classifier_sequence_length {train['classifier_sequence_length']}, "
        f"{train['decay']} schedule, pooling {results['pooling']!r}, token augmentation "
        f"delete/swap/mask {train['augment_delete']:g}/{train['augment_swap']:g}/"
        f"{train['augment_mask']:g}, "
        f"precision {train['precision']}; best epoch by validation macro-F1.",
        f"Machine: {results['machine']['processor']}, {results['machine']['cpu_count']} CPUs; "
        f"all runs together (pretraining included) {results['compute_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines)
