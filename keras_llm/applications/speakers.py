"""Who is speaking? Statement -> party on the 2016 US debates, three models in one run.

`speakers_study(pretrained, run_dir)` scores three models on the three-class
`debates_speakers` task (`Democratic`, `Republican`, `Moderator`; split by debate: train = 1st
presidential + vice-presidential debate, validation = 2nd, test = 3rd; see
`keras_llm.data.builders.debates`):

    tfidf        TF-IDF + logistic regression (`evaluation.tfidf_baseline`, one-vs-rest),
                 C chosen on validation macro-F1
    scratch      `Classifier`, backbone randomly initialised
    pretrained   `Classifier` on the causal-LM backbone of the pretraining run `pretrained`

The neural arms share the pretraining run's tokenizer and `ModelConfig`, the fine-tuning
budget and the seeds (`training.finetune`; finished runs are reused when the study is
started again, through `keras_llm.transfer`'s run markers); each run is then scored by
`evaluation.evaluate_run` on validation and test: macro precision, recall, F1, accuracy and
the per-class report. `SPEAKERS_TRAIN_CONFIG` and `SPEAKERS_LEARNING_RATES` are the settings
chosen on the validation split (the 2nd debate) only.

Run directory:

    speakers.md, speakers.json     the table (mean ± std over seeds) and every number
    tfidf.json                     the baseline's C grid, scores and test report
    <arm>/seed<s>/                 fine-tuning runs (report.json, validation_report.json,
                                   confusion_matrix.png, ...)
"""

import dataclasses
import os
import time

import keras
import numpy as np

from keras_llm import data as llm_data
from keras_llm import evaluation, training, transfer
from keras_llm._io import write_json
from keras_llm.config import ModelConfig, TrainConfig

DATASET = "debates_speakers"
ARMS = ("tfidf", "scratch", "pretrained")
ARM_TITLES = {
    "tfidf": "TF-IDF + logistic regression",
    "scratch": "Classifier from scratch",
    "pretrained": "Classifier fine-tuned from the pretrained backbone",
    "probe": "Linear probe (pretrained backbone frozen)",
}
# Chosen on the validation split (the 2nd debate) only, seed 0, 10 epochs keeping the best:
# classifier_sequence_length 128 beat 64 (validation macro-F1 pretrained 0.631 vs 0.625,
# scratch 0.682 vs 0.592; statements average 46 words and a quarter exceed 40), and the peak
# learning rate 3e-4 beat 1e-3 (pretrained 0.604, scratch 0.571) and, for the pretrained
# backbone, 1e-4 (0.614). Both arms peak near epoch 5 and then overfit the 829 turns.
SPEAKERS_TRAIN_CONFIG = TrainConfig.preset(
    "small",
    finetune_epochs=10,
    classifier_sequence_length=128,
)
SPEAKERS_LEARNING_RATES = {"scratch": 3e-4, "pretrained": 3e-4, "probe": 1e-2}
SCORES = ("precision", "recall", "f1", "accuracy")


