"""Shared test settings: quiet TensorFlow, fixed seeds, tiny configs."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

import keras_llm  # noqa: E402,F401  (sets up the environment before TensorFlow starts)


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Every test starts from the same seeds and the float32 policy."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def tiny_config():
    return keras_llm.ModelConfig.preset("tiny")
