"""Export: SavedModels that take raw strings, a TFLite flatbuffer, and int8 compression.

Everything a server needs travels inside the artifact: the tokenizer (`Tokenizer.encode`, the
same function training and evaluation use), the model, the softmax and the label names.

- `export_classifier(model, tokenizer, path, label_names)`: a SavedModel whose
  `serving_default` signature maps `text: tf.string [batch]` to `probabilities` (float32,
  `[batch, num_classes]`), `label_id` (int64, `[batch]`) and `label` (tf.string, `[batch]`).
- `export_generator(causal_lm, tokenizer, path)`: a SavedModel whose `serving_default` maps
  `prompt: tf.string [batch]` and `max_new_tokens: int32 []` to greedy continuations. It runs
  the key/value-cache decoding loop of `keras_llm.models.generation` inside the graph.
- `quantize_classifier(model)`: a copy of the classifier with int8 weights
  (`keras.Model.quantize("int8")`: every `Dense` and `EinsumDense`; the token and position
  embeddings stay float32, because `quantize` only knows Keras' own layers).
- `export_tflite(model, path, sequence_length, quantize=None)`: a TFLite flatbuffer of the
  classifier. It takes token ids, not strings: see "TFLite and the tokenizer" below.
  `quantize="dynamic_range"` stores every weight matrix in int8.
- `evaluate_exports(...)`: size on disk, macro-F1, agreement and the largest probability
  difference against the Keras model, for each artifact.
- `export_all(run_dir)`: every artifact of a fine-tuning run directory, plus
  `export_report.json`. This is what `keras-llm export RUN_DIR` runs.

Loading a SavedModel needs TensorFlow and TensorFlow Text (the tokenizer's ops), not keras_llm
nor Keras:

    import tensorflow as tf
    import tensorflow_text  # registers the tokenizer's ops
    serve = tf.saved_model.load(path).signatures["serving_default"]
    serve(text=tf.constant(["a gripping, funny film"]))["label"]

TF-Serving's REST API (`POST /v1/models/NAME:predict`) takes
`{"signature_name": "serving_default", "instances": [{"text": "a gripping, funny film"}]}` and
answers `{"predictions": [{"probabilities": [0.1, 0.9], "label_id": 1, "label": "fresh"}]}`.
TF-Serving's builds link TensorFlow Text's ops (not tried here: no model server on this
machine).

Bad input: empty or whitespace-only strings, invalid UTF-8 and very long strings are served
(the tokenizer replaces invalid bytes, truncates long texts; an empty text is `[BOS] [EOS]`);
a batch of zero strings gives zero rows. A wrong dtype is refused by the signature ("expected
to be a string tensor") and a wrong rank by the graph's first op, named
`text_must_be_a_rank_1_string_batch`, whose message gives the expected shape `[?]`.

TFLite and the tokenizer: the string-in model converts (as Flex ops through `SELECT_TF_OPS`:
`CaseFoldUTF8`, `NormalizeUTF8`, `RegexSplitWithOffsets`, `StaticRegexReplace`,
`UnicodeTranscode` and four ragged ops; plus the custom op `FastWordpieceTokenizeWithOffsets`,
which TensorFlow Text's TFLite registrar provides), but it cannot run here: the TensorFlow
2.21 pip interpreter ships no Flex delegate any more ("Select TensorFlow op(s) ... not
supported by this interpreter", since TF 2.20; `ai-edge-litert` neither), and the first three
ops are TensorFlow Text kernels, which a select-ops runtime would have to be built with. So
the TFLite model takes the token ids that `Tokenizer.encode(texts, sequence_length)` makes
(the vocabulary is saved beside it) and uses only TFLite built-in ops.
"""

import contextlib
import gc
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_llm._io import (
    DamagedFileError,
    atomic_directory,
    load_keras_model,
    read_json,
    write_bytes,
    write_error,
    write_json,
)
from keras_llm.config import TrainConfig
from keras_llm.models import generation

SIGNATURE = "serving_default"
METADATA_FILE = os.path.join("assets.extra", "keras_llm_export.json")
TFLITE_QUANTIZATIONS = (None, "dynamic_range")

