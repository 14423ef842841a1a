"""Weight initializers by name: Xavier/Glorot, He, and GPT-2's small normal."""

import math

import keras

GPT2_STDDEV = 0.02


def kernel_initializer(name, seed=None):
    """Initializer for an ordinary kernel under the named scheme."""
    if name == "gpt2":
        return keras.initializers.RandomNormal(stddev=GPT2_STDDEV, seed=seed)
    if name == "he_normal":
        return keras.initializers.HeNormal(seed=seed)
    if name == "glorot_uniform":
        return keras.initializers.GlorotUniform(seed=seed)
    raise ValueError(
        "initializer must be one of ['glorot_uniform', 'he_normal', 'gpt2']. "
        f"Received initializer={name!r}."
    )


def residual_initializer(name, num_layers, seed=None):
    """Initializer for the projections that write into the residual stream.

    GPT-2 scales these by 1/sqrt(2 * num_layers) (two residual writes per block) so the
    residual stream's variance does not grow with depth. He and Glorot are used unchanged.
    """
    if name == "gpt2":
        std = GPT2_STDDEV / math.sqrt(2 * num_layers)
        return keras.initializers.RandomNormal(stddev=std, seed=seed)
    return kernel_initializer(name, seed)
