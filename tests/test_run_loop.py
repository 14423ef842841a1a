"""The shared run loop (`keras_llm.run_loop.TrainingRun`) driven by a recipe of its own.

The entry points built on it (pretrain, finetune, dialogue, digits) are tested end to end in
their own files; here a minimal recipe on NumPy data checks the loop's contract: the run
directory it writes, the kept epoch it restores (against weights recorded independently at
every epoch end), its NaN stop, and its resumable mode.
"""

import json
import os

import keras
import numpy as np
import pytest

from keras_llm import run_loop
from keras_llm.config import TrainConfig

CONFIG = TrainConfig.preset("tiny", finetune_epochs=4, finetune_learning_rate=0.05)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")


class _RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append([w.copy() for w in self.model.get_weights()])


def _recipe(run_dir, train_config=CONFIG, y_scale=1.0, monitor="val_loss"):
    run = run_loop.TrainingRun(run_dir, train_config, verbose=0)
    x, y = _data()
    run.write_files("toy", {"dataset": "numpy"})
    record = _RecordWeights()
    with run.policy():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        run.compile(model, train_config.finetune_learning_rate, loss="mse")
        steps = 8 * train_config.finetune_epochs
        run.callbacks(steps, train_config.finetune_learning_rate,
                      checkpoint=run.path("toy.keras"), monitor=monitor, tensorboard=False,
                      extra=[record])
        history = run.fit(model, x[:48], y[:48] * y_scale, batch_size=8,
                          epochs=train_config.finetune_epochs,
                          validation_data=(x[48:], y[48:] * y_scale))
        if monitor is None:
            run.raise_if_diverged()
        else:
            run.restore_best(model)
        metrics = run.evaluate(model, x[48:], y[48:] * y_scale, prefix="test_")
    return run.finish(model, metrics, history), record


def test_run_directory_and_the_restored_best_epoch(tmp_path):
    result, record = _recipe(tmp_path / "run")
    names = set(os.listdir(result.run_dir))
    assert {"run.json", "train_config.json", "steps.csv", "history.csv", "metrics.json",
            "toy.keras", "loss.png", "learning_rate.png"} <= names
    assert "logs" not in names  # tensorboard=False
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["kind"] == "toy" and run_json["dataset"] == "numpy"
    assert run_json["precision"]["used"] == "float32"
    val_loss = result.history["val_loss"]
    best = int(np.argmin(val_loss))
    for restored, recorded in zip(result.model.get_weights(), record.per_epoch[best]):
        np.testing.assert_array_equal(restored, recorded)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_loss"] == pytest.approx(val_loss[best], rel=1e-5)
    assert metrics["seconds"] == result.seconds > 0
    steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 6 * CONFIG.finetune_epochs  # header + 48 rows / batch 8


def test_a_non_finite_loss_stops_the_run_and_names_the_step(tmp_path):
    with pytest.raises(run_loop.TrainingDivergedError, match="at step 1"):
        _recipe(tmp_path / "run", y_scale=1e30)


def test_resumable_mode_keeps_the_last_epoch_and_backs_up(tmp_path):
    result, record = _recipe(tmp_path / "run", monitor=None)
    assert os.path.exists(tmp_path / "run" / "toy.keras")
    # No monitor: the last epoch is kept, the model is left as training ended.
    for kept, last in zip(result.model.get_weights(), record.per_epoch[-1]):
        np.testing.assert_array_equal(kept, last)
    reloaded = keras.models.load_model(tmp_path / "run" / "toy.keras", compile=False)
    for saved, last in zip(reloaded.get_weights(), record.per_epoch[-1]):
        np.testing.assert_array_equal(saved, last)
    run = run_loop.TrainingRun(tmp_path / "run", CONFIG)
    assert run.resume_epoch() == 0  # a finished run leaves no backup to resume from
