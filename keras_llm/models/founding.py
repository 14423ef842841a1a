"""The founding example, exactly as the design document states it."""

import keras


def founding_example():
    """`Input((10, 512))` -> `MultiHeadAttention(8 heads, key_dim 64)(x, x)` -> `Dense(512, relu)`.

    Self-attention over 10 positions of width 512: each of the 8 heads compares every
    position with every other through 64-wide queries and keys. 1,313,280 parameters.
    """
    inputs = keras.Input(shape=(10, 512))
    x = keras.layers.MultiHeadAttention(num_heads=8, key_dim=64)(inputs, inputs)
    outputs = keras.layers.Dense(512, activation="relu")(x)
    return keras.Model(inputs, outputs, name="founding_example")
