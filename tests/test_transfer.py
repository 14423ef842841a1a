"""The label-budget transfer study: subsets, the arms end to end on tiny configs, the table.

Oracles: NumPy counts for the stratified subsets, the TF-IDF baseline and fine-tuning drawing
the very same reviews, a reloaded run's own `evaluate`, closed-form paired differences.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
from test_presets import write_bert_folder

import keras_llm
from keras_llm import evaluation, training, transfer
from keras_llm.data import Tokenizer, stratified_indices, stratified_subset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- label budgets


@pytest.mark.parametrize("size", [2, 3, 10, 101, 999])
def test_stratified_indices_keep_class_shares_and_nest(size):
    labels = np.asarray([0] * 580 + [1] * 420)  # rotten_tomatoes' 58/42 split
    np.random.default_rng(0).shuffle(labels)
    keep = stratified_indices(labels, size, seed=7)
    assert len(keep) == size == len(set(keep.tolist()))
    assert np.all(np.diff(keep) > 0)  # sorted, stored order
    counts = np.bincount(labels[keep], minlength=2)
    assert np.all(counts >= 1)
    assert abs(counts[0] - 0.58 * size) <= 1  # each class its share, rounded
    # Same seed: the larger budget adds examples, it does not swap them.
    assert set(keep.tolist()) <= set(stratified_indices(labels, min(size * 3, 1000), 7).tolist())
    assert np.array_equal(keep, stratified_indices(labels, size, seed=7))
    if 10 <= size < 1000:
        assert not np.array_equal(keep, stratified_indices(labels, size, seed=8))


def test_a_rare_class_keeps_one_example():
    labels = np.asarray([0] * 98 + [1] + [2])
    keep = stratified_indices(labels, 3, seed=0)
    assert sorted(labels[keep].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("size", [0, 1, 1001, 2.5, True, "100"])
def test_stratified_indices_refuse_a_budget_out_of_range(size):
    with pytest.raises(ValueError, match=r"label budget must be an integer from 2 .* 1000"):
        stratified_indices([0, 1] * 500, size, seed=0)


def test_tfidf_and_finetune_draw_the_same_reviews(data_dir):
    pairs = keras_llm.data.load_text_classification("rotten_tomatoes", "train", data_dir)
    subset = [(text.decode(), int(label))
              for text, label in stratified_subset(pairs, 60, seed=3).as_numpy_iterator()]
    texts, labels = keras_llm.data.load_texts_and_labels("rotten_tomatoes", "train", data_dir)
    keep = stratified_indices(labels, 60, seed=3)
    assert subset == [(texts[i], int(labels[i])) for i in keep]


def test_train_config_refuses_a_bad_budget():
    for value in (-1, 2.0, True):
        with pytest.raises(ValueError, match="train_examples must be an integer >= 0"):
            keras_llm.TrainConfig(train_examples=value)


def test_finetune_refuses_a_budget_larger_than_the_split_before_writing(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    config = keras_llm.TrainConfig.preset("tiny", train_examples=10**6)
    with pytest.raises(ValueError, match="label budget .* Received size=1000000"):
        training.finetune(config, run_dir=str(run_dir), model_config="tiny", data_dir=data_dir)
    assert not run_dir.exists()


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, message", [
    ({"arms": ("bert",)}, "arms must be"),
    ({"learning_rates": {"tfidf": 1.0}}, "learning_rates keys"),
    ({"learning_rates": {"mlm": -1.0}}, "positive and finite"),
    ({"layer_decays": {"tfidf": 0.8}}, "layer_decays keys"),
    ({"layer_decays": {"causal": 1.2}}, r"in \(0, 1\].*'causal': 1.2"),
    ({"seeds": ()}, "distinct seeds"),
    ({"seeds": (1, 1)}, "distinct seeds"),
    ({"budgets": (100, "most")}, "budgets must be"),
    ({"budgets": (0,)}, "budgets must be"),
    ({"budgets": (100, 100)}, "budgets must be"),
    ({"budgets": ()}, "budgets must be"),
    ({"large_budget_seeds": 4}, "large_budget_seeds must be an integer from 1 to the number "
                                r"of seeds \(3\)"),
    ({"large_budget": 0}, "large_budget must be a positive integer or None"),
    ({"min_finetune_steps": 0}, "min_finetune_steps"),
    ({"pooling": "max"}, "pooling"),
])
def test_transfer_study_refuses_bad_arguments_before_writing(tmp_path, kwargs, message):
    run_dir = tmp_path / "study"
    with pytest.raises(ValueError, match=message):
        transfer.transfer_study("tiny", "tiny", str(run_dir), **kwargs)
    assert not run_dir.exists()


def test_large_budgets_run_the_first_seeds_only():
    settings = transfer.check_transfer_study(budgets=(100, 3000, "all"), seeds=(5, 6, 7),
                                             large_budget=3000, large_budget_seeds=2)
    study = transfer._Study(settings, "unused", "rotten_tomatoes", None, "keras_llm_corpus",
                            transfer.CHECKPOINT, (1.0,), 0)
    assert [study.seeds_for(b) for b in settings["budgets"]] == [[5, 6, 7], [5, 6], [5, 6]]
    settings["large_budget"] = None
    assert study.seeds_for("all") == [5, 6, 7]
    # The whole split keeps the recipe; a subset gets its size and at least 90 steps.
    config = keras_llm.TrainConfig(batch_size=32, finetune_epochs=3)
    assert study.budget_config(config, "all", 6) == dataclasses.replace(config, seed=6)
    small = study.budget_config(config, 100, 6)
    assert (small.train_examples, small.finetune_steps_per_epoch, small.seed) == (100, 30, 6)
    assert study.budget_config(config, 3000, 6).finetune_steps_per_epoch == 94  # one pass


def test_a_budget_larger_than_the_split_is_refused_before_writing(tmp_path, data_dir):
    run_dir = tmp_path / "study"
    with pytest.raises(ValueError, match=r"budgets: 20000 labels do not fit rotten_tomatoes"):
        transfer.transfer_study("tiny", "tiny", str(run_dir), budgets=(100, 20000),
                                data_dir=data_dir)
    assert not run_dir.exists()


def test_budgets_are_sorted_with_all_last():
    settings = transfer.check_transfer_study(budgets=("all", 300, 100))
    assert settings["budgets"] == [100, 300, "all"]
    preset = keras_llm.TrainConfig.preset("checkpoint")  # the checkpoint arm's own recipe
    assert settings["rates"]["checkpoint"] == preset.finetune_learning_rate == 5e-5
    assert settings["layer_decays"]["checkpoint"] == preset.finetune_layer_decay == 1.0
    assert {settings["layer_decays"][arm] for arm in ("scratch", "causal", "mlm")} == {1.0}


# --------------------------------------------------------------------------- end to end

STUDY_TRAIN = keras_llm.TrainConfig.preset(
    "tiny",
    batch_size=32,
    pretrain_steps=4,
    finetune_epochs=2,
    finetune_steps_per_epoch=3,
    classifier_sequence_length=16,
)


def _tiny_study(run_dir, data_dir, **kwargs):
    # A small pretraining text keeps the tokenizer training short.
    texts = keras_llm.data.load_pretraining_text("keras_llm_corpus", "train", data_dir).take(300)
    return transfer.transfer_study(
        keras_llm.ModelConfig.preset("tiny"), STUDY_TRAIN, run_dir, budgets=(40,),
        min_finetune_steps=4, pretrain_data=texts, tfidf_c_grid=(16.0,), data_dir=data_dir,
        verbose=0, **kwargs,
    )


@pytest.mark.slow
def test_study_end_to_end(tmp_path_factory, data_dir):
    """Every arm once on tiny configs, then three arms with a second seed (the first seed's
    runs reused), and what each run and the study wrote. One test: under xdist a shared
    fixture would be built again on every worker. The whole split as a budget: notebook 03's
    quick study."""
    run_dir = str(tmp_path_factory.mktemp("transfer"))
    bert, _ = write_bert_folder(str(tmp_path_factory.mktemp("bert")))
    every = _tiny_study(
        run_dir, data_dir, seeds=(0,), arms=transfer.ARMS, checkpoint=bert,
        checkpoint_config=dataclasses.replace(STUDY_TRAIN, finetune_learning_rate=1e-3),
        layer_decays={"causal": 0.5},
    )
    _check_every_arm_runs_and_is_written(run_dir, every, data_dir)
    _check_runs_use_the_budget_the_seed_and_the_recipe(run_dir, every)
    _check_reloaded_run_scores_what_the_study_recorded(run_dir, every, data_dir)

    saved = os.path.join(run_dir, "scratch", "n40", "seed0", "classifier.keras")
    before = os.path.getmtime(saved)
    paired = _tiny_study(run_dir, data_dir, seeds=(0, 1), arms=("tfidf", "scratch", "mlm"))
    assert os.path.getmtime(saved) == before  # seed 0 reused, not trained again
    for arm in ("tfidf", "scratch", "mlm"):
        runs = paired["arms"][arm]["budgets"]["40"]["runs"]
        first = every["arms"][arm]["budgets"]["40"]["runs"][0]
        timing = {"seconds"} if arm == "tfidf" else set()  # the baseline is fitted again
        assert {k: v for k, v in runs[0].items() if k not in timing} == {
            k: v for k, v in first.items() if k not in timing}
        assert [run["seed"] for run in runs] == [0, 1]
    _check_gains_are_paired_by_seed(paired)
    _check_tfidf_arm_is_the_baseline_on_the_same_subset(paired, data_dir)


def _check_every_arm_runs_and_is_written(run_dir, results, data_dir):
    assert results["budgets"] == [40]
    assert results["train_size"] == len(keras_llm.data.load_texts_and_labels(
        "rotten_tomatoes", "train", data_dir)[1])
    assert list(results["arms"]) == list(transfer.ARMS)
    with open(os.path.join(run_dir, "transfer.json")) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    with open(os.path.join(run_dir, "transfer.md")) as f:
        table = f.read()
    for arm in results["arms"].values():
        assert [run["seed"] for run in arm["budgets"]["40"]["runs"]] == [0]
        assert f"| {arm['title']} |" in table
    with open(os.path.join(run_dir, "transfer.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    # The classical baseline learns something from 40 reviews.
    assert results["arms"]["tfidf"]["budgets"]["40"]["f1_mean"] > 0.5
    assert [run["objective"] for run in results["pretraining"]["runs"]] == ["causal", "mlm"]
    assert set(results["goals"]) == {"causal_beats_scratch", "mlm_beats_scratch",
                                     "own_pretraining_beats_scratch", "checkpoint_beats_tfidf"}


def _check_runs_use_the_budget_the_seed_and_the_recipe(run_dir, results):
    vocabulary = Tokenizer.load(os.path.join(run_dir, "tokenizer")).vocabulary
    assert "[MASK]" in vocabulary  # one tokenizer, the masked LM's too
    for arm in ("scratch", "causal", "mlm", "probe", "checkpoint"):
        run = os.path.join(run_dir, arm, "n40", "seed0")
        with open(os.path.join(run, "train_config.json")) as f:
            config = json.load(f)
        assert config["train_examples"] == 40 and config["seed"] == 0
        # 40 reviews are 2 batches of 32; min_finetune_steps=4 over 2 epochs: 2 a epoch.
        assert config["finetune_steps_per_epoch"] == 2
        assert config["finetune_learning_rate"] == results["learning_rates"][arm]
        assert config["finetune_layer_decay"] == results["layer_decays"][arm]
        assert config["finetune_layer_decay"] == (0.5 if arm == "causal" else 1.0)
        assert config["freeze_backbone_epochs"] == (2 if arm == "probe" else 0)
        if arm != "checkpoint":
            assert Tokenizer.load(os.path.join(run, "tokenizer")).vocabulary == vocabulary
    with open(os.path.join(run_dir, "checkpoint", "n40", "seed0", "run.json")) as f:
        assert json.load(f)["pretrained"] == results["checkpoint"]
    with open(os.path.join(run_dir, "pretrain_mlm", "model_config.json")) as f:
        assert json.load(f)["causal"] is False
    # The probe kept the causal pretraining's backbone weights.
    backbone = training.load_run(os.path.join(run_dir, "probe", "n40", "seed0")).backbone
    training.verify_loaded_weights(backbone,
                                   os.path.join(run_dir, "pretrain_causal", "backbone.keras"))


def _check_reloaded_run_scores_what_the_study_recorded(run_dir, results, data_dir):
    run = os.path.join(run_dir, "mlm", "n40", "seed0")
    metrics, report = evaluation.evaluate_run(run, split="test", data_dir=data_dir)
    assert set(metrics) == {"loss", "accuracy", "precision", "recall", "f1"}
    # finetune's own test evaluation (before saving) and the reloaded model agree.
    recorded = results["arms"]["mlm"]["budgets"]["40"]["runs"][0]
    assert metrics["f1"] == pytest.approx(recorded["f1"], abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-5)
    assert report["macro"]["f1"] == pytest.approx(metrics["f1"], abs=1e-5)
    assert report["num_examples"] == 1263
    assert os.path.exists(os.path.join(run, "report.json"))
    assert os.path.exists(os.path.join(run, "confusion_matrix.png"))
    evaluation.evaluate_run(run, split="validation", data_dir=data_dir)
    assert os.path.exists(os.path.join(run, "validation_report.json"))
    assert "rotten" in evaluation.format_report(report)


def _check_gains_are_paired_by_seed(results):
    arms = results["arms"]
    ours = [r["f1"] for r in arms["mlm"]["budgets"]["40"]["runs"]]
    theirs = [r["f1"] for r in arms["scratch"]["budgets"]["40"]["runs"]]
    differences = np.subtract(ours, theirs)
    gain = results["gains"]["mlm-scratch"]["40"]
    assert gain["f1_mean"] == pytest.approx(differences.mean())
    assert gain["f1_std"] == pytest.approx(np.std(differences, ddof=1))
    assert set(results["gains"]) == {"mlm-scratch"}


def _check_tfidf_arm_is_the_baseline_on_the_same_subset(results, data_dir):
    run = results["arms"]["tfidf"]["budgets"]["40"]["runs"][1]
    alone = evaluation.tfidf_baseline("rotten_tomatoes", data_dir, c_grid=(16.0,),
                                      train_examples=40, seed=1)
    assert run["f1"] == alone["f1"] and run["seed"] == 1


# --------------------------------------------------------------------------- table and plot


def _fake_results():
    budgets = [100, 1000, 8530]
    f1 = {"tfidf": (0.60, 0.70, 0.77), "scratch": (0.55, 0.66, 0.74),
          "mlm": (0.62, 0.70, 0.76), "checkpoint": (0.75, 0.82, 0.84)}
    arms = {}
    for arm, means in f1.items():
        arms[arm] = {"title": transfer.ARM_TITLES[arm], "settings": {}, "budgets": {}}
        for labels, mean in zip(budgets, means):
            seeds = (0, 1, 2) if labels != 8530 else (0,)
            runs = [{"seed": s, "f1": mean + 0.01 * s, "accuracy": mean, "seconds": 1.0}
                    for s in seeds]
            arms[arm]["budgets"][str(labels)] = {"runs": runs, **transfer._summary(runs)}
    results = {
        "data": "rotten_tomatoes", "budgets": budgets, "train_size": 8530, "seeds": [0, 1, 2],
        "large_budget": 3000, "large_budget_seeds": 1, "min_finetune_steps": 90, "arms": arms,
        "learning_rates": {"scratch": 3e-4, "mlm": 3e-4, "checkpoint": 5e-5},
        "pretrain_data": "keras_llm_corpus", "compute_seconds": 600.0, "wall_seconds": 660.0,
        "pretraining": {"runs": [{"objective": "mlm", "seed": 0, "pretrain_steps": 2400,
                                  "seconds": 300.0, "validation_masked_accuracy": 0.3}]},
        "model_config": dataclasses.asdict(transfer.STUDY_MODEL_CONFIG),
        "train_config": dataclasses.asdict(transfer.STUDY_TRAIN_CONFIG),
        "checkpoint_config": dataclasses.asdict(keras_llm.TrainConfig.preset("checkpoint")),
        "machine": {"processor": "x86_64", "isa_class": "AMX", "cpu_count": 2},
    }
    results["gains"] = transfer._gains(results)
    results["goals"] = transfer._goals(results)
    return results


def test_table_gains_and_goals_from_known_numbers():
    results = _fake_results()
    table = transfer.format_transfer_table(results)
    assert "| Model | 100 | 1,000 | all (8,530) |" in table
    assert "| keras_llm from scratch | 0.560 ± 0.010 | 0.670 ± 0.010 | 0.740 |" in table
    # Paired by seed, the seed offsets cancel: exactly the differences of the means.
    assert "| mlm − scratch | +0.070 ± 0.000 | +0.040 ± 0.000 | +0.020 |" in table
    assert results["goals"] == {"mlm_beats_scratch": True, "own_pretraining_beats_scratch": True,
                                "checkpoint_beats_tfidf": True}
    assert "never loses: **met** (mlm: **met**)" in table
    # A checkpoint below TF-IDF at one budget misses its goal.
    runs = results["arms"]["checkpoint"]["budgets"]["8530"]["runs"]
    runs[0]["f1"] = 0.70
    assert transfer._goals({**results, "gains": transfer._gains(results)})[
        "checkpoint_beats_tfidf"] is False


def test_learning_curve_plot(tmp_path):
    path = keras_llm.plots.plot_learning_curve(_fake_results(), str(tmp_path / "curve.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
