"""Classification reports and the TF-IDF baseline.

- `classification_report(model, dataset, label_names)`: per-class precision, recall, F1 and
  support, the macro / micro / weighted rows, accuracy and the confusion matrix, computed
  over a whole data set (numpy, from the confusion matrix; the same conventions as
  `keras_llm.metrics` and scikit-learn's `zero_division=0`). Optionally writes
  `report.json` and `confusion_matrix.png`. `format_report` prints it as a table.
- `evaluate_run(run_dir, split)`: reloads a fine-tuning run and returns both
  `model.evaluate`'s five numbers (loss, accuracy, precision, recall, f1) and the report.
- `tfidf_baseline(data)`: TF-IDF + logistic regression, C chosen on validation: the
  classical baseline of the studies (`keras_llm.transfer`, `applications.speakers`).
"""

import os
import time

import keras
import numpy as np

from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import plots, training
from keras_llm._io import read_json, write_json
from keras_llm.config import TrainConfig

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


# --------------------------------------------------------------------------- baseline

TFIDF_C_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def tfidf_baseline(data="rotten_tomatoes", data_dir=None, c_grid=TFIDF_C_GRID, *,
                   train_examples=0, seed=0):
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
        train_examples: int. `0`: the whole train split; `n`: the class-stratified subset of
            `n` reviews a fine-tuning run with `TrainConfig(train_examples=n, seed=seed)`
            trains on (`keras_llm.data.stratified_indices`). Defaults to `0`.
        seed: int. Draws that subset. Defaults to `0`.

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

    if train_examples:
        keep = llm_data.stratified_indices(train_labels, train_examples, seed)
        train_texts, train_labels = [train_texts[i] for i in keep], train_labels[keep]
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
