"""The run loop: what every keras_llm training job does, written once.

Each training entry point (`training.pretrain`, `training.finetune`,
`applications.dialogue.finetune_dialogue`, `applications.multimodal.train_digit_classifier`
and `train_digit_captioner`; the studies call `finetune`) is a short recipe on
`TrainingRun`: its data, its model, the metric that picks the kept epoch, its report. The
loop owns everything else, in this order:

    run = TrainingRun(run_dir, train_config)     # tf.distribute strategy (before any
                                                 # TensorFlow op), run directory, seed
    run.write_files("finetune", {"dataset": ...}, tokenizer=..., model_config=...)
    with run.policy():                           # precision ("auto": from the hardware)
        with run.strategy.scope():
            model = ...
        run.compile(model, learning_rate, loss=..., metrics=...)      # AdamW, XLA, ...
        run.callbacks(schedule_steps, learning_rate, checkpoint=path, monitor="val_f1")
        history = run.fit(model, train_data, epochs=..., validation_data=...)
        run.restore_best(model)                  # TrainingDivergedError first on NaN
        metrics = run.evaluate(model, test_data, prefix="test_")
    return run.finish(model, metrics, history, tokenizer)  # curves, metrics.json

`callbacks` assembles Keras' own mechanisms: the warm-up + cosine schedule and gradient
clipping (`keras_llm.callbacks`), throughput / MFU, the NaN stop, `steps.csv`,
`CSVLogger` (`history.csv`), `TensorBoard` (`logs/`), and the checkpoint: the best epoch by
`monitor` (`ModelCheckpoint`), or, without a monitor, the last epoch with a finite loss plus
`BackupAndRestore` (a run started again after `kill -9` resumes from its last epoch).

Run directory file names are defined here, once (`training` re-exports them).
"""

import contextlib
import csv
import dataclasses
import glob
import json
import os
import shutil
import sys
import time

try:
    import fcntl
except ImportError:  # Windows: no run-directory lock
    fcntl = None

import keras
import tensorflow as tf

from keras_llm import callbacks as llm_callbacks
from keras_llm import hardware, plots
from keras_llm._io import hostname, load_keras_model, read_json, write_error, write_json
from keras_llm.config import TrainConfig
from keras_llm.models.distribute import barrier, check_keras_model, multi_worker_mode
from keras_llm.optimizers import adamw

MODEL_CONFIG = "model_config.json"
TRAIN_CONFIG = "train_config.json"
TOKENIZER = "tokenizer"
METRICS = "metrics.json"
RUN_METADATA = "run.json"
HISTORY = "history.csv"
STEPS = "steps.csv"
BACKUP = "backup"
LOGS = "logs"
WORKERS = "workers"
LOCK = "run.lock"


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


class RunDirectoryInUseError(RuntimeError):
    """Another running process trains into the run directory; the message names it."""


_held_locks = {}  # run directory (real path) -> open lock file, held by this process


def lock_run_directory(run_dir):
    """Takes `run_dir/run.lock` for this process: one writer per run directory.

    The lock is an exclusive `flock` on the file, which holds the owner's pid and host;
    the kernel releases it when the owner exits, however it exits (`kill -9` included), so
    a crashed run never leaves a stale lock, and the next run says whose lock it took over.
    A resumed run (`BackupAndRestore`) takes it like a fresh one. Released by
    `unlock_run_directory` (`TrainingRun.finish`).

    Raises:
        RunDirectoryInUseError: a live process holds the lock; the message names it.
    """
    if fcntl is None:
        return
    key = os.path.realpath(run_dir)
    unlock_run_directory(run_dir)  # this process's earlier run here ended without finish()
    path = os.path.join(run_dir, LOCK)
    lock = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise RunDirectoryInUseError(
            f"{run_dir} is in use by {owner}, which is still training into it. Wait for it "
            "to finish, stop it, or choose another run directory (--run-dir)."
        ) from None
    lock.seek(0)
    previous = lock.read().strip()
    if previous:  # its owner ended without releasing it: killed, or crashed
        print(f"keras_llm: {run_dir} was locked by {previous}, which is no longer running; "
              "taking the lock over", file=sys.stderr, flush=True)
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} on {hostname()}\n")
    lock.flush()
    _held_locks[key] = lock


