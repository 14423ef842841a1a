"""AdamW with weight decay only where it regularizes: the matrices of matrix multiplications.

Decaying a bias, a layer-norm scale or offset, or an embedding row pulls it toward zero for
no benefit (a norm's gain of 0 switches the layer off; rare tokens' embeddings, seldom
updated by gradients, would shrink toward zero between their appearances). GPT-2, BERT and
nanoGPT all exclude biases and norms; this module also excludes embeddings, including a
tied LM head, which is the embedding matrix.
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


def adamw(model, learning_rate=1e-3, weight_decay=0.01, **kwargs):
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
    _, excluded = weight_decay_split(model)
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
    )
    optimizer.exclude_from_weight_decay(var_list=excluded)
    return optimizer
