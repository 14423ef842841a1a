"""A Hugging Face BERT checkpoint into keras_llm's own backbone, tensor by tensor.

Read as data: `_weight_table` lists, for every variable of the backbone, the checkpoint
tensor it takes and how that tensor is reshaped (PyTorch's `Linear` stores `(out, in)`;
Keras' `MultiHeadAttention` wants `(in, heads, head_dim)` and `(heads, head_dim, out)`).
`load_weights` applies it and refuses to finish with a variable left unset, a shape that
does not fit, or a checkpoint tensor nobody took (beyond the few named in `NOT_USED`).
"""

import numpy as np

from keras_llm.config import ModelConfig
from keras_llm.layers.attention import ExplicitMultiHeadAttention

# Checkpoint tensors keras_llm has no place for, on purpose.
NOT_USED = {
    "embeddings.position_ids": "a constant 0..511 buffer, not a weight",
    "pooler.dense.weight": "the [CLS] pooler of next-sentence prediction; keras_llm pools "
    "by mean or last token",
    "pooler.dense.bias": "as pooler.dense.weight",
}
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "tanh": "tanh", "silu": "silu"}


def model_config(hf_config, path="config.json"):
    """The `ModelConfig` of a Hugging Face BERT `config.json` (a dict)."""
    act = hf_config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"{path}: hidden_act={act!r} is not supported; keras_llm has {sorted(ACTIVATIONS)}."
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type={position_type!r} is not supported; keras_llm "
            "learns absolute positions."
        )
    try:
        return ModelConfig(
            vocabulary_size=hf_config["vocab_size"],
            sequence_length=hf_config["max_position_embeddings"],
            hidden_dim=hf_config["hidden_size"],
            num_heads=hf_config["num_attention_heads"],
            num_layers=hf_config["num_hidden_layers"],
            intermediate_dim=hf_config["intermediate_size"],
            dropout=float(hf_config.get("hidden_dropout_prob", 0.1)),
            activation=ACTIVATIONS[act],
            causal=False,
            norm_position="post",
            embedding_norm=True,
            token_type_vocabulary_size=hf_config.get("type_vocab_size", 2),
            layer_norm_epsilon=float(hf_config.get("layer_norm_eps", 1e-12)),
        )
    except KeyError as error:
        raise ValueError(f"{path} lacks the BERT field {error.args[0]!r}.") from None


def _attention_variables(layer):
    """`(query, key, value, output)` `(kernel, bias)` pairs of either attention layer."""
    if isinstance(layer, ExplicitMultiHeadAttention):
        return [
            (getattr(layer, f"{part}_kernel"), getattr(layer, f"{part}_bias"))
            for part in ("query", "key", "value", "output")
        ]
    denses = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    return [(dense.kernel, dense.bias) for dense in denses]


def _transpose(array):
    return array.T


def _weight_table(backbone):
    """`[(variable, checkpoint name, transform or None)]` for every backbone variable."""
    heads = backbone.model_config.num_heads
    head_dim = backbone.model_config.head_dim

    def to_heads_in(array):  # (out, in) -> (in, heads, head_dim)
        return array.T.reshape(array.shape[1], heads, head_dim)

    def to_heads_bias(array):  # (out,) -> (heads, head_dim)
        return array.reshape(heads, head_dim)

    def to_heads_out(array):  # (out, in) -> (heads, head_dim, out)
        return array.T.reshape(heads, head_dim, array.shape[0])

    embedding = backbone.token_embedding
    table = [
        (embedding.token_embeddings, "embeddings.word_embeddings.weight", None),
        (embedding.position_embeddings, "embeddings.position_embeddings.weight", None),
        (embedding.token_type_embeddings, "embeddings.token_type_embeddings.weight", None),
        (backbone.embedding_norm.gamma, "embeddings.LayerNorm.weight", None),
        (backbone.embedding_norm.beta, "embeddings.LayerNorm.bias", None),
    ]
    for i, block in enumerate(backbone.transformer_blocks):
        prefix = f"encoder.layer.{i}."
        attention = _attention_variables(block.attention_layer)
        for (kernel, bias), part in zip(attention[:3], ("query", "key", "value")):
            table.append((kernel, f"{prefix}attention.self.{part}.weight", to_heads_in))
            table.append((bias, f"{prefix}attention.self.{part}.bias", to_heads_bias))
        table += [
            (attention[3][0], f"{prefix}attention.output.dense.weight", to_heads_out),
            (attention[3][1], f"{prefix}attention.output.dense.bias", None),
            (block.attention_norm.gamma, f"{prefix}attention.output.LayerNorm.weight", None),
            (block.attention_norm.beta, f"{prefix}attention.output.LayerNorm.bias", None),
            (block.feedforward_intermediate.kernel, f"{prefix}intermediate.dense.weight",
             _transpose),
            (block.feedforward_intermediate.bias, f"{prefix}intermediate.dense.bias", None),
            (block.feedforward_output.kernel, f"{prefix}output.dense.weight", _transpose),
            (block.feedforward_output.bias, f"{prefix}output.dense.bias", None),
            (block.feedforward_norm.gamma, f"{prefix}output.LayerNorm.weight", None),
            (block.feedforward_norm.beta, f"{prefix}output.LayerNorm.bias", None),
        ]
    return table


def load_weights(backbone, tensors, path="model.safetensors"):
    """Assigns every backbone variable from `tensors` (`{name: array}`) per `_weight_table`.

    A `"bert."` prefix on every name (checkpoints saved from a task model) is accepted.
    Raises `ValueError` naming each missing tensor, each shape mismatch, and each checkpoint
    tensor left unused (other than `NOT_USED`); nothing is half-loaded silently.

    Returns:
        The sorted names of the checkpoint tensors skipped on purpose (`NOT_USED`).
    """
    if tensors and all(name.startswith("bert.") for name in tensors):
        tensors = {name[len("bert."):]: value for name, value in tensors.items()}
    table = _weight_table(backbone)
    missing, mismatched, assignments = [], [], []
    for variable, name, transform in table:
        if name not in tensors:
            missing.append(name)
            continue
        value = np.asarray(tensors[name])
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{name} {tuple(tensors[name].shape)} -> {variable.path} {tuple(variable.shape)}"
            )
            continue
        assignments.append((variable, value))
    used = {name for _, name, _ in table}
    unused = sorted(set(tensors) - used - set(NOT_USED))
    if missing or mismatched or unused:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing}")
        if mismatched:
            problems.append(f"shape mismatches {mismatched}")
        if unused:
            problems.append(f"tensors no keras_llm weight takes {unused}")
        raise ValueError(
            f"{path} does not fit this backbone: {'; '.join(problems)}. Build the backbone "
            "from the checkpoint's own config.json (`TransformerBackbone.from_preset`)."
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return sorted(set(tensors) & set(NOT_USED))