def unlock_run_directory(run_dir):
    """Releases this process's lock on `run_dir` (emptied: no owner), if it holds one."""
    lock = _held_locks.pop(os.path.realpath(run_dir), None)
    if lock is not None:
        lock.seek(0)
        lock.truncate()
        lock.close()  # closing releases the flock


@dataclasses.dataclass
class RunResult:
    """What `pretrain` / `finetune` / `finetune_dialogue` return."""

    run_dir: str
    model: keras.Model
    tokenizer: object
    history: dict
    metrics: dict
    seconds: float


@contextlib.contextmanager
def precision_policy(precision):
    """Sets the Keras global dtype policy for the block, then restores the previous one.

    `"auto"` becomes `mixed_bfloat16` or `float32` from the hardware
    (`keras_llm.hardware.choose_precision`); the choice and its reason are printed once.
    """
    policy, reason = hardware.choose_precision(precision)
    if precision == hardware.AUTO:
        hardware.announce_precision(policy, reason)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


_MULTI_WORKER_STRATEGY = {}


def get_strategy(name="default"):
    """Returns the `tf.distribute` strategy for `"default"`, `"mirrored"`, `"multi_worker"`.

    `"multi_worker"` reads the cluster from the `TF_CONFIG` environment variable; it must be
    asked for before TensorFlow runs any operation, and the same one is returned after.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Sparse embedding gradients carry a different number of rows on each replica;
        # the collective all-reduce needs equal shapes, gathering to one device does not.
        return tf.distribute.MirroredStrategy(
            cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' needs the TF_CONFIG environment variable describing "
                "the cluster (see tf.distribute.MultiWorkerMirroredStrategy; keras-llm "
                "launch sets it)."
            )
        # One per process: its collectives are configured once, before any TensorFlow op.
        if _MULTI_WORKER_STRATEGY.get("strategy") is None:
            _MULTI_WORKER_STRATEGY["strategy"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER_STRATEGY["strategy"]
    raise ValueError(
        "strategy must be one of ['default', 'mirrored', 'multi_worker']. "
        f"Received strategy={name!r}."
    )


def _task():
    """This process's `(type, index)` in the `TF_CONFIG` cluster, or None outside one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if "type" not in task:
        return None
    chief = ("chief", 0) if "chief" in config.get("cluster", {}) else ("worker", 0)
    return (task["type"], int(task.get("index", 0))), chief


def is_chief():
    """False only on a non-chief worker of a `TF_CONFIG` cluster (it writes no artifacts)."""
    task = _task()
    return task is None or task[0] == task[1]


def worker_directory(run_dir):
    """Where this process writes a run: `run_dir` itself on the chief (and outside a cluster);
    `run_dir/workers/<type>-<index>` on every other worker of a `TF_CONFIG` cluster.

    Every worker trains the same model and must keep its own checkpoints and backup (to pick
    the best epoch and to resume after a crash) even when the workers share a file system, as
    the workers of `keras-llm launch` do; only the chief's files are the run's.
    """
    if is_chief():
        return run_dir
    (kind, index), _ = _task()
    return os.path.join(run_dir, WORKERS, f"{kind}-{index}")


