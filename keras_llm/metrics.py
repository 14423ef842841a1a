"""Metrics for the classifier (precision, recall, F1) and the causal LM (perplexity).

The classification metrics take what a `Classifier` is trained on: sparse integer labels of
shape `(batch,)` or `(batch, 1)` and scores of shape `(batch, num_classes)` (logits or
probabilities; the prediction is the arg-max either way). Each one accumulates a
`num_classes x num_classes` confusion matrix across batches, so the value reported after
`model.evaluate` is computed over the whole data set, not averaged over batches, and it
agrees with scikit-learn's `precision_recall_fscore_support(..., zero_division=0)`.

The language-model metrics take next-token labels `(batch, seq)` (already shifted, 0 =
padding) and logits `(batch, seq, vocabulary_size)`; padding positions are left out.

All metric variables are float32, so the metrics work unchanged under the `mixed_bfloat16`
policy, and they are Keras metric variables (summed on read), so they work inside
`tf.distribute` strategies.

Example:

```python
model.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=keras_llm.metrics.classification_metrics(num_classes=2),
)
model.evaluate(test_ds, return_dict=True)
# {"loss": ..., "accuracy": ..., "precision": ..., "recall": ..., "f1": ...}
```
"""

import keras
from keras import ops

AVERAGES = ("macro", "micro", "weighted", "binary")


