"""keras_llm.metrics against scikit-learn (classification) and numpy closed forms (LM)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

import keras_llm
from keras_llm import metrics as km

AVERAGES = ["macro", "micro", "weighted"]


def logits_for(predictions, num_classes, seed=0):
    """Random logits whose arg-max is `predictions` (no ties)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(predictions), num_classes)).astype("float32")
    logits[np.arange(len(predictions)), predictions] += 10.0
    return logits


def sklearn_scores(y_true, y_pred, average, sample_weight=None):
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average=average, zero_division=0, sample_weight=sample_weight
    )
    return {"precision": p, "recall": r, "f1": f}


def keras_scores(y_true, logits, num_classes, average, batch_size=None, sample_weight=None):
    metrics = {
        "precision": km.Precision(num_classes, average=average),
        "recall": km.Recall(num_classes, average=average),
        "f1": km.F1Score(num_classes, average=average),
    }
    batch_size = batch_size or len(y_true)
    for start in range(0, len(y_true), batch_size):
        stop = start + batch_size
        weight = None if sample_weight is None else sample_weight[start:stop]
        for metric in metrics.values():
            metric.update_state(y_true[start:stop], logits[start:stop], sample_weight=weight)
    return {key: float(metric.result()) for key, metric in metrics.items()}, metrics


def make_case(name):
    rng = np.random.default_rng(42)
    if name == "binary":
        y_true = rng.integers(0, 2, 200)
        y_pred = np.where(rng.random(200) < 0.7, y_true, 1 - y_true)
        return y_true, y_pred, 2
    if name == "three_classes":
        y_true = rng.integers(0, 3, 150)
        y_pred = np.where(rng.random(150) < 0.6, y_true, rng.integers(0, 3, 150))
        return y_true, y_pred, 3
    if name == "heavy_imbalance":  # 95% class 0, 4% class 1, 1% class 2
        y_true = rng.choice(3, 400, p=[0.95, 0.04, 0.01])
        y_pred = np.where(rng.random(400) < 0.8, y_true, rng.choice(3, 400, p=[0.5, 0.3, 0.2]))
        return y_true, y_pred, 3
    if name == "class_never_predicted":
        y_true = rng.integers(0, 4, 120)
        y_pred = rng.integers(0, 3, 120)  # class 3 is never predicted
        return y_true, y_pred, 4
    if name == "class_absent_from_labels":
        y_true = rng.integers(0, 3, 120)  # class 3 never occurs in the labels
        y_pred = rng.integers(0, 4, 120)
        return y_true, y_pred, 4
    if name == "class_absent_from_both":
        y_true = rng.integers(0, 3, 90)  # class 3 neither in labels nor predictions
        y_pred = rng.integers(0, 3, 90)
        return y_true, y_pred, 4
    raise KeyError(name)


CASES = [
    "binary",
    "three_classes",
    "heavy_imbalance",
    "class_never_predicted",
    "class_absent_from_labels",
    "class_absent_from_both",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("batch_size", [None, 7])
def test_matches_sklearn(case, average, batch_size):
    y_true, y_pred, num_classes = make_case(case)
    logits = logits_for(y_pred, num_classes)
    got, _ = keras_scores(y_true, logits, num_classes, average, batch_size=batch_size)
    expected = sklearn_scores(y_true, y_pred, average)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), (key, got, expected)


@pytest.mark.parametrize("pos_label", [0, 1])
def test_binary_average_matches_sklearn(pos_label):
    y_true, y_pred, _ = make_case("binary")
    got = {}
    for key, cls in [("precision", km.Precision), ("recall", km.Recall), ("f1", km.F1Score)]:
        metric = cls(2, average="binary", pos_label=pos_label)
        metric.update_state(y_true, logits_for(y_pred, 2))
        got[key] = float(metric.result())
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average="binary", pos_label=pos_label, zero_division=0
    )
    assert [got["precision"], got["recall"], got["f1"]] == pytest.approx([p, r, f], abs=1e-6)


