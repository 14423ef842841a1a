"""Callbacks and AdamW: schedule vs closed form and Keras' own schedules, the learning rate
and clipping the optimizer really applied (read back from weight changes under plain SGD),
resume, AutoClip against numpy.percentile, throughput bookkeeping, weight-decay exclusion."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_llm
from keras_llm.callbacks import (
    GradientClipping,
    Throughput,
    WarmupCosineScheduler,
    training_flops_per_token,
)
from keras_llm.optimizers import adamw, weight_decay_split


def _mean_prediction(y_true, y_pred):
    return keras.ops.mean(y_pred, axis=-1)


def _linear_model(dim=4):
    """y = x @ w with w = 0 and loss mean(y): the gradient is the batch mean of x, whatever w
    is, so under plain SGD every weight change is exactly -learning_rate * mean(x)."""
    inputs = keras.Input((dim,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs)
    return keras.Model(inputs, outputs)


def _compile_linear(model, optimizer=None, **kwargs):
    model.compile(optimizer or keras.optimizers.SGD(1.0), loss=_mean_prediction, **kwargs)
    return model


class _RecordWeights(keras.callbacks.Callback):
    """Kernel after every batch, and the batch logs."""

    def __init__(self):
        super().__init__()
        self.kernels, self.logs = [], []

    def on_train_begin(self, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.weights[0]).copy())

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(keras.ops.convert_to_numpy(self.model.weights[0]).copy())
        self.logs.append(dict(logs))


# ------------------------------------------------------------------------------------------
# WarmupCosineScheduler
# ------------------------------------------------------------------------------------------


def test_schedule_matches_keras_cosine_and_polynomial_decay():
    peak, low, warmup, total = 2e-3, 2e-4, 5, 40
    steps = np.arange(0, 50)
    cosine = WarmupCosineScheduler(peak, warmup, total, low, "cosine")
    # Keras warms up from 0 at its step 0; ours uses (step + 1) / warmup, so ours(s) is
    # Keras(s + 1), and both reach the minimum at the end.
    keras_cosine = keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, alpha=low / peak, warmup_target=peak, warmup_steps=warmup
    )
    expected = [float(keras_cosine(s + 1)) for s in steps]
    np.testing.assert_allclose(cosine.learning_rate_at(steps), expected, rtol=1e-5)

    linear = WarmupCosineScheduler(peak, warmup, total, low, "linear")
    keras_linear = keras.optimizers.schedules.PolynomialDecay(peak, total - warmup, low, 1.0)
    decay_steps = steps[steps >= warmup]
    expected = [float(keras_linear(s + 1 - warmup)) for s in decay_steps]
    np.testing.assert_allclose(linear.learning_rate_at(decay_steps), expected, rtol=1e-5)


@pytest.mark.parametrize("decay", ["cosine", "linear", "inverse_sqrt"])
def test_schedule_closed_form_points(decay):
    schedule = WarmupCosineScheduler(1.0, 4, 16, 0.1, decay)
    assert schedule.learning_rate_at(0) == pytest.approx(0.25)  # first update: peak / W
    assert schedule.learning_rate_at(3) == pytest.approx(1.0)  # update W: the peak
    assert schedule.learning_rate_at(15) == pytest.approx(0.1)  # update T: the minimum
    assert schedule.learning_rate_at(1000) == pytest.approx(0.1)  # clamped after
    # Step 9 is update n = 10, progress (10 - 4) / 12 = 1/2.
    middle = {
        "cosine": 0.1 + 0.9 * 0.5,
        "linear": 0.1 + 0.9 * 0.5,
        # r(n) = sqrt(4 / n): r(10) = sqrt(0.4), r(16) = 1/2.
        "inverse_sqrt": 0.1 + 0.9 * (np.sqrt(0.4) - 0.5) / 0.5,
    }[decay]
    assert schedule.learning_rate_at(9) == pytest.approx(middle)
    values = schedule.learning_rate_at(np.arange(3, 20))
    assert np.all(np.diff(values) <= 1e-12)  # non-increasing after warm-up


def test_schedule_without_warmup_and_all_warmup():
    no_warmup = WarmupCosineScheduler(1.0, 0, 10, decay="inverse_sqrt")
    assert no_warmup.learning_rate_at(0) == pytest.approx(1.0)
    assert no_warmup.learning_rate_at(9) == pytest.approx(0.0)
    all_warmup = WarmupCosineScheduler(1.0, 10, 10)
    np.testing.assert_allclose(
        all_warmup.learning_rate_at(np.arange(12)), [0.1 * (i + 1) for i in range(10)] + [0.0, 0.0]
    )


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(peak_learning_rate=0.0), "peak_learning_rate=0.0"),
        (dict(peak_learning_rate=-1e-3), "peak_learning_rate=-0.001"),
        (dict(warmup_steps=-1), "warmup_steps=-1"),
        (dict(warmup_steps=2.5), "warmup_steps=2.5"),
        (dict(total_steps=0, warmup_steps=0), "total_steps=0"),
        (dict(warmup_steps=20, total_steps=10), "warmup_steps=20"),
        (dict(min_learning_rate=1.0), "min_learning_rate=1.0"),
        (dict(min_learning_rate=-0.1), "min_learning_rate=-0.1"),
        (dict(decay="step"), "decay='step'"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, bad):
    arguments = dict(peak_learning_rate=1e-3, warmup_steps=2, total_steps=10) | kwargs
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        WarmupCosineScheduler(**arguments)


def test_optimizer_uses_the_scheduled_learning_rate():
    schedule = WarmupCosineScheduler(0.5, 3, 10, 0.05)
    x = np.ones((12, 4), "float32")
    recorder = _RecordWeights()
    _compile_linear(_linear_model()).fit(
        x, x[:, :1], batch_size=1, shuffle=False, verbose=0, callbacks=[schedule, recorder]
    )
    # SGD with gradient mean(x) = 1: the kernel moves by exactly -lr each update.
    used = -np.diff(np.array(recorder.kernels)[:, 0, 0])
    np.testing.assert_allclose(used, schedule.learning_rate_at(np.arange(12)), rtol=1e-5)
    logged = [logs["learning_rate"] for logs in recorder.logs]
    np.testing.assert_allclose(logged, used, rtol=1e-5)


def test_schedule_with_steps_per_execution_holds_rate_per_execution():
    schedule = WarmupCosineScheduler(0.5, 3, 9, 0.05)
    x = np.ones((9, 4), "float32")
    recorder = _RecordWeights()
    model = _compile_linear(_linear_model(), steps_per_execution=3)
    model.fit(x, x[:, :1], batch_size=1, shuffle=False, verbose=0, callbacks=[schedule, recorder])
    moved = -np.diff(np.array(recorder.kernels)[:, 0, 0])
    # Set once per execution of 3 updates, from the real step count 0, 3, 6.
    np.testing.assert_allclose(moved, 3 * schedule.learning_rate_at([0, 3, 6]), rtol=1e-5)


def test_scheduler_refuses_an_optimizer_with_its_own_schedule():
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    model = _compile_linear(_linear_model(), keras.optimizers.SGD(decay))
    x = np.ones((2, 4), "float32")
    with pytest.raises(ValueError, match="float learning rate"):
        model.fit(x, x[:, :1], verbose=0, callbacks=[WarmupCosineScheduler(0.1, 1, 4)])


def _schedule_for_resume():
    return WarmupCosineScheduler(0.5, 2, 8, 0.05)


def test_resume_continues_the_schedule(tmp_path):
    x = np.ones((4, 4), "float32")  # 4 batches of 1 per epoch, 8 updates in all
    fit = dict(batch_size=1, shuffle=False, verbose=0)

    straight = _compile_linear(_linear_model())
    history = straight.fit(x, x[:, :1], epochs=2, callbacks=[_schedule_for_resume()], **fit)
    expected_kernel = keras.ops.convert_to_numpy(straight.weights[0])
    # Weights are -sum(lr) of the updates: they pin down the whole learning-rate sequence.
    schedule = _schedule_for_resume()
    np.testing.assert_allclose(
        -expected_kernel[0, 0], schedule.learning_rate_at(np.arange(8)).sum(), rtol=1e-5
    )
    assert history.history["learning_rate"] == pytest.approx(
        [schedule.learning_rate_at(3), schedule.learning_rate_at(7)]
    )

    # Same model and optimizer, fit again with initial_epoch=1.
    resumed = _compile_linear(_linear_model())
    resumed.fit(x, x[:, :1], epochs=1, callbacks=[_schedule_for_resume()], **fit)
    second = resumed.fit(
        x, x[:, :1], epochs=2, initial_epoch=1, callbacks=[_schedule_for_resume()], **fit
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(resumed.weights[0]), expected_kernel, rtol=1e-6
    )
    assert second.history["learning_rate"] == pytest.approx([schedule.learning_rate_at(7)])

    # A run killed after epoch 1, restarted as a fresh model by BackupAndRestore.
    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    backup = str(tmp_path / "backup")
    crashed = _compile_linear(_linear_model())
    with pytest.raises(RuntimeError, match="killed"):
        crashed.fit(
            x,
            x[:, :1],
            epochs=2,
            **fit,
            callbacks=[_schedule_for_resume(), keras.callbacks.BackupAndRestore(backup), Crash()],
        )
    fresh = _compile_linear(_linear_model())
    restored = fresh.fit(
        x,
        x[:, :1],
        epochs=2,
        **fit,
        callbacks=[_schedule_for_resume(), keras.callbacks.BackupAndRestore(backup)],
    )
    assert int(fresh.optimizer.iterations.numpy()) == 8
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh.weights[0]), expected_kernel, rtol=1e-6
    )
    assert restored.history["learning_rate"] == pytest.approx([schedule.learning_rate_at(7)])


# ------------------------------------------------------------------------------------------
# GradientClipping
# ------------------------------------------------------------------------------------------


def _embedding_model():
    """Token ids -> Embedding -> Dense: exercises sparse (IndexedSlices) gradients."""
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(1, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _clipping_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, size=(8, 6)).astype("int32")  # few ids: repeated rows
    targets = np.full((8, 1), 50.0, "float32")  # far off: a large gradient
    return tokens, targets


def _weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]


def _moved(model, before):
    """What one fit changed: weights now minus `before`, variable by variable."""
    return [now - then for now, then in zip(_weights(model), before, strict=True)]


def _global_norm(arrays):
    return float(np.sqrt(sum(np.sum(np.square(a.astype("float64"))) for a in arrays)))


@pytest.mark.parametrize(
    "precision, jit_compile, loss_scale",
    [("float32", False, False), ("mixed_bfloat16", True, False), ("float32", False, True)],
)
def test_clipping_bounds_the_sgd_step(precision, jit_compile, loss_scale):
    keras.mixed_precision.set_global_policy(precision)
    tokens, targets = _clipping_batch()
    model = _embedding_model()
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(targets, model(tokens, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    oracle_norm = _global_norm([np.asarray(tf.convert_to_tensor(g)) for g in gradients])
    assert oracle_norm > 1.0  # 100x the bound: the test would fail without clipping

    optimizer = keras.optimizers.SGD(1.0)
    if loss_scale:  # gradients reach the optimizer multiplied by 2**15
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer, loss="mse", jit_compile=jit_compile)
    before = _weights(model)
    clipping = GradientClipping(max_norm=0.01)
    history = model.fit(tokens, targets, batch_size=8, verbose=0, callbacks=[clipping])
    step = [-d for d in _moved(model, before)]
    assert _global_norm(step) <= 0.01 * (1 + 1e-4)
    assert _global_norm(step) == pytest.approx(0.01, rel=1e-3)
    rtol = 2e-2 if precision == "mixed_bfloat16" else 1e-4
    assert history.history["grad_norm"][0] == pytest.approx(oracle_norm, rel=rtol)
    assert history.history["clipped_fraction"] == [1.0]
    if precision == "float32" and not loss_scale:
        # The step is the gradient scaled to norm 0.01, embedding rows included.
        expected = [np.asarray(tf.convert_to_tensor(g)) * 0.01 / oracle_norm for g in gradients]
        for moved, want in zip(step, expected, strict=True):
            np.testing.assert_allclose(moved, want, atol=1e-6)

        # Removed at the end of fit: a later fit without the callback does not clip.
        before = _weights(model)
        model.fit(tokens, targets, batch_size=8, verbose=0)
        assert _global_norm(_moved(model, before)) > 0.1


def test_clipping_applies_to_a_model_already_trained_without_it():
    model = _compile_linear(_linear_model())
    x = np.ones((1, 4), "float32")  # gradient ones(4): norm 2
    model.fit(x, x[:, :1], verbose=0)  # traces and caches a train function without clipping
    before = _weights(model)
    model.fit(x, x[:, :1], verbose=0, callbacks=[GradientClipping(max_norm=0.5)])
    assert _global_norm(_moved(model, before)) == pytest.approx(0.5)


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import keras_llm
    import keras, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_llm.callbacks import GradientClipping

    def make():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((6,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(20, 8)(inputs))
        outputs = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(x))
        return keras.Model(inputs, outputs)

    tokens = np.random.default_rng(0).integers(0, 5, size=(8, 6)).astype("int32")
    targets = np.full((8, 1), 50.0, "float32")
    single = make()
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(targets, single(tokens))
    grads = tape.gradient(loss, single.trainable_variables)
    oracle = float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads]))
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = make()
        model.compile(keras.optimizers.SGD(1.0), "mse")
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(tokens, targets, batch_size=8, verbose=0,
                        callbacks=[GradientClipping(max_norm=0.01)])
    step = [v.numpy() - b for v, b in zip(model.trainable_variables, before, strict=True)]
    print(json.dumps({"oracle": oracle, "logged": history.history["grad_norm"][0],
                      "step": float(np.sqrt(sum((s ** 2).sum() for s in step)))}))
    """
)