# Names of the artifacts `export_all` writes into its output directory.
CLASSIFIER_DIR = "classifier"
CLASSIFIER_INT8_DIR = "classifier_int8"
CLASSIFIER_TFLITE = "classifier.tflite"
CLASSIFIER_INT8_TFLITE = "classifier_int8.tflite"
GENERATOR_DIR = "generator"
TOKENIZER_DIR = "tokenizer"
REPORT_FILE = "export_report.json"

# The run directory layout written by `keras_llm.training` (see its module docstring).
RUN_CLASSIFIER = "classifier.keras"
RUN_CAUSAL_LM = "causal_lm.keras"
RUN_TOKENIZER = "tokenizer"
RUN_LABELS = "labels.json"
RUN_TRAIN_CONFIG = "train_config.json"
RUN_METADATA = "run.json"  # written by keras_llm.training: {"kind", "dataset", ...}


# -- checks ----------------------------------------------------------------------------------


def _backbone_config(model):
    backbone = getattr(model, "backbone", None)
    return getattr(backbone, "model_config", None)


def _resolve_sequence_length(model, sequence_length, argument="sequence_length"):
    config = _backbone_config(model)
    if sequence_length is None:
        if config is None:
            raise ValueError(
                f"{argument} is needed for a model without a keras_llm backbone. Pass the "
                "length the classifier was trained with (TrainConfig.classifier_sequence_length)."
            )
        return config.sequence_length
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)):
        raise ValueError(f"{argument} must be a positive int. Received {sequence_length!r}.")
    sequence_length = int(sequence_length)
    if sequence_length < 1:
        raise ValueError(f"{argument} must be >= 1. Received {argument}={sequence_length}.")
    if config is not None and sequence_length > config.sequence_length:
        raise ValueError(
            f"{argument}={sequence_length} exceeds the model's {config.sequence_length} learned "
            f"positions. Pass at most {config.sequence_length} (the classifier was trained "
            "with TrainConfig.classifier_sequence_length)."
        )
    return sequence_length


def _num_classes(model):
    shape = tuple(model.output.shape) if hasattr(model, "output") else ()
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "export_classifier needs a classifier whose output is (batch, num_classes) logits, "
            f"such as keras_llm.models.Classifier. Received a model with output shape {shape}."
        )
    return int(shape[-1])


def _check_label_names(label_names, num_classes):
    if isinstance(label_names, (str, bytes)) or not hasattr(label_names, "__iter__"):
        raise ValueError(
            f"label_names must be a list of {num_classes} strings (class names in label "
            f"order). Received label_names={label_names!r}."
        )
    label_names = [str(name) for name in label_names]
    if len(label_names) != num_classes:
        raise ValueError(
            f"label_names has {len(label_names)} names but the model predicts {num_classes} "
            f"classes. Pass one name per class, in label order. Received {label_names}."
        )
    return label_names


def _check_tokenizer(tokenizer):
    for method in ("encode", "tokenize", "detokenize"):
        if not callable(getattr(tokenizer, method, None)):
            raise ValueError(
                "tokenizer must be a keras_llm.data.Tokenizer (it needs encode, tokenize and "
                f"detokenize). Received {tokenizer!r}."
            )


def _check_path(path, overwrite):
    """The SavedModel directory to write: new, empty, or (with `overwrite`) a SavedModel,
    which stays in place, whole, until the new one is complete (`_io.atomic_directory`)."""
    path = os.fspath(path)
    if os.path.exists(path):
        is_saved_model = os.path.isfile(os.path.join(path, "saved_model.pb"))
        if os.path.isdir(path) and not os.listdir(path):
            return path
        if not overwrite:
            raise ValueError(f"{path!r} already exists. Pass overwrite=True to replace it.")
        if not (os.path.isdir(path) and is_saved_model):
            raise ValueError(
                f"{path!r} exists and is not a SavedModel directory; refusing to delete it. "
                "Choose an empty or new path."
            )
    return path


