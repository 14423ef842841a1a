"""Multi-head self-attention written out step by step.

`ExplicitMultiHeadAttention` computes what `keras.layers.MultiHeadAttention` computes, with the
same weights in the same order, so `explicit.set_weights(keras_mha.get_weights())` makes the two
layers agree. It exists to be read: each of the six steps is one or two lines.
"""

import keras
from keras import ops


def large_negative(dtype):
    """The additive mask value Keras' masked softmax uses for `dtype`."""
    return -3e4 if dtype == "float16" else -1e9


def causal_mask(query_length, key_length):
    """`(query_length, key_length)` bool: position t may attend to positions <= t."""
    rows = ops.arange(query_length)[:, None]
    cols = ops.arange(key_length)[None, :]
    return ops.greater_equal(rows, cols)


@keras.saving.register_keras_serializable(package="keras_llm")
class ExplicitMultiHeadAttention(keras.layers.Layer):
    """Multi-head attention as six readable steps, weight-compatible with Keras' layer.

    1. Project the input to queries, keys and values, one slice per head.
    2. (The split into heads is in the projection's kernel layout: `(hidden, heads, key_dim)`.)
    3. Score every query against every key: scaled dot products.
    4. Mask forbidden pairs (future positions, padding) with a large negative number.
    5. Softmax turns the scores into weights; the weights sum the values.
    6. Concatenate the heads and project back to the model width.

    Args:
        num_heads: int. Number of heads.
        key_dim: int. Width of each head's queries, keys and values.
        dropout: float. Dropout on the attention weights. Defaults to `0.0`.
        kernel_initializer: initializer for the q/k/v kernels. Defaults to `"glorot_uniform"`.
        output_initializer: initializer for the output kernel; `None` uses
            `kernel_initializer`. Defaults to `None`.

    Call arguments:
        query: `(batch, T, dim)`.
        value: `(batch, S, dim)`; keys are computed from `key` if given, else from `value`.
        key: optional `(batch, S, dim)`.
        attention_mask: optional bool `(batch, T, S)`; True means "may attend".
        return_attention_scores: bool. Also return the `(batch, heads, T, S)` weights.
        use_causal_mask: bool. Add the causal mask.

    Example:
    >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(1, 5, 8).astype("float32")
    >>> _ = mha(x, x)
    >>> explicit = ExplicitMultiHeadAttention(num_heads=2, key_dim=4)
    >>> _ = explicit(x, x)
    >>> explicit.set_weights(mha.get_weights())
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        output_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(
            output_initializer if output_initializer is not None else kernel_initializer
        )
        self._dropout_layer = keras.layers.Dropout(dropout)
        self.supports_masking = True

    def build(self, query_shape, value_shape=None, key_shape=None):
        dim = query_shape[-1]
        heads, head_dim = self.num_heads, self.key_dim

        def weight(name, shape, initializer):
            return self.add_weight(name=name, shape=shape, initializer=initializer)

        # Same shapes and order as keras.layers.MultiHeadAttention.get_weights().
        self.query_kernel = weight("query_kernel", (dim, heads, head_dim), self.kernel_initializer)
        self.query_bias = weight("query_bias", (heads, head_dim), "zeros")
        self.key_kernel = weight("key_kernel", (dim, heads, head_dim), self.kernel_initializer)
        self.key_bias = weight("key_bias", (heads, head_dim), "zeros")
        self.value_kernel = weight("value_kernel", (dim, heads, head_dim), self.kernel_initializer)
        self.value_bias = weight("value_bias", (heads, head_dim), "zeros")
        self.output_kernel = weight(
            "output_kernel", (heads, head_dim, dim), self.output_initializer
        )
        self.output_bias = weight("output_bias", (dim,), "zeros")
        self.built = True

    def _project(self, x, kernel, bias):
        # (batch, seq, dim) x (dim, heads, head_dim) -> (batch, seq, heads, head_dim)
        kernel = ops.cast(kernel, self.compute_dtype)
        return ops.einsum("bsd,dhk->bshk", x, kernel) + ops.cast(bias, self.compute_dtype)

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        return_attention_scores=False,
        use_causal_mask=False,
        training=None,
    ):
        key = value if key is None else key
        # Steps 1-2: project and split into heads.
        q = self._project(query, self.query_kernel, self.query_bias)  # (batch, T, heads, head_dim)
        k = self._project(key, self.key_kernel, self.key_bias)  # (batch, S, heads, head_dim)
        v = self._project(value, self.value_kernel, self.value_bias)  # (batch, S, heads, head_dim)

        # Step 3: scaled dot products between every query and every key.
        q = q * ops.cast(1.0 / (self.key_dim**0.5), q.dtype)
        scores = ops.einsum("bthk,bshk->bhts", q, k)  # (batch, heads, T, S)

        # Step 4: mask. True means "may attend"; the rest get a large negative score.
        mask = attention_mask
        if use_causal_mask:
            causal = causal_mask(ops.shape(query)[1], ops.shape(key)[1])  # (T, S)
            mask = causal[None] if mask is None else ops.logical_and(mask, causal[None])
        if mask is not None:
            mask = ops.cast(mask[:, None, :, :], scores.dtype)  # (batch, 1, T, S)
            scores = scores + (1.0 - mask) * large_negative(scores.dtype)

        # Step 5: softmax over keys, then the weights sum the values.
        weights = ops.softmax(scores, axis=-1)  # (batch, heads, T, S)
        dropped = self._dropout_layer(weights, training=training)
        context = ops.einsum("bhts,bshk->bthk", dropped, v)  # (batch, T, heads, head_dim)

        # Step 6: concatenate the heads and project: the output kernel sums over both.
        kernel = ops.cast(self.output_kernel, self.compute_dtype)
        output = ops.einsum("bthk,hkd->btd", context, kernel)
        output = output + ops.cast(self.output_bias, self.compute_dtype)  # (batch, T, dim)
        if return_attention_scores:
            return output, weights
        return output

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return query_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_initializer=keras.initializers.serialize(self.output_initializer),
        )
        return config


def decoding_weights(layer):
    """`layer`'s projections packed for decoding: one matrix product for q, k and v together.

    Returns a dict of `qkv_kernel` `(dim, 3 * heads * head_dim)`, `qkv_bias`, `output_kernel`
    `(heads * head_dim, dim)` and `output_bias`, in `layer`'s compute dtype, for
    `cached_attention(..., weights=...)`; call it once per decoding call, outside the loop. On
    CPU a single-row einsum through `EinsumDense` costs about 40 microseconds of oneDNN
    overhead, five times a plain matrix product of the three kernels side by side. Returns
    `None` for a quantized layer (its kernels are int8; the per-sublayer path handles it).
    """
    if isinstance(layer, ExplicitMultiHeadAttention):
        kernels = (layer.query_kernel, layer.key_kernel, layer.value_kernel)
        biases = (layer.query_bias, layer.key_bias, layer.value_bias)
        output_kernel, output_bias = layer.output_kernel, layer.output_bias
    else:
        denses = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
        if any(getattr(dense, "quantization_mode", None) for dense in denses):
            return None
        kernels = tuple(dense.kernel for dense in denses[:3])
        biases = tuple(dense.bias for dense in denses[:3])
        output_kernel, output_bias = denses[3].kernel, denses[3].bias
    dtype = layer.compute_dtype
    dim, heads, head_dim = kernels[0].shape
    width = heads * head_dim

    def flat_bias(bias, size):
        if bias is None:
            return ops.zeros((size,), dtype)
        return ops.cast(ops.reshape(bias, (size,)), dtype)

    return {
        "qkv_kernel": ops.cast(
            ops.concatenate([ops.reshape(k, (dim, width)) for k in kernels], axis=-1), dtype
        ),
        "qkv_bias": ops.concatenate([flat_bias(b, width) for b in biases], axis=-1),
        "output_kernel": ops.cast(ops.reshape(output_kernel, (width, dim)), dtype),
        "output_bias": flat_bias(output_bias, dim),
    }


def _single_query_attention(q, key_cache, value_cache, attention_mask):
    """`cached_attention`'s scores, softmax and weighted values for one new position.

    Elementwise products and sums (float32) instead of einsums and oneDNN's softmax: for a
    single query row these are several times cheaper on CPU, and accumulate in float32 under
    mixed precision as the einsums do. `q (batch, heads, head_dim)` -> `(batch, heads,
    head_dim)`.
    """
    q = ops.cast(q, "float32")
    scores = ops.sum(q[:, :, None, :] * ops.cast(key_cache, "float32"), axis=-1)  # (b, h, S)
    scores = ops.where(attention_mask, scores, large_negative("float32"))  # mask (b, 1, S)
    scores = scores - ops.max(scores, axis=-1, keepdims=True)
    weights = ops.exp(scores)
    weights = weights / ops.sum(weights, axis=-1, keepdims=True)
    return ops.sum(weights[..., None] * ops.cast(value_cache, "float32"), axis=2)


def cached_attention(
    layer, query, key_cache, value_cache, cache_index, attention_mask, weights=None
):
    """Attention of new positions against a key/value cache (the fast decoding path).

    Projects `query` with `layer`'s own weights, writes the new keys and values into the
    caches at slots `[cache_index, cache_index + T)`, then lets every new query attend to the
    whole cache under `attention_mask`. Decoding one token therefore costs one position's
    projections plus one row of scores, instead of re-running the whole prefix.

    Works for `ExplicitMultiHeadAttention` and for `keras.layers.MultiHeadAttention` (through
    its public `query_dense`, `key_dense`, `value_dense` and `output_dense` sublayers), and
    gives the same numbers as their ordinary `call` (up to float rounding). No dropout: this
    path is for inference. The caches are laid out heads-first, `(batch, heads, S, head_dim)`,
    so that both attention products read them without a transpose.

    Args:
        layer: a built `ExplicitMultiHeadAttention` or `keras.layers.MultiHeadAttention`.
        query: `(batch, T, dim)` the new positions (already layer-normed by the block).
        key_cache: `(batch, heads, S, head_dim)` keys of the cache slots.
        value_cache: `(batch, heads, S, head_dim)` values of the cache slots.
        cache_index: int scalar (tensor): the slot of the first new position.
        attention_mask: bool `(batch, T, S)`: True where a new query may attend a slot.
            Slots not yet written must be False.
        weights: optional `decoding_weights(layer)`, computed once outside a decoding loop:
            the projections then run as two plain matrix products. Same numbers.

    Returns:
        `(output (batch, T, dim), key_cache, value_cache)` with the new keys and values
        written in.
    """
    if weights is not None:
        batch, new, dim = ops.shape(query)[0], ops.shape(query)[1], query.shape[-1]
        heads, head_dim = layer.num_heads, layer.key_dim
        qkv = ops.matmul(ops.reshape(query, (-1, dim)), weights["qkv_kernel"])
        qkv = ops.reshape(qkv + weights["qkv_bias"], (batch, new, 3, heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (batch, T, heads, head_dim)
    elif isinstance(layer, ExplicitMultiHeadAttention):
        q = layer._project(query, layer.query_kernel, layer.query_bias)
        k = layer._project(query, layer.key_kernel, layer.key_bias)
        v = layer._project(query, layer.value_kernel, layer.value_bias)
    else:
        q = layer.query_dense(query)  # (batch, T, heads, head_dim)
        k = layer.key_dense(query)
        v = layer.value_dense(query)
    # Write slots [cache_index, cache_index + T) of every (batch, head): a scatter, which
    # TensorFlow runs natively (a dynamic_update_slice outside XLA costs a compile call).
    batch, heads, new = ops.shape(k)[0], ops.shape(k)[2], ops.shape(k)[1]
    where = ops.stack(
        ops.meshgrid(
            ops.arange(batch), ops.arange(heads), cache_index + ops.arange(new), indexing="ij"
        ),
        axis=-1,
    )  # (batch, heads, T, 3)
    k = ops.cast(ops.transpose(k, (0, 2, 1, 3)), key_cache.dtype)  # (batch, heads, T, head_dim)
    v = ops.cast(ops.transpose(v, (0, 2, 1, 3)), value_cache.dtype)
    key_cache = ops.scatter_update(key_cache, where, k)
    value_cache = ops.scatter_update(value_cache, where, v)

    q = q * ops.cast(1.0 / (layer.key_dim**0.5), q.dtype)
    if weights is not None and query.shape[1] == 1:  # one new position: decoding
        context = _single_query_attention(q[:, 0], key_cache, value_cache, attention_mask)
        context = ops.cast(context[:, None], query.dtype)  # (batch, 1, heads, head_dim)
    else:
        scores = ops.einsum("bthk,bhsk->bhts", q, key_cache)  # (batch, heads, T, S)
        scores = ops.where(attention_mask[:, None], scores, large_negative(scores.dtype))
        probabilities = ops.softmax(scores, axis=-1)
        # (batch, T, heads, head_dim)
        context = ops.einsum("bhts,bhsk->bthk", probabilities, value_cache)

    if weights is not None:
        width = layer.num_heads * layer.key_dim
        output = ops.matmul(ops.reshape(context, (-1, width)), weights["output_kernel"])
        output = ops.reshape(output + weights["output_bias"], ops.shape(query))
    elif isinstance(layer, ExplicitMultiHeadAttention):
        kernel = ops.cast(layer.output_kernel, layer.compute_dtype)
        output = ops.einsum("bthk,hkd->btd", context, kernel)
        output = output + ops.cast(layer.output_bias, layer.compute_dtype)
    else:
        output = layer.output_dense(context)  # (batch, T, dim)
    return output, key_cache, value_cache