def shard_by_data(dataset):
    """Multi-worker runs split batches, not files: our data sets live in one file."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def history_dict(history):
    """`History.history` as a plain dict of lists of floats."""
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def schedule_callbacks(train_config, schedule_steps, peak_learning_rate):
    """The learning-rate schedule and gradient clipping of `train_config`, as callbacks.

    A `WarmupCosineScheduler` over `schedule_steps` optimizer steps peaking at
    `peak_learning_rate`, then `GradientClipping` when `train_config.clip_norm > 0`.
    """
    callbacks = [
        llm_callbacks.WarmupCosineScheduler(
            peak_learning_rate,
            warmup_steps=int(round(train_config.warmup_fraction * schedule_steps)),
            total_steps=schedule_steps,
            min_learning_rate=peak_learning_rate * train_config.min_learning_rate_ratio,
            decay=train_config.decay,
        ),
    ]
    if train_config.clip_norm > 0:
        callbacks.append(llm_callbacks.GradientClipping(max_norm=train_config.clip_norm))
    return callbacks


def raise_if_diverged(stopper, run_dir, checkpoint):
    """Raises `TrainingDivergedError` naming the step if `stopper` saw a non-finite loss."""
    if stopper.bad_step is None:
        return
    shutil.rmtree(os.path.join(run_dir, BACKUP), ignore_errors=True)
    kept = (
        f"The last good checkpoint is kept at {checkpoint}."
        if checkpoint and os.path.exists(checkpoint)
        else "No epoch finished with a finite loss, so there is no checkpoint."
    )
    raise TrainingDivergedError(
        f"Training stopped: the loss became {stopper.bad_loss} at step {stopper.bad_step}. "
        f"{kept} Lower the learning rate or enable gradient clipping (clip_norm)."
    )


class TrainingRun:
    """One training job: its directory, strategy, precision, optimizer, callbacks, report.

    Args:
        run_dir: str. Where everything is written (created).
        train_config: `TrainConfig` or preset name: strategy, seed, precision, optimizer,
            schedule and clipping settings.
        verbose: passed to `fit`.

    Creating it picks the `tf.distribute` strategy first (a multi-worker strategy must
    exist before TensorFlow runs any operation), creates `run_dir`, locks it against a
    second writer (`lock_run_directory`; `finish` releases it) and seeds Python, NumPy and
    TensorFlow with `train_config.seed`. On a worker other than the chief of a multi-worker
    cluster, `run_dir` becomes that worker's own `run_dir/workers/worker-<i>`
    (`worker_directory`): its checkpoints and backup, never the chief's files.
    """

    def __init__(self, run_dir, train_config, *, verbose="auto"):
        self.started = time.perf_counter()
        self.train_config = TrainConfig.coerce(train_config, "train_config")
        self.strategy = get_strategy(self.train_config.strategy)
        self.run_dir = worker_directory(os.fspath(run_dir))
        self.verbose = verbose
        os.makedirs(self.run_dir, exist_ok=True)
        lock_run_directory(self.run_dir)  # each worker's own directory (the chief's: run_dir)
        keras.utils.set_random_seed(self.train_config.seed)
        self.stopper = llm_callbacks.StopOnNonFiniteLoss()
        self.step_logger = None
        self.checkpoint = None
        self.fit_callbacks = []
        self.fitted = False  # whether `fit` was called (a later call appends to the logs)

    def path(self, *names):
        """A path inside the run directory."""
        return os.path.join(self.run_dir, *names)

    def resume_epoch(self):
        """The epoch `BackupAndRestore` will resume from (0 for a fresh run).

        Keras writes the next epoch to run into `training_metadata.json` at every epoch end:
        in `backup/`, or, for a phase that a later `fit` call continues (`fit(phase=...)`),
        in `backup/<phase>/`; the latest of them.
        """
        paths = [self.path(BACKUP, "training_metadata.json"),
                 *glob.glob(self.path(BACKUP, "*", "training_metadata.json"))]
        return max((int(read_json(path).get("epoch", 0)) for path in paths
                    if os.path.exists(path)), default=0)

    def resumes_last_phase(self):
        """Whether the last `fit` call of the run (the one without a `phase`) was backed up:
        a resumed run then skips the phases before it, whose result that backup holds."""
        return os.path.exists(self.path(BACKUP, "training_metadata.json"))

    def write_files(self, kind, metadata=None, *, model_config=None, tokenizer=None):
        """Saves the tokenizer, the configs and `run.json`: `kind`, the `metadata` dict's
        entries, the precision used and why."""
        if tokenizer is not None:
            tokenizer.save(self.path(TOKENIZER))
        if model_config is not None:
            model_config.save(self.path(MODEL_CONFIG))
        self.train_config.save(self.path(TRAIN_CONFIG))
        write_json(self.path(RUN_METADATA), {
            "kind": kind, **(metadata or {}),
            "precision": hardware.precision_record(self.train_config.precision),
        })

    def policy(self):
        """The Keras dtype policy of `train_config.precision`, for the block."""
        return precision_policy(self.train_config.precision)

    def compile(self, model, learning_rate, *, step=None, layer_decay=1.0, **compile_args):
        """`model.compile` with AdamW (`learning_rate`, the config's weight decay,
        `layer_decay`: see `optimizers.adamw`), the config's `jit_compile` and
        `steps_per_execution`, under the strategy.

        `step` sets `optimizer.iterations`, which the schedule reads: a second phase of one
        run continues the schedule where the first left it.
        """
        config = self.train_config
        if multi_worker_mode(self.strategy):
            check_keras_model(model)
        with self.strategy.scope():
            model.compile(
                optimizer=adamw(model, learning_rate, config.weight_decay,
                                layer_decay=layer_decay),
                jit_compile=config.jit_compile,
                steps_per_execution=config.steps_per_execution,
                **compile_args,
            )
            if step is not None:
                model.optimizer.iterations.assign(step)

    def callbacks(self, schedule_steps, learning_rate, *, checkpoint, monitor=None,
                  mode="auto", tokens=None, peak_flops=None, tensorboard=True, extra=(),
                  backup=False):
        """Assembles the callbacks `fit` uses; returns them.

        Args:
            schedule_steps: int. Optimizer steps the warm-up + cosine schedule spans.
            learning_rate: float. Its peak.
            checkpoint: str. Where the kept model is saved.
            monitor: str or None. Keep the best epoch by this validation metric
                (`ModelCheckpoint`, `mode` "min", "max" or "auto"; saved under a temporary
                name and renamed into place, `PublishCheckpoint`); None keeps the last
                epoch with a finite loss and backs the run up to resume it after a crash
                (`BackupAndRestore` in `backup/`; the CSV logs are then appended to).
            tokens: `(batch_size, sequence_length)` or None. Logs tokens/s, FLOP/s, MFU.
            peak_flops: float or None. Peak FLOP/s of the hardware, for MFU.
            tensorboard: bool. TensorBoard logs in `logs/`.
            extra: the caller's Keras callbacks, run after these.
            backup: bool. With a `monitor`, also back the run up (`BackupAndRestore`) so
                that a run started again after a crash resumes from its last epoch, and
                the kept epoch is still the best of all (`ModelCheckpoint` starts from the
                best value in `history.csv`). A run of several `fit` calls names each but
                the last with `fit(phase=...)`. Defaults to `False`.
        """
        resuming = self.resume_epoch() > 0
        self.checkpoint = checkpoint
        self.step_logger = llm_callbacks.StepLogger(self.path(STEPS), append=resuming)
        callbacks = schedule_callbacks(self.train_config, schedule_steps, learning_rate)
        if tokens is not None:
            callbacks.append(llm_callbacks.Throughput(*tokens, peak_flops=peak_flops))
        callbacks += [
            self.stopper,
            self.step_logger,
            keras.callbacks.CSVLogger(self.path(HISTORY), append=resuming),
        ]
        if tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(self.path(LOGS), update_freq=50))
        if monitor is None:
            os.makedirs(os.path.dirname(checkpoint) or ".", exist_ok=True)
            callbacks += [
                llm_callbacks.FiniteCheckpoint(checkpoint, self.stopper),
                # Last among ours: it backs up after the checkpoint of the same epoch.
                keras.callbacks.BackupAndRestore(self.path(BACKUP)),
            ]
        else:  # written under a temporary name, renamed into place when complete
            directory, name = os.path.split(checkpoint)
            partial = os.path.join(directory, f".{name}.partial.keras")
            callbacks += [
                keras.callbacks.ModelCheckpoint(
                    partial, monitor=monitor, mode=mode, save_best_only=True,
                    initial_value_threshold=self._best_so_far(monitor, mode) if resuming
                    else None,
                ),
                llm_callbacks.PublishCheckpoint(partial, checkpoint),
            ]
            if backup:  # last among ours: it backs up after the checkpoint of the epoch
                callbacks.append(keras.callbacks.BackupAndRestore(self.path(BACKUP)))
        self.fit_callbacks = [*callbacks, *extra]
        return self.fit_callbacks

    def _best_so_far(self, monitor, mode):
        """The best `monitor` value of the epochs a resumed run already finished (from
        `history.csv`), or None."""
        path = self.path(HISTORY)
        if mode not in ("min", "max") or not os.path.exists(path):
            return None
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        values = [float(row[monitor]) for row in rows
                  if monitor in row and int(row["epoch"]) < self.resume_epoch()]
        if not values:
            return None
        return max(values) if mode == "max" else min(values)

    def fit(self, model, x, y=None, *, phase=None, **fit_args):
        """`model.fit` with the run's callbacks; tf.data sets are split by batch across
        workers. `shuffle` defaults to False: keras_llm's tf.data pipelines shuffle, seeded.

        A run may call it more than once (phases: `training.finetune` trains the head alone
        first). A later call appends to the logs. Name every call but the last with `phase`:
        its backup then goes to `backup/<phase>/` and is kept when that call ends, so that a
        run killed after it resumes from there; the last call's backup (`backup/`) is removed
        with everything under it when the run ends.
        """
        fit_args.setdefault("shuffle", False)
        callbacks = self.fit_callbacks
        if phase is not None:
            callbacks = [
                keras.callbacks.BackupAndRestore(self.path(BACKUP, phase), delete_checkpoint=False)
                if isinstance(c, keras.callbacks.BackupAndRestore) else c
                for c in callbacks
            ]
        if self.fitted:  # a later phase continues the logs of the earlier ones
            for callback in callbacks:
                if isinstance(callback, keras.callbacks.CSVLogger):
                    callback.append = True
        # Keras keeps the epoch a `BackupAndRestore` restored (`model._initial_epoch`) after
        # `fit` returns: a later `fit` of the same model would start there, not at its own
        # `initial_epoch`.
        model._initial_epoch = None
        self.fitted = True
        if isinstance(x, tf.data.Dataset):
            x = shard_by_data(x)
        validation = fit_args.get("validation_data")
        if isinstance(validation, tf.data.Dataset):
            fit_args["validation_data"] = shard_by_data(validation)
        try:
            return model.fit(x, y, callbacks=callbacks, verbose=self.verbose, **fit_args)
        except OSError as error:
            if error.filename or "Cannot write" in str(error):
                raise  # already names what it could not write
            # A write of Keras' own (the best-epoch checkpoint, a backup, a log) failed
            # without naming its file: name the run directory it writes into.
            raise write_error(error, self.run_dir) from error

    def raise_if_diverged(self):
        """`TrainingDivergedError` naming the step if the loss became NaN or infinite."""
        raise_if_diverged(self.stopper, self.run_dir, self.checkpoint)

    def restore_best(self, model):
        """Loads the kept epoch's weights into `model` (after `raise_if_diverged`)."""
        self.raise_if_diverged()
        best = load_keras_model(self.checkpoint, compile=False)
        model.set_weights(best.get_weights())

    def evaluate(self, model, x, y=None, *, prefix="", **evaluate_args):
        """`model.evaluate` as a dict of floats, each key prefixed (`"test_"`)."""
        if isinstance(x, tf.data.Dataset):
            x = shard_by_data(x)
        metrics = model.evaluate(x, y, return_dict=True, verbose=0, **evaluate_args)
        return {f"{prefix}{k}": float(v) for k, v in metrics.items()}

    def finish(self, model, metrics, history=None, tokenizer=None):
        """Plots the step curves, writes `metrics.json` (with `seconds`); a `RunResult`.

        On several workers it returns when all have finished: the chief's files (saved by the
        recipe before this call) are then complete for whatever runs next."""
        if is_chief() and self.step_logger is not None:
            plots.plot_training_curves(self.step_logger.steps, self.run_dir)
        seconds = time.perf_counter() - self.started
        metrics["seconds"] = seconds
        write_json(self.path(METRICS), metrics)
        unlock_run_directory(self.run_dir)
        barrier(self.strategy)  # every worker returns after the chief's files are written
        if tokenizer is not None:
            model.tokenizer = tokenizer
        if isinstance(history, keras.callbacks.History):
            history = history_dict(history)
        return RunResult(self.run_dir, model, tokenizer, history or {}, metrics, seconds)