def _write_saved_model(archive, path, metadata):
    """Writes `archive` and its metadata into a temporary sibling of `path`, then renames it
    into place: a crash or an error meanwhile leaves the previous export at `path` whole."""
    try:
        with atomic_directory(path) as partial:
            archive.write_out(partial, verbose=False)
            _write_metadata(partial, metadata)
    except (OSError, tf.errors.OpError) as error:  # e.g. a full disk
        raise write_error(error, path) from error


def _write_metadata(path, metadata):
    target = os.path.join(path, METADATA_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_json(target, metadata)


def read_metadata(path):
    """Returns the `assets.extra/keras_llm_export.json` dict of an exported SavedModel."""
    return read_json(os.path.join(os.fspath(path), METADATA_FILE))


def _export_archive():
    """A `keras.export.ExportArchive` to add endpoints to.

    The model is deliberately not passed to `archive.track`: the archive then saves the
    variables its endpoints use once, as `tf.Variable`s. Tracking the model would also save
    every Keras variable wrapper, i.e. each weight twice (twice the size on disk, with
    Keras 3.15). The tokenizer holds no variables or tables (its WordPiece model is a
    constant of the graph), so there is nothing else to track.
    """
    return keras.export.ExportArchive()


# -- classifier ------------------------------------------------------------------------------


def classifier_serving_function(model, tokenizer, label_names, sequence_length):
    """The serving computation: `(batch,)` strings -> probabilities, label id, label.

    A plain Python function (wrap it in `tf.function` with a `tf.string [None]` spec); the
    SavedModel, the serving benchmark and the tests all trace this one function.
    """
    label_table = tf.constant(label_names, dtype=tf.string)

    def serve(text):
        text = tf.ensure_shape(text, [None], name="text_must_be_a_rank_1_string_batch")
        token_ids = tokenizer.encode(text, sequence_length)  # (batch, sequence_length) int32
        logits = model(token_ids, training=False)  # (batch, num_classes)
        # float32 even for a model trained under mixed_bfloat16.
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "label_id": label_id,
            "label": tf.gather(label_table, label_id),
        }

    return serve


