"""Token plus learned position embedding, with padding id 0 as the Keras mask."""

import keras
from keras import ops

from keras_llm.layers.initializers import kernel_initializer


@keras.saving.register_keras_serializable(package="keras_llm")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sums a token embedding and a learned position embedding.

    Id 0 is padding: the layer returns a Keras mask (`ids != 0`) that the blocks, the LM loss
    and the classifier pooling honour. Called with `reverse=True` it multiplies by the
    transposed token embedding, which is the tied language-model head.

    Args:
        vocabulary_size: int. Number of token ids.
        sequence_length: int. Number of learned positions (longest input).
        hidden_dim: int. Embedding width.
        embeddings_initializer: initializer for both tables. Defaults to normal(0.02).
        mask_zero: bool. Produce the padding mask. Defaults to `True`.
        token_type_vocabulary_size: int. Rows of a token-type (segment) table; row 0 is
            added at every position (one segment, as BERT sees a single text). `0`: no
            table. Defaults to `0`.

    Call arguments:
        inputs: int ids `(batch, seq)` with `seq <= sequence_length`; or, with
            `reverse=True`, hidden states `(batch, seq, hidden_dim)`.
        reverse: bool. Multiply by the transposed token table instead (the tied LM head).

    Returns:
        `(batch, seq, hidden_dim)` embeddings, or `(batch, seq, vocabulary_size)` logits.
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        hidden_dim,
        embeddings_initializer="gpt2",
        mask_zero=True,
        token_type_vocabulary_size=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = mask_zero
        self.token_type_vocabulary_size = token_type_vocabulary_size
        self.supports_masking = mask_zero

    def _initializer(self):
        if self.embeddings_initializer == "gpt2":
            # GPT-2's normal(0.02) under every scheme: He and Glorot are derived from a
            # matmul's fan-in, and a tied head needs small embeddings for the first loss to
            # sit near ln(vocabulary_size).
            return kernel_initializer("gpt2")
        return keras.initializers.get(self.embeddings_initializer)

    def build(self, input_shape=None):
        self.token_embeddings = self.add_weight(
            name="token_embeddings",
            shape=(self.vocabulary_size, self.hidden_dim),
            initializer=self._initializer(),
        )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.sequence_length, self.hidden_dim),
            initializer=self._initializer(),
        )
        if self.token_type_vocabulary_size:
            self.token_type_embeddings = self.add_weight(
                name="token_type_embeddings",
                shape=(self.token_type_vocabulary_size, self.hidden_dim),
                initializer=self._initializer(),
            )
        self.built = True

    def call(self, inputs, reverse=False):
        if reverse:
            kernel = ops.cast(self.token_embeddings, inputs.dtype)
            return ops.matmul(inputs, ops.transpose(kernel))  # (batch, seq, vocab)
        ids = ops.cast(inputs, "int32")
        seq = ops.shape(ids)[-1]
        tokens = ops.take(self.token_embeddings, ids, axis=0)  # (batch, seq, hidden)
        positions = self.position_embeddings[:seq]  # (seq, hidden)
        if self.token_type_vocabulary_size:
            positions = positions + self.token_type_embeddings[0]  # segment 0 everywhere
        return ops.cast(tokens + positions, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        if "float" in str(inputs.dtype):
            return mask  # reverse mode: the hidden states' padding mask passes through
        return ops.not_equal(inputs, 0)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            sequence_length=self.sequence_length,
            hidden_dim=self.hidden_dim,
            embeddings_initializer=(
                self.embeddings_initializer
                if isinstance(self.embeddings_initializer, str)
                else keras.initializers.serialize(self.embeddings_initializer)
            ),
            mask_zero=self.mask_zero,
        )
        if self.token_type_vocabulary_size:  # written only when used: old configs unchanged
            config["token_type_vocabulary_size"] = self.token_type_vocabulary_size
        return config
