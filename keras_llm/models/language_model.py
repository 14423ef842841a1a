"""What the causal and the masked language model share: the default loss, the compile state
restored on load, a tokenizer slot, and (de)serialisation around one backbone."""

import keras

from keras_llm.models.attached import AttachedTokenizer
from keras_llm.models.backbone import TransformerBackbone, with_backbone_deserialized
from keras_llm.models.distribute import MultiWorkerFix
from keras_llm.models.losses import TokenCrossEntropy


def backbone_config(owner, backbone):
    """`backbone.model_config`, after checking `backbone` is a `TransformerBackbone`."""
    if not isinstance(backbone, TransformerBackbone):
        raise ValueError(
            f"{owner} needs a keras_llm.models.TransformerBackbone. Received backbone={backbone!r}."
        )
    return backbone.model_config


class LanguageModel(MultiWorkerFix, keras.Model):
    """Base of `CausalLM` and `MaskedLM`: token logits from `self.backbone`, trained on
    `(ids, labels)` where label 0 (padding, or a position not to predict) is ignored."""

    tokenizer = AttachedTokenizer()

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the label-0-ignoring token cross-entropy as default.

        When the whole step is compiled with XLA (`jit_compile=True`), the default loss is
        not compiled again as its own XLA island (see `token_cross_entropy`).
        """
        if loss is None:
            loss = TokenCrossEntropy()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if isinstance(loss, TokenCrossEntropy) and self.jit_compile:
            loss.fused = False

    def compile_from_config(self, config):
        # Keras skips restoring the compile state of a model whose compile() is overridden;
        # ours only adds a default, so restoring it is safe.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone_deserialized(config))
