"""Exported artifacts: SavedModels served in a fresh process, TFLite, int8, a run directory.

The oracles: the Keras model itself (probabilities on the whole rotten_tomatoes test split),
a fresh Python process that never imports keras_llm, `keras.layers.TFSMLayer`, TensorFlow's
own `saved_model_cli`, scikit-learn's F1 (inside `evaluate_exports`) and a plain eager greedy
loop over the causal LM. One module fixture trains a tiny classifier for a few seconds on
real review text, writes a run directory and runs `export_all` on it once.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_llm
from keras_llm import data as llm_data
from keras_llm import export
from keras_llm.models import CausalLM, Classifier, TransformerBackbone

LABELS = ["rotten", "fresh"]
SEQUENCE_LENGTH = 24  # the classifier's length; the backbone has 32 positions
MAX_NEW_TOKENS_LIMIT = 8
PROMPTS = ["the movie was", "", "a gripping , funny film that " * 10]

BAD_TEXTS = [
    b"",
    b"   \t\n  ",
    b"x" * 100_000,
    b"\xff\xfe\x80 not utf-8 \xc3\x28",
    b"ok",
    "na\u00efve caf\u00e9, \u65e5\u672c\u8a9e \U0001f3ac".encode("utf-8"),
    b"a much longer review that goes on and on about the plot " * 20,
]


def _run_python(script, *args, timeout=300):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(args[0]) if args else None,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    try:
        train = llm_data.load_text_classification("rotten_tomatoes", "train", data_dir)
    except llm_data.MissingDataError as error:  # the offline text is not installed
        pytest.skip(str(error))
    train = list(train.take(1000).as_numpy_iterator())
    test = list(llm_data.load_text_classification("rotten_tomatoes", "test", data_dir))
    return {
        "data_dir": data_dir,
        "train_texts": [t.decode("utf-8") for t, _ in train],
        "train_labels": np.array([label for _, label in train]),
        "test_texts": [t.numpy().decode("utf-8") for t, _ in test],
        "test_labels": np.array([int(label) for _, label in test]),
    }


@pytest.fixture(scope="module")
def tokenizer(reviews):
    return llm_data.Tokenizer.train(reviews["train_texts"][:400], vocabulary_size=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory, reviews, tokenizer):
    """A fine-tuning run directory (tiny classifier, briefly trained) and its export."""
    keras.utils.set_random_seed(7)
    keras.mixed_precision.set_global_policy("float32")
    config = keras_llm.ModelConfig.preset("tiny", vocabulary_size=tokenizer.vocabulary_size)
    classifier = Classifier(TransformerBackbone(config), num_classes=2)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = tokenizer.encode(tf.constant(reviews["train_texts"]), SEQUENCE_LENGTH)
    classifier.fit(ids, reviews["train_labels"], epochs=2, batch_size=32, verbose=0)
    causal_lm = CausalLM(TransformerBackbone(config))

    run_dir = tmp_path_factory.mktemp("run")
    classifier.save(run_dir / export.RUN_CLASSIFIER)
    causal_lm.save(run_dir / export.RUN_CAUSAL_LM)
    tokenizer.save(str(run_dir / export.RUN_TOKENIZER))
    (run_dir / export.RUN_LABELS).write_text(json.dumps(LABELS))
    keras_llm.TrainConfig.preset("tiny", classifier_sequence_length=SEQUENCE_LENGTH).save(
        str(run_dir / export.RUN_TRAIN_CONFIG)
    )
    report = export.export_all(
        str(run_dir),
        data="rotten_tomatoes",
        data_dir=reviews["data_dir"],
        max_new_tokens_limit=MAX_NEW_TOKENS_LIMIT,
    )
    return {
        "dir": str(run_dir / "export"),
        "report": report,
        "classifier": classifier,
        "causal_lm": causal_lm,
    }


def _keras_probabilities(model, tokenizer, texts):
    ids = tokenizer.encode(tf.constant(texts, tf.string), SEQUENCE_LENGTH)
    return export.keras_probabilities(model, ids)


def _greedy_reference(causal_lm, tokenizer, prompt, steps):
    """Plain eager greedy decoding: the whole model on the whole prefix, one token a step."""
    window = causal_lm.backbone.model_config.sequence_length - MAX_NEW_TOKENS_LIMIT
    ids = [tokenizer.start_id] + tokenizer.tokenize(tf.constant(prompt)).numpy().tolist()
    ids = ids[-window:]
    new = []
    for _ in range(steps):
        logits = keras.ops.convert_to_numpy(causal_lm(np.array([ids + new], "int32")))[0, -1]
        logits[tokenizer.pad_id] = -np.inf
        new.append(int(np.argmax(logits)))
        if new[-1] == tokenizer.end_id:
            break
    return new


# -- run directory, sizes, compression --------------------------------------------------------


@pytest.mark.slow  # its setup trains the tiny classifier and runs export_all
def test_export_all_writes_every_artifact_and_measures_them(run):
    out, report = run["dir"], run["report"]
    for name in (
        export.CLASSIFIER_DIR,
        export.CLASSIFIER_INT8_DIR,
        export.GENERATOR_DIR,
    ):
        assert os.path.isfile(os.path.join(out, name, "saved_model.pb")), name
    for name in (export.CLASSIFIER_TFLITE, export.CLASSIFIER_INT8_TFLITE):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert os.path.isfile(os.path.join(out, export.TOKENIZER_DIR, "vocabulary.txt"))
    with open(os.path.join(out, export.REPORT_FILE)) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert report["sequence_length"] == SEQUENCE_LENGTH and report["label_names"] == LABELS
    assert export.read_metadata(os.path.join(out, export.CLASSIFIER_DIR))["label_names"] == LABELS

    evaluation = report["evaluation"]
    assert evaluation["examples"] == 1263  # the whole test split
    float_saved_model = evaluation[export.CLASSIFIER_DIR]
    assert float_saved_model["max_abs_diff"] <= 1e-5
    assert float_saved_model["agreement"] == 1.0
    assert float_saved_model["macro_f1"] == pytest.approx(evaluation["keras"]["macro_f1"])
    assert evaluation[export.CLASSIFIER_TFLITE]["max_abs_diff"] <= 1e-5
    for name in (export.CLASSIFIER_INT8_DIR, export.CLASSIFIER_INT8_TFLITE):
        assert evaluation[name]["agreement"] >= 0.95, name
        assert abs(evaluation[name]["f1_delta"]) <= 5.0, name
        assert 0 < evaluation[name]["max_abs_diff"] < 0.1, name  # really quantized

    # int8 weights are smaller on disk (the tiny model's graph dwarfs its weights, so compare
    # the variables of the SavedModels and the whole flatbuffers).
    sizes = report["sizes"]
    assert sizes[export.CLASSIFIER_INT8_TFLITE] * 1.5 < sizes[export.CLASSIFIER_TFLITE]
    float_variables = export.artifact_size(os.path.join(out, export.CLASSIFIER_DIR, "variables"))
    int8_variables = export.artifact_size(
        os.path.join(out, export.CLASSIFIER_INT8_DIR, "variables")
    )
    assert int8_variables < 0.8 * float_variables
    # Each weight is saved once: the variables are about 4 bytes per parameter.
    assert float_variables < 1.3 * 4 * run["classifier"].count_params()


def test_quantize_classifier_returns_an_int8_copy_and_keeps_the_original(run):
    model = run["classifier"]
    before = [w.numpy().copy() for w in model.weights]
    quantized = export.quantize_classifier(model)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))
    assert {w.dtype for w in model.weights} == {"float32"}
    int8_paths = {w.path for w in quantized.weights if w.dtype == "int8"}
    assert any("feedforward_intermediate/kernel" in p for p in int8_paths)
    assert any("attention/query/kernel" in p for p in int8_paths)
    assert any("classifier_head/kernel" in p for p in int8_paths)


def test_tflite_runs_in_the_interpreter_with_keras_parity(run, reviews, tokenizer):
    texts = reviews["test_texts"][:64]
    ids = tokenizer.encode(tf.constant(texts), SEQUENCE_LENGTH).numpy()
    tflite = export.tflite_probabilities(os.path.join(run["dir"], export.CLASSIFIER_TFLITE), ids)
    expected = _keras_probabilities(run["classifier"], tokenizer, texts)
    assert tflite.shape == (64, 2) and tflite.dtype == np.float32
    np.testing.assert_allclose(tflite, expected, atol=1e-5)


# -- fresh process: no keras_llm, TFSMLayer, bad input, generator ------------------------------

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)
    import keras

    classifier_dir, generator_dir, inputs_path, out_path = sys.argv[1:5]
    inputs = np.load(inputs_path, allow_pickle=True)
    loaded = tf.saved_model.load(classifier_dir)
    serve = loaded.signatures["serving_default"]
    result = {}
    arrays = {}

    texts = tf.constant(list(inputs["texts"]), tf.string)
    arrays["split"] = serve(text=texts)["probabilities"].numpy()

    bad = serve(text=tf.constant(list(inputs["bad"]), tf.string))
    arrays["bad_probabilities"] = bad["probabilities"].numpy()
    result["bad_label_id"] = bad["label_id"].numpy().tolist()
    result["bad_label"] = [s.decode() for s in bad["label"].numpy()]
    result["bad_dtypes"] = [bad[k].dtype.name for k in ("probabilities", "label_id", "label")]
    empty = serve(text=tf.constant([], tf.string))
    result["empty_shapes"] = {k: list(v.shape) for k, v in empty.items()}

    errors = {}
    for name, call in {
        "signature_int": lambda: serve(text=tf.constant([1, 2])),
        "signature_rank_2": lambda: serve(text=tf.constant([["a", "b"]])),
        "signature_scalar": lambda: serve(text=tf.constant("a")),
        "function_int": lambda: loaded.serving_default(tf.constant([1, 2])),
        "function_rank_2": lambda: loaded.serving_default(tf.constant([["a", "b"]])),
    }.items():
        try:
            call()
            errors[name] = None
        except Exception as error:  # noqa: BLE001
            errors[name] = f"{type(error).__name__}: {error}"
    result["errors"] = errors

    layer = keras.layers.TFSMLayer(classifier_dir, call_endpoint="serving_default")
    arrays["tfsm"] = keras.ops.convert_to_numpy(layer(texts[:16])["probabilities"])

    generate = tf.saved_model.load(generator_dir).signatures["serving_default"]
    prompts = tf.constant(list(inputs["prompts"]), tf.string)
    generated = {}
    for steps in (0, 3, 8, 100):
        out = generate(prompt=prompts, max_new_tokens=tf.constant(steps, tf.int32))
        generated[steps] = {
            "ids": out["generated_ids"].numpy().tolist(),
            "generated": [s.decode() for s in out["generated"].numpy()],
            "text": [s.decode() for s in out["text"].numpy()],
        }
    result["generated"] = generated
    none = generate(prompt=tf.constant([], tf.string), max_new_tokens=tf.constant(4))
    result["generated_empty_batch"] = list(none["generated"].shape)
    try:
        generate(prompt=prompts, max_new_tokens=tf.constant(-1))
        result["negative_error"] = None
    except Exception as error:  # noqa: BLE001
        result["negative_error"] = str(error)

    result["keras_llm_imported"] = any(m.split(".")[0] == "keras_llm" for m in sys.modules)
    np.savez(out_path + ".npz", **arrays)
    with open(out_path, "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.slow
def test_fresh_process_serves_without_keras_llm(run, reviews, tokenizer, tmp_path):
    texts = reviews["test_texts"]
    inputs = tmp_path / "inputs.npz"
    np.savez(
        inputs,
        texts=np.array(texts, dtype=object),
        bad=np.array(BAD_TEXTS, dtype=object),
        prompts=np.array(PROMPTS, dtype=object),
    )
    out = tmp_path / "result.json"
    _run_python(
        FRESH_PROCESS,
        os.path.join(run["dir"], export.CLASSIFIER_DIR),
        os.path.join(run["dir"], export.GENERATOR_DIR),
        str(inputs),
        str(out),
    )
    result = json.loads(out.read_text())
    arrays = np.load(str(out) + ".npz")
    assert result["keras_llm_imported"] is False

    # Parity on the whole test split, through the same tokenizer.encode as training.
    expected = _keras_probabilities(run["classifier"], tokenizer, texts)
    assert arrays["split"].dtype == np.float32
    assert np.abs(arrays["split"] - expected).max() <= 1e-5
    np.testing.assert_allclose(arrays["tfsm"], arrays["split"][:16], atol=1e-6)

    # Bad input: served, well-formed, and each row is what the Keras model says for it.
    probabilities = arrays["bad_probabilities"]
    assert probabilities.shape == (len(BAD_TEXTS), 2) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)
    assert result["bad_dtypes"] == ["float32", "int64", "string"]
    assert result["bad_label_id"] == probabilities.argmax(-1).tolist()
    assert result["bad_label"] == [LABELS[i] for i in result["bad_label_id"]]
    bad_ids = tokenizer.encode(tf.constant(BAD_TEXTS), SEQUENCE_LENGTH)
    np.testing.assert_allclose(
        probabilities, export.keras_probabilities(run["classifier"], bad_ids), atol=1e-5
    )
    assert result["empty_shapes"] == {"probabilities": [0, 2], "label_id": [0], "label": [0]}

    # Wrong dtype or rank: refused, naming what is expected.
    errors = result["errors"]
    spec = "TensorSpec(shape=(None,), dtype=tf.string, name='text')"
    assert errors["function_int"] and spec in errors["function_int"]
    assert errors["function_rank_2"] and spec in errors["function_rank_2"]
    assert errors["signature_int"] and "expected to be a string tensor" in errors["signature_int"]
    for name in ("signature_rank_2", "signature_scalar"):
        assert errors[name] and "text_must_be_a_rank_1_string_batch" in errors[name], name
        assert "expected shape [?]" in errors[name], name

    # Generator: greedy with the cache, equal to a plain eager greedy loop.
    generated = result["generated"]
    assert generated["0"]["ids"] == [[], [], []] and generated["0"]["generated"] == ["", "", ""]
    for steps, limit in (("3", 3), ("8", 8), ("100", MAX_NEW_TOKENS_LIMIT)):
        for prompt, row in zip(PROMPTS, generated[steps]["ids"], strict=True):
            expected_ids = _greedy_reference(run["causal_lm"], tokenizer, prompt, limit)
            assert [t for t in row if t != 0] == expected_ids, (steps, prompt)
        assert len(generated[steps]["ids"][0]) <= limit
    texts_back = tokenizer.detokenize(tf.ragged.constant(generated["8"]["ids"])).numpy()
    assert generated["8"]["generated"] == [t.decode() for t in texts_back]
    assert generated["8"]["text"][0].startswith("the movie was")
    assert result["generated_empty_batch"] == [0]
    assert result["negative_error"] and "max_new_tokens must be >= 0" in result["negative_error"]


@pytest.mark.slow
def test_saved_model_cli_shows_the_signature(run):
    path = os.path.join(run["dir"], export.CLASSIFIER_DIR)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = (
        [cli]
        if os.path.exists(cli)
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )
    result = subprocess.run(
        command + ["show", "--dir", path, "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout
    signature = shown[shown.index("signature_def['serving_default']") :]
    for expected in (
        "inputs['text']",
        "dtype: DT_STRING",
        "outputs['probabilities']",
        "dtype: DT_FLOAT",
        "shape: (-1, 2)",
        "outputs['label_id']",
        "dtype: DT_INT64",
        "outputs['label']",
        "Method name is: tensorflow/serving/predict",
    ):
        assert expected in signature, expected


# -- single exports ---------------------------------------------------------------------------


def test_mixed_bfloat16_classifier_exports_float32_probabilities(tokenizer, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    config = keras_llm.ModelConfig.preset("tiny", vocabulary_size=tokenizer.vocabulary_size)
    model = Classifier(TransformerBackbone(config), num_classes=3)
    path = export.export_classifier(model, tokenizer, tmp_path / "bf16", ["a", "b", "c"], 16)
    texts = ["a fine film", "", "dull and long , with no end in sight"]
    served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(texts))
    assert served["probabilities"].dtype == tf.float32
    ids = tokenizer.encode(tf.constant(texts), 16)
    np.testing.assert_allclose(
        served["probabilities"].numpy(), export.keras_probabilities(model, ids), atol=1e-3
    )
    assert export.read_metadata(path)["sequence_length"] == 16


def test_export_arguments_are_checked(run, tokenizer, tmp_path):
    model = run["classifier"]
    with pytest.raises(ValueError, match="label_names has 3 names but the model predicts 2"):
        export.export_classifier(model, tokenizer, tmp_path / "a", ["x", "y", "z"])
    with pytest.raises(ValueError, match="exceeds the model's 32 learned positions"):
        export.export_classifier(model, tokenizer, tmp_path / "b", LABELS, sequence_length=33)
    with pytest.raises(ValueError, match="must be a keras_llm.data.Tokenizer"):
        export.export_classifier(model, "not a tokenizer", tmp_path / "c", LABELS)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        export.export_classifier(model, tokenizer, tmp_path / "notes", LABELS)
    assert (tmp_path / "notes" / "keep.txt").exists()
    with pytest.raises(ValueError, match="quantize must be one of"):
        export.export_tflite(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export.export_tflite(model, tmp_path / "m.bin")
    with pytest.raises(ValueError, match=r"max_new_tokens_limit must be an int in \[1, 31\]"):
        export.export_generator(run["causal_lm"], tokenizer, tmp_path / "g", 32)
    with pytest.raises(FileNotFoundError, match="not a keras_llm run directory"):
        export.export_all(tmp_path)


def test_a_bad_split_is_refused_before_anything_is_written(run, reviews, tmp_path):
    output = tmp_path / "export"
    with pytest.raises(llm_data.UnknownSplitError, match="rotten_tomatoes has no split 'nope'"):
        export.export_all(os.path.dirname(run["dir"]), output_dir=str(output),
                          data="rotten_tomatoes", split="nope", data_dir=reviews["data_dir"])
    assert not output.exists()


# -- reliability: a failed or killed export leaves the previous one whole (issue 18) ---------

RELOAD_TEXTS = ["a gripping, funny film", "dull", ""]


def _served_probabilities(path):
    return export.saved_model_probabilities(str(path), RELOAD_TEXTS)


def _siblings(path):
    return sorted(os.listdir(os.path.dirname(path)))


def test_a_failed_export_leaves_the_previous_export_whole(run, tokenizer, tmp_path,
                                                          monkeypatch):
    path = str(tmp_path / "classifier")
    export.export_classifier(run["classifier"], tokenizer, path, LABELS, SEQUENCE_LENGTH)
    before = _served_probabilities(path)
    other = export.clone_model(run["classifier"])
    other.set_weights([w + 0.5 for w in other.get_weights()])

    def fail(partial, metadata):  # the variables are written, the export is not finished
        assert os.path.isfile(os.path.join(partial, "saved_model.pb"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_metadata", fail)
    with pytest.raises(OSError, match="No space left"):
        export.export_classifier(other, tokenizer, path, LABELS, SEQUENCE_LENGTH)
    np.testing.assert_array_equal(_served_probabilities(path), before)
    assert export.read_metadata(path)["kind"] == "classifier"
    assert _siblings(path) == ["classifier"]  # no partial directory left behind
    monkeypatch.undo()
    # The next export replaces it whole.
    export.export_classifier(other, tokenizer, path, LABELS, SEQUENCE_LENGTH)
    assert not np.allclose(_served_probabilities(path), before)
    assert _siblings(path) == ["classifier"]


KILLED_EXPORT = textwrap.dedent("""
    import os, sys
    import keras
    from keras_llm import data, export
    run_dir, path = sys.argv[1:3]
    model = keras.models.load_model(os.path.join(run_dir, "classifier.keras"), compile=False)
    tokenizer = data.Tokenizer.load(os.path.join(run_dir, "tokenizer"))
    model.set_weights([w + 0.5 for w in model.get_weights()])
    while True:  # exported again and again until the test kills this process
        export.export_classifier(model, tokenizer, path, ["rotten", "fresh"], 24)
""")


@pytest.mark.slow
def test_kill_9_during_export_leaves_the_previous_export_whole(run, tmp_path):
    path = str(tmp_path / "classifier")
    previous = os.path.join(run["dir"], export.CLASSIFIER_DIR)
    shutil.copytree(previous, path)
    before = _served_probabilities(path)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, os.path.dirname(run["dir"]), path], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while not any(name.startswith(".classifier.partial-") for name in _siblings(path)):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.02)
        time.sleep(0.3)  # into the writing of the variables
    finally:
        process.kill()
        process.wait()
    assert any(name.startswith(".classifier.partial-") for name in _siblings(path))
    np.testing.assert_array_equal(_served_probabilities(path), before)
    # The killed writer's partial directory is removed by the next export of that name.
    export.export_classifier(run["classifier"], run_tokenizer(run), path, LABELS,
                             SEQUENCE_LENGTH)
    assert _siblings(path) == ["classifier"]
    np.testing.assert_allclose(_served_probabilities(path), before, atol=1e-6)


def run_tokenizer(run):
    return llm_data.Tokenizer.load(os.path.join(os.path.dirname(run["dir"]),
                                                export.RUN_TOKENIZER))