def export_classifier(model, tokenizer, path, label_names, sequence_length=None, overwrite=True):
    """Writes a SavedModel that classifies raw strings.

    The `serving_default` signature takes `text: tf.string, shape [None]` and returns
    `probabilities` (float32 `[None, num_classes]`), `label_id` (int64 `[None]`) and `label`
    (tf.string `[None]`). It tokenizes with `tokenizer.encode(text, sequence_length)`, as
    training does, so serving sees exactly the ids the model was trained on. The same
    function is also the attribute `serving_default` of the loaded object (for
    `keras.layers.TFSMLayer(path, call_endpoint="serving_default")`). Settings are recorded
    in `assets.extra/keras_llm_export.json` (see `read_metadata`).

    Args:
        model: `keras_llm.models.Classifier` (any Keras model mapping int32 ids
            `(batch, seq)` to logits `(batch, num_classes)` works).
        tokenizer: `keras_llm.data.Tokenizer` the model was trained with.
        path: str. Directory to write the SavedModel into.
        label_names: list of str. Class names in label order.
        sequence_length: int. Tokens per text; pass the length the classifier was trained
            with (`TrainConfig.classifier_sequence_length`). Defaults to the backbone's
            `sequence_length`.
        overwrite: bool. Replace an existing SavedModel at `path`. Defaults to `True`.

    Returns:
        `path`.

    Example:
    >>> export_classifier(model, tokenizer, "export/classifier", ["rotten", "fresh"], 64)
    >>> serve = tf.saved_model.load("export/classifier").signatures["serving_default"]
    >>> serve(text=tf.constant(["what a film"]))["label"]
    """
    _check_tokenizer(tokenizer)
    num_classes = _num_classes(model)
    label_names = _check_label_names(label_names, num_classes)
    sequence_length = _resolve_sequence_length(model, sequence_length)
    path = _check_path(path, overwrite)

    archive = _export_archive()
    archive.add_endpoint(
        SIGNATURE,
        classifier_serving_function(model, tokenizer, label_names, sequence_length),
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    _write_saved_model(
        archive,
        path,
        {
            "kind": "classifier",
            "signature": SIGNATURE,
            "inputs": {"text": "tf.string [None]"},
            "outputs": {
                "probabilities": f"float32 [None, {num_classes}]",
                "label_id": "int64 [None]",
                "label": "tf.string [None]",
            },
            "label_names": label_names,
            "sequence_length": sequence_length,
            "vocabulary_size": int(tokenizer.vocabulary_size),
            "lowercase": bool(getattr(tokenizer, "lowercase", True)),
            "requires": ["tensorflow", "tensorflow_text"],
        },
    )
    return path


# -- generator -------------------------------------------------------------------------------


def generator_serving_function(causal_lm, tokenizer, max_new_tokens_limit):
    """The serving computation of `export_generator`: prompts -> greedy continuations."""
    config = causal_lm.backbone.model_config
    prompt_width = config.sequence_length - max_new_tokens_limit  # positions kept per prompt
    end_id = int(tokenizer.end_id)
    decode = generation.decode_function(
        causal_lm, sampler="greedy", stop_at_end=True, end_id=end_id, use_cache=True
    )

    def serve(prompt, max_new_tokens):
        prompt = tf.ensure_shape(prompt, [None], name="prompt_must_be_a_rank_1_string_batch")
        max_new_tokens = tf.ensure_shape(
            max_new_tokens, [], name="max_new_tokens_must_be_an_int32_scalar"
        )
        check = tf.debugging.assert_non_negative(
            max_new_tokens, message="max_new_tokens must be >= 0"
        )
        with tf.control_dependencies([check]):
            requested = tf.minimum(max_new_tokens, max_new_tokens_limit)
        steps = tf.maximum(requested, 1)  # the loop writes its first token unconditionally

        # [BOS] + tokens, keeping each prompt's last `prompt_width` ids (a sliding window).
        pieces = tokenizer.tokenize(prompt)  # ragged (batch, None) int32
        start = tf.fill([pieces.nrows(), 1], tf.constant(tokenizer.start_id, pieces.dtype))
        ids = tf.concat([start, pieces], axis=1)[:, -prompt_width:]
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        prompt_ids = ids.to_tensor(default_value=0, shape=[None, prompt_width])

        new_ids = decode(
            prompt_ids,
            lengths,
            tf.constant(1.0, tf.float32),  # temperature (unused by greedy)
            tf.constant(1.0, tf.float32),  # top_p (unused by greedy)
            tf.constant(0, tf.int64),  # seed (unused by greedy)
            steps,
        )[:, :requested]  # (batch, requested); [EOS] then 0 after a row ends
        new_ragged = tf.RaggedTensor.from_tensor(new_ids, padding=0)
        return {
            "generated": tokenizer.detokenize(new_ragged),
            "text": tokenizer.detokenize(tf.concat([ids, new_ragged], axis=1)),
            "generated_ids": new_ids,
        }

    return serve


def export_generator(causal_lm, tokenizer, path, max_new_tokens_limit=None, overwrite=True):
    """Writes a SavedModel that continues raw-string prompts greedily.

    The `serving_default` signature takes `prompt: tf.string [None]` and
    `max_new_tokens: int32 []` and returns `generated` (tf.string `[None]`, the continuation
    only), `text` (tf.string `[None]`, prompt + continuation as the tokenizer spells them back,
    i.e. lowercased with spaced punctuation) and `generated_ids` (int32 `[None, None]`, the
    new ids, `[EOS]` kept, 0 after a row ends). Each prompt becomes `[BOS]` + its tokens, of
    which the last `sequence_length - max_new_tokens_limit` are kept; decoding is greedy with
    the key/value cache of `keras_llm.models.generation` (prefill, then one position per
    step), stops a row at `[EOS]` and the whole batch once every row has ended.
    `max_new_tokens` above the limit is capped at the limit; a negative value is refused.

    Args:
        causal_lm: `keras_llm.models.CausalLM`.
        tokenizer: `keras_llm.data.Tokenizer` it was trained with.
        path: str. Directory to write the SavedModel into.
        max_new_tokens_limit: int. Most new tokens per call. Defaults to half the model's
            `sequence_length` (the other half is the prompt window).
        overwrite: bool. Replace an existing SavedModel at `path`. Defaults to `True`.

    Returns:
        `path`.
    """
    _check_tokenizer(tokenizer)
    config = _backbone_config(causal_lm)
    if config is None or not hasattr(causal_lm, "backbone"):
        raise ValueError(
            f"export_generator needs a keras_llm.models.CausalLM. Received {causal_lm!r}."
        )
    if max_new_tokens_limit is None:
        max_new_tokens_limit = max(1, config.sequence_length // 2)
    if (
        isinstance(max_new_tokens_limit, bool)
        or not isinstance(max_new_tokens_limit, (int, np.integer))
        or not 1 <= max_new_tokens_limit < config.sequence_length
    ):
        raise ValueError(
            f"max_new_tokens_limit must be an int in [1, {config.sequence_length - 1}] (the "
            "rest of the model's sequence_length is the prompt window). Received "
            f"max_new_tokens_limit={max_new_tokens_limit!r}."
        )
    max_new_tokens_limit = int(max_new_tokens_limit)
    path = _check_path(path, overwrite)

    archive = _export_archive()
    archive.add_endpoint(
        SIGNATURE,
        generator_serving_function(causal_lm, tokenizer, max_new_tokens_limit),
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompt"),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
        ],
    )
    _write_saved_model(
        archive,
        path,
        {
            "kind": "generator",
            "signature": SIGNATURE,
            "inputs": {"prompt": "tf.string [None]", "max_new_tokens": "int32 []"},
            "outputs": {
                "generated": "tf.string [None]",
                "text": "tf.string [None]",
                "generated_ids": "int32 [None, None]",
            },
            "sampler": "greedy",
            "kv_cache": True,
            "max_new_tokens_limit": max_new_tokens_limit,
            "prompt_window": config.sequence_length - max_new_tokens_limit,
            "vocabulary_size": int(tokenizer.vocabulary_size),
            "requires": ["tensorflow", "tensorflow_text"],
        },
    )
    return path


# -- compression -----------------------------------------------------------------------------


def clone_model(model):
    """A new model with `model`'s config and a copy of its weights (nothing shared)."""
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        clone.tokenizer = tokenizer
    return clone


def quantize_classifier(model, mode="int8"):
    """Returns a copy of `model` with int8 weights; `model` itself is left as it was.

    `keras.Model.quantize("int8")` stores every `Dense` and `EinsumDense` kernel (attention
    projections, feed-forward layers, the head) as int8 with a float32 scale per output
    channel, and quantizes their inputs on the fly. The token and position embeddings and
    the layer norms stay float32 (Keras quantizes only its own layer types).

    Args:
        model: a built `keras_llm.models.Classifier` (or `CausalLM`).
        mode: str. A `keras.Model.quantize` mode. Defaults to `"int8"`.
    """
    clone = clone_model(model)
    with warnings.catch_warnings(), _one_garbage_collection():
        # Keras warns once per layer type without a `quantize` method (norms, dropout...).
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method.*")
        clone.quantize(mode)
    return clone


@contextlib.contextmanager
def _one_garbage_collection():
    """Runs `gc.collect()` once at the end instead of at every call inside the block.

    Keras 3.15's `Layer.__delattr__` calls `gc.collect()` each time `quantize` drops a float
    kernel: about 0.6 s per layer in a process holding TensorFlow, 8 s for the tiny
    classifier. One collection at the end frees the same memory.
    """
    collect = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        gc.collect = collect
        gc.collect()


def export_tflite(model, path, sequence_length=None, quantize=None):
    """Writes a TFLite flatbuffer of a classifier that maps token ids to probabilities.

    Its one signature, `serving_default`, takes `token_ids: int32 [batch, sequence_length]`
    (what `Tokenizer.encode(texts, sequence_length)` returns) and gives `probabilities`
    (float32 `[batch, num_classes]`). Only TFLite built-in ops are used; see the module
    docstring for why the tokenizer stays outside.

    Args:
        model: the Keras classifier (float32 weights).
        path: str. File to write, ending in `.tflite`.
        sequence_length: int. Tokens per text. Defaults to the backbone's `sequence_length`.
        quantize: `None` for float32 weights, or `"dynamic_range"` to store weight matrices
            as int8 (activations stay float; TFLite's post-training dynamic-range
            quantization). Defaults to `None`.

    Returns:
        `path`.
    """
    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(
            f"quantize must be one of {list(TFLITE_QUANTIZATIONS)}. Received quantize={quantize!r}."
        )
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"path must end with '.tflite'. Received path={path!r}.")
    sequence_length = _resolve_sequence_length(model, sequence_length)
    _num_classes(model)

    def probabilities(token_ids):
        logits = model(token_ids, training=False)
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    with tempfile.TemporaryDirectory() as saved_model_dir:
        # Keras' ExportArchive writes variables the converter can freeze into constants.
        archive = _export_archive()
        archive.add_endpoint(
            SIGNATURE,
            probabilities,
            input_signature=[tf.TensorSpec([None, sequence_length], tf.int32, name="token_ids")],
        )
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[SIGNATURE]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic_range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(path, flatbuffer)
    return path


