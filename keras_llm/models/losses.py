"""The causal LM's token cross-entropy, with padding excluded and an XLA island on TF."""

import keras
from keras import ops


def _token_cross_entropy(y_true, logits):
    """Mean cross-entropy over non-padding tokens (label 0 is padding), in float32."""
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "int32")
    valid = ops.not_equal(y_true, 0)
    target = ops.take_along_axis(logits, y_true[..., None], axis=-1)[..., 0]
    per_token = ops.logsumexp(logits, axis=-1) - target  # (batch, seq)
    total = ops.sum(ops.where(valid, per_token, 0.0))
    return total / ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)


_compiled = None


def token_cross_entropy(y_true, logits, fused=True):
    """`_token_cross_entropy`, compiled with XLA on the TensorFlow backend when `fused`.

    The loss reads the whole `(batch, seq, vocabulary)` logits tensor; fused by XLA it costs
    about a third of the unfused version (forward and backward) and the whole training step
    about 15% less in bfloat16 on a 2-core CPU (benchmarks/profile_step.py). Only this small
    island is compiled: the model's matmuls stay on oneDNN, which XLA's CPU backend lacks.

    Pass `fused=False` inside a step that XLA already compiles whole (`jit_compile=True`): an
    XLA function nested in an XLA-compiled step made XLA constant-fold the logits, and the
    float32 `small` step took 5.4 s instead of 0.51 s (benchmarks/train_throughput.py).
    """
    global _compiled
    if not fused or keras.backend.backend() != "tensorflow":
        return _token_cross_entropy(y_true, logits)
    if _compiled is None:
        import tensorflow as tf

        _compiled = tf.function(_token_cross_entropy, jit_compile=True)
    return _compiled(y_true, logits)


@keras.saving.register_keras_serializable(package="keras_llm")
class TokenCrossEntropy(keras.losses.Loss):
    """Next-token cross-entropy from logits, averaged over real (non-padding) tokens.

    Equal to `SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)` but computed
    in one fused step. It returns the already-averaged scalar, so it does not take per-token
    sample weights.

    Args:
        fused: bool. Compile the loss as its own XLA island (TensorFlow backend). `CausalLM`
            turns it off when the whole training step is compiled with XLA.
        name: str. The loss name.
    """

    def __init__(self, fused=True, name="token_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.fused = bool(fused)

    def call(self, y_true, y_pred):
        return token_cross_entropy(y_true, y_pred, fused=self.fused)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}
