"""The masked language model: an encoder backbone with BERT's token-prediction head."""

import keras

from keras_llm.models.attached import AttachedTokenizer
from keras_llm.models.backbone import TransformerBackbone, with_backbone_deserialized
from keras_llm.models.distribute import MultiWorkerFix
from keras_llm.models.losses import TokenCrossEntropy


@keras.saving.register_keras_serializable(package="keras_llm")
class MaskedLM(MultiWorkerFix, keras.Model):
    """Token logits `(batch, seq, vocabulary_size)` at every position of an encoder.

    BERT's head: `Dense(hidden_dim, activation)` -> `LayerNormalization` -> the transposed
    token embedding (`tie_embeddings=True`) or a `Dense(vocabulary_size)`. Trained on
    `keras_llm.data.mlm_dataset` batches `(masked ids, labels)`, whose labels are 0 except at
    the masked positions, so the default loss (`TokenCrossEntropy`, label 0 ignored) and
    `NextTokenAccuracy` count the masked positions only.

    Args:
        backbone: `TransformerBackbone` with `causal=False` (every position sees both sides).

    Example:
    >>> mlm = MaskedLM(TransformerBackbone(ModelConfig.preset("tiny", causal=False)))
    >>> mlm.compile(optimizer="adam")
    >>> mlm.fit(keras_llm.data.mlm_dataset(texts, tokenizer, 64, 32), epochs=1)
    """

    def __init__(self, backbone, **kwargs):
        if not isinstance(backbone, TransformerBackbone):
            raise ValueError(
                "MaskedLM needs a keras_llm.models.TransformerBackbone. "
                f"Received backbone={backbone!r}."
            )
        config = backbone.model_config
        if config.causal:
            raise ValueError(
                "MaskedLM needs a bidirectional encoder: ModelConfig(..., causal=False). A "
                "causal backbone would see no token after the one it predicts; it is for "
                "CausalLM."
            )
        # === Layers ===
        self.backbone = backbone
        policy = backbone.dtype_policy
        self.transform = keras.layers.Dense(
            config.hidden_dim, activation=config.activation, name="mlm_transform",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02), dtype=policy,
        )
        self.transform_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="mlm_transform_norm", dtype=policy
        )
        if not config.tie_embeddings:
            self.lm_head = keras.layers.Dense(
                config.vocabulary_size, name="lm_head", dtype=policy,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
            )

        # === Functional model ===
        token_ids = backbone.input
        hidden = self.transform_norm(self.transform(backbone(token_ids)))
        if config.tie_embeddings:
            logits = backbone.token_embedding(hidden, reverse=True)
        else:
            logits = self.lm_head(hidden)
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)

    tokenizer = AttachedTokenizer()

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the label-0-ignoring token cross-entropy as default."""
        if loss is None:
            loss = TokenCrossEntropy()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if isinstance(loss, TokenCrossEntropy) and self.jit_compile:
            loss.fused = False

    def compile_from_config(self, config):
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