# -- running and measuring artifacts ---------------------------------------------------------


def artifact_size(path):
    """Bytes on disk of a file, or of every file under a directory (a SavedModel)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def tflite_interpreter(path):
    """A `tf.lite.Interpreter` for `path` (quietly: TF 2.21 warns that it is deprecated)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return tf.lite.Interpreter(model_path=os.fspath(path))


def tflite_probabilities(path, token_ids, batch_size=256):
    """Runs an `export_tflite` flatbuffer on int32 ids `(n, sequence_length)`; `(n, classes)`."""
    runner = tflite_interpreter(path).get_signature_runner(SIGNATURE)
    token_ids = np.asarray(token_ids, dtype=np.int32)
    outputs = [
        runner(token_ids=token_ids[i : i + batch_size])["probabilities"]
        for i in range(0, len(token_ids), batch_size)
    ]
    if not outputs:
        raise ValueError("token_ids is empty; pass at least one row.")
    return np.concatenate(outputs, axis=0)


def load_saved_model(path):
    """`tf.saved_model.load(path)`, with one error naming the folder when it is damaged.

    TensorFlow checks every variable against its stored checksum; a truncated or altered
    `variables/` file or `saved_model.pb` then fails deep inside TensorFlow (`DataLossError`,
    `IndexError`, ...). Here that is a `DamagedFileError` that names the folder and the fix.

    Raises:
        FileNotFoundError: `path` holds no `saved_model.pb`.
        DamagedFileError: it cannot be loaded; the message says why.
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"No SavedModel at {path!r}: saved_model.pb is missing.")
    try:
        return tf.saved_model.load(path)
    except Exception as error:  # noqa: BLE001  (TensorFlow raises many kinds for one cause)
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise DamagedFileError(
            f"The SavedModel at {path} is damaged (truncated or altered) and cannot be "
            f"loaded: {type(error).__name__}: {reason[:300]}. Export it again "
            "(keras-llm export RUN_DIR)."
        ) from error


def saved_model_probabilities(path_or_signature, texts, batch_size=256):
    """Runs an exported classifier's `serving_default` on a list of strings; `(n, classes)`."""
    serve = path_or_signature
    if not callable(serve):
        serve = load_saved_model(serve).signatures[SIGNATURE]
    outputs = [
        serve(text=tf.constant(list(texts[i : i + batch_size]), tf.string))["probabilities"]
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate([o.numpy() for o in outputs], axis=0)


def keras_probabilities(model, token_ids, batch_size=256):
    """Softmax of the Keras model's logits on int32 ids, in float32."""
    logits = model.predict(np.asarray(token_ids, np.int32), batch_size=batch_size, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.cast(logits, "float32")))


