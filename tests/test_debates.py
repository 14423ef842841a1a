"""The `debates` builder (turns, speakers), the three-class metrics path and the speakers study.

Oracles: pandas re-deriving the cleaning, the drops, the split and the dialogue contexts from
the raw CSV with vectorised string operations (independent of the builder's csv/gzip reader
and loops); golden counts; scikit-learn's macro precision/recall/F1 on the same predictions.
"""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import metrics as sk

from keras_llm import cli, evaluation, training
from keras_llm import data as llm_data
from keras_llm.config import TrainConfig
from keras_llm.data import sources
from keras_llm.data.builders import debates

SPLITS = ("train", "validation", "test")
PARTIES = ["Democratic", "Republican", "Moderator"]
TURN_FEATURES = {"context", "speaker", "party", "response", "previous_speaker",
                 "previous_party", "debate", "turn"}


@pytest.fixture(scope="module")
def debates_dir(data_dir):
    """The shared tfds directory with both configs of `debates` prepared."""
    for config in ("turns", "speakers"):
        tfds.load(f"{debates.Debates.name}/{config}", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="module")
def raw():
    """The CSV as pandas reads it, with the documented cleaning and drops re-derived."""
    df = pd.read_csv(sources.data_file(sources.PRESIDENTIAL_DEBATES_FILE))
    text = (
        df.statement.str.replace(r"\((?:[A-Z]+|ph|inaudible)\)", " ", regex=True)
        .str.split().str.join(" ")
        .str.replace(r"^:\s*", "", regex=True)
    )
    df = df.assign(text=text, position=np.arange(len(df)))
    key = df[["debate", "speaker", "party", "text"]]
    duplicate = pd.Series(False, index=df.index)
    for lag in range(1, debates.DUPLICATE_WINDOW + 1):
        duplicate |= (key == key.shift(lag)).all(axis=1)
    df = df.assign(dropped=duplicate | (df.text == ""))
    return df


@pytest.fixture(scope="module")
def kept(raw):
    kept = raw[~raw.dropped].copy()
    kept["turn"] = kept.groupby("debate").cumcount()
    kept["split"] = kept.debate.map({"1st": "train", "VP": "train", "2nd": "validation",
                                     "3rd": "test"})
    return kept


def _read(config, split, data_dir):
    ds = tfds.load(f"{debates.Debates.name}/{config}", split=split, data_dir=data_dir)
    return [
        {k: (v.decode("utf-8") if isinstance(v, bytes) else int(v)) for k, v in ex.items()}
        for ex in tfds.as_numpy(ds)
    ]


@pytest.fixture(scope="module")
def speakers(debates_dir):
    return {split: _read("speakers", split, debates_dir) for split in SPLITS}


@pytest.fixture(scope="module")
def turns(debates_dir):
    return {split: _read("turns", split, debates_dir) for split in SPLITS}


# -- the source file -------------------------------------------------------------------------


def test_source_is_one_block_per_debate_opened_by_the_moderator(raw):
    assert len(raw) == 1122
    assert raw.groupby("debate").size().to_dict() == {"1st": 325, "2nd": 111, "3rd": 166,
                                                     "VP": 520}
    blocks = raw.debate[raw.debate != raw.debate.shift()].tolist()
    assert blocks == ["VP", "2nd", "1st", "3rd"]  # contiguous: file order is turn order
    firsts = raw.groupby("debate").head(1)
    assert (firsts.party == "Moderator").all()
    assert firsts.text.str.contains("Good evening|Thank you very much").all()


def test_documented_drops(raw):
    assert int(raw.dropped.sum()) == 23
    assert raw[raw.dropped].groupby("debate").size().to_dict() == {"1st": 6, "2nd": 3,
                                                                  "3rd": 4, "VP": 10}
    assert int(raw.statement.str.contains(r"\((?:[A-Z]+|ph|inaudible)\)").sum()) == 5


# -- speakers --------------------------------------------------------------------------------


def test_builder_metadata(debates_dir):
    builder = tfds.builder(f"{debates.Debates.name}/speakers", data_dir=debates_dir)
    assert isinstance(builder, llm_data.builders.Debates)
    info = builder.info
    assert info.features["label"].names == PARTIES
    assert info.supervised_keys == ("text", "label")
    assert "Commission on Presidential Debates" in info.citation
    assert "Kessler" in info.citation
    turns_info = tfds.builder(f"{debates.Debates.name}/turns", data_dir=debates_dir).info
    assert set(turns_info.features) == TURN_FEATURES
    assert {name for name, f in turns_info.features.items()
            if isinstance(f, tfds.features.Text)} == TURN_FEATURES - {"turn"}


def test_no_debate_in_two_splits(speakers, turns):
    for examples in (speakers, turns):
        debates_of = {split: {e["debate"] for e in examples[split]} for split in SPLITS}
        assert debates_of == {"train": {"1st", "VP"}, "validation": {"2nd"},
                              "test": {"3rd"}}
    for split in SPLITS:  # every class in every split
        assert {e["label"] for e in speakers[split]} == {0, 1, 2}


