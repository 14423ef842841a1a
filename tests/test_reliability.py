"""Reliability (issue 18): interrupted writes, damaged files, one writer per run directory,
serving under load, randomised input. Each test fails if its protection is removed."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_llm import DamagedFileError, _io, cli, run_loop
from keras_llm import data as llm_data

# -- atomic files: an interrupted write never leaves half a file where a reader looks ------


def _fail_fsync(fd):
    raise OSError(28, "No space left on device")


def test_an_interrupted_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "train_config.json"
    _io.write_json(path, {"seed": 1})
    monkeypatch.setattr(_io.os, "fsync", _fail_fsync)  # the bytes are written, not yet in place
    with pytest.raises(OSError, match="No space left"):
        _io.write_json(path, {"seed": 2, "padding": "x" * 100_000})
    assert _io.read_json(path) == {"seed": 1}
    assert os.listdir(tmp_path) == ["train_config.json"]  # no temporary file left


def test_an_interrupted_tokenizer_save_keeps_the_previous_tokenizer(tmp_path, monkeypatch):
    first = llm_data.Tokenizer.train(["a small corpus of words", "more words here"], 40)
    second = llm_data.Tokenizer.train(["other text entirely, with new tokens"] * 3, 40)
    directory = str(tmp_path / "tokenizer")
    first.save(directory)
    monkeypatch.setattr(_io.os, "fsync", _fail_fsync)
    with pytest.raises(OSError):
        second.save(directory)
    monkeypatch.undo()
    reloaded = llm_data.Tokenizer.load(directory)
    assert reloaded.vocabulary == first.vocabulary
    assert sorted(os.listdir(directory)) == ["tokenizer.json", "vocabulary.txt"]


# -- damaged files: one error naming the file, never a silently different model ------------


@pytest.fixture
def saved_tokenizer(tmp_path):
    tokenizer = llm_data.Tokenizer.train(["a small corpus of words", "more words here"], 40)
    directory = str(tmp_path / "tokenizer")
    tokenizer.save(directory)
    return directory


def _cut(path, keep):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:keep] if keep >= 0 else content[:len(content) + keep])


@pytest.mark.parametrize("keep", [-1, -3, 20])
def test_a_truncated_vocabulary_is_an_error_naming_the_file(saved_tokenizer, keep):
    _cut(os.path.join(saved_tokenizer, "vocabulary.txt"), keep)
    with pytest.raises(ValueError, match=r"vocabulary\.txt is damaged"):
        llm_data.Tokenizer.load(saved_tokenizer)


def test_an_altered_vocabulary_is_an_error_naming_the_file(saved_tokenizer):
    path = os.path.join(saved_tokenizer, "vocabulary.txt")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:  # one line dropped, the file still ends in a newline
        f.write(content.split(b"\n", 6)[6])
    with pytest.raises(ValueError, match=r"vocabulary\.txt is damaged .* holds \d+ tokens but"):
        llm_data.Tokenizer.load(saved_tokenizer)
    with open(path, "wb") as f:
        f.write(b"\xff\xfe" + content)
    with pytest.raises(ValueError, match="not UTF-8"):
        llm_data.Tokenizer.load(saved_tokenizer)


def test_a_token_altered_in_place_is_an_error_naming_the_file(saved_tokenizer):
    """Same number of tokens, one of them changed: only the recorded sha256 can tell."""
    path = os.path.join(saved_tokenizer, "vocabulary.txt")
    with open(path, encoding="utf-8") as f:
        tokens = f.read().split("\n")
    tokens[10] = tokens[10] + "x"  # still one token a line, as many lines
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens))
    with pytest.raises(ValueError, match=r"vocabulary\.txt is damaged .* sha256 differs"):
        llm_data.Tokenizer.load(saved_tokenizer)


@pytest.mark.parametrize("content", [b'{"lowercase": tr', b"\x00\x00\x00", b"[1, 2]"])
def test_a_damaged_tokenizer_json_is_an_error_naming_the_file(saved_tokenizer, content):
    path = os.path.join(saved_tokenizer, "tokenizer.json")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        llm_data.Tokenizer.load(saved_tokenizer)


def test_a_damaged_config_json_is_an_error_naming_the_file(tmp_path):
    from keras_llm import ModelConfig

    path = str(tmp_path / "model_config.json")
    ModelConfig.preset("tiny").save(path)
    _cut(path, -20)
    with pytest.raises(ValueError, match=r"model_config\.json is not valid JSON"):
        ModelConfig.load(path)
    with open(path, "w") as f:
        json.dump({"hidden_dim": "32"}, f)
    with pytest.raises(ValueError, match="hidden_dim"):
        ModelConfig.load(path)


# -- one run directory, one writer --------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys
    from keras_llm import run_loop
    run_loop.lock_run_directory(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until killed
""")


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, run_dir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        owner = f"process {holder.pid} on {_io.hostname()}"
        with pytest.raises(run_loop.RunDirectoryInUseError, match=re.escape(owner)):
            run_loop.TrainingRun(run_dir, "tiny")
        # The command line says the same in one line (exit 1) and writes nothing else.
        assert cli.main(["pretrain", "--run-dir", run_dir, "--train-preset", "tiny",
                         "--preset", "tiny", "--data-dir", str(tmp_path / "tfds")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and owner in err[0] and "--run-dir" in err[0], err
        assert os.listdir(run_dir) == [run_loop.LOCK]
    finally:
        holder.kill()  # kill -9: its lock is left behind, with its pid in it
        holder.wait()
    run = run_loop.TrainingRun(run_dir, "tiny")  # taken over, with a note naming the dead pid
    assert f"locked by {owner}, which is no longer running" in capsys.readouterr().err
    with open(os.path.join(run_dir, run_loop.LOCK)) as f:
        assert f.read() == f"process {os.getpid()} on {_io.hostname()}\n"
    run_loop.unlock_run_directory(run.run_dir)
    with open(os.path.join(run_dir, run_loop.LOCK)) as f:
        assert f.read() == ""  # released: no owner


# -- damaged models: .keras archives and SavedModels ----------------------------------------

LABELS = ["rotten", "fresh"]
SEQUENCE_LENGTH = 16
TEXTS = ["a gripping film", "dull and flat", "", "x" * 1000]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A fine-tuning run directory layout (untrained tiny classifier) and its SavedModel."""
    import keras

    from keras_llm import ModelConfig, TrainConfig, export
    from keras_llm.models import Classifier, TransformerBackbone

    keras.utils.set_random_seed(3)
    tokenizer = llm_data.Tokenizer.train(["a small corpus of film words", "flat dull"] * 4, 60)
    config = ModelConfig.preset("tiny", vocabulary_size=tokenizer.vocabulary_size)
    model = Classifier(TransformerBackbone(config), num_classes=2)
    run_dir = tmp_path_factory.mktemp("run")
    model.save(run_dir / "classifier.keras")
    tokenizer.save(str(run_dir / "tokenizer"))
    _io.write_json(run_dir / "labels.json", LABELS)
    TrainConfig.preset("tiny", classifier_sequence_length=SEQUENCE_LENGTH).save(
        str(run_dir / "train_config.json"))
    saved_model = str(tmp_path_factory.mktemp("export") / "classifier")
    export.export_classifier(model, tokenizer, saved_model, LABELS, SEQUENCE_LENGTH)
    return {"dir": str(run_dir), "model": model, "tokenizer": tokenizer,
            "saved_model": saved_model}


def _damage(path, how):
    with open(path, "rb") as f:
        content = bytearray(f.read())
    if how == "truncate":
        content = content[: len(content) // 2]
    else:  # one byte in the middle flipped: same size, altered content
        content[len(content) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(content))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_keras_file_is_one_error_naming_it(tiny_run, tmp_path, how):
    from keras_llm import training

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run_dir)
    path = run_dir / "classifier.keras"
    _damage(path, how)
    with pytest.raises(DamagedFileError, match=re.escape(str(path)) + " is damaged"):
        training.load_run(str(run_dir))


def test_the_cli_names_a_damaged_model_in_one_line_and_writes_nothing(tiny_run, tmp_path,
                                                                      capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run_dir)
    _damage(run_dir / "classifier.keras", "truncate")
    assert cli.main(["export", str(run_dir), "--no-tflite", "--no-quantize"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier.keras is damaged" in err[0], err
    assert not (run_dir / "export").exists()


def test_keras_files_load_in_safe_mode(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="lambda.keras cannot be loaded.*safe_mode"):
        _io.load_keras_model(path)


@pytest.mark.parametrize("file, how", [
    ("variables/variables.data-00000-of-00001", "flip"),
    ("variables/variables.data-00000-of-00001", "truncate"),
    ("variables/variables.index", "flip"),
    ("saved_model.pb", "truncate"),
])
def test_a_damaged_saved_model_is_one_error_naming_it(tiny_run, tmp_path, file, how):
    from keras_llm import export

    path = tmp_path / "classifier"
    shutil.copytree(tiny_run["saved_model"], path)
    _damage(path / file, how)
    with pytest.raises(DamagedFileError, match=re.escape(str(path)) + " is damaged"):
        export.saved_model_probabilities(str(path), TEXTS)


# -- serving under load --------------------------------------------------------------------


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_eight_threads_10000_calls_give_the_sequential_outputs_in_bounded_memory(tiny_run):
    import tensorflow as tf

    from keras_llm import export

    serve = export.load_saved_model(tiny_run["saved_model"]).signatures[export.SIGNATURE]
    texts = [f"review {i}: " + "a gripping film " * (i % 7) + "dull" * (i % 3) for i in range(64)]
    texts[5], texts[6] = "", "\xff not utf-8 \x80"

    def call(i):
        out = serve(text=tf.constant([texts[i % len(texts)]]))
        return out["probabilities"].numpy()[0], out["label"].numpy()[0]

    expected = [call(i) for i in range(len(texts))]  # sequential, one at a time
    rss = {"before": _rss_mb()}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for half in (5000, 10000):
            start = half - 5000
            for i, (probabilities, label) in zip(range(start, half),
                                                 pool.map(call, range(start, half))):
                want = expected[i % len(texts)]
                np.testing.assert_array_equal(probabilities, want[0])
                assert label == want[1]
            rss[half] = _rss_mb()
    print(f"RSS MB: before {rss['before']:.1f}, after 5,000 calls {rss[5000]:.1f}, "
          f"after 10,000 calls {rss[10000]:.1f}")
    # Memory stops growing: the second 5,000 calls add (almost) nothing.
    assert rss[10000] - rss[5000] < 8, rss


# -- randomised input (hypothesis) --------------------------------------------------------

# Letters, digits, punctuation, layout and a few non-ASCII characters: a keep-mode tokenizer
# trained on a corpus that uses each of them at the start and inside words spells any text
# made of them, so the round trip must give it back exactly.
ALPHABET = "abcxyzABXYZ019_.,:;()[]{}=+-*/#'\"é日λ \n\t\r"
WORD_CHARACTERS = [c for c in ALPHABET if c not in " \n\t\r"]


@pytest.fixture(scope="module")
def keep_tokenizer():
    corpus = [" ".join(a + b + a for a in WORD_CHARACTERS for b in WORD_CHARACTERS)] * 2
    return llm_data.Tokenizer.train(corpus + ["\n\t\r  " * 20], 1000, lowercase=False,
                                    whitespace="keep")


@pytest.fixture(scope="module")
def split_tokenizer():
    return llm_data.Tokenizer.train(["a small corpus of words", "more words here"], 40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=ALPHABET, max_size=200))
def test_keep_mode_round_trips_any_text_of_its_alphabet(keep_tokenizer, text):
    ids = keep_tokenizer.tokenize(tf.constant([text]))
    assert keep_tokenizer.unk_id not in ids.flat_values.numpy().tolist(), text
    assert keep_tokenizer.detokenize(ids).numpy()[0].decode("utf-8") == text


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(st.text(), st.binary()), max_size=4))
def test_the_tokenizers_never_fail_on_any_text_or_bytes(split_tokenizer, keep_tokenizer,
                                                        texts):
    batch = tf.constant([t.encode("utf-8") if isinstance(t, str) else t for t in texts],
                        dtype=tf.string, shape=[len(texts)])
    for tokenizer in (split_tokenizer, keep_tokenizer):
        ids = tokenizer.encode(batch, SEQUENCE_LENGTH).numpy()
        assert ids.shape == (len(texts), SEQUENCE_LENGTH)
        assert ((0 <= ids) & (ids < tokenizer.vocabulary_size)).all()
        assert tokenizer.detokenize(tokenizer.tokenize(batch)).shape == (len(texts),)


_BYTE_STRING = st.one_of(
    st.binary(max_size=64),
    # up to 1 MB: a repeated random chunk keeps the example cheap to generate
    st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, 2**20 // 16)).map(
        lambda pair: (pair[0] * pair[1])[: 2**20]),
)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(size=st.integers(0, 512), strings=st.lists(_BYTE_STRING, max_size=3),
       seed=st.integers(0, 9))
@example(size=512, seed=1,
         strings=[b"\xff\xfe invalid " * (2**20 // 16), "日本 ".encode() * (2**20 // 7)])
@example(size=0, strings=[], seed=0)
def test_the_saved_model_serves_any_bytes_any_batch_size(tiny_run, size, strings, seed):
    serve = _serving(tiny_run["saved_model"])
    rng = np.random.default_rng(seed)
    batch = [rng.bytes(int(n)) for n in rng.integers(0, 40, size)]
    for i, string in enumerate(strings[:size]):
        batch[i] = string
    outputs = serve(text=tf.constant(batch, dtype=tf.string, shape=[size]))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (size, 2) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(outputs["label"].numpy().tolist()) <= {b"rotten", b"fresh"}


_SERVING = {}


def _serving(path):
    from keras_llm import export

    if path not in _SERVING:
        _SERVING[path] = export.load_saved_model(path).signatures[export.SIGNATURE]
    return _SERVING[path]


# -- a full disk: simulated with a file-size limit in a subprocess ----------------------------

FULL_DISK_LIMIT = 150_000  # bytes: the configs and logs fit, a .keras file does not
LIMITED_CLI = textwrap.dedent("""
    import resource, signal, sys
    limit = int(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from keras_llm import cli
    sys.exit(cli.main(sys.argv[2:]))
""")


def _cli_with_file_size_limit(limit, argv):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", LIMITED_CLI, str(limit), *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def _one_error_line(completed, command):
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    errors = [line for line in completed.stderr.splitlines()
              if line.startswith(f"keras-llm {command}: error:")]
    assert len(errors) == 1, completed.stderr[-3000:]
    return errors[0]


def _file_bytes(directory):
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return found


def test_a_full_disk_stops_export_with_one_line_and_keeps_the_previous_export(tiny_run,
                                                                              tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run_dir)
    previous = run_dir / "export" / "classifier"
    shutil.copytree(tiny_run["saved_model"], previous)
    before = _file_bytes(previous)
    completed = _cli_with_file_size_limit(
        20_000, ["export", str(run_dir), "--no-tflite", "--no-quantize"])
    assert completed.returncode == 1
    line = _one_error_line(completed, "export")
    assert f"Cannot write {previous}: File too large" in line, line
    assert _file_bytes(previous) == before  # the previous export, byte for byte
    assert sorted(os.listdir(previous.parent)) == ["classifier", "tokenizer"]


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(
    pretrained_run, data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained_run, run_dir)
    kept = ["checkpoints/causal_lm.keras", "causal_lm.keras", "backbone.keras",
            "tokenizer/vocabulary.txt", "model_config.json"]
    before = {name: (run_dir / name).read_bytes() for name in kept}
    completed = _cli_with_file_size_limit(
        FULL_DISK_LIMIT, ["pretrain", "--run-dir", str(run_dir), "--preset", "tiny",
                          "--train-preset", "tiny", "--steps", "4", "--data-dir", data_dir])
    assert completed.returncode == 1
    line = _one_error_line(completed, "pretrain")
    assert "Cannot write" in line and str(run_dir) in line and "File too large" in line, line
    for name in kept:  # the last good checkpoint and the earlier artifacts, byte for byte
        assert (run_dir / name).read_bytes() == before[name], name
    print(line)


def test_a_failed_save_of_the_best_epoch_keeps_the_previous_best(tmp_path, monkeypatch):
    """Fine-tuning's best checkpoint (`ModelCheckpoint`): a save that dies half-way (a full
    disk) leaves the previous best whole at the checkpoint's path."""
    import keras

    from keras_llm.config import TrainConfig

    config = TrainConfig.preset("tiny", finetune_epochs=3, finetune_learning_rate=0.05)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    saved = []
    real_save = keras.Model.save

    def save_then_fill_the_disk(model, path, *args, **kwargs):
        saved.append([w.copy() for w in model.get_weights()])
        if len(saved) == 1:
            return real_save(model, path, *args, **kwargs)
        with open(path, "wb") as f:  # half a file, then the disk is full
            f.write(b"PK\x03\x04 half a model")
        raise OSError(28, "No space left on device")

    run = run_loop.TrainingRun(tmp_path / "run", config, verbose=0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    run.compile(model, config.finetune_learning_rate, loss="mse")
    run.callbacks(24, config.finetune_learning_rate, checkpoint=run.path("best.keras"),
                  monitor="val_loss", mode="min", tensorboard=False)
    monkeypatch.setattr(keras.Model, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left") as raised:
        run.fit(model, x[:48], y[:48], batch_size=8, epochs=3, validation_data=(x[48:], y[48:]))
    monkeypatch.undo()
    # Keras' error names no file; the run's names the directory it writes into, and the fix.
    assert f"Cannot write {run.run_dir}: No space left on device. Free disk space" in str(
        raised.value)
    assert len(saved) == 2  # the second epoch improved and its save failed
    best = _io.load_keras_model(run.path("best.keras"), compile=False)
    for kept, first in zip(best.get_weights(), saved[0]):
        np.testing.assert_array_equal(kept, first)
    run_loop.unlock_run_directory(run.run_dir)


def test_a_resumed_run_keeps_the_best_epoch_of_before_the_crash(tmp_path):
    """Resuming (a backup says epoch 2 is next), the best-epoch checkpoint starts from the
    best validation value the finished epochs logged, so a worse epoch never replaces it."""
    import keras

    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "history.csv").write_text(
        "epoch,loss,val_f1\n0,0.9,0.61\n1,0.8,0.74\n2,0.7,0.99\n")  # epoch 2 was not finished
    _io.write_json(run_dir / "backup" / "training_metadata.json", {"epoch": 2})
    run = run_loop.TrainingRun(run_dir, "tiny", verbose=0)
    assert run.resume_epoch() == 2
    run.callbacks(10, 1e-3, checkpoint=run.path("classifier.keras"), monitor="val_f1",
                  mode="max", tensorboard=False, backup=True)
    checkpoints = [c for c in run.fit_callbacks
                   if isinstance(c, keras.callbacks.ModelCheckpoint)]
    assert len(checkpoints) == 1 and checkpoints[0].best == pytest.approx(0.74)
    assert isinstance(run.fit_callbacks[-1], keras.callbacks.BackupAndRestore)
    run_loop.unlock_run_directory(run.run_dir)