def evaluate_exports(model, tokenizer, texts, labels, artifacts, sequence_length=None):
    """Size, macro-F1 and agreement with the Keras model of each exported classifier.

    Args:
        model: the float Keras classifier the artifacts were made from (the reference).
        tokenizer: its `Tokenizer`.
        texts: list of str (e.g. the whole test split).
        labels: int labels of `texts`.
        artifacts: dict `name -> path` of `export_classifier` SavedModels (directories) and
            `export_tflite` flatbuffers (`.tflite` files).
        sequence_length: int. Tokens per text. Defaults to the backbone's `sequence_length`.

    Returns:
        dict with `"keras"` (`macro_f1`, `accuracy`) and one entry per artifact: `path`,
        `bytes`, `macro_f1`, `accuracy`, `agreement` (share of texts where it predicts the
        Keras model's class), `max_abs_diff` (largest probability difference to the Keras
        model) and `f1_delta` (its macro-F1 minus the Keras model's, in points).
    """
    from sklearn.metrics import f1_score

    sequence_length = _resolve_sequence_length(model, sequence_length)
    texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in texts]
    labels = np.asarray(labels)
    token_ids = tokenizer.encode(tf.constant(texts, tf.string), sequence_length).numpy()
    reference = keras_probabilities(model, token_ids)
    classes = list(range(reference.shape[-1]))

    def scores(probabilities):
        predicted = probabilities.argmax(-1)
        f1 = f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)
        return {"macro_f1": float(f1), "accuracy": float((predicted == labels).mean())}

    report = {"keras": scores(reference)}
    for name, path in artifacts.items():
        if os.fspath(path).endswith(".tflite"):
            probabilities = tflite_probabilities(path, token_ids)
        else:
            probabilities = saved_model_probabilities(path, texts)
        entry = {"path": os.fspath(path), "bytes": artifact_size(path), **scores(probabilities)}
        entry["agreement"] = float((probabilities.argmax(-1) == reference.argmax(-1)).mean())
        entry["max_abs_diff"] = float(np.abs(probabilities - reference).max())
        entry["f1_delta"] = 100.0 * (entry["macro_f1"] - report["keras"]["macro_f1"])
        report[name] = entry
    return report