class _ConfusionMatrixMetric(keras.metrics.Metric):
    """Base class: accumulates a confusion matrix; subclasses pick the score.

    `confusion_matrix[i, j]` is the (weighted) number of examples with true class `i`
    predicted as class `j`, the layout of `sklearn.metrics.confusion_matrix`.
    """

    def __init__(self, num_classes, average="macro", pos_label=1, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(
                f"`num_classes` must be an integer >= 2 (a binary classifier has 2 output "
                f"logits). Received: num_classes={num_classes!r}"
            )
        if average not in AVERAGES:
            raise ValueError(f"`average` must be one of {AVERAGES}. Received: average={average!r}")
        if average == "binary":
            if num_classes != 2:
                raise ValueError(
                    f"`average='binary'` reports one class of a 2-class problem; for "
                    f"num_classes={num_classes} use 'macro', 'micro' or 'weighted'."
                )
            if pos_label not in (0, 1):
                raise ValueError(
                    f"`pos_label` must be 0 or 1 with average='binary'. "
                    f"Received: pos_label={pos_label!r}"
                )
        self.num_classes = num_classes
        self.average = average
        self.pos_label = pos_label
        self.confusion_matrix = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float32",
            name="confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds one batch to the confusion matrix.

        Args:
            y_true: integer tensor `(batch,)` or `(batch, 1)`, class ids in
                `[0, num_classes)`. Ids outside that range are not counted.
            y_pred: float tensor `(batch, num_classes)`, logits or probabilities.
            sample_weight: optional tensor `(batch,)` or `(batch, 1)`; each example counts
                with its weight.
        """
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"{self.__class__.__name__} expects predictions of shape (batch, "
                f"num_classes={self.num_classes}). Received: y_pred.shape={y_pred.shape}. "
                f"Set num_classes to the number of output units of the model."
            )
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predictions = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,))
        true_one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")  # (batch, C)
        pred_one_hot = ops.one_hot(predictions, self.num_classes, dtype="float32")
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            true_one_hot = true_one_hot * weights
        # (C, batch) @ (batch, C): counts of (true class, predicted class) pairs.
        self.confusion_matrix.assign_add(ops.matmul(ops.transpose(true_one_hot), pred_one_hot))

    def reset_state(self):
        self.confusion_matrix.assign(ops.zeros((self.num_classes, self.num_classes), "float32"))

    def _per_class(self, true_positives, predicted, support):
        """Per-class score from per-class counts; implemented by subclasses."""
        raise NotImplementedError

    def result(self):
        matrix = ops.convert_to_tensor(self.confusion_matrix)
        true_positives = ops.diagonal(matrix)
        predicted = ops.sum(matrix, axis=0)  # column sums: tp + fp
        support = ops.sum(matrix, axis=1)  # row sums: tp + fn
        if self.average == "micro":
            # Single-label classification: every fp of one class is an fn of another, so
            # micro precision = micro recall = micro F1 = accuracy.
            return _safe_divide(ops.sum(true_positives), ops.sum(support))
        scores = self._per_class(true_positives, predicted, support)
        if self.average == "binary":
            return scores[self.pos_label]
        if self.average == "weighted":
            return _safe_divide(ops.sum(scores * support), ops.sum(support))
        # macro: as scikit-learn with labels=None, average over the classes that occur in
        # the labels or the predictions; a class absent from both is not counted.
        present = ops.cast(ops.greater(support + predicted, 0), "float32")
        return _safe_divide(ops.sum(scores * present), ops.sum(present))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "average": self.average, "pos_label": self.pos_label}
        )
        return config


_ARGS_DOC = """
    Args:
        num_classes: int. Number of classes, the width of the model's output (>= 2).
        average: str. How to reduce the per-class scores to one number: `"macro"` (plain
            mean over the classes present in the labels or predictions), `"micro"` (from
            the pooled counts; equals accuracy for single-label data), `"weighted"` (mean
            weighted by each class's support) or `"binary"` (only class `pos_label`;
            `num_classes=2` only). Defaults to `"macro"` for every number of classes,
            binary included, as in the project's reports.
        pos_label: int. The reported class when `average="binary"`. Defaults to `1`.
        name: str. Name of the metric (the key in `evaluate`'s results).
        dtype: Unused for the state (always float32); kept for Keras compatibility.

    Call arguments (`update_state`):
        y_true: int tensor `(batch,)` or `(batch, 1)`, class ids.
        y_pred: float tensor `(batch, num_classes)`, logits or probabilities.
        sample_weight: optional `(batch,)` weights.

    A score with a zero denominator is 0, never NaN (scikit-learn's `zero_division=0`).
"""


@keras.saving.register_keras_serializable(package="keras_llm")
class Precision(_ConfusionMatrixMetric):
    __doc__ = (
        """Precision for sparse integer labels: tp / (tp + fp), averaged over classes.
"""
        + _ARGS_DOC
    )

    def __init__(self, num_classes, average="macro", pos_label=1, name="precision", dtype=None):
        super().__init__(num_classes, average, pos_label, name=name, dtype=dtype)

    def _per_class(self, true_positives, predicted, support):
        return _safe_divide(true_positives, predicted)


@keras.saving.register_keras_serializable(package="keras_llm")
class Recall(_ConfusionMatrixMetric):
    __doc__ = (
        """Recall for sparse integer labels: tp / (tp + fn), averaged over classes.
"""
        + _ARGS_DOC
    )

    def __init__(self, num_classes, average="macro", pos_label=1, name="recall", dtype=None):
        super().__init__(num_classes, average, pos_label, name=name, dtype=dtype)

    def _per_class(self, true_positives, predicted, support):
        return _safe_divide(true_positives, support)


@keras.saving.register_keras_serializable(package="keras_llm")
class F1Score(_ConfusionMatrixMetric):
    __doc__ = (
        """F1 for sparse integer labels: 2 tp / (2 tp + fp + fn), averaged over classes.

    Per class this is the harmonic mean of precision and recall; the macro value is the mean
    of the per-class F1 scores (not the F1 of the mean precision and recall), as in
    scikit-learn.
"""
        + _ARGS_DOC
    )

    def __init__(self, num_classes, average="macro", pos_label=1, name="f1", dtype=None):
        super().__init__(num_classes, average, pos_label, name=name, dtype=dtype)

    def _per_class(self, true_positives, predicted, support):
        return _safe_divide(2.0 * true_positives, predicted + support)


def classification_metrics(num_classes, average="macro"):
    """The standard metrics for a classifier trained on sparse integer labels.

    With these, `model.evaluate(..., return_dict=True)` returns exactly the keys `loss`,
    `accuracy`, `precision`, `recall` and `f1`.

    Args:
        num_classes: int. Number of classes (>= 2).
        average: str. Averaging for precision, recall and F1; see `Precision`. Defaults to
            `"macro"`.

    Returns:
        A new list `[SparseCategoricalAccuracy("accuracy"), Precision("precision"),
        Recall("recall"), F1Score("f1")]`; call once per compiled model.
    """
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        Precision(num_classes, average=average, name="precision"),
        Recall(num_classes, average=average, name="recall"),
        F1Score(num_classes, average=average, name="f1"),
    ]


@keras.saving.register_keras_serializable(package="keras_llm")
class Perplexity(keras.metrics.Metric):
    """Perplexity of a causal LM: exp of the mean next-token cross-entropy.

    The mean is over all non-padding label positions seen since the last reset (a token
    mean, not a mean of per-batch perplexities). Cross-entropy is computed in float32, even
    when the logits are bfloat16. Before any token is seen the result is 0.

    Args:
        pad_id: int. Label id that marks padding; those positions are left out. Defaults to
            `0`, the tokenizer's `[PAD]`.
        from_logits: bool. Whether `y_pred` holds logits (True) or probabilities. Defaults to
            `True`, what `CausalLM` outputs.
        name: str. Defaults to `"perplexity"`.
        dtype: Unused for the state (always float32); kept for Keras compatibility.

    Call arguments (`update_state`):
        y_true: int tensor `(batch, seq)`, the next-token labels (already shifted).
        y_pred: float tensor `(batch, seq, vocabulary_size)`.
        sample_weight: optional `(batch, seq)` or `(batch,)` weights, multiplied with the
            padding mask.
    """

    def __init__(self, pad_id=0, from_logits=True, name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.pad_id = pad_id
        self.from_logits = from_logits
        self.total_crossentropy = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="total_crossentropy"
        )
        self.token_count = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="token_count"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(y_true, "int32")
        weights = _token_weights(labels, self.pad_id, sample_weight)
        crossentropy = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(y_pred, "float32"), from_logits=self.from_logits
        )  # (batch, seq)
        self.total_crossentropy.assign_add(ops.sum(crossentropy * weights))
        self.token_count.assign_add(ops.sum(weights))

    def result(self):
        count = ops.convert_to_tensor(self.token_count)
        mean = _safe_divide(ops.convert_to_tensor(self.total_crossentropy), count)
        return ops.where(ops.greater(count, 0), ops.exp(mean), 0.0)

    def reset_state(self):
        self.total_crossentropy.assign(0.0)
        self.token_count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id, "from_logits": self.from_logits})
        return config


@keras.saving.register_keras_serializable(package="keras_llm")
class NextTokenAccuracy(keras.metrics.Metric):
    """Share of non-padding positions where the arg-max token is the label.

    Args:
        pad_id: int. Label id that marks padding; those positions are left out. Defaults to
            `0`.
        name: str. Defaults to `"next_token_accuracy"`.
        dtype: Unused for the state (always float32); kept for Keras compatibility.

    Call arguments (`update_state`):
        y_true: int tensor `(batch, seq)`, the next-token labels (already shifted).
        y_pred: float tensor `(batch, seq, vocabulary_size)`, logits or probabilities.
        sample_weight: optional `(batch, seq)` or `(batch,)` weights, multiplied with the
            padding mask.

    Before any token is seen the result is 0.
    """

    def __init__(self, pad_id=0, name="next_token_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.pad_id = pad_id
        self.correct = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="correct"
        )
        self.token_count = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="token_count"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(y_true, "int32")
        weights = _token_weights(labels, self.pad_id, sample_weight)
        hits = ops.cast(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels), "float32"
        )
        self.correct.assign_add(ops.sum(hits * weights))
        self.token_count.assign_add(ops.sum(weights))

    def result(self):
        return _safe_divide(
            ops.convert_to_tensor(self.correct), ops.convert_to_tensor(self.token_count)
        )

    def reset_state(self):
        self.correct.assign(0.0)
        self.token_count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id})
        return config


def language_model_metrics(pad_id=0, accuracy_name="next_token_accuracy"):
    """The standard metrics for a language model: perplexity and token accuracy.

    Args:
        pad_id: int. Label id left out (padding; for a masked LM, every position not
            masked). Defaults to `0`.
        accuracy_name: str. `"next_token_accuracy"` (causal LM, the default) or
            `"masked_accuracy"` (masked LM).

    Returns:
        A new list `[Perplexity("perplexity"), NextTokenAccuracy(accuracy_name)]`.
    """
    return [
        Perplexity(pad_id=pad_id, name="perplexity"),
        NextTokenAccuracy(pad_id=pad_id, name=accuracy_name),
    ]


def _token_weights(labels, pad_id, sample_weight):
    """float32 weights (batch, seq): 0 at padding, else 1 (times sample_weight if given)."""
    weights = ops.cast(ops.not_equal(labels, pad_id), "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        if len(sample_weight.shape) == len(labels.shape) - 1:
            sample_weight = ops.expand_dims(sample_weight, -1)  # per-sequence weights
        weights = weights * sample_weight
    return weights


def _safe_divide(numerator, denominator):
    """numerator / denominator, and 0 where denominator is 0 (never NaN)."""
    safe = ops.where(ops.equal(denominator, 0), ops.ones_like(denominator), denominator)
    return ops.where(ops.equal(denominator, 0), ops.zeros_like(numerator), numerator / safe)
