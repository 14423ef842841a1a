"""The one shared test helper: config and `.keras` round trips."""

import os

import keras
import numpy as np


def assert_keras_round_trip(obj, inputs, tmp_path, atol=1e-6):
    """get_config -> from_config rebuilds `obj`; `.keras` save -> load gives equal outputs.

    Works for layers (wrapped in a one-layer model to save) and models. Returns the reloaded
    model so a caller can keep training it.
    """
    config = obj.get_config()
    rebuilt = type(obj).from_config(config)
    assert rebuilt.get_config() == config

    if isinstance(obj, keras.Model):
        model = obj
    else:
        x = keras.Input(batch_shape=inputs.shape, dtype=inputs.dtype)
        model = keras.Model(x, obj(x))
    path = os.path.join(tmp_path, "round_trip.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    expected = keras.ops.convert_to_numpy(model(inputs))
    actual = keras.ops.convert_to_numpy(reloaded(inputs))
    np.testing.assert_allclose(actual, expected, atol=atol)
    return reloaded