# -- a whole run directory -------------------------------------------------------------------


def export_all(
    run_dir,
    output_dir=None,
    data=None,
    split="test",
    data_dir=None,
    quantize=True,
    tflite=True,
    max_new_tokens_limit=None,
):
    """Exports every artifact of a run directory and measures them.

    Reads the layout `keras_llm.training` writes: `classifier.keras`, `tokenizer/`,
    `labels.json`, `train_config.json` (its `classifier_sequence_length` is the serving
    length) and, when present, `causal_lm.keras`. Writes into `output_dir`:

        classifier/             SavedModel, raw strings in (float32 weights)
        classifier_int8/        the same with int8 weights (`quantize_classifier`)
        classifier.tflite       TFLite, token ids in (float32 weights)
        classifier_int8.tflite  TFLite with dynamic-range int8 weights
        generator/              SavedModel, prompts in (only with causal_lm.keras)
        tokenizer/              the tokenizer (for the TFLite models, which take ids)
        export_report.json      sizes, and with `data` the macro-F1s and parity figures

    Args:
        run_dir: str. A fine-tuning run directory (or a pretraining one: then only the
            generator is exported).
        output_dir: str. Defaults to `run_dir/export`.
        data: str. Classification data set to measure F1 on (e.g. `"rotten_tomatoes"`).
            Defaults to the `"dataset"` entry of `run_dir/run.json`, if any; without one the
            report has sizes only.
        split: str. Split to measure on. Defaults to `"test"`.
        data_dir: str. tensorflow-datasets directory (see `keras_llm.data`).
        quantize: bool. Write `classifier_int8/` and `classifier_int8.tflite`. Defaults to
            `True`.
        tflite: bool. Write the `.tflite` files. Defaults to `True`.
        max_new_tokens_limit: int. Passed to `export_generator`.

    Returns:
        The report dict (also written to `export_report.json`): `"artifacts"` (name ->
        path), `"sizes"` (name -> bytes), `"sequence_length"`, `"label_names"`, and with
        data `"evaluation"` (see `evaluate_exports`).
    """
    from keras_llm import data as llm_data

    run_dir = os.fspath(run_dir)
    output_dir = os.fspath(output_dir) if output_dir else os.path.join(run_dir, "export")
    classifier_path = os.path.join(run_dir, RUN_CLASSIFIER)
    causal_lm_path = os.path.join(run_dir, RUN_CAUSAL_LM)
    tokenizer_dir = os.path.join(run_dir, RUN_TOKENIZER)
    has_classifier = os.path.isfile(classifier_path)
    has_causal_lm = os.path.isfile(causal_lm_path)
    if not (has_classifier or has_causal_lm) or not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(
            f"{run_dir!r} is not a keras_llm run directory: it needs {RUN_TOKENIZER}/ and "
            f"{RUN_CLASSIFIER} (fine-tuning) or {RUN_CAUSAL_LM} (pretraining). Train one with "
            "`keras-llm finetune` first."
        )
    # Everything is read (and a bad split refused) before anything is written.
    tokenizer = llm_data.Tokenizer.load(tokenizer_dir)
    if has_classifier:
        model, label_names, sequence_length = _load_classifier_run(run_dir, classifier_path)
        if data is None and os.path.isfile(os.path.join(run_dir, RUN_METADATA)):
            data = read_json(os.path.join(run_dir, RUN_METADATA)).get("dataset")
        if data is not None:
            texts, labels = llm_data.load_texts_and_labels(data, split, data_dir)
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save(os.path.join(output_dir, TOKENIZER_DIR))
    artifacts = {}
    report = {"run_dir": run_dir, "output_dir": output_dir}

    if has_classifier:
        report.update(label_names=label_names, sequence_length=sequence_length)
        artifacts.update(_export_classifier_files(
            model, tokenizer, output_dir, label_names, sequence_length, quantize, tflite
        ))
        if data is not None:
            report["evaluation"] = {
                "data": data,
                "split": split,
                "examples": len(texts),
                **evaluate_exports(
                    model, tokenizer, texts, labels, dict(artifacts), sequence_length
                ),
            }

    if has_causal_lm:
        causal_lm = load_keras_model(causal_lm_path, compile=False)
        artifacts[GENERATOR_DIR] = export_generator(
            causal_lm, tokenizer, os.path.join(output_dir, GENERATOR_DIR), max_new_tokens_limit
        )

    report["artifacts"] = artifacts
    report["sizes"] = {name: artifact_size(path) for name, path in artifacts.items()}
    write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