def test_state_accumulates_and_resets():
    y_true, y_pred, _ = make_case("three_classes")
    logits = logits_for(y_pred, 3)
    metric = km.F1Score(3)
    metric.update_state(y_true[:50], logits[:50])
    first_batch = float(metric.result())
    metric.update_state(y_true[50:], logits[50:])
    assert float(metric.result()) == pytest.approx(
        sklearn_scores(y_true, y_pred, "macro")["f1"], abs=1e-6
    )
    assert first_batch == pytest.approx(
        sklearn_scores(y_true[:50], y_pred[:50], "macro")["f1"], abs=1e-6
    )
    metric.reset_state()
    assert float(metric.result()) == 0.0
    np.testing.assert_array_equal(metric.confusion_matrix.numpy(), 0)
    metric.update_state(y_true[50:], logits[50:])
    assert float(metric.result()) == pytest.approx(
        sklearn_scores(y_true[50:], y_pred[50:], "macro")["f1"], abs=1e-6
    )


def test_zero_division_gives_zero_not_nan():
    # Everything predicted as class 0: precision of classes 1, 2 is 0/0.
    y_true = np.array([0, 1, 2, 1, 2, 2])
    y_pred = np.zeros(6, dtype=int)
    for average in AVERAGES:
        got, metrics = keras_scores(y_true, logits_for(y_pred, 3), 3, average)
        expected = sklearn_scores(y_true, y_pred, average)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-6)
    # No examples at all.
    for metric in metrics.values():
        metric.reset_state()
        assert float(metric.result()) == 0.0
    # Only class-1 labels, all predicted wrong: every per-class score is 0.
    got, _ = keras_scores(np.ones(4, int), logits_for(np.zeros(4, int), 2), 2, "macro")
    assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_sample_weight_labels_column_and_probabilities():
    y_true, y_pred, num_classes = make_case("three_classes")
    weights = np.random.default_rng(3).random(len(y_true)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(
        keras.ops.softmax(logits_for(y_pred, num_classes), axis=-1)
    )
    for average in AVERAGES:
        got, _ = keras_scores(
            y_true[:, None],
            probabilities,
            num_classes,
            average,
            batch_size=16,
            sample_weight=weights,
        )
        expected = sklearn_scores(y_true, y_pred, average, sample_weight=weights)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-5)


def test_argument_validation():
    with pytest.raises(ValueError, match="num_classes=1"):
        km.Precision(1)
    with pytest.raises(ValueError, match="macro.*average='samples'"):
        km.Recall(3, average="samples")
    with pytest.raises(ValueError, match="num_classes=3"):
        km.F1Score(3, average="binary")
    with pytest.raises(ValueError, match="pos_label=2"):
        km.F1Score(2, average="binary", pos_label=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        km.F1Score(3).update_state(np.zeros(4, int), np.zeros((4, 2), "float32"))


def test_get_config_round_trip():
    for metric in [
        km.Precision(3, average="weighted", name="p"),
        km.Recall(4, average="micro"),
        km.F1Score(2, average="binary", pos_label=0, name="f1_neg"),
        km.Perplexity(pad_id=5, from_logits=False, name="ppl"),
        km.NextTokenAccuracy(pad_id=7),
    ]:
        config = metric.get_config()
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(metric)
        )
        assert type(restored) is type(metric)
        assert restored.get_config() == config
    assert keras.saving.get_registered_name(km.F1Score) == "keras_llm>F1Score"


def tiny_classifier(num_classes=3, features=6, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))


def classification_data(num_classes=3, features=6, n=90, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, num_classes, n).astype("int32")
    return x, y


def check_evaluate_against_sklearn(model, x, y, batch_size=16):
    results = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy", "precision", "recall", "f1"}
    logits = keras.ops.convert_to_numpy(
        keras.ops.cast(model.predict(x, batch_size=batch_size, verbose=0), "float32")
    )
    y_pred = logits.argmax(-1)
    expected = sklearn_scores(y, y_pred, "macro")
    expected["accuracy"] = accuracy_score(y, y_pred)
    for key in expected:
        assert results[key] == pytest.approx(expected[key], abs=1e-6), (key, results, expected)
    return results


