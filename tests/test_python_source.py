"""The `python_source` builder: offline, deterministic, disjoint splits, real stdlib files."""

import hashlib
import os
import socket
import sysconfig

import pytest
import tensorflow_datasets as tfds

from keras_llm.data import catalog
from keras_llm.data.builders import python_source
from keras_llm.data.builders.python_source import PythonSource


def _examples(data_dir, split):
    builder = PythonSource(data_dir=str(data_dir))
    return {
        ex["path"].decode(): ex["text"].decode()
        for ex in tfds.as_numpy(builder.as_dataset(split=split))
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared once, with every network connection refused: the builder is offline."""
    data_dir = tmp_path_factory.mktemp("tfds")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted while preparing python_source")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        PythonSource(data_dir=str(data_dir)).download_and_prepare()
    finally:
        socket.socket.connect = original
    return data_dir, _examples(data_dir, "train"), _examples(data_dir, "validation")


def test_splits_are_disjoint_and_hold_every_file(prepared):
    _, train, validation = prepared
    assert not set(train) & set(validation)
    assert sorted(set(train) | set(validation)) == python_source.source_files()
    share = len(validation) / (len(train) + len(validation))
    assert 0.02 < share < 0.09, share  # about 5% of the modules held out
    assert len(train) > 300  # the real library, not a stub


def test_texts_are_the_interpreters_own_files(prepared):
    _, train, validation = prepared
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in ("os.py", "json/decoder.py", "collections/__init__.py"):
        text = {**train, **validation}[path]
        with open(os.path.join(stdlib, path), encoding="utf-8") as f:
            assert text == f.read()
    assert not any(
        "site-packages" in p or "/test/" in f"/{p}" or "/tests/" in f"/{p}" for p in train
    )


def test_validation_is_chosen_by_a_stable_hash_of_the_path(prepared):
    _, train, validation = prepared
    # Oracle: MD5 of the relative path, computed here independently of the builder.
    for path in list(validation) + list(train)[:50]:
        bucket = int(hashlib.md5(path.encode()).hexdigest(), 16) % 100
        assert (bucket < 5) == (path in validation)


def test_preparing_again_gives_the_same_data(prepared, tmp_path):
    _, train, validation = prepared
    PythonSource(data_dir=str(tmp_path)).download_and_prepare()
    assert _examples(tmp_path, "validation") == validation
    assert _examples(tmp_path, "train") == train


def test_loaded_through_the_catalog(prepared):
    data_dir, _, validation = prepared
    spec = catalog.dataset_spec("python_source", catalog.PRETRAINING)
    assert spec.offline and "Python Software Foundation" in spec.license
    texts = [
        t.decode()
        for t in tfds.as_numpy(
            catalog.load_pretraining_text("python_source", "validation", data_dir=str(data_dir))
        )
    ]
    assert sorted(texts) == sorted(validation.values())
