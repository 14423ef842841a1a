"""`python_source`: the Python standard library's own `.py` files, for code completion.

The files come from the running interpreter's standard library folder
(`sysconfig.get_paths()["stdlib"]`, i.e. CPython's `Lib/`), so the data set needs no download
and exists wherever keras_llm runs. Licence: the Python Software Foundation License (the
folder's `LICENSE.txt`).

What is kept, and why:
- every `.py` file under the folder, one document per file, as UTF-8 text (the few bytes
  that are not UTF-8 become U+FFFD);
- skipped: `site-packages/` (third-party code, other licences), test folders (`test/`,
  `tests/`, `idle_test/`: CPython's test suite alone is larger than the library and mostly
  assertions), `__pycache__/`, the build folder `config-*/` and `_sysconfigdata_*.py`
  (generated build settings), and files over `MAX_FILE_BYTES` (256 kB: only
  `pydoc_data/topics.py` in CPython 3.11, which is documentation text in a string).
For CPython 3.11 that is about 730 files and 11 MB; it prepares in a few seconds.

Splits: a file is in `validation` when the MD5 of its path relative to the folder (e.g.
`json/decoder.py`) is below `VALIDATION_PERCENT` (5) modulo 100, else in `train`: held-out
modules, chosen the same way on every machine. Each Python minor version is its own builder
config (`py3_11`, ...), so data prepared by one interpreter is never read as another's.
"""

import hashlib
import os
import sys
import sysconfig

import tensorflow_datasets as tfds

from keras_llm.data.builders.rotten_tomatoes import SourceFileCodePath, registration_name

VALIDATION_PERCENT = 5
MAX_FILE_BYTES = 256_000
SKIPPED_FOLDERS = ("site-packages", "test", "tests", "idle_test", "__pycache__")
PSF_LICENSE = "Python Software Foundation License (PSF-2.0), as in the folder's LICENSE.txt"


def stdlib_folder():
    """The running interpreter's standard library folder (CPython's `Lib/`)."""
    return sysconfig.get_paths()["stdlib"]


def _skipped_folder(name):
    return name in SKIPPED_FOLDERS or name.startswith("config-")


def source_files(folder=None, max_file_bytes=MAX_FILE_BYTES):
    """Sorted relative paths (with `/`) of the `.py` files the data set holds."""
    folder = folder or stdlib_folder()
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _skipped_folder(d)]
        for name in files:
            if not name.endswith(".py") or name.startswith("_sysconfigdata_"):
                continue
            path = os.path.join(root, name)
            if os.path.getsize(path) > max_file_bytes:
                continue
            paths.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    return sorted(paths)


def is_validation(relative_path):
    """Whether the file at `relative_path` (e.g. `"json/decoder.py"`) is held out."""
    digest = hashlib.md5(relative_path.encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < VALIDATION_PERCENT


def _config_name():
    return f"py{sys.version_info.major}_{sys.version_info.minor}"


class PythonSource(tfds.core.GeneratorBasedBuilder):
    """The `.py` files of the running interpreter's standard library (features: text, path)."""

    name = registration_name("python_source")
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Standard-library .py files, tests excluded, split by path."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=_config_name(),
            description=f"The standard library of Python {sys.version.split()[0]}.",
        )
    ]
    code_path = SourceFileCodePath()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Python source code: the .py files of the running interpreter's standard "
                f"library ({stdlib_folder()}, Python {sys.version.split()[0]}), one example "
                "per file, without site-packages, test folders, generated build settings "
                f"or files over {MAX_FILE_BYTES // 1000} kB. `validation` holds the files "
                f"whose relative path's MD5 is below {VALIDATION_PERCENT} modulo 100 "
                "(about 5%, whole modules held out)."
            ),
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "path": tfds.features.Text()}
            ),
            homepage="https://github.com/python/cpython/tree/main/Lib",
            license=PSF_LICENSE,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is read from the installed interpreter.
        paths = source_files()
        return {
            "train": self._generate_examples([p for p in paths if not is_validation(p)]),
            "validation": self._generate_examples([p for p in paths if is_validation(p)]),
        }

    def _generate_examples(self, paths):
        folder = stdlib_folder()
        for path in paths:
            with open(os.path.join(folder, path), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            yield path, {"text": text, "path": path}
