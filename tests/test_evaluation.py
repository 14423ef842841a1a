"""Reports against scikit-learn; a reloaded run against its own evaluation is in
test_transfer.py."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

import keras_llm
from keras_llm import evaluation
from keras_llm.data import Tokenizer, classification_dataset
from keras_llm.models import Classifier, TransformerBackbone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FixedPredictions:
    """A stand-in model: batch i of ids -> one-hot logits of preset predictions."""

    def __init__(self, predictions, num_classes, batch_size):
        self.predictions = np.asarray(predictions)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.calls = 0
        self.output_shape = (None, num_classes)

    def predict_on_batch(self, ids):
        start = self.calls * self.batch_size
        self.calls += 1
        batch = self.predictions[start:start + len(ids)]
        return np.eye(self.num_classes, dtype="float32")[batch] * 3.0 - 1.0


def _batches(labels, batch_size, sequence_length=4):
    labels = np.asarray(labels, dtype="int32")
    ids = np.ones((len(labels), sequence_length), dtype="int32")
    return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size)


def _assert_matches_sklearn(report, labels, predictions, num_classes):
    names = report["label_names"]
    per_class = sk.precision_recall_fscore_support(
        labels, predictions, labels=list(range(num_classes)), zero_division=0
    )
    for i, name in enumerate(names):
        row = report["classes"][name]
        np.testing.assert_allclose(
            [row["precision"], row["recall"], row["f1"]],
            [per_class[0][i], per_class[1][i], per_class[2][i]], atol=1e-12,
        )
        assert row["support"] == per_class[3][i]
    for average in ("macro", "micro", "weighted"):
        expected = sk.precision_recall_fscore_support(
            labels, predictions, average=average, zero_division=0
        )
        row = report[average]
        np.testing.assert_allclose(
            [row["precision"], row["recall"], row["f1"]], expected[:3], atol=1e-12
        )
        assert row["support"] == len(labels)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions), abs=1e-12)
    np.testing.assert_array_equal(
        report["confusion_matrix"],
        sk.confusion_matrix(labels, predictions, labels=list(range(num_classes))),
    )
    assert report["num_examples"] == len(labels)


@pytest.mark.parametrize(
    "labels, predictions, num_classes",
    [
        # binary, several batches with a short last one
        ([0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1], [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1], 2),
        # three classes, heavy imbalance, class 2 never predicted
        ([0] * 12 + [1] * 3 + [2] * 2, [0] * 10 + [1] * 2 + [1, 0, 1] + [0, 1], 3),
        # four classes, class 3 absent from labels and predictions, class 2 only predicted
        ([0, 1, 0, 1, 1, 0, 0], [0, 1, 2, 1, 0, 0, 2], 4),
    ],
)
def test_report_matches_sklearn(labels, predictions, num_classes):
    names = [f"class_{i}" for i in range(num_classes)]
    model = FixedPredictions(predictions, num_classes, batch_size=4)
    report = evaluation.classification_report(model, _batches(labels, 4), names)
    _assert_matches_sklearn(report, np.asarray(labels), np.asarray(predictions), num_classes)


def _tiny_classifier(num_classes=3, seed=3):
    keras.utils.set_random_seed(seed)
    config = keras_llm.ModelConfig.preset("tiny", vocabulary_size=64, sequence_length=16)
    return Classifier(TransformerBackbone(config), num_classes)


def test_report_of_tiny_classifier_matches_sklearn_and_evaluate(tmp_path):
    """A real Classifier through the real pipeline: report == sklearn == model.evaluate."""
    texts = [f"word{i % 7} other{i % 5} thing{i % 3} more words here" for i in range(45)]
    labels = [i % 3 for i in range(45)]
    tokenizer = Tokenizer.train(texts, vocabulary_size=64)
    dataset = classification_dataset((texts, labels), tokenizer, 16, batch_size=8)
    model = _tiny_classifier()
    # A large random head so the untrained model predicts more than one class.
    head = model.head.kernel
    head.assign(keras.random.normal(head.shape, stddev=5.0, seed=1))

    names = ["a", "b", "c"]
    report = evaluation.classification_report(model, dataset, names, run_dir=str(tmp_path))

    ids = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    predictions = np.argmax(model.predict(ids, verbose=0), axis=-1)
    assert len(set(predictions.tolist())) > 1, "test needs varied predictions"
    _assert_matches_sklearn(report, np.asarray(labels), predictions, 3)

    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=keras_llm.metrics.classification_metrics(3),
    )
    evaluated = model.evaluate(dataset, return_dict=True, verbose=0)
    assert evaluated["f1"] == pytest.approx(report["macro"]["f1"], abs=1e-6)
    assert evaluated["precision"] == pytest.approx(report["macro"]["precision"], abs=1e-6)
    assert evaluated["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)

    with open(tmp_path / "report.json") as f:
        assert json.load(f) == report
    with open(tmp_path / "confusion_matrix.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_format_report_numbers_match_sklearn_text():
    labels = [0] * 9 + [1] * 5 + [2] * 4
    predictions = [0] * 7 + [1, 2] + [1] * 4 + [0] + [2, 2, 1, 0]
    names = ["negative", "neutral", "positive"]
    report = evaluation.classification_report(
        FixedPredictions(predictions, 3, 5), _batches(labels, 5), names
    )
    text = evaluation.format_report(report, digits=4)
    expected = sk.classification_report(
        labels, predictions, target_names=names, digits=4, zero_division=0
    )

    def rows(table):
        found = {}
        for line in table.splitlines():
            parts = line.split()
            if not parts:
                continue
            for key in (*names, "accuracy", "macro avg", "weighted avg"):
                if line.strip().startswith(key + " "):
                    found.setdefault(key, [float(p) for p in line.strip()[len(key):].split()])
        return found

    ours, theirs = rows(text.split("confusion matrix")[0]), rows(expected)
    assert set(theirs) <= set(ours)
    for key, values in theirs.items():
        # sklearn's accuracy row has (f1, support); ours has the same two numbers.
        assert ours[key] == values, key
    assert "micro avg" in text and "confusion matrix" in text


def test_report_rejects_bad_labels_and_mismatched_names():
    model = FixedPredictions([0, 1, 1], 2, batch_size=3)
    with pytest.raises(ValueError, match="label 2"):
        evaluation.classification_report(model, _batches([0, 2, 1], 3), ["a", "b"])
    with pytest.raises(ValueError, match="outputs 2 scores"):
        evaluation.classification_report(model, _batches([0, 1, 1], 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least 2"):
        evaluation.classification_report(model, _batches([0], 3), ["a"])


# --------------------------------------------------------------------------- end to end

def test_evaluate_run_rejects_a_pretraining_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="fine-tuning run"):
        evaluation.evaluate_run(str(tmp_path))