def test_model_evaluate_keys_and_values():
    model = tiny_classifier()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=km.classification_metrics(3),
    )
    x, y = classification_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    first = check_evaluate_against_sklearn(model, x, y)
    # A second evaluation on a subset starts from a reset state.
    check_evaluate_against_sklearn(model, x[:40], y[:40])
    assert check_evaluate_against_sklearn(model, x, y) == pytest.approx(first, abs=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_saved_model_reloads_compiled_metrics(tmp_path):
    model = tiny_classifier(num_classes=2)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=km.classification_metrics(2, average="weighted"),
    )
    x, y = classification_data(num_classes=2, n=48)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    after = restored.evaluate(x, y, verbose=0, return_dict=True)
    assert after == pytest.approx(before, abs=1e-6)


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_mixed_bfloat16(mixed_bfloat16):
    model = tiny_classifier()
    assert model.outputs[0].dtype == "bfloat16"
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=km.classification_metrics(3),
    )
    x, y = classification_data()
    check_evaluate_against_sklearn(model, x, y)
    for metric in km.classification_metrics(3)[1:] + km.language_model_metrics():
        assert all(v.dtype == "float32" for v in metric.variables)


def test_classifier_from_keras_llm_models():
    models = pytest.importorskip("keras_llm.models")
    if not hasattr(models, "Classifier"):
        pytest.skip("keras_llm.models.Classifier not written yet")
    config = keras_llm.ModelConfig.preset("tiny")
    model = models.Classifier(models.TransformerBackbone(config), num_classes=3)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=km.classification_metrics(3),
    )
    rng = np.random.default_rng(0)
    x = rng.integers(1, config.vocabulary_size, (24, config.sequence_length)).astype("int32")
    y = rng.integers(0, 3, 24).astype("int32")
    check_evaluate_against_sklearn(model, x, y, batch_size=8)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import keras_llm
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np
    from keras_llm import metrics as km

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 3, 96).astype("int32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=km.classification_metrics(3),
        )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    matrix = [m for m in model.metrics_variables if "confusion_matrix" in m.path][0]
    logits = model.predict(x, verbose=0)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "results": {k: float(v) for k, v in results.items()},
        "matrix_total": float(np.sum(keras.ops.convert_to_numpy(matrix))),
        "y_pred": np.argmax(logits, -1).tolist(),
        "y_true": y.tolist(),
    }))
    """
)


def test_mirrored_strategy_two_logical_cpus():
    root = os.path.dirname(os.path.dirname(os.path.abspath(km.__file__)))
    path = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH")] if p)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    # Both replicas' counts are summed: all 96 examples are in the confusion matrix.
    assert out["matrix_total"] == 96
    y_true, y_pred = np.array(out["y_true"]), np.array(out["y_pred"])
    expected = sklearn_scores(y_true, y_pred, "macro")
    expected["accuracy"] = accuracy_score(y_true, y_pred)
    assert set(out["results"]) == {"loss", "accuracy", "precision", "recall", "f1"}
    for key in expected:
        assert out["results"][key] == pytest.approx(expected[key], abs=1e-6)


# ---------------------------------------------------------------- language-model metrics


def lm_batch(seed=0, batch=3, seq=7, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(batch, seq, vocab)).astype("float32")
    labels = rng.integers(1, vocab, (batch, seq)).astype("int32")
    lengths = rng.integers(1, seq + 1, batch)
    labels[np.arange(seq)[None, :] >= lengths[:, None]] = 0  # right padding
    return labels, logits


def numpy_lm_reference(batches):
    """Closed form: exp(mean token cross-entropy) and accuracy over non-padding tokens."""
    total, correct, count = 0.0, 0.0, 0
    for labels, logits in batches:
        logits = logits.astype("float64")
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        token_ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
        mask = labels != 0
        total += token_ce[mask].sum()
        correct += (logits.argmax(-1) == labels)[mask].sum()
        count += mask.sum()
    return np.exp(total / count), correct / count


def test_perplexity_and_accuracy_closed_form_across_batches():
    batches = [lm_batch(seed) for seed in range(3)]
    perplexity, accuracy = km.language_model_metrics()
    assert (perplexity.name, accuracy.name) == ("perplexity", "next_token_accuracy")
    assert float(perplexity.result()) == 0.0 and float(accuracy.result()) == 0.0
    for labels, logits in batches:
        perplexity.update_state(labels, logits)
        accuracy.update_state(labels, logits)
    expected_ppl, expected_acc = numpy_lm_reference(batches)
    assert float(perplexity.result()) == pytest.approx(expected_ppl, rel=1e-5)
    assert float(accuracy.result()) == pytest.approx(expected_acc, abs=1e-6)
    # Padding really is excluded: changing logits at padded positions changes nothing.
    labels, logits = batches[0]
    noisy = logits.copy()
    noisy[labels == 0] = 100.0 * np.random.default_rng(9).normal(size=noisy[labels == 0].shape)
    for metric in (perplexity, accuracy):
        metric.reset_state()
        metric.update_state(labels, noisy)
    expected_ppl, expected_acc = numpy_lm_reference([(labels, logits)])
    assert float(perplexity.result()) == pytest.approx(expected_ppl, rel=1e-5)
    assert float(accuracy.result()) == pytest.approx(expected_acc, abs=1e-6)


def test_perplexity_probabilities_bfloat16_and_sample_weight():
    labels, logits = lm_batch(seed=4)
    expected_ppl, _ = numpy_lm_reference([(labels, logits)])
    probabilities = keras.ops.softmax(logits, axis=-1)
    metric = km.Perplexity(from_logits=False)
    metric.update_state(labels, probabilities)
    assert float(metric.result()) == pytest.approx(expected_ppl, rel=1e-4)
    # bfloat16 logits: the metric upcasts; compare with the closed form of the rounded logits.
    bf16 = keras.ops.cast(logits, "bfloat16")
    metric = km.Perplexity()
    metric.update_state(labels, bf16)
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(bf16, "float32"))
    assert float(metric.result()) == pytest.approx(
        numpy_lm_reference([(labels, rounded)])[0], rel=1e-5
    )
    # A per-sequence weight of 0 drops that sequence.
    metric = km.Perplexity()
    metric.update_state(labels, logits, sample_weight=np.array([1.0, 0.0, 1.0]))
    keep = np.array([0, 2])
    assert float(metric.result()) == pytest.approx(
        numpy_lm_reference([(labels[keep], logits[keep])])[0], rel=1e-5
    )


def test_language_model_evaluate():
    vocab, seq = 11, 7
    keras.utils.set_random_seed(0)
    inputs = keras.Input((seq,), dtype="int32")
    hidden = keras.layers.Embedding(vocab, 8)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(vocab)(hidden))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=km.language_model_metrics(),
    )
    labels = np.concatenate([lm_batch(seed)[0] for seed in range(4)])
    x = np.random.default_rng(5).integers(1, vocab, labels.shape).astype("int32")
    results = model.evaluate(x, labels, batch_size=4, verbose=0, return_dict=True)
    assert set(results) == {"loss", "perplexity", "next_token_accuracy"}
    logits = model.predict(x, batch_size=4, verbose=0)
    expected_ppl, expected_acc = numpy_lm_reference([(labels, logits)])
    assert results["perplexity"] == pytest.approx(expected_ppl, rel=1e-5)
    assert results["next_token_accuracy"] == pytest.approx(expected_acc, abs=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_causal_lm_evaluate(policy):
    models = pytest.importorskip("keras_llm.models")
    if not hasattr(models, "CausalLM"):
        pytest.skip("keras_llm.models.CausalLM not written yet")
    keras.mixed_precision.set_global_policy(policy)  # conftest restores float32
    config = keras_llm.ModelConfig.preset("tiny")
    model = models.CausalLM(models.TransformerBackbone(config))
    model.compile(metrics=km.language_model_metrics())
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocabulary_size, (8, config.sequence_length + 1))
    ids[np.arange(ids.shape[1])[None, :] >= rng.integers(3, ids.shape[1], 8)[:, None]] = 0
    x, y = ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")
    results = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert set(results) == {"loss", "perplexity", "next_token_accuracy"}
    logits = keras.ops.convert_to_numpy(
        keras.ops.cast(model.predict(x, batch_size=4, verbose=0), "float32")
    )
    expected_ppl, expected_acc = numpy_lm_reference([(y, logits)])
    tolerance = 1e-5 if policy == "float32" else 1e-3
    assert results["perplexity"] == pytest.approx(expected_ppl, rel=tolerance)
    assert results["next_token_accuracy"] == pytest.approx(expected_acc, abs=1e-6)
