"""AdamW with weight decay only where it regularizes: the matrices of matrix multiplications.

Decaying a bias, a layer-norm scale or offset, or an embedding row pulls it toward zero for
no benefit (a norm's gain of 0 switches the layer off; rare tokens' embeddings, seldom
updated by gradients, would shrink toward zero between their appearances). GPT-2, BERT and
nanoGPT all exclude biases and norms; this module also excludes embeddings, including a
tied LM head, which is the embedding matrix.

Fine-tuning a pretrained backbone can also step its lower layers less than its upper ones
(layer-wise learning-rate decay, as in ELECTRA and BEiT): `adamw(model, layer_decay=0.8)`
scales the learning rate of block `i` of `L` by `0.8 ** (L - i)`, of the embeddings by
`0.8 ** (L + 1)`, and leaves the head at the full rate (`layer_depths`).
"""

import re

import keras

# Short variable names (`variable.name`) that never decay, whatever their rank: Keras'
# MultiHeadAttention biases are (heads, head_dim) matrices named "bias".
_NO_DECAY_NAME = re.compile(r"(^|_)(bias|gamma|beta)$")


def _excluded(variable):
    name = variable.name.lower()
    # The variable's name and its owning layer's name, e.g. "token_embedding/embeddings".
    owner = "/".join(variable.path.lower().split("/")[-2:])
    return len(variable.shape) <= 1 or bool(_NO_DECAY_NAME.search(name)) or "embedding" in owner


def weight_decay_split(model):
    """Splits a built model's trainable variables into decayed and excluded ones.

    Excluded: every variable of rank <= 1 (biases, layer-norm `gamma` and `beta`), every
    variable named `bias`, `gamma` or `beta` (the attention biases are matrices), and every
    variable whose name or owning layer's name contains `embedding` (token and position
    embeddings; a tied LM head reuses the token embedding). Everything else (kernels of
    dense, attention and output layers) decays.

    Args:
        model: a built `keras.Model` (or layer).

    Returns:
        `(decayed, excluded)`, two lists of variables.
    """
    variables = list(getattr(model, "trainable_variables", None) or [])
    if not variables:
        raise ValueError(
            f"weight_decay_split needs a built model with trainable weights; "
            f"{getattr(model, 'name', model)!r} has none. Build it first, e.g. call it on one "
            "batch or `model.build(input_shape)`."
        )
    decayed = [v for v in variables if not _excluded(v)]
    excluded = [v for v in variables if _excluded(v)]
    return decayed, excluded


def layer_depths(model):
    """Depth of each trainable variable of a model holding a `TransformerBackbone`.

    Depth 0: the backbone's embeddings (token, position, token type, embedding norm);
    `i + 1`: transformer block `i`; `L + 1` (with `L` blocks): everything else, i.e. the
    final norm, the pooling and the head. Layer-wise learning-rate decay `d` scales a
    variable's learning rate by `d ** (L + 1 - depth)`.

    Args:
        model: a built `TransformerBackbone`, or a model whose `backbone` attribute is one
            (`Classifier`, the language models).

    Returns:
        `(depths, num_blocks)`: a dict `variable.path -> depth` over every trainable
        variable, and `L`.

    Raises:
        ValueError: the model holds no backbone with `transformer_blocks`.
    """
    backbone = model if hasattr(model, "transformer_blocks") else getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "transformer_blocks"):
        raise ValueError(
            f"layer_decay needs a model with a transformer backbone (its `backbone` attribute "
            f"or the backbone itself); {getattr(model, 'name', model)!r} has none. Use "
            "layer_decay=1.0 (no decay) for other models."
        )
    blocks = backbone.transformer_blocks
    top = len(blocks) + 1
    depths = {v.path: top for v in model.trainable_variables}
    embedding_layers = [backbone.token_embedding, getattr(backbone, "embedding_norm", None)]
    for layer in embedding_layers:
        for variable in getattr(layer, "trainable_variables", []):
            depths[variable.path] = 0
    for index, block in enumerate(blocks):
        for variable in block.trainable_variables:
            depths[variable.path] = index + 1
    if len(depths) != len(model.trainable_variables):  # the multipliers are keyed by path
        paths = [v.path for v in model.trainable_variables]
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(f"layer_decay needs distinct variable paths; {repeated} name several "
                         "variables. Give the layers distinct names.")
    return depths, len(blocks)


@keras.saving.register_keras_serializable(package="keras_llm")
class LayerDecayAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose step for each variable is the learning rate times that
    variable's multiplier.

    The decoupled weight decay keeps the shared learning rate (at this project's 0.01 its
    per-layer scaling would change nothing measurable).

    Args:
        multipliers: dict `variable.path -> float`: learning-rate multipliers (1.0 for a
            variable not named). `adamw(model, layer_decay=...)` computes them.
        **kwargs: passed to `keras.optimizers.AdamW`.
    """

    def __init__(self, multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = {str(k): float(v) for k, v in (multipliers or {}).items()}
        self._factors = []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # By the optimizer's own variable index: update_step gets the backend's variable
        # (a tf.Variable, or a replica's component under a strategy), not the Keras one.
        self._factors = [self.multipliers.get(v.path, 1.0) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multipliers": dict(self.multipliers)}


def adamw(model, learning_rate=1e-3, weight_decay=0.01, *, layer_decay=1.0, **kwargs):
    """`keras.optimizers.AdamW` that decays only the model's matrix weights.

    The exclusion is by variable object (see `weight_decay_split`), registered with
    `optimizer.exclude_from_weight_decay(var_list=...)` before the optimizer is built. Keras
    keeps float32 variables under the `"mixed_bfloat16"` policy, so decay behaves the same
    in both precisions. Create it inside a `tf.distribute` strategy's scope when using one.

    Args:
        model: a built `keras.Model` whose variables the optimizer will train.
        learning_rate: float. Initial learning rate (a `WarmupCosineScheduler` overwrites
            it every step). Defaults to `1e-3`.
        weight_decay: float. Decoupled weight decay, >= 0. Defaults to `0.01`.
        layer_decay: float in (0, 1]. Layer-wise learning-rate decay (`layer_depths`):
            below 1, lower layers of the backbone step less (a `LayerDecayAdamW`). Defaults
            to `1.0` (every variable at the full rate).
        **kwargs: passed to `keras.optimizers.AdamW` (`beta_1`, `beta_2`, `epsilon`, ...).

    Returns:
        A `keras.optimizers.AdamW`.

    Example:

    >>> optimizer = adamw(model, learning_rate=3e-4, weight_decay=0.1)
    >>> model.compile(optimizer=optimizer, loss=...)
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise ValueError(f"weight_decay must be a number >= 0. Received {weight_decay=!r}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0. Received weight_decay={weight_decay!r}.")
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) or not (
        0 < layer_decay <= 1
    ):
        raise ValueError(f"layer_decay must be a number in (0, 1] (1: no decay; e.g. 0.8). "
                         f"Received layer_decay={layer_decay!r}.")
    _, excluded = weight_decay_split(model)
    if layer_decay == 1:
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
        )
    else:
        depths, top = layer_depths(model)
        multipliers = {path: float(layer_decay) ** (top + 1 - depth)
                       for path, depth in depths.items()}
        optimizer = LayerDecayAdamW(multipliers, learning_rate=learning_rate,
                                    weight_decay=weight_decay, **kwargs)
    optimizer.exclude_from_weight_decay(var_list=excluded)
    return optimizer