def _summary(runs):
    """Mean and sample std (ddof=1; 0 for one run) of the scores over runs."""
    out = {"n": len(runs)}
    for key in (*SCORES, "validation_f1"):
        values = np.asarray([run[key] for run in runs], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def speakers_study(
    pretrained,
    run_dir="runs/speakers",
    *,
    train_config=None,
    seeds=(0, 1, 2),
    arms=ARMS,
    learning_rates=None,
    data_dir=None,
    verbose=1,
):
    """Scores TF-IDF, a classifier from scratch and a pretrained one on `debates_speakers`.

    Args:
        pretrained: str. A pretraining run directory (`keras-llm pretrain`, or the
            quickstart's `runs/quickstart/pretrain`): its backbone for the `pretrained` arm,
            its tokenizer and `ModelConfig` for both neural arms.
        run_dir: str. Where the study writes. Defaults to `"runs/speakers"`.
        train_config: `TrainConfig`, preset name or None for `SPEAKERS_TRAIN_CONFIG`: the
            fine-tuning budget shared by the neural arms.
        seeds: iterable of int. One fine-tuning run per neural arm and seed.
            Defaults to `(0, 1, 2)`.
        arms: iterable of str, a subset of `("tfidf", "scratch", "pretrained", "probe")`.
            Defaults to `ARMS` (the first three).
        learning_rates: dict arm -> peak learning rate, merged over
            `SPEAKERS_LEARNING_RATES`.
        data_dir: str. tensorflow-datasets directory.
        verbose: int. 1 prints one line per finished run, 2 also Keras' progress bars.

    Returns:
        dict (also written to `speakers.json`): `data`, `pretrained`, `seeds`,
        `label_names`, `train_config`, `learning_rates`, and `arms`: per arm its `title`,
        `runs` (per seed: test `precision`, `recall`, `f1` (macro), `accuracy`,
        `validation_f1`, `seconds`, `run_dir`), their means and sample stds
        (`f1_mean`, `f1_std`, ...) and `report`, the test `classification_report` of its
        first run.
    """
    requested = [arms] if isinstance(arms, str) else list(arms)
    if not requested or set(requested) - set(ARM_TITLES):
        raise ValueError(
            f"arms must be a non-empty subset of {list(ARM_TITLES)}. Received arms={arms!r}."
        )
    arms = [arm for arm in ARM_TITLES if arm in requested]
    train_config = TrainConfig.coerce(
        SPEAKERS_TRAIN_CONFIG if train_config is None else train_config, "train_config"
    )
    if set(arms) - {"tfidf"} and not os.path.isdir(os.path.join(pretrained, training.TOKENIZER)):
        raise FileNotFoundError(
            f"pretrained={pretrained!r} is not a pretraining run directory (no tokenizer/). "
            "Pass one written by keras-llm pretrain or keras-llm quickstart (its pretrain/)."
        )
    rates = {**SPEAKERS_LEARNING_RATES, **(learning_rates or {})}
    seeds = [int(seed) for seed in seeds]
    os.makedirs(run_dir, exist_ok=True)
    started = time.perf_counter()
    results = {
        "data": DATASET,
        "pretrained": os.path.abspath(pretrained),
        "seeds": seeds,
        "label_names": llm_data.label_names(DATASET),
        "train_config": train_config.to_dict(),
        "learning_rates": {arm: rates[arm] for arm in arms if arm != "tfidf"},
        "arms": {},
    }

    if "tfidf" in arms:
        results["arms"]["tfidf"] = _tfidf_arm(run_dir, data_dir, verbose)

    neural = [arm for arm in arms if arm != "tfidf"]
    if neural:
        model_config = ModelConfig.load(os.path.join(pretrained, training.MODEL_CONFIG))
        results["model_config"] = model_config.to_dict()
        runs = {arm: [] for arm in neural}
        for seed in seeds:  # seed-major: a partial study already compares arms
            for arm in neural:
                runs[arm].append(_finetune_arm(arm, seed, train_config, rates[arm], pretrained,
                                               model_config, run_dir, data_dir, verbose))
        for arm in neural:
            results["arms"][arm] = _neural_arm(arm, runs[arm], data_dir)
    results["wall_seconds"] = time.perf_counter() - started
    write_json(os.path.join(run_dir, "speakers.json"), results)
    with open(os.path.join(run_dir, "speakers.md"), "w") as f:
        f.write(format_speakers_table(results) + "\n")
    return results


def _finetune_arm(arm, seed, train_config, learning_rate, pretrained, model_config, run_dir,
                  data_dir, verbose):
    """One neural arm's fine-tuning run for one seed in `run_dir/<arm>/seed<s>/`, reused when
    it finished earlier with the same settings; returns its `seed`, `seconds`, `run_dir`."""
    directory = os.path.join(run_dir, arm, f"seed{seed}")
    config = dataclasses.replace(
        train_config, seed=seed, finetune_learning_rate=learning_rate,
        freeze_backbone_epochs={"scratch": 0, "probe": train_config.finetune_epochs}.get(
            arm, train_config.freeze_backbone_epochs),
    )
    source = None if arm == "scratch" else pretrained
    tokenizer = os.path.join(pretrained, training.TOKENIZER)
    settings = {
        "arm": arm,
        "train_config": config.to_dict(),
        "model_config": model_config.to_dict(),
        "pretrained": os.path.abspath(source) if source else None,
        # A pretraining run redone in place must not pass for the old one.
        "pretrained_at": (os.path.getmtime(os.path.join(source, training.BACKBONE))
                          if source else None),
        "tokenizer": os.path.abspath(tokenizer),
        "pooling": "mean",
        "data": DATASET,
    }
    metrics = transfer.finished_run(directory, settings)
    if metrics is None:
        transfer.forget_run(directory)
        keras.backend.clear_session()
        metrics = training.finetune(
            config, data=DATASET, run_dir=directory, pretrained=source,
            model_config=None if source else model_config, tokenizer=tokenizer,
            data_dir=data_dir, verbose=2 if verbose >= 2 else 0,
        ).metrics
        transfer.mark_finished(directory, settings)
    if verbose:
        print(f"[speakers] {arm} seed {seed}: test macro-F1 {metrics['test_f1']:.4f} "
              f"({metrics['seconds']:.0f} s)", flush=True)
    return {"seed": seed, "seconds": float(metrics["seconds"]), "run_dir": directory}


def _tfidf_arm(run_dir, data_dir, verbose):
    """The TF-IDF baseline (`evaluation.tfidf_baseline`) as an arm; `tfidf.json` holds it."""
    baseline = evaluation.tfidf_baseline(DATASET, data_dir)
    report = baseline.pop("report")
    write_json(os.path.join(run_dir, "tfidf.json"), {**baseline, "report": report})
    run = {"seed": None, **baseline}
    if verbose:
        print(f"[speakers] tfidf: test macro-F1 {run['f1']:.4f} (C={run['C']:g})", flush=True)
    return {"title": ARM_TITLES["tfidf"], "runs": [run], **_summary([run]), "report": report}


def _neural_arm(arm, study_runs, data_dir):
    """An arm's fine-tuning runs scored by `evaluation.evaluate_run` on test and validation:
    per run the scores, their summary, and the first run's per-class test report."""
    runs, first_report = [], None
    for run in study_runs:
        metrics, report = evaluation.evaluate_run(run["run_dir"], "test", data_dir)
        validation, _ = evaluation.evaluate_run(run["run_dir"], "validation", data_dir)
        first_report = first_report or report
        runs.append({
            "seed": run["seed"],
            **{key: float(metrics[key]) for key in SCORES},
            "validation_f1": float(validation["f1"]),
            "seconds": run["seconds"],
            "run_dir": run["run_dir"],
        })
    return {"title": ARM_TITLES[arm], "runs": runs, **_summary(runs), "report": first_report}


def _cell(summary, key):
    if summary["n"] == 1:
        return f"{summary[f'{key}_mean']:.3f}"
    return f"{summary[f'{key}_mean']:.3f} ± {summary[f'{key}_std']:.3f}"


def format_speakers_table(results):
    """The study as Markdown: the score table, the settings, one per-class report per arm."""
    seeds = results["seeds"]
    lines = [
        f"# Who is speaking? {results['data']} (test: the 3rd debate)",
        "",
        f"Macro averages over the three classes; neural rows: mean ± sample std over seeds "
        f"{seeds}. TF-IDF is deterministic (one run).",
        "",
        "| Model | Precision | Recall | F1 | Accuracy | Validation F1 |",
        "|---|---|---|---|---|---|",
    ]
    for summary in results["arms"].values():
        cells = " | ".join(_cell(summary, key) for key in (*SCORES, "validation_f1"))
        lines.append(f"| {summary['title']} | {cells} |")
    train = results["train_config"]
    steps = train["finetune_steps_per_epoch"]
    epochs = f"{train['finetune_epochs']} epochs" + (f" of {steps} steps" if steps else "")
    lines += [
        "",
        f"Fine-tuning: {epochs}, batch {train['batch_size']}, classifier_sequence_length "
        f"{train['classifier_sequence_length']}, peak learning rates "
        + ", ".join(f"{arm} {rate:g}" for arm, rate in results["learning_rates"].items())
        + f", best epoch by validation macro-F1. Pretrained run: {results['pretrained']}. "
        f"Wall time {results['wall_seconds'] / 60:.1f} min.",
    ]
    for arm, summary in results["arms"].items():
        which = "" if arm == "tfidf" else f" (seed {summary['runs'][0]['seed']})"
        lines += ["", f"## {summary['title']}{which}", "", "```",
                  evaluation.format_report(summary["report"]), "```"]
    return "\n".join(lines)


def quick_train_config():
    """A few steps of everything, for smoke tests and `keras-llm study speakers --quick`."""
    return dataclasses.replace(
        SPEAKERS_TRAIN_CONFIG, finetune_epochs=1, finetune_steps_per_epoch=4,
        classifier_sequence_length=32, batch_size=8, precision="float32",
    )
