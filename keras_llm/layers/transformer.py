"""The Transformer block: pre-layer-norm (GPT-2) or post-layer-norm (BERT)."""

import keras
from keras import ops

from keras_llm.layers.attention import (
    ExplicitMultiHeadAttention,
    cached_attention,
    causal_mask,
)
from keras_llm.layers.initializers import kernel_initializer, residual_initializer


def gelu_approximate(x):
    """GELU's tanh approximation (GPT-2; keras-hub's BERT)."""
    return keras.activations.gelu(x, approximate=True)


# Activation names Keras does not know itself.
ACTIVATION_FUNCTIONS = {"gelu_approximate": gelu_approximate}

ATTENTION_LAYERS = {
    "keras": keras.layers.MultiHeadAttention,
    "explicit": ExplicitMultiHeadAttention,
}


@keras.saving.register_keras_serializable(package="keras_llm")
class TransformerBlock(keras.layers.Layer):
    """Transformer block: `x + attn(norm(x))`, then `x + mlp(norm(x))` (pre-layer-norm,
    GPT-2), or `norm(x + attn(x))`, then `norm(x + mlp(x))` (post-layer-norm, BERT).

    Masks: the Keras padding mask of the input (from `TokenAndPositionEmbedding`) keeps
    attention off padding keys; with `causal=True` no position sees a later one.

    Args:
        num_heads: int. Attention heads; must divide the input width.
        intermediate_dim: int. Width of the feed-forward layer.
        dropout: float. Dropout on attention weights and on both residual branches.
            Defaults to `0.0`.
        activation: str. Feed-forward activation. Defaults to `"gelu"`.
        attention: str. `"keras"` for `keras.layers.MultiHeadAttention`, `"explicit"` for
            `ExplicitMultiHeadAttention`. Defaults to `"keras"`.
        initializer: str. `"glorot_uniform"`, `"he_normal"` or `"gpt2"`. Defaults to `"gpt2"`.
        num_layers: int. Depth of the whole stack, used by `"gpt2"` to scale the residual
            projections. Defaults to `1`.
        causal: bool. Apply the causal mask. Defaults to `True`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        norm_position: str. `"pre"` or `"post"` (see above). Defaults to `"pre"`.

    Call arguments:
        x: `(batch, seq, hidden_dim)`.
        mask: optional bool `(batch, seq)`, True at real tokens; Keras passes it for you.
        return_attention_scores: bool. Also return `(batch, heads, seq, seq)` weights.

    For fast decoding, `call_cached` runs the same block on new positions only, against a
    key/value cache (see `keras_llm.models.generation`).
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        attention="keras",
        initializer="gpt2",
        num_layers=1,
        causal=True,
        layer_norm_epsilon=1e-5,
        norm_position="pre",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm_position not in ("pre", "post"):
            raise ValueError(
                f"norm_position must be 'pre' or 'post'. Received norm_position={norm_position!r}."
            )
        if attention not in ATTENTION_LAYERS:
            raise ValueError(
                f"attention must be one of {sorted(ATTENTION_LAYERS)}. Received "
                f"attention={attention!r}."
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.attention = attention
        self.initializer = initializer
        self.num_layers = num_layers
        self.causal = causal
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm_position = norm_position
        self.supports_masking = True

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"The input width {hidden_dim} is not divisible by num_heads={self.num_heads}."
            )
        norm = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy)
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm", **norm)
        self.attention_norm.build(input_shape)
        self.attention_layer = ATTENTION_LAYERS[self.attention](
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.dropout,
            kernel_initializer=kernel_initializer(self.initializer),
            name="attention",
            dtype=self.dtype_policy,
        )
        self.attention_layer.build(input_shape, input_shape)
        # The output projection writes into the residual stream (GPT-2 scales it down).
        out_kernel = self._attention_output_kernel()
        out_kernel.assign(
            residual_initializer(self.initializer, self.num_layers)(out_kernel.shape)
        )
        self.feedforward_norm = keras.layers.LayerNormalization(name="feedforward_norm", **norm)
        self.feedforward_norm.build(input_shape)
        self.feedforward_intermediate = keras.layers.Dense(
            self.intermediate_dim,
            activation=ACTIVATION_FUNCTIONS.get(self.activation, self.activation),
            kernel_initializer=kernel_initializer(self.initializer),
            name="feedforward_intermediate",
            dtype=self.dtype_policy,
        )
        self.feedforward_intermediate.build(input_shape)
        self.feedforward_output = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=residual_initializer(self.initializer, self.num_layers),
            name="feedforward_output",
            dtype=self.dtype_policy,
        )
        self.feedforward_output.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def _attention_output_kernel(self):
        if isinstance(self.attention_layer, ExplicitMultiHeadAttention):
            return self.attention_layer.output_kernel
        return self.attention_layer.output_dense.kernel

    def _attention_mask(self, x, mask):
        """Bool `(batch, seq, seq)` (or `None`): causal and not a padding key."""
        if mask is None:
            return None
        seq = ops.shape(x)[1]
        attention_mask = ops.cast(mask, "bool")[:, None, :]  # (batch, 1, seq)
        if self.causal:
            attention_mask = ops.logical_and(attention_mask, causal_mask(seq, seq)[None])
        return attention_mask

    def _residual(self, x, sublayer, norm, training):
        """One residual branch: `x + f(norm(x))` (pre) or `norm(x + f(x))` (post)."""
        if self.norm_position == "pre":
            return x + self.residual_dropout(sublayer(norm(x)), training=training)
        return norm(x + self.residual_dropout(sublayer(x), training=training))

    def _feedforward(self, h):
        return self.feedforward_output(self.feedforward_intermediate(h))

    def call(self, x, mask=None, training=None, return_attention_scores=False):
        attention_mask = self._attention_mask(x, mask)
        scores = []

        def attend(h):
            attended = self.attention_layer(
                h,
                h,
                attention_mask=attention_mask,
                # Without padding the causal mask alone lets Keras take its fused causal path.
                use_causal_mask=self.causal and attention_mask is None,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            if return_attention_scores:
                attended, weights = attended
                scores.append(weights)
            return attended

        x = self._residual(x, attend, self.attention_norm, training)
        x = self._residual(x, self._feedforward, self.feedforward_norm, training)
        if return_attention_scores:
            return x, scores[0]
        return x

    def call_cached(self, x, key_cache, value_cache, cache_index, attention_mask, weights=None):
        """The block on new positions only, reading and extending a key/value cache.

        Same weights and the same numbers as `call` (inference: no dropout), but attention
        runs against the cache, so a decoding step costs one position's work.

        Args:
            x: `(batch, T, hidden_dim)` hidden states of the new positions.
            key_cache: `(batch, heads, S, head_dim)` this block's cached keys.
            value_cache: `(batch, heads, S, head_dim)` this block's cached values.
            cache_index: int scalar (tensor): cache slot of the first new position.
            attention_mask: bool `(batch, T, S)`: True where a new position may attend a
                slot (the caller encodes causality and padding here, once for all blocks).
            weights: optional `attention.decoding_weights(self.attention_layer)`, made once
                outside a decoding loop (faster projections; the same numbers).

        Returns:
            `(x (batch, T, hidden_dim), key_cache, value_cache)`.
        """
        caches = []

        def attend(h):
            attended, *new_caches = cached_attention(
                self.attention_layer, h, key_cache, value_cache, cache_index, attention_mask,
                weights=weights,
            )
            caches.extend(new_caches)
            return attended

        x = self._residual(x, attend, self.attention_norm, training=False)
        x = self._residual(x, self._feedforward, self.feedforward_norm, training=False)
        return x, caches[0], caches[1]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            attention=self.attention,
            initializer=self.initializer,
            num_layers=self.num_layers,
            causal=self.causal,
            layer_norm_epsilon=self.layer_norm_epsilon,
            norm_position=self.norm_position,
        )
        return config
