"""Pretrain a causal LM, then fine-tune a classifier on it, with `model.fit` and callbacks.

Every run writes into its `run_dir`:

    run.json                                kind of run, data set, tokenizer mode, pretrained
                                            source, precision used and why (and the machine)
    model_config.json, train_config.json   what was trained, reloadable
    tokenizer/                              the tokenizer (Tokenizer.save)
    backbone.keras, causal_lm.keras         after pretraining
    classifier.keras, labels.json           after fine-tuning (best epoch by validation F1)
    history.csv                             per-epoch logs (CSVLogger)
    steps.csv                               per-step loss, learning rate, gradient norm
    metrics.json                            final evaluation
    logs/                                   TensorBoard
    checkpoints/                            last good checkpoint (finite loss only)
    backup/                                 BackupAndRestore state while a run is unfinished
    loss.png, learning_rate.png, grad_norm.png
"""

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import time
import zipfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from keras_llm import callbacks as llm_callbacks
from keras_llm import data as llm_data
from keras_llm import hardware, plots
from keras_llm import metrics as llm_metrics
from keras_llm._io import read_json, write_json
from keras_llm.config import ModelConfig, TrainConfig
from keras_llm.models import CausalLM, Classifier, TransformerBackbone
from keras_llm.optimizers import adamw

MODEL_CONFIG = "model_config.json"
TRAIN_CONFIG = "train_config.json"
TOKENIZER = "tokenizer"
BACKBONE = "backbone.keras"
CAUSAL_LM = "causal_lm.keras"
CLASSIFIER = "classifier.keras"
LABELS = "labels.json"
METRICS = "metrics.json"
RUN_METADATA = "run.json"
HISTORY = "history.csv"
STEPS = "steps.csv"
VALIDATION_BATCHES = 16


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass
class RunResult:
    """What `pretrain` / `finetune` return: the run directory and the trained objects."""

    run_dir: str
    model: keras.Model
    tokenizer: object
    history: dict
    metrics: dict
    seconds: float


# --------------------------------------------------------------------------- helpers


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


def get_strategy(name="default"):
    """Returns the `tf.distribute` strategy for `"default"`, `"mirrored"`, `"multi_worker"`.

    `"multi_worker"` reads the cluster from the `TF_CONFIG` environment variable.
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
                "the cluster (see tf.distribute.MultiWorkerMirroredStrategy)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(
        "strategy must be one of ['default', 'mirrored', 'multi_worker']. "
        f"Received strategy={name!r}."
    )


def _is_chief():
    """False only on a non-chief worker of a `TF_CONFIG` cluster (it writes no artifacts)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if "type" not in task:
        return True
    if "chief" in config.get("cluster", {}):
        return task["type"] == "chief"
    return task["type"] == "worker" and task.get("index", 0) == 0


def _load_tokenizer(tokenizer):
    if tokenizer is None or isinstance(tokenizer, llm_data.Tokenizer):
        return tokenizer
    return llm_data.Tokenizer.load(os.fspath(tokenizer))


