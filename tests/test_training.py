"""Pretrain then fine-tune with model.fit: run directories, schedules, weight loading,
divergence, kill -9 resume, and tf.distribute (mirrored; multi-worker: test_multi_worker.py)."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_llm import ModelConfig, TrainConfig, training
from keras_llm.callbacks import WarmupCosineScheduler
from keras_llm.models import TransformerBackbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(run_dir):
    with open(os.path.join(run_dir, "steps.csv")) as f:
        return list(csv.DictReader(f))


def test_pretraining_run_directory(pretrained_run):
    for name in ("model_config.json", "train_config.json", "tokenizer", "backbone.keras",
                 "causal_lm.keras", "history.csv", "steps.csv", "metrics.json", "logs",
                 "loss.png", "learning_rate.png", "grad_norm.png"):
        assert os.path.exists(os.path.join(pretrained_run, name)), name
    assert not os.path.exists(os.path.join(pretrained_run, "backup"))  # finished run
    with open(os.path.join(pretrained_run, "history.csv")) as f:
        header = next(csv.reader(f))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "perplexity"):
        assert key in header
    metrics = json.load(open(os.path.join(pretrained_run, "metrics.json")))
    assert metrics["validation_perplexity"] > 1


def test_learning_rate_follows_the_closed_form(pretrained_run):
    config = TrainConfig.load(os.path.join(pretrained_run, "train_config.json"))
    rows = _steps(pretrained_run)
    assert [int(r["step"]) for r in rows] == list(range(1, config.pretrain_steps + 1))
    schedule = WarmupCosineScheduler(
        config.pretrain_learning_rate,
        warmup_steps=round(config.warmup_fraction * config.pretrain_steps),
        total_steps=config.pretrain_steps,
        min_learning_rate=config.pretrain_learning_rate * config.min_learning_rate_ratio,
    )
    # Row for step s (optimizer.iterations after the update) logs the rate of update s - 1.
    for row in rows:
        expected = schedule.learning_rate_at(int(row["step"]) - 1)
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-5)
    # Closed form for cosine decay, independently: halfway through decay is the midpoint.
    w, t = schedule.warmup_steps, schedule.total_steps
    mid = w + (t - w) / 2 - 1
    low, peak = schedule.min_learning_rate, schedule.peak_learning_rate
    assert schedule.learning_rate_at(mid) == pytest.approx((low + peak) / 2, rel=1e-6)


def test_finetune_really_starts_from_the_pretrained_backbone(pretrained_run, data_dir, tmp_path):
    config = TrainConfig.preset(
        "tiny", finetune_epochs=1, freeze_backbone_epochs=1, finetune_steps_per_epoch=3
    )
    result = training.finetune(
        config, run_dir=str(tmp_path), pretrained=pretrained_run, data_dir=data_dir, verbose=0
    )
    # The backbone was frozen throughout, so it must still equal the stored weights exactly.
    training.verify_loaded_weights(
        result.model.backbone, os.path.join(pretrained_run, "backbone.keras")
    )
    assert set(result.metrics) == {
        "test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1", "seconds"
    }
    assert os.path.exists(tmp_path / "classifier.keras")
    assert json.load(open(tmp_path / "labels.json")) == ["rotten", "fresh"]


@pytest.mark.slow
def test_finetune_with_length_buckets_makes_one_pass_an_epoch(pretrained_run, data_dir, tmp_path):
    config = TrainConfig.preset("tiny", finetune_epochs=2, length_buckets=(8, 16, 24),
                                batch_size=64)
    result = training.finetune(
        config, run_dir=str(tmp_path), pretrained=pretrained_run, data_dir=data_dir, verbose=0
    )
    # An epoch is one pass over the 10,235 training reviews in bucketed batches of <= 64:
    # ceil(10235 / 64) = 160 full-width batches, plus partly filled ones where buckets end.
    steps = [int(row["step"]) for row in csv.DictReader(open(tmp_path / "steps.csv"))]
    per_epoch = len(steps) // 2
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 2 * per_epoch
    assert 160 < per_epoch <= 164  # at most one partly filled batch per bucket (4)
    assert 0.5 < result.metrics["test_accuracy"] <= 1.0
    assert TrainConfig.load(tmp_path / "train_config.json").length_buckets == (8, 16, 24)


def test_a_backbone_that_does_not_match_is_an_error(pretrained_run):
    config = ModelConfig.load(os.path.join(pretrained_run, "model_config.json"))
    fresh = TransformerBackbone(config)  # same shapes, different values
    with pytest.raises(ValueError, match="not fully loaded.*token_embeddings"):
        training.verify_loaded_weights(fresh, os.path.join(pretrained_run, "backbone.keras"))


def test_finetune_needs_a_model(tmp_path):
    with pytest.raises(ValueError, match="pretrained=RUN_DIR"):
        training.finetune("tiny", run_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="backbone.keras"):
        training.finetune("tiny", run_dir=str(tmp_path), pretrained=str(tmp_path))


class _PoisonAtStep(keras.callbacks.Callback):
    """Sets one weight to NaN before update `step`, as an exploding run would."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step - 1:
            weight = self.model.backbone.final_norm.gamma
            weight.assign(np.full(weight.shape, np.nan, "float32"))


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    pretrained_run, data_dir, tmp_path
):
    with pytest.raises(training.TrainingDivergedError, match=r"nan at step 7\. The last good"):
        training.pretrain(
            ModelConfig.preset("tiny", vocabulary_size=512),
            TrainConfig.preset("tiny", pretrain_steps=12),
            run_dir=str(tmp_path),
            tokenizer=os.path.join(pretrained_run, "tokenizer"),
            data_dir=data_dir,
            steps_per_epoch=4,
            callbacks=[_PoisonAtStep(7)],
            verbose=0,
        )
    checkpoint = keras.models.load_model(tmp_path / "checkpoints" / "causal_lm.keras")
    assert all(np.isfinite(w).all() for w in checkpoint.get_weights())
    assert not os.path.exists(tmp_path / "backup")  # a rerun starts clean, not from NaNs