def test_every_turn_accounted_for_exactly_once(speakers, raw, kept):
    ours = sorted(
        (e["debate"], e["turn"], e["speaker"], PARTIES[e["label"]], e["text"])
        for split in SPLITS for e in speakers[split]
    )
    expected = sorted(kept[["debate", "turn", "speaker", "party", "text"]]
                      .itertuples(index=False, name=None))
    assert ours == expected
    assert len(ours) == len(raw) - int(raw.dropped.sum()) == 1099
    assert {split: len(speakers[split]) for split in SPLITS} == {
        "train": 829, "validation": 108, "test": 162}
    # A dropped record repeats a kept one: no distinct words are lost.
    kept_keys = set(kept[["debate", "speaker", "text"]].itertuples(index=False, name=None))
    dropped = raw[raw.dropped][["debate", "speaker", "text"]].itertuples(index=False, name=None)
    assert all(key in kept_keys for key in dropped)


def test_examples_are_stored_in_transcript_order(speakers):
    for split in SPLITS:
        order = [(e["debate"], e["turn"]) for e in speakers[split]]
        by_debate = {}
        for debate, turn in order:
            by_debate.setdefault(debate, []).append(turn)
        assert all(t == list(range(len(t))) for t in by_debate.values())


def test_label_mapping_through_the_catalog(debates_dir, kept):
    assert llm_data.label_names("debates_speakers") == PARTIES
    assert llm_data.num_classes("debates_speakers") == 3
    assert "debates_speakers" in llm_data.supported_datasets("classification")
    pairs = llm_data.load_text_classification("debates_speakers", "test", debates_dir)
    assert pairs.element_spec[1].dtype == tf.int32
    ours = [(t.decode("utf-8"), PARTIES[int(y)]) for t, y in pairs.as_numpy_iterator()]
    test = kept[kept.split == "test"]
    assert ours == list(zip(test.text, test.party))


# -- turns -----------------------------------------------------------------------------------


def test_turns_match_a_pandas_rederivation(turns, kept):
    k = debates.CONTEXT_TURNS
    line = kept.speaker + ": " + kept.text
    grouped = line.groupby(kept.debate)
    # previous k lines of the same debate, oldest first (NaN before the debate starts)
    shifted = pd.concat([grouped.shift(lag) for lag in range(k, 0, -1)], axis=1)
    context = shifted.apply(lambda row: "\n".join(row.dropna()), axis=1)
    expected = kept.assign(
        context=context,
        previous_speaker=kept.groupby("debate").speaker.shift(1),
        previous_party=kept.groupby("debate").party.shift(1),
    )
    expected = expected[expected.turn > 0]
    columns = ["context", "speaker", "party", "text", "previous_speaker", "previous_party",
               "debate", "turn"]
    for split in SPLITS:
        ours = [tuple(e[c if c != "text" else "response"] for c in columns)
                for e in turns[split]]
        rows = expected[expected.split == split][columns]
        assert ours == list(rows.itertuples(index=False, name=None))
    assert sum(len(turns[s]) for s in SPLITS) == 1099 - 4


def test_context_format_on_one_example(turns):
    example = turns["train"][3]  # VP debate, turn 4: three full turns of context
    lines = example["context"].split("\n")
    assert len(lines) == debates.CONTEXT_TURNS
    assert all(line.startswith(("QUIJANO: ", "KAINE: ", "PENCE: ")) for line in lines)
    assert lines[-1].startswith(example["previous_speaker"] + ": ")
    assert example["speaker"] == "KAINE" and example["party"] == "Democratic"
    first = turns["train"][0]
    assert first["turn"] == 1 and first["context"].count("\n") == 0


def test_load_dialogue_turns(debates_dir, turns):
    ds = llm_data.load_dialogue_turns("validation", debates_dir)
    assert set(ds.element_spec) == TURN_FEATURES
    assert ds.element_spec["turn"].dtype == tf.int32
    assert all(ds.element_spec[f].dtype == tf.string for f in TURN_FEATURES - {"turn"})
    first = next(iter(ds))
    assert first["response"].numpy().decode() == turns["validation"][0]["response"]
    assert sum(1 for _ in ds) == len(turns["validation"]) == 107
    with pytest.raises(ValueError, match="Unknown dialogue data set"):
        llm_data.dataset_spec("debates", "dialogue")


# -- the multi-class metrics path ------------------------------------------------------------


def _tiny_finetune_config():
    return TrainConfig.preset("tiny", finetune_steps_per_epoch=4, finetune_learning_rate=1e-3)


