"""A text classifier: backbone, masked pooling, Dense head."""

import keras
from keras import ops

from keras_llm.models.attached import AttachedTokenizer
from keras_llm.models.backbone import TransformerBackbone, with_backbone_deserialized
from keras_llm.models.distribute import MultiWorkerFix

POOLINGS = ("mean", "last")


@keras.saving.register_keras_serializable(package="keras_llm")
class SequencePooling(keras.layers.Layer):
    """Pools `(batch, seq, dim)` to `(batch, dim)` over real (non-padding) positions.

    Args:
        mode: str. `"mean"` averages real positions; `"last"` takes the last real position
            (with a causal backbone the only one that has seen the whole text).
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}. Received pooling={mode!r}.")
        self.mode = mode
        self.supports_masking = True

    def call(self, x, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(x)[:2], "bool")
        weights = ops.cast(mask, x.dtype)  # (batch, seq)
        if self.mode == "mean":
            total = ops.sum(x * weights[:, :, None], axis=1)  # (batch, dim)
            count = ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1.0)
            return total / count
        positions = ops.arange(ops.shape(x)[1], dtype="int32")[None, :]
        last = ops.max(ops.where(mask, positions, 0), axis=1)  # (batch,)
        return ops.take_along_axis(x, last[:, None, None], axis=1)[:, 0, :]

    def compute_mask(self, x, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode)
        return config


def check_num_classes(num_classes):
    """Raises a `ValueError` naming `num_classes` unless it is an integer >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2. Received num_classes={num_classes!r}."
        )


@keras.saving.register_keras_serializable(package="keras_llm")
class Classifier(MultiWorkerFix, keras.Model):
    """Class logits `(batch, num_classes)` from a `TransformerBackbone`.

    Args:
        backbone: `TransformerBackbone`, freshly built or pretrained.
        num_classes: int. At least 2.
        pooling: str. `"mean"` (default) or `"last"`; both ignore padding.
        dropout: float. Dropout before the head. Defaults to `0.0`.

    The head outputs float32 logits under every precision policy.
    """

    def __init__(self, backbone, num_classes, pooling="mean", dropout=0.0, **kwargs):
        if not isinstance(backbone, TransformerBackbone):
            raise ValueError(
                "Classifier needs a keras_llm.models.TransformerBackbone. "
                f"Received backbone={backbone!r}."
            )
        check_num_classes(num_classes)
        # === Layers ===
        self.backbone = backbone
        self.pooler = SequencePooling(pooling, name="pooling", dtype=backbone.dtype_policy)
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head = keras.layers.Dense(num_classes, name="classifier_head", dtype="float32")

        # === Functional model ===
        token_ids = backbone.input
        pooled = self.pooler(backbone(token_ids))
        logits = self.head(self.head_dropout(pooled))
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout

    tokenizer = AttachedTokenizer()

    @classmethod
    def from_preset(cls, preset, num_classes, pooling="mean", dropout=0.1, dtype=None,
                    **kwargs):
        """A classifier on a published checkpoint's backbone, with its tokenizer attached
        (`model.tokenizer`); the head starts untrained.

        Args:
            preset: str. Registered name (e.g. `"all-MiniLM-L6-v2"`) or Hugging Face
                BERT-layout folder; see `TransformerBackbone.from_preset`.
            num_classes: int. At least 2.
            pooling: str. `"mean"` (default; what sentence-transformers trained this family
                for) or `"last"`.
            dropout: float. Before the head. Defaults to `0.1`, BERT's fine-tuning dropout.
            dtype: Keras dtype policy.

        Example:
        >>> model = Classifier.from_preset("all-MiniLM-L6-v2", num_classes=2)
        >>> ids = model.tokenizer.encode(tf.constant(["a fine film"]), 64)
        >>> model.predict(ids).shape
        (1, 2)
        """
        from keras_llm.data.tokenizer import Tokenizer  # the one piece models and data share

        backbone = TransformerBackbone.from_preset(preset, dtype=dtype)
        model = cls(backbone, num_classes, pooling=pooling, dropout=dropout, **kwargs)
        model.tokenizer = Tokenizer.from_preset(preset)
        return model

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone_deserialized(config))