RUN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import keras, numpy as np
    from keras_llm import ModelConfig, TrainConfig, training

    run_dir, tokenizer, data_dir, kill_at_epoch, out = sys.argv[1:6]

    class KillNine(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == int(kill_at_epoch):
                os.kill(os.getpid(), signal.SIGKILL)

    result = training.pretrain(
        ModelConfig.preset("tiny", vocabulary_size=512),
        TrainConfig.preset("tiny", pretrain_steps=12),
        run_dir=run_dir, tokenizer=tokenizer, data_dir=data_dir, steps_per_epoch=3,
        callbacks=[KillNine()], verbose=0,
    )
    np.savez(out, *result.model.get_weights())
    """
)


def _run(args, env=None, check=True, script=RUN_SCRIPT):
    completed = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    if check and completed.returncode != 0:
        raise AssertionError(completed.stderr[-3000:])
    return completed


def _weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_reaches_the_uninterrupted_weights(
    pretrained_run, data_dir, tmp_path
):
    tokenizer = os.path.join(pretrained_run, "tokenizer")
    _run([tmp_path / "straight", tokenizer, data_dir, -1, tmp_path / "straight.npz"])
    killed = _run([tmp_path / "resumed", tokenizer, data_dir, 1, tmp_path / "x.npz"],
                  check=False)
    assert killed.returncode == -9  # really killed after its second epoch
    assert os.path.exists(tmp_path / "resumed" / "backup")
    _run([tmp_path / "resumed", tokenizer, data_dir, -1, tmp_path / "resumed.npz"])
    straight, resumed = _weights(tmp_path / "straight.npz"), _weights(tmp_path / "resumed.npz")
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a, b, atol=1e-6)
    steps = [int(r["step"]) for r in _steps(tmp_path / "resumed")]
    assert steps == list(range(1, 13))  # the step log continues, no step twice


# The same, fine-tuning: a classifier on the pretrained run, 3 epochs of 3 steps.
FINETUNE_SCRIPT = RUN_SCRIPT.replace(
    """result = training.pretrain(
    ModelConfig.preset("tiny", vocabulary_size=512),
    TrainConfig.preset("tiny", pretrain_steps=12),
    run_dir=run_dir, tokenizer=tokenizer, data_dir=data_dir, steps_per_epoch=3,""",
    """result = training.finetune(
    TrainConfig.preset("tiny", finetune_epochs=3, finetune_steps_per_epoch=3),
    run_dir=run_dir, pretrained=os.path.dirname(tokenizer), data_dir=data_dir,""",
)


# Epochs of one pass over the training split (the `small` and `checkpoint` presets' kind):
# a resumed run cannot skip batches of a repeated stream; it moves the shuffle and
# augmentation draws on by one iterator per finished epoch instead.
ONE_PASS_SCRIPT = FINETUNE_SCRIPT.replace(
    'TrainConfig.preset("tiny", finetune_epochs=3, finetune_steps_per_epoch=3)',
    'TrainConfig.preset("tiny", finetune_epochs=3, batch_size=256, augment_delete=0.1, '
    'augment_mask=0.1)',
)


@pytest.mark.slow
@pytest.mark.parametrize("script", [FINETUNE_SCRIPT, ONE_PASS_SCRIPT],
                         ids=["fixed-steps", "one-pass"])
def test_kill_minus_nine_during_finetuning_then_rerun_reaches_the_uninterrupted_weights(
    pretrained_run, data_dir, tmp_path, script
):
    assert FINETUNE_SCRIPT != RUN_SCRIPT and ONE_PASS_SCRIPT != FINETUNE_SCRIPT
    tokenizer = os.path.join(pretrained_run, "tokenizer")
    args = [tokenizer, data_dir]
    _run([tmp_path / "straight", *args, -1, tmp_path / "straight.npz"], script=script)
    killed = _run([tmp_path / "resumed", *args, 1, tmp_path / "x.npz"], check=False,
                  script=script)
    assert killed.returncode == -9  # really killed after its second epoch
    assert os.path.exists(tmp_path / "resumed" / "backup")
    _run([tmp_path / "resumed", *args, -1, tmp_path / "resumed.npz"], script=script)
    # The kept (best) epoch's weights, restored at the end: the same as never interrupted.
    straight, resumed = _weights(tmp_path / "straight.npz"), _weights(tmp_path / "resumed.npz")
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a, b, atol=1e-6)
    history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1", "2"]
    assert not os.path.exists(tmp_path / "resumed" / "backup")


# The same, with a frozen-backbone phase: 2 epochs of the head alone, then 2 of everything
# (two `fit` calls, each backed up; the first phase's backup is kept until the run ends).
FROZEN_SCRIPT = FINETUNE_SCRIPT.replace(
    'TrainConfig.preset("tiny", finetune_epochs=3, finetune_steps_per_epoch=3)',
    'TrainConfig.preset("tiny", finetune_epochs=4, freeze_backbone_epochs=2, '
    'finetune_steps_per_epoch=3)',
)
FROZEN_ONE_PASS_SCRIPT = ONE_PASS_SCRIPT.replace(
    "finetune_epochs=3,", "finetune_epochs=3, freeze_backbone_epochs=1, train_examples=2560,")


@pytest.mark.slow
@pytest.mark.parametrize("script, epochs, kill_at", [
    (FROZEN_SCRIPT, 4, (0, 2)),  # inside the 2-epoch frozen phase, inside the next
    (FROZEN_ONE_PASS_SCRIPT, 3, (0,)),  # right after the 1-epoch frozen phase
], ids=["fixed-steps", "one-pass"])
def test_kill_minus_nine_in_or_after_the_frozen_phase_then_rerun_reaches_the_same_weights(
    pretrained_run, data_dir, tmp_path, script, epochs, kill_at
):
    assert FROZEN_SCRIPT != FINETUNE_SCRIPT and FROZEN_ONE_PASS_SCRIPT != ONE_PASS_SCRIPT
    args = [os.path.join(pretrained_run, "tokenizer"), data_dir]
    _run([tmp_path / "straight", *args, -1, tmp_path / "straight.npz"], script=script)
    straight = _weights(tmp_path / "straight.npz")
    straight_history = list(csv.DictReader(open(tmp_path / "straight" / "history.csv")))
    # Both phases' epochs are logged (the second phase appends; it used to start afresh).
    assert [int(r["epoch"]) for r in straight_history] == list(range(epochs))
    for epoch in kill_at:
        run_dir = tmp_path / f"killed_after_epoch_{epoch}"
        killed = _run([run_dir, *args, epoch, tmp_path / "x.npz"], check=False, script=script)
        assert killed.returncode == -9, killed.stderr[-2000:]
        backup = run_dir / "backup" / ("frozen" if epoch < 2 else "")
        assert os.path.exists(backup / "training_metadata.json")
        _run([run_dir, *args, -1, tmp_path / "resumed.npz"], script=script)
        resumed = _weights(tmp_path / "resumed.npz")
        assert len(straight) == len(resumed)
        for a, b in zip(straight, resumed):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"killed after epoch {epoch}")
        # Every epoch logged once, with the uninterrupted run's validation numbers.
        history = list(csv.DictReader(open(run_dir / "history.csv")))
        assert [int(r["epoch"]) for r in history] == list(range(epochs))
        np.testing.assert_allclose([float(r["val_loss"]) for r in history],
                                   [float(r["val_loss"]) for r in straight_history], atol=1e-5)
        steps = [int(r["step"]) for r in _steps(run_dir)]
        assert steps == [int(r["step"]) for r in _steps(tmp_path / "straight")]
        assert not os.path.exists(run_dir / "backup")


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    import keras_llm
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_llm import ModelConfig, TrainConfig, training
    run_dir, data_dir = sys.argv[1:3]
    config = TrainConfig.preset("tiny", pretrain_steps=4, strategy="mirrored",
                                finetune_steps_per_epoch=3)
    pre = training.pretrain(ModelConfig.preset("tiny", vocabulary_size=512), config,
                            run_dir=run_dir + "/pre", data_dir=data_dir, verbose=0)
    assert pre.model.distribute_strategy.num_replicas_in_sync == 2
    fine = training.finetune(config, run_dir=run_dir + "/fine", pretrained=run_dir + "/pre",
                             data_dir=data_dir, verbose=0)
    assert fine.model.distribute_strategy.num_replicas_in_sync == 2
    print("OK", pre.metrics["validation_perplexity"], fine.metrics["test_f1"])
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(data_dir, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path), data_dir],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "OK" in completed.stdout


def test_bucketed_evaluation_batches_give_the_full_width_numbers(pretrained_run, data_dir):
    """With `length_buckets`, validation and test batches are bucketed (cut to their bucket's
    width) and their cardinality known; `evaluate` gives the numbers of full-width batches."""
    import tensorflow as tf

    from keras_llm import data as llm_data
    from keras_llm import metrics as llm_metrics
    from keras_llm.models import Classifier

    tokenizer = llm_data.Tokenizer.load(os.path.join(pretrained_run, "tokenizer"))
    config = TrainConfig.preset("tiny", batch_size=64, length_buckets=(8, 16))
    pairs = llm_data.load_text_classification("rotten_tomatoes", "validation", data_dir)
    bucketed = training._evaluation_data(pairs, tokenizer, config)
    full = llm_data.classification_dataset(pairs, tokenizer, config.classifier_sequence_length,
                                           config.batch_size)
    widths = [int(ids.shape[1]) for ids, _ in bucketed]
    assert set(widths) == {8, 16, 32} and int(bucketed.cardinality()) == len(widths)
    # Every review once: the same multiset of rows as the full-width batches.
    rows = sorted(tuple(row[row != 0]) for ids, _ in bucketed for row in ids.numpy())
    assert rows == sorted(tuple(row[row != 0]) for ids, _ in full for row in ids.numpy())
    backbone = TransformerBackbone(ModelConfig.load(os.path.join(pretrained_run,
                                                                 "model_config.json")))
    model = Classifier(backbone, 2)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=llm_metrics.classification_metrics(2))
    got = model.evaluate(bucketed, return_dict=True, verbose=0)
    want = model.evaluate(full, return_dict=True, verbose=0)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    assert tf.data.experimental.UNKNOWN_CARDINALITY != int(bucketed.cardinality())