def test_clipping_under_mirrored_strategy_uses_the_summed_gradient():
    """Two replicas each see half the batch; the bound applies to the summed gradient."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["oracle"] > 1.0
    assert numbers["logged"] == pytest.approx(numbers["oracle"], rel=1e-4)
    assert numbers["step"] == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("max_norm", [None, 3.0])
def test_adaptive_clipping_follows_the_percentile_of_seen_norms(max_norm):
    scales = np.array([1.0, 4.0, 2.0, 8.0, 0.5, 3.0, 6.0], "float32")
    x = np.repeat(scales[:, None], 4, axis=1)  # gradient = x, norm = 2 * scale
    norms = 2.0 * scales
    thresholds = np.array([np.percentile(norms[: i + 1], 50) for i in range(len(norms))])
    if max_norm is not None:
        thresholds = np.minimum(thresholds, max_norm)
    applied = np.minimum(norms, thresholds)

    recorder = _RecordWeights()
    clipping = GradientClipping(max_norm=max_norm, adaptive_percentile=50)
    history = _compile_linear(_linear_model()).fit(
        x, x[:, :1], batch_size=1, shuffle=False, verbose=0, callbacks=[clipping, recorder]
    )
    moved = np.linalg.norm(np.diff(np.array(recorder.kernels), axis=0), axis=(1, 2))
    np.testing.assert_allclose(moved, applied, rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in recorder.logs], norms, rtol=1e-6)
    np.testing.assert_allclose([r["clip_threshold"] for r in recorder.logs], thresholds, rtol=1e-6)
    clipped = norms > thresholds
    np.testing.assert_allclose(
        [r["clipped_fraction"] for r in recorder.logs],
        np.cumsum(clipped) / np.arange(1, len(norms) + 1),
    )
    assert history.history["clipped_fraction"] == pytest.approx([clipped.mean()])
    assert history.history["grad_norm"] == pytest.approx([norms.mean()])


@pytest.mark.parametrize(
    "optimizer, message",
    [
        (keras.optimizers.SGD(0.1, global_clipnorm=1.0), "already clips"),
        (keras.optimizers.SGD(0.1, clipnorm=1.0), "already clips"),
        (keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), "global_clipnorm"),
    ],
)
def test_clipping_refuses_conflicting_optimizers(optimizer, message):
    model = _compile_linear(_linear_model(), optimizer)
    x = np.ones((2, 4), "float32")
    with pytest.raises(ValueError, match=message):
        model.fit(x, x[:, :1], verbose=0, callbacks=[GradientClipping()])


def test_clipping_raises_when_train_step_bypasses_the_optimizer():
    class ManualStep(keras.Model):
        def train_step(self, data):
            x, _ = data
            with tf.GradientTape() as tape:
                loss = keras.ops.mean(self(x))
            gradients = tape.gradient(loss, self.trainable_variables)
            for variable, gradient in zip(self.trainable_variables, gradients, strict=True):
                variable.assign_sub(0.1 * gradient)
            return {"loss": loss}

    inputs = keras.Input((4,))
    model = ManualStep(inputs, keras.layers.Dense(1)(inputs))
    model.compile(keras.optimizers.SGD(0.1))
    x = np.ones((2, 4), "float32")
    with pytest.raises(RuntimeError, match="saw no gradients"):
        model.fit(x, x[:, :1], verbose=0, callbacks=[GradientClipping()])


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(max_norm=0.0), "max_norm=0.0"),
        (dict(max_norm=-1.0), "max_norm=-1.0"),
        (dict(max_norm=None), "max_norm=None"),
        (dict(adaptive_percentile=0), "adaptive_percentile=0"),
        (dict(adaptive_percentile=101), "adaptive_percentile=101"),
        (dict(adaptive_percentile=10, history_size=0), "history_size=0"),
    ],
)
def test_clipping_rejects_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        GradientClipping(**kwargs)


# ------------------------------------------------------------------------------------------
# Throughput, and all logs reaching History and CSVLogger
# ------------------------------------------------------------------------------------------


def test_training_flops_per_token_counts_the_real_model():
    config = keras_llm.ModelConfig.preset("tiny")
    # L=2, d=32, i=64, V=256, T=32: 6 * (2 * (4*32*32 + 2*32*64) + 32*256) + 12*2*32*32.
    assert training_flops_per_token(config) == 172_032
    assert training_flops_per_token(config, 16, output_dim=2) == (
        6 * (2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 2) + 12 * 2 * 16 * 32
    )
    # Oracle: the matrices of the real model (what AdamW decays) plus the tied LM head.
    backbone = keras_llm.models.TransformerBackbone(config)
    decayed, _ = weight_decay_split(backbone)
    matmul_params = sum(int(np.prod(v.shape)) for v in decayed) + 32 * 256
    assert training_flops_per_token(config) == 6 * matmul_params + 12 * 2 * 32 * 32


def test_throughput_derives_flops_from_a_keras_llm_model():
    config = keras_llm.ModelConfig.preset("tiny")
    model = keras_llm.models.Classifier(keras_llm.models.TransformerBackbone(config), 2)
    model.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    throughput = Throughput(batch_size=4, sequence_length=16)
    throughput.set_model(model)
    throughput.on_train_begin()
    assert throughput.resolved_flops_per_token == training_flops_per_token(config, 16, 2)

    plain = _compile_linear(_linear_model())
    throughput.set_model(plain)
    with pytest.raises(ValueError, match="flops_per_token"):
        throughput.on_train_begin()


def test_logs_reach_history_and_csv_logger(tmp_path):
    x = np.ones((6, 4), "float32")
    model = _compile_linear(_linear_model(), keras.optimizers.SGD(0.1))
    flops_per_token, peak = 1000.0, 1e9
    path = str(tmp_path / "history.csv")
    history = model.fit(
        x,
        x[:, :1],
        batch_size=2,
        epochs=2,
        verbose=0,
        callbacks=[
            WarmupCosineScheduler(0.1, 1, 6),
            GradientClipping(max_norm=1.0),
            Throughput(2, 4, peak_flops=peak, flops_per_token=flops_per_token),
            keras.callbacks.CSVLogger(path),
        ],
    )
    logged = history.history
    keys = [
        "learning_rate",
        "grad_norm",
        "clipped_fraction",
        "tokens_per_second",
        "flops_per_second",
        "mfu",
        "training_flops",
    ]
    for key in keys:
        assert len(logged[key]) == 2, key
    assert all(r > 0 for r in logged["tokens_per_second"])  # first batch skipped, 2 measured
    np.testing.assert_allclose(
        logged["flops_per_second"], np.array(logged["tokens_per_second"]) * flops_per_token
    )
    np.testing.assert_allclose(logged["mfu"], np.array(logged["flops_per_second"]) / peak)
    # 3 updates per epoch of 2 examples x 4 tokens.
    assert logged["training_flops"] == [3 * 8 * flops_per_token, 6 * 8 * flops_per_token]
    assert logged["grad_norm"] == pytest.approx([2.0, 2.0])  # gradient = ones(4)
    assert logged["clipped_fraction"] == [1.0, 1.0]
    with open(path) as f:
        header = next(csv.reader(f))
    assert set(keys) <= set(header)


def test_throughput_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        Throughput(0, 16)
    with pytest.raises(ValueError, match="sequence_length=None"):
        Throughput(8, None)
    with pytest.raises(ValueError, match="peak_flops=-1"):
        Throughput(8, 16, peak_flops=-1)


# ------------------------------------------------------------------------------------------
# AdamW
# ------------------------------------------------------------------------------------------


def _attention_model():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(10, 8, name="tokens_embedding")(inputs)
    x = keras.layers.MultiHeadAttention(2, 4, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_adamw_decays_only_matrices(precision):
    keras.mixed_precision.set_global_policy(precision)
    model = _attention_model()
    decayed, excluded = weight_decay_split(model)
    assert sorted(v.path for v in decayed) == sorted(
        f"attention/{p}/kernel" for p in ("query", "key", "value", "attention_output")
    ) + ["head/kernel"]
    assert {v.path for v in excluded} == {
        "tokens_embedding/embeddings",
        "norm/gamma",
        "norm/beta",
        "head/bias",
        "attention/query/bias",
        "attention/key/bias",
        "attention/value/bias",
        "attention/attention_output/bias",
    }
    optimizer = adamw(model, learning_rate=0.1, weight_decay=0.5)
    for v in model.trainable_variables:  # non-zero biases and norms, to see any decay
        v.assign(keras.random.uniform(v.shape, 0.5, 1.5, seed=1))
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    # A zero gradient: Adam moves nothing, so any change is weight decay (factor 1 - lr * wd).
    zeros = [keras.ops.zeros(v.shape, v.dtype) for v in model.trainable_variables]
    optimizer.apply(zeros, model.trainable_variables)
    decayed_paths = {v.path for v in decayed}
    for v in model.trainable_variables:
        after = keras.ops.convert_to_numpy(v)
        expected = before[v.path] * (0.95 if v.path in decayed_paths else 1.0)
        np.testing.assert_allclose(after, expected, rtol=1e-6, err_msg=v.path)


def test_adamw_excludes_keras_llm_embeddings_and_norms():
    backbone = keras_llm.models.TransformerBackbone(keras_llm.ModelConfig.preset("tiny"))
    decayed, excluded = weight_decay_split(backbone)
    assert decayed and all(len(v.shape) >= 2 for v in decayed)
    assert not any("embedding" in v.path or "norm" in v.path for v in decayed)
    assert any("token_embeddings" in v.path for v in excluded)
    assert any("position_embeddings" in v.path for v in excluded)


def test_adamw_needs_a_built_model_and_valid_decay():
    with pytest.raises(ValueError, match="build"):
        adamw(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="weight_decay=-0.1"):
        adamw(_linear_model(), weight_decay=-0.1)


def test_layer_decay_steps_each_layer_like_adamw_at_its_own_rate():
    # Oracle: Keras' own AdamW, one optimizer per variable at lr * decay ** (L + 1 - depth).
    keras.utils.set_random_seed(3)
    classifier = keras_llm.models.Classifier(
        keras_llm.models.TransformerBackbone(keras_llm.ModelConfig.preset("tiny")),
        num_classes=2,
    )
    classifier(np.ones((2, 8), "int32"))
    variables = classifier.trainable_variables
    blocks = classifier.backbone.transformer_blocks
    depth_of = {v.path: len(blocks) + 1 for v in variables}
    for v in classifier.backbone.token_embedding.trainable_variables:
        depth_of[v.path] = 0
    for i, block in enumerate(blocks):
        for v in block.trainable_variables:
            depth_of[v.path] = i + 1
    assert sorted(set(depth_of.values())) == list(range(len(blocks) + 2))
    start = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(3)]

    optimizer = adamw(classifier, learning_rate=0.01, weight_decay=0.0, layer_decay=0.5)
    for step in grads:
        optimizer.apply(step, variables)
    got = [keras.ops.convert_to_numpy(v).copy() for v in variables]

    top = len(blocks) + 1
    for v, value, expected_start, index in zip(variables, got, start, range(len(variables))):
        v.assign(expected_start)
        oracle = keras.optimizers.AdamW(
            learning_rate=0.01 * 0.5 ** (top - depth_of[v.path]), weight_decay=0.0
        )
        for step in grads:
            oracle.apply([step[index]], [v])
        np.testing.assert_allclose(value, keras.ops.convert_to_numpy(v), rtol=1e-5,
                                   atol=1e-7, err_msg=v.path)
    # The head moved a full step, the embeddings 0.5 ** (L + 1) of one.
    assert not np.allclose(got[-1], start[-1])
    assert len(optimizer.multipliers) == len(variables)  # every path named, none twice


def test_a_model_compiled_with_layer_decay_reloads_in_a_fresh_process(tmp_path):
    # Oracle: a fresh process without this test's objects compiles the saved model with the
    # same per-variable multipliers (they are stored by variable path).
    classifier = keras_llm.models.Classifier(
        keras_llm.models.TransformerBackbone(keras_llm.ModelConfig.preset("tiny")),
        num_classes=2,
    )
    classifier(np.ones((2, 8), "int32"))
    classifier.compile(optimizer=adamw(classifier, 0.01, layer_decay=0.5), loss="mse")
    path = str(tmp_path / "model.keras")
    classifier.save(path)
    expected = classifier.optimizer.multipliers
    script = textwrap.dedent(f"""
        import json
        from keras_llm._io import load_keras_model
        model = load_keras_model({path!r})
        print(json.dumps(model.optimizer.multipliers))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == expected
    assert min(expected.values()) == 0.5 ** (len(classifier.backbone.transformer_blocks) + 1)


def test_layer_decay_refuses_bad_values_and_models_without_a_backbone():
    with pytest.raises(ValueError, match=r"\(0, 1\].*layer_decay=1.5"):
        adamw(_linear_model(), layer_decay=1.5)
    with pytest.raises(ValueError, match="transformer backbone"):
        adamw(_linear_model(), layer_decay=0.8)
    with pytest.raises(ValueError, match="finetune_layer_decay=0"):
        keras_llm.TrainConfig(finetune_layer_decay=0)
    adamw(_linear_model(), layer_decay=1.0)  # off: any model