def _load_classifier_run(run_dir, classifier_path):
    """`(model, label_names, serving sequence_length)` of a fine-tuning run directory."""
    labels_path = os.path.join(run_dir, RUN_LABELS)
    config_path = os.path.join(run_dir, RUN_TRAIN_CONFIG)
    for needed in (labels_path, config_path):
        if not os.path.isfile(needed):
            raise FileNotFoundError(
                f"{run_dir!r} has {RUN_CLASSIFIER} but no {os.path.basename(needed)}; "
                "it is written by keras_llm.training.finetune."
            )
    label_names = read_json(labels_path)
    sequence_length = TrainConfig.load(config_path).classifier_sequence_length
    return load_keras_model(classifier_path, compile=False), label_names, sequence_length


def _export_classifier_files(model, tokenizer, output_dir, label_names, sequence_length,
                             quantize, tflite):
    """The classifier's SavedModels (float32, int8) and TFLite files; name -> path."""
    def saved_model(name, variant):
        return export_classifier(
            variant, tokenizer, os.path.join(output_dir, name), label_names, sequence_length
        )

    artifacts = {CLASSIFIER_DIR: saved_model(CLASSIFIER_DIR, model)}
    if quantize:
        artifacts[CLASSIFIER_INT8_DIR] = saved_model(CLASSIFIER_INT8_DIR,
                                                     quantize_classifier(model))
    if tflite:
        artifacts[CLASSIFIER_TFLITE] = export_tflite(
            model, os.path.join(output_dir, CLASSIFIER_TFLITE), sequence_length
        )
        if quantize:
            artifacts[CLASSIFIER_INT8_TFLITE] = export_tflite(
                model,
                os.path.join(output_dir, CLASSIFIER_INT8_TFLITE),
                sequence_length,
                quantize="dynamic_range",
            )
    return artifacts