def test_finetune_and_evaluate_three_classes_match_sklearn(pretrained_run, debates_dir,
                                                           tmp_path):
    run_dir = str(tmp_path / "fine")
    result = training.finetune(_tiny_finetune_config(), data="debates_speakers",
                               run_dir=run_dir, pretrained=pretrained_run,
                               data_dir=debates_dir, verbose=0)
    assert result.model.num_classes == 3
    metrics, report = evaluation.evaluate_run(run_dir, "test", debates_dir)
    assert set(metrics) == {"loss", "accuracy", "precision", "recall", "f1"}
    assert metrics["f1"] == pytest.approx(result.metrics["test_f1"], abs=1e-6)
    assert report["label_names"] == PARTIES and report["num_examples"] == 162

    # The 4-step model predicts one class. A random head on the centred pooled features
    # makes it predict all three, so the macro averages are checked where they differ from
    # accuracy; the run is saved again and evaluated from disk.
    model = training.load_run(run_dir)
    pairs = list(llm_data.load_text_classification("debates_speakers", "test", debates_dir)
                 .as_numpy_iterator())
    texts = tf.constant([t for t, _ in pairs])
    labels = np.asarray([y for _, y in pairs])
    ids = model.tokenizer.encode(texts, _tiny_finetune_config().classifier_sequence_length)
    features = keras.Model(model.input, model.pooler.output).predict(ids, verbose=0)
    kernel = np.random.default_rng(0).normal(size=model.head.kernel.shape).astype("float32")
    model.head.kernel.assign(kernel)
    model.head.bias.assign(-(features @ kernel).mean(axis=0))
    model.save(os.path.join(run_dir, training.CLASSIFIER))
    metrics, report = evaluation.evaluate_run(run_dir, "test", debates_dir)
    predictions = np.argmax(model.predict(ids, verbose=0), axis=-1)
    assert len(set(predictions.tolist())) == 3, "test needs all three classes predicted"
    precision, recall, f1, _ = sk.precision_recall_fscore_support(
        labels, predictions, average="macro", zero_division=0)
    for ours in (metrics, report["macro"]):
        assert ours["precision"] == pytest.approx(precision, abs=1e-6)
        assert ours["recall"] == pytest.approx(recall, abs=1e-6)
        assert ours["f1"] == pytest.approx(f1, abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions),
                                                abs=1e-6)
    assert report["confusion_matrix"] == sk.confusion_matrix(labels, predictions).tolist()


def test_tfidf_baseline_on_two_and_three_classes(debates_dir):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    grid = (4.0,)
    # Two classes: one-vs-rest is the very same model as a plain liblinear regression.
    ours = evaluation.tfidf_baseline("rotten_tomatoes", debates_dir, c_grid=grid)

    def split(name):
        pairs = list(llm_data.load_text_classification("rotten_tomatoes", name, debates_dir)
                     .as_numpy_iterator())
        return [t.decode("utf-8", errors="replace") for t, _ in pairs], [int(y) for _, y in pairs]

    (train_x, train_y), (test_x, test_y) = split("train"), split("test")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    plain = LogisticRegression(C=4.0, solver="liblinear", class_weight="balanced")
    plain.fit(vectorizer.fit_transform(train_x), train_y)
    expected = f1_score(test_y, plain.predict(vectorizer.transform(test_x)), average="macro")
    assert ours["f1"] == pytest.approx(expected, abs=1e-12)
    # Three classes: better than chance, and the report agrees with its own scores.
    three = evaluation.tfidf_baseline("debates_speakers", debates_dir, c_grid=grid)
    assert 1 / 3 < three["f1"] <= 1.0 and set(three["grid"]) == {"4.0"}
    assert three["report"]["num_examples"] == 162
    assert three["f1"] == three["report"]["macro"]["f1"]


@pytest.mark.slow
def test_cli_finetune_and_evaluate(pretrained_run, debates_dir, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"finetune_steps_per_epoch": 4}}))
    run_dir = str(tmp_path / "cli")
    argv = ["finetune", "--dataset", "debates_speakers", "--pretrained", pretrained_run,
            "--train-preset", "tiny", "--config", str(config), "--run-dir", run_dir,
            "--data-dir", debates_dir]
    assert cli.main(argv) == 0
    assert "test_f1" in capsys.readouterr().out
    assert json.load(open(os.path.join(run_dir, "labels.json"))) == PARTIES
    assert json.load(open(os.path.join(run_dir, "run.json")))["dataset"] == "debates_speakers"
    assert cli.main(["evaluate", run_dir, "--data-dir", debates_dir]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PARTIES) and "macro avg" in out


@pytest.mark.slow
def test_speakers_study_quick_through_the_cli(pretrained_run, debates_dir, tmp_path, capsys):
    run_dir = str(tmp_path / "study")
    argv = ["study", "speakers", "--pretrained", pretrained_run, "--quick",
            "--run-dir", run_dir, "--data-dir", debates_dir]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| TF-IDF + logistic regression |" in out and "Moderator" in out
    results = json.load(open(os.path.join(run_dir, "speakers.json")))
    assert list(results["arms"]) == ["tfidf", "scratch", "pretrained"]
    tfidf = results["arms"]["tfidf"]
    assert tfidf["f1_mean"] == tfidf["report"]["macro"]["f1"] > 1 / 3
    for arm in ("scratch", "pretrained"):
        (run,) = results["arms"][arm]["runs"]
        finetuned = json.load(open(os.path.join(run["run_dir"], "metrics.json")))
        assert run["f1"] == pytest.approx(finetuned["test_f1"], abs=1e-6)
        assert set(results["arms"][arm]["report"]["classes"]) == set(PARTIES)
