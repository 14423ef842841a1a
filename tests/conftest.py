"""Shared test settings: quiet TensorFlow, fixed seeds, tiny configs."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras_llm  # noqa: E402,F401,I001  (first: sets up the environment before TensorFlow)
import keras  # noqa: E402
import pytest  # noqa: E402


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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A tensorflow-datasets directory with both offline builders prepared (about 2 s)."""
    from keras_llm import data

    directory = str(tmp_path_factory.mktemp("tfds"))
    data.load_text_classification("rotten_tomatoes", "train", directory)
    data.load_pretraining_text("keras_llm_corpus", "train", directory)
    return directory


@pytest.fixture(scope="session")
def pretrained_run(data_dir, tmp_path_factory):
    """A tiny pretraining run directory (tokenizer, backbone, causal LM), built once."""
    from keras_llm import ModelConfig, TrainConfig, training

    run_dir = str(tmp_path_factory.mktemp("pretrain"))
    training.pretrain(
        ModelConfig.preset("tiny", vocabulary_size=512),
        TrainConfig.preset("tiny", pretrain_steps=12),
        run_dir=run_dir,
        data_dir=data_dir,
        steps_per_epoch=4,
        verbose=0,
    )
    return run_dir
