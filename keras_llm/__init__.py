"""keras_llm: a Keras 3 reference implementation of the kernel of an LLM system.

Public names: `ModelConfig`, `TrainConfig`, `DamagedFileError` (a truncated or altered
file; its message names it), and the submodules `layers`, `models`, `data`,
`callbacks`, `metrics`, `training`, `evaluation`, `export`, `plots`, `applications`,
`hardware`, `presets` (published checkpoints by name: `from_preset`), `optimizers`
(AdamW with decay on matrices only, layer-wise learning-rate decay).
"""

from keras_llm._env import configure_environment

configure_environment()

# optimizers registers LayerDecayAdamW, which a saved, compiled model may name.
from keras_llm import layers, models, optimizers  # noqa: E402
from keras_llm._io import DamagedFileError  # noqa: E402
from keras_llm.config import ModelConfig, TrainConfig  # noqa: E402

__version__ = "0.1.0"

__all__ = ["DamagedFileError", "ModelConfig", "TrainConfig", "layers", "models", "optimizers",
           "__version__"]


def __getattr__(name):
    # Heavier submodules (data pulls tensorflow-text and tfds) load on first use.
    import importlib

    if name in {
        "data", "callbacks", "metrics", "training", "evaluation", "export", "plots", "applications",
        "hardware", "presets",
    }:
        return importlib.import_module(f"keras_llm.{name}")
    raise AttributeError(f"module 'keras_llm' has no attribute {name!r}")
