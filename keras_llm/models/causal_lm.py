"""The causal language model: a backbone with a next-token head."""

import keras

from keras_llm.models.backbone import TransformerBackbone


@keras.saving.register_keras_serializable(package="keras_llm")
class CausalLM(keras.Model):
    """Next-token logits `(batch, seq, vocabulary_size)` from a `TransformerBackbone`.

    The head is the transposed token embedding when the backbone's config has
    `tie_embeddings=True`, else a `Dense(vocabulary_size)`. Trains with `compile` + `fit` on
    `(ids, next_ids)`; padding (label 0) does not count in the loss: `compile()` defaults to
    `SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)`.

    Args:
        backbone: `TransformerBackbone`.

    Example:
    >>> lm = CausalLM(TransformerBackbone(ModelConfig.preset("tiny")))
    >>> lm.compile(optimizer="adam")
    >>> lm.fit(ids[:, :-1], ids[:, 1:], epochs=1)
    """

    def __init__(self, backbone, **kwargs):
        if not isinstance(backbone, TransformerBackbone):
            raise ValueError(
                "CausalLM needs a keras_llm.models.TransformerBackbone. "
                f"Received backbone={backbone!r}."
            )
        # === Layers ===
        self.backbone = backbone
        config = backbone.model_config
        if not config.tie_embeddings:
            self.lm_head = keras.layers.Dense(
                config.vocabulary_size,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="lm_head",
                dtype=backbone.dtype_policy,
            )

        # === Functional model ===
        token_ids = backbone.input
        hidden = backbone(token_ids)
        if config.tie_embeddings:
            logits = backbone.token_embedding(hidden, reverse=True)
        else:
            logits = self.lm_head(hidden)
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)
        self.tokenizer = None  # attached by training/loading code; strings in, strings out

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the padding-ignoring token cross-entropy as default."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

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
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
