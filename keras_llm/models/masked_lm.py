"""The masked language model: an encoder backbone with BERT's token-prediction head."""

import keras

from keras_llm.models.language_model import LanguageModel, backbone_config


@keras.saving.register_keras_serializable(package="keras_llm")
class MaskedLM(LanguageModel):
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
        config = backbone_config("MaskedLM", backbone)
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