class StepLogger(keras.callbacks.Callback):
    """Records loss, learning rate and gradient norm at every step into `steps.csv`."""

    KEYS = ("loss", "learning_rate", "grad_norm")

    def __init__(self, path, append=False):
        super().__init__()
        self.path = path
        self.append = append
        self.steps = {"step": [], **{k: [] for k in self.KEYS}}

    def on_train_begin(self, logs=None):
        if self.append and os.path.exists(self.path):
            with open(self.path) as f:
                for row in csv.DictReader(f):
                    self.steps["step"].append(int(row["step"]))
                    for key in self.KEYS:
                        value = row.get(key, "")
                        self.steps[key].append(float(value) if value else float("nan"))

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.steps["step"].append(step)
        for key in self.KEYS:
            value = logs.get(key)
            self.steps[key].append(float(value) if value is not None else float("nan"))

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()

    def write(self):
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *self.KEYS])
            for i, step in enumerate(self.steps["step"]):
                writer.writerow([step, *(self.steps[k][i] for k in self.KEYS)])


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the step."""

    def __init__(self):
        super().__init__()
        self.bad_step = None
        self.bad_loss = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.bad_loss = float(loss)
            self.model.stop_training = True


class FiniteCheckpoint(keras.callbacks.Callback):
    """Saves the model at each epoch end while the loss is finite: the last good checkpoint."""

    def __init__(self, path, stopper):
        super().__init__()
        self.path = path
        self.stopper = stopper

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if self.stopper.bad_step is None and loss is not None and math.isfinite(float(loss)):
            self.model.save(self.path)


def _resume_epoch(backup_dir):
    """The epoch BackupAndRestore will resume from (0 for a fresh run).

    Keras writes the next epoch to run into `training_metadata.json` at every epoch end.
    """
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    return int(read_json(path).get("epoch", 0))


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


def common_callbacks(run_dir, train_config, schedule_steps, peak_learning_rate,
                     batch_size, sequence_length, resuming, peak_flops):
    """The callbacks every keras_llm training run uses (also the applications' runs).

    Warm-up + cosine schedule, gradient clipping (when `train_config.clip_norm > 0`),
    throughput/MFU, a non-finite-loss stopper, `steps.csv`, `history.csv` and TensorBoard
    logs in `run_dir`.

    Args:
        run_dir: str. The run directory.
        train_config: `TrainConfig`. Schedule shape and clipping.
        schedule_steps: int. Optimizer steps the schedule spans.
        peak_learning_rate: float. The schedule's peak.
        batch_size, sequence_length: int. For tokens/s.
        resuming: bool. Append to the CSV logs instead of starting them anew.
        peak_flops: float or None. Peak FLOP/s for MFU.

    Returns:
        `(callbacks, stopper, step_logger)`; pass `stopper` to `raise_if_diverged` after fit.
    """
    stopper = StopOnNonFiniteLoss()
    step_logger = StepLogger(os.path.join(run_dir, STEPS), append=resuming)
    callbacks = schedule_callbacks(train_config, schedule_steps, peak_learning_rate)
    callbacks += [
        llm_callbacks.Throughput(batch_size, sequence_length, peak_flops=peak_flops),
        stopper,
        step_logger,
        keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY), append=resuming),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), update_freq=50),
    ]
    return callbacks, stopper, step_logger


def raise_if_diverged(stopper, run_dir, checkpoint):
    """Raises `TrainingDivergedError` naming the step if `stopper` saw a non-finite loss."""
    if stopper.bad_step is None:
        return
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    kept = (
        f"The last good checkpoint is kept at {checkpoint}."
        if os.path.exists(checkpoint)
        else "No epoch finished with a finite loss, so there is no checkpoint."
    )
    raise TrainingDivergedError(
        f"Training stopped: the loss became {stopper.bad_loss} at step {stopper.bad_step}. "
        f"{kept} Lower the learning rate or enable gradient clipping (clip_norm)."
    )


def _shard_by_data(dataset):
    """Multi-worker runs split batches, not files: our data sets live in one file."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def history_dict(history):
    """`History.history` as a plain dict of lists of floats."""
    return {k: [float(v) for v in values] for k, values in history.history.items()}


# --------------------------------------------------------------------------- pretraining


def pretrain(
    model_config,
    train_config,
    data="keras_llm_corpus",
    run_dir="runs/pretrain",
    *,
    tokenizer=None,
    data_dir=None,
    steps_per_epoch=None,
    peak_flops=None,
    callbacks=(),
    verbose="auto",
):
    """Trains a `CausalLM` from scratch on unlabelled text with `model.fit`.

    The tokenizer is trained on the training split unless one is given, with the data set's
    `DatasetSpec.tokenizer_options` (`python_source` keeps case, newlines and indentation);
    the model's `vocabulary_size` becomes the tokenizer's real size. Started again with the same
    arguments after an interruption (even `kill -9`), the run continues from its last
    finished epoch (`keras.callbacks.BackupAndRestore`) and ends with the same weights as an
    uninterrupted run.

    Args:
        model_config: `ModelConfig`.
        train_config: `TrainConfig`: uses `batch_size`, `pretrain_steps`,
            `pretrain_learning_rate`, the schedule, clipping, weight decay, precision, seed.
        data: str or `tf.data.Dataset`. A pretraining data set name
            (`keras_llm.data.supported_datasets("pretraining")`) or a data set of strings.
            Defaults to `"keras_llm_corpus"`, which ships offline.
        run_dir: str. Where everything is written.
        tokenizer: `keras_llm.data.Tokenizer`, a path to a saved one, or `None` to train one.
        data_dir: str. tensorflow-datasets directory.
        steps_per_epoch: int. Steps between checkpoints/validation. Defaults to
            `min(pretrain_steps, 100)`.
        peak_flops: float. Peak FLOP/s of the hardware, for the logged MFU.
        callbacks: extra Keras callbacks, run after keras_llm's own.
        verbose: passed to `fit`.

    Returns:
        `RunResult` with the `CausalLM` (tokenizer attached), history and validation metrics.
    """
    start = time.perf_counter()
    model_config = ModelConfig.coerce(model_config, "model_config")
    train_config = TrainConfig.coerce(train_config, "train_config")
    # First: a multi-worker strategy must exist before TensorFlow runs any operation.
    strategy = get_strategy(train_config.strategy)
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(train_config.seed)

    if isinstance(data, str):
        texts = llm_data.load_pretraining_text(data, "train", data_dir)
        validation_texts = llm_data.load_pretraining_text(data, "validation", data_dir)
    else:
        texts, validation_texts = data, None

    tokenizer = _load_tokenizer(tokenizer)
    tokenizer_dir = os.path.join(run_dir, TOKENIZER)
    if tokenizer is None and os.path.exists(tokenizer_dir):
        tokenizer = llm_data.Tokenizer.load(tokenizer_dir)  # resuming: same vocabulary
    if tokenizer is None:
        # A data set may ask for its own settings: code keeps its case and its layout.
        options = {}
        if isinstance(data, str):
            options = llm_data.dataset_spec(data, "pretraining").tokenizer_options
        tokenizer = llm_data.Tokenizer.train(texts, model_config.vocabulary_size, **options)
    tokenizer.save(tokenizer_dir)
    if tokenizer.vocabulary_size != model_config.vocabulary_size:
        model_config = dataclasses.replace(model_config, vocabulary_size=tokenizer.vocabulary_size)
    model_config.save(os.path.join(run_dir, MODEL_CONFIG))
    train_config.save(os.path.join(run_dir, TRAIN_CONFIG))
    write_json(os.path.join(run_dir, RUN_METADATA), {
        "kind": "pretrain", "dataset": data if isinstance(data, str) else None,
        "tokenizer": {"lowercase": tokenizer.lowercase, "whitespace": tokenizer.whitespace},
        "precision": hardware.precision_record(train_config.precision),
    })

    total_steps = train_config.pretrain_steps
    steps_per_epoch = steps_per_epoch or min(total_steps, 100)
    epochs = math.ceil(total_steps / steps_per_epoch)
    backup_dir = os.path.join(run_dir, "backup")
    initial_epoch = _resume_epoch(backup_dir)
    sequence_length = model_config.sequence_length

    train_data = llm_data.lm_dataset(
        texts, tokenizer, sequence_length, train_config.batch_size,
        shuffle=True, seed=train_config.seed, repeat=True,
    )
    # A resumed run skips exactly the batches it already trained on.
    train_data = _shard_by_data(train_data.skip(initial_epoch * steps_per_epoch))
    validation_data = None
    if validation_texts is not None:
        validation_data = llm_data.lm_dataset(
            validation_texts, tokenizer, sequence_length, train_config.batch_size,
            shuffle=False, repeat=False,
        ).take(VALIDATION_BATCHES).cache()
        # Count once (this also fills the cache) so Keras knows where validation ends.
        count = sum(1 for _ in validation_data)
        validation_data = _shard_by_data(
            validation_data.apply(tf.data.experimental.assert_cardinality(count))
        )

    checkpoint = os.path.join(run_dir, "checkpoints", CAUSAL_LM)
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    with precision_policy(train_config.precision):
        with strategy.scope():
            model = CausalLM(TransformerBackbone(model_config))
            model.compile(
                optimizer=adamw(model, train_config.pretrain_learning_rate,
                                train_config.weight_decay),
                metrics=llm_metrics.language_model_metrics(),
                jit_compile=train_config.jit_compile,
                steps_per_execution=train_config.steps_per_execution,
            )
        fit_callbacks, stopper, step_logger = common_callbacks(
            run_dir, train_config, total_steps, train_config.pretrain_learning_rate,
            train_config.batch_size, sequence_length, initial_epoch > 0, peak_flops,
        )
        fit_callbacks += [
            FiniteCheckpoint(checkpoint, stopper),
            # Last among ours: it backs up after the checkpoint of the same epoch.
            keras.callbacks.BackupAndRestore(backup_dir),
            *callbacks,
        ]
        history = model.fit(
            train_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            validation_freq=max(1, epochs // 5),
            callbacks=fit_callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=verbose,
        )
        raise_if_diverged(stopper, run_dir, checkpoint)
        metrics = {}
        if validation_data is not None:
            metrics = model.evaluate(validation_data, return_dict=True, verbose=0)
            metrics = {f"validation_{k}": float(v) for k, v in metrics.items()}

    model.tokenizer = tokenizer
    if _is_chief():
        model.backbone.save(os.path.join(run_dir, BACKBONE))
        model.save(os.path.join(run_dir, CAUSAL_LM))
        plots.plot_training_curves(step_logger.steps, run_dir)
    seconds = time.perf_counter() - start
    metrics["seconds"] = seconds
    write_json(os.path.join(run_dir, METRICS), metrics)
    return RunResult(run_dir, model, tokenizer, history_dict(history), metrics, seconds)


# --------------------------------------------------------------------------- fine-tuning


def _stored_weights(keras_path):
    """All weight arrays stored in a `.keras` file, read with h5py (independent of Keras)."""
    arrays = []
    with zipfile.ZipFile(keras_path) as archive, archive.open("model.weights.h5") as raw:
        with h5py.File(raw, "r") as f:
            f.visititems(
                lambda name, obj: arrays.append((name, obj[()]))
                if isinstance(obj, h5py.Dataset) else None
            )
    return arrays


def verify_loaded_weights(backbone, keras_path):
    """Raises if any backbone weight differs from the weights stored in `keras_path`.

    Every stored array must be present in the backbone, element for element, and every
    backbone weight must come from the file: a partial load is an error that lists the
    mismatched weights, never a silent fresh start.
    """
    stored = _stored_weights(keras_path)
    remaining = list(backbone.weights)
    unmatched = []
    for name, array in stored:
        for i, weight in enumerate(remaining):
            value = keras.ops.convert_to_numpy(weight)
            if value.shape == array.shape and np.array_equal(value, array):
                remaining.pop(i)
                break
        else:
            unmatched.append(f"{name} {array.shape}")
    if unmatched or remaining:
        missing = [f"{w.path} {tuple(w.shape)}" for w in remaining]
        raise ValueError(
            f"The pretrained backbone at {keras_path} was not fully loaded. Stored weights "
            f"with no equal model weight: {unmatched or 'none'}. Model weights not loaded "
            f"from the file: {missing or 'none'}. Check that the pretraining run and this "
            "model use the same ModelConfig."
        )


def _pretrained_paths(pretrained):
    """(backbone .keras path, tokenizer dir or None, model_config or None)."""
    pretrained = os.fspath(pretrained)
    if os.path.isdir(pretrained):
        backbone = os.path.join(pretrained, BACKBONE)
        if not os.path.exists(backbone):
            raise FileNotFoundError(
                f"{pretrained!r} has no {BACKBONE}. Pass a pretraining run directory "
                "(keras-llm pretrain ...) or the path of a backbone .keras file."
            )
        tokenizer = os.path.join(pretrained, TOKENIZER)
        return backbone, tokenizer if os.path.isdir(tokenizer) else None
    if not os.path.exists(pretrained):
        raise FileNotFoundError(f"No pretrained backbone at {pretrained!r}.")
    tokenizer = os.path.join(os.path.dirname(pretrained), TOKENIZER)
    return pretrained, tokenizer if os.path.isdir(tokenizer) else None


def load_pretrained_backbone(path):
    """Loads a backbone `.keras` file and proves every weight came from it."""
    backbone = keras.models.load_model(path, compile=False)
    if isinstance(backbone, CausalLM):
        backbone = backbone.backbone
    if not isinstance(backbone, TransformerBackbone):
        raise ValueError(f"{path!r} does not hold a keras_llm TransformerBackbone.")
    verify_loaded_weights(backbone, path)
    return backbone


def finetune(
    train_config,
    data="rotten_tomatoes",
    run_dir="runs/finetune",
    *,
    pretrained=None,
    model_config=None,
    tokenizer=None,
    data_dir=None,
    pooling="mean",
    peak_flops=None,
    callbacks=(),
    verbose="auto",
):
    """Fine-tunes a `Classifier` with `model.fit`, keeping the best epoch by validation F1.

    With `pretrained` (a pretraining run directory or a backbone `.keras` file) the
    classifier is built on the pretrained backbone, after checking that every backbone
    weight was really loaded; the pretraining run's tokenizer is used. Without it the model
    starts from scratch with `model_config` and `tokenizer` (trained on the training texts
    if not given). `train_config.freeze_backbone_epochs` first trains the head alone.

    Args:
        train_config: `TrainConfig` (or preset name).
        data: str. A classification data set name. Defaults to `"rotten_tomatoes"`.
        run_dir: str. Where everything is written.
        pretrained: str or None. Pretraining run directory or backbone `.keras` path.
        model_config: `ModelConfig` for a model from scratch (ignored with `pretrained`).
        tokenizer: `Tokenizer` or path; defaults to the pretraining run's.
        data_dir: str. tensorflow-datasets directory.
        pooling: str. `"mean"` or `"last"`.
        peak_flops: float. For the logged MFU.
        callbacks: extra Keras callbacks.
        verbose: passed to `fit`.

    Returns:
        `RunResult`; `metrics` holds the test-split `loss, accuracy, precision, recall, f1`.
    """
    start = time.perf_counter()
    train_config = TrainConfig.coerce(train_config, "train_config")
    strategy = get_strategy(train_config.strategy)  # before any TensorFlow operation
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(train_config.seed)
    label_names = llm_data.label_names(data)
    num_classes = len(label_names)

    backbone_path = None
    tokenizer = _load_tokenizer(tokenizer)
    if pretrained is not None:
        backbone_path, pretrained_tokenizer = _pretrained_paths(pretrained)
        if tokenizer is None:
            if pretrained_tokenizer is None:
                raise FileNotFoundError(
                    f"No tokenizer/ beside {backbone_path}; pass tokenizer=... explicitly."
                )
            tokenizer = llm_data.Tokenizer.load(pretrained_tokenizer)
    elif model_config is None:
        raise ValueError(
            "finetune needs pretrained=RUN_DIR (a pretraining run) or model_config=... for a "
            "model trained from scratch."
        )
    else:
        model_config = ModelConfig.coerce(model_config, "model_config")
    train_pairs = llm_data.load_text_classification(data, "train", data_dir)
    if tokenizer is None:
        vocabulary = model_config.vocabulary_size
        tokenizer = llm_data.Tokenizer.train(train_pairs.map(lambda text, label: text), vocabulary)
    tokenizer.save(os.path.join(run_dir, TOKENIZER))
    write_json(os.path.join(run_dir, LABELS), label_names)
    write_json(os.path.join(run_dir, RUN_METADATA), {
        "kind": "finetune", "dataset": data,
        "pretrained": os.path.abspath(backbone_path) if backbone_path else None,
        "pooling": pooling,
        "precision": hardware.precision_record(train_config.precision),
    })
    train_config.save(os.path.join(run_dir, TRAIN_CONFIG))

    length = train_config.classifier_sequence_length
    batch = train_config.batch_size
    augmenter = llm_data.Augmenter.from_train_config(train_config, mask_id=tokenizer.unk_id)
    train_data = llm_data.classification_dataset(
        train_pairs, tokenizer, length, batch, augment=augmenter, shuffle=True,
        seed=train_config.seed, bucket_boundaries=train_config.length_buckets or None,
    )
    validation_data, test_data = (
        llm_data.classification_dataset(
            llm_data.load_text_classification(data, split, data_dir), tokenizer, length, batch
        ).cache()
        for split in ("validation", "test")
    )
    steps_per_epoch = train_config.finetune_steps_per_epoch or int(
        train_data.cardinality().numpy()
    )
    width = length  # tokens a row, padding included, for the logged tokens/s
    if train_config.length_buckets:
        # One pass: how many batches an epoch has, and how wide they are on average.
        widths = [int(ids.shape[1]) for ids, _ in train_data]
        if steps_per_epoch <= 0:  # no fixed steps_per_epoch: one pass
            steps_per_epoch = len(widths)
        width = max(1, round(sum(widths) / len(widths)))
    elif steps_per_epoch <= 0:  # unknown cardinality: count once
        steps_per_epoch = sum(1 for _ in train_data)
    if train_config.finetune_steps_per_epoch or train_config.length_buckets:
        # Buckets: augmentation changes lengths, so an epoch's batch count may vary by one
        # or two; a repeated data set never runs out before steps_per_epoch.
        train_data = train_data.repeat()
    train_data, validation_data, test_data = (
        _shard_by_data(d) for d in (train_data, validation_data, test_data)
    )
    total_steps = steps_per_epoch * train_config.finetune_epochs

    checkpoint = os.path.join(run_dir, CLASSIFIER)
    with precision_policy(train_config.precision):
        with strategy.scope():
            if backbone_path is not None:
                backbone = load_pretrained_backbone(backbone_path)
                model_config = backbone.model_config
            else:
                if tokenizer.vocabulary_size != model_config.vocabulary_size:
                    model_config = dataclasses.replace(
                        model_config, vocabulary_size=tokenizer.vocabulary_size
                    )
                backbone = TransformerBackbone(model_config)
            model = Classifier(backbone, num_classes, pooling=pooling)
        model_config.save(os.path.join(run_dir, MODEL_CONFIG))

        fit_callbacks, stopper, step_logger = common_callbacks(
            run_dir, train_config, total_steps, train_config.finetune_learning_rate,
            batch, width, False, peak_flops,
        )
        fit_callbacks += [
            keras.callbacks.ModelCheckpoint(
                checkpoint, monitor="val_f1", mode="max", save_best_only=True
            ),
            *callbacks,
        ]

        def compile_and_fit(epochs, initial_epoch, iterations):
            with strategy.scope():
                model.compile(
                    optimizer=adamw(model, train_config.finetune_learning_rate,
                                    train_config.weight_decay),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=llm_metrics.classification_metrics(num_classes),
                    jit_compile=train_config.jit_compile,
                    steps_per_execution=train_config.steps_per_execution,
                )
                # The schedule reads optimizer.iterations: continue it across phases.
                model.optimizer.iterations.assign(iterations)
            return model.fit(
                train_data,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_data=validation_data,
                callbacks=fit_callbacks,
                shuffle=False,  # the tf.data pipeline shuffles, seeded
                verbose=verbose,
            )

        history = {}
        frozen = train_config.freeze_backbone_epochs
        phases = [(frozen, 0, False)] if frozen else []
        if train_config.finetune_epochs > frozen:
            phases.append((train_config.finetune_epochs, frozen, True))
        for epochs, initial_epoch, backbone_trainable in phases:
            backbone.trainable = backbone_trainable
            result = compile_and_fit(epochs, initial_epoch, initial_epoch * steps_per_epoch)
            for key, values in history_dict(result).items():
                history.setdefault(key, []).extend(values)
            if stopper.bad_step is not None:
                break
        backbone.trainable = True
        raise_if_diverged(stopper, run_dir, checkpoint)

        best = keras.models.load_model(checkpoint, compile=False)
        model.set_weights(best.get_weights())
        metrics = model.evaluate(test_data, return_dict=True, verbose=0)
        metrics = {f"test_{k}": float(v) for k, v in metrics.items()}

    plots.plot_training_curves(step_logger.steps, run_dir)
    seconds = time.perf_counter() - start
    metrics["seconds"] = seconds
    write_json(os.path.join(run_dir, METRICS), metrics)
    model.tokenizer = tokenizer
    return RunResult(run_dir, model, tokenizer, history, metrics, seconds)


def load_run(run_dir):
    """Loads the model of a run directory with its tokenizer attached.

    Returns the `Classifier` of a fine-tuning run, else the `CausalLM` of a pretraining run.
    """
    for name in (CLASSIFIER, CAUSAL_LM):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            model = keras.models.load_model(path)
            model.tokenizer = llm_data.Tokenizer.load(os.path.join(run_dir, TOKENIZER))
            return model
    raise FileNotFoundError(
        f"{run_dir!r} holds neither {CLASSIFIER} nor {CAUSAL_LM}: is it a keras_llm run "
        "directory (keras-llm pretrain / finetune)?"
    )
