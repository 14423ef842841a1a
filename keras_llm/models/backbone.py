"""The Transformer backbone: token ids in, hidden states out."""

import dataclasses

import keras

from keras_llm.config import ModelConfig
from keras_llm.layers import TokenAndPositionEmbedding, TransformerBlock


def with_backbone_deserialized(config):
    """A copy of a task model's `get_config()` with its `backbone` entry rebuilt as a layer:
    what `CausalLM`, `Classifier` and `ImageClassifier` `from_config` need."""
    config = dict(config)
    config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
    return config


def _as_model_config(config, overrides):
    if config is None:
        config = ModelConfig()
    elif isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    elif not isinstance(config, ModelConfig):
        raise ValueError(
            "config must be a keras_llm.ModelConfig, a dict of its fields, or None. "
            f"Received config={config!r}."
        )
    return dataclasses.replace(config, **overrides) if overrides else config


@keras.saving.register_keras_serializable(package="keras_llm")
class TransformerBackbone(keras.Model):
    """Token ids `(batch, seq)` -> hidden states `(batch, seq, hidden_dim)`.

    Embedding (tokens + learned positions, id 0 = padding) -> `num_layers` pre-norm
    `TransformerBlock`s (causal) -> final layer norm. The output carries the padding mask.

    Args:
        config: `keras_llm.ModelConfig` (or a dict of its fields). Defaults to the `"small"`
            sizes.
        **overrides: any `ModelConfig` field, e.g. `num_layers=2`; these are also the keys
            of `get_config`.

    Example:
    >>> backbone = TransformerBackbone(ModelConfig.preset("tiny"))
    >>> backbone(np.ones((2, 8), "int32")).shape
    (2, 8, 32)
    """

    def __init__(self, config=None, name="transformer_backbone", dtype=None, **overrides):
        base_keys = {"trainable"}
        base_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in base_keys}
        config = _as_model_config(config, overrides)
        self.model_config = config

        # === Layers ===
        self.token_embedding = TokenAndPositionEmbedding(
            vocabulary_size=config.vocabulary_size,
            sequence_length=config.sequence_length,
            hidden_dim=config.hidden_dim,
            name="token_embedding",
            dtype=dtype,
        )
        self.embedding_dropout = keras.layers.Dropout(
            config.dropout, name="embedding_dropout", dtype=dtype
        )
        self.transformer_blocks = [
            TransformerBlock(
                num_heads=config.num_heads,
                intermediate_dim=config.intermediate_dim,
                dropout=config.dropout,
                activation=config.activation,
                attention=config.attention,
                initializer=config.initializer,
                num_layers=config.num_layers,
                name=f"transformer_block_{i}",
                dtype=dtype,
            )
            for i in range(config.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="final_norm", dtype=dtype
        )

        # === Functional model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = self.embedding_dropout(self.token_embedding(token_ids))
        for block in self.transformer_blocks:
            x = block(x)
        x = self.final_norm(x)
        super().__init__(inputs=token_ids, outputs=x, name=name, dtype=dtype, **base_kwargs)

    @property
    def hidden_dim(self):
        return self.model_config.hidden_dim

    def attention_scores(self, token_ids):
        """Attention weights of every layer: a list of `(batch, heads, seq, seq)` arrays.

        Runs the blocks one by one (eagerly), for looking at attention.
        """
        x = self.token_embedding(token_ids)
        mask = self.token_embedding.compute_mask(token_ids)
        scores = []
        for block in self.transformer_blocks:
            x, s = block(x, mask=mask, return_attention_scores=True)
            scores.append(s)
        return scores

    def get_config(self):
        config = self.model_config.to_dict()
        config.update(name=self.name, trainable=self.trainable)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("dtype", None)
        return cls(**config)
