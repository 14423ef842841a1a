"""Serving speed of the exported classifier (raw strings in) against Keras on token ids.

Contenders, all in one process and one run, interleaved round by round (`_common`):

- `SavedModel signature (strings)`: `export_classifier`'s `serving_default`, loaded with
  `tf.saved_model.load` and called with raw strings: tokenizer, model, softmax and labels in
  one graph. This is what a server runs.
- `model.predict (ids)`: `Classifier.predict` on ids tokenized beforehand (not timed).
- `tf.function(model) (ids)`: the Keras model called inside a plain `tf.function` with a
  `(None, sequence_length)` int32 signature, ids tokenized beforehand: the model alone.
- `TFLite (ids)` (not with `--quick`): `export_tflite`'s flatbuffer in `tf.lite.Interpreter`,
  ids tokenized beforehand.

Batch 1: the latency of single-text calls (p50 and p99 over `--calls` calls, each with a
different review). Batch 64: throughput in texts per second over `--batches` calls. One
untimed call per contender and batch size first (tracing).

The model has the `small` preset's sizes with RANDOM weights (speed does not depend on the
weights), unless `--run-dir` points at a fine-tuning run (then its `classifier.keras`,
`tokenizer/` and `classifier_sequence_length` are used). Without a run dir the tokenizer is
trained on the rotten_tomatoes train split (vocabulary up to 8192) and requests are its test
reviews; the model's `vocabulary_size` is the tokenizer's real size.

Usage: `python benchmarks/serving.py [--quick] [--run-dir RUN_DIR] [--sequence-length 64]`.
Prints a Markdown table. On a shared machine the numbers are measured under load: compare
the ratios within one run, not absolute times across runs.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common
sys.path.append(os.path.dirname(HERE))  # keras_llm from a checkout that is not pip-installed
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras_llm  # noqa: E402, F401, I001  (first: selects the backend, quiets TensorFlow)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import interleaved_rounds, machine, markdown_table  # noqa: E402
from keras_llm import ModelConfig, TrainConfig, export  # noqa: E402
from keras_llm import data as llm_data  # noqa: E402
from keras_llm.models import Classifier, TransformerBackbone  # noqa: E402


def load_or_build(run_dir, sequence_length, data_dir):
    """Returns `(model, tokenizer, label_names, sequence_length, texts, description)`."""
    test = llm_data.load_text_classification("rotten_tomatoes", "test", data_dir)
    texts = [t.decode("utf-8") for t, _ in test.as_numpy_iterator()]
    if run_dir:
        model = keras.models.load_model(os.path.join(run_dir, export.RUN_CLASSIFIER))
        tokenizer = llm_data.Tokenizer.load(os.path.join(run_dir, export.RUN_TOKENIZER))
        with open(os.path.join(run_dir, export.RUN_LABELS)) as f:
            label_names = json.load(f)
        config_path = os.path.join(run_dir, export.RUN_TRAIN_CONFIG)
        sequence_length = TrainConfig.load(config_path).classifier_sequence_length
        return model, tokenizer, label_names, sequence_length, texts, f"run {run_dir}"
    train = llm_data.load_text_classification("rotten_tomatoes", "train", data_dir)
    tokenizer = llm_data.Tokenizer.train(train.map(lambda text, label: text), 8192)
    config = dataclasses.replace(
        ModelConfig.preset("small"), vocabulary_size=tokenizer.vocabulary_size
    )
    keras.utils.set_random_seed(0)
    model = Classifier(TransformerBackbone(config), num_classes=2)
    description = (
        f"small preset, RANDOM weights, vocabulary {tokenizer.vocabulary_size}, "
        f"{model.count_params():,} parameters"
    )
    return model, tokenizer, ["rotten", "fresh"], sequence_length, texts, description


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few calls, no TFLite")
    parser.add_argument("--run-dir", default=None, help="a fine-tuning run directory")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--calls", type=int, default=200, help="batch-1 calls per contender")
    parser.add_argument("--batches", type=int, default=20, help="batch-64 calls per contender")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    calls, batches, rounds = (20, 4, 2) if args.quick else (args.calls, args.batches, 4)
    calls_per_round, batches_per_round = max(1, calls // rounds), max(1, batches // rounds)

    model, tokenizer, label_names, length, texts, description = load_or_build(
        args.run_dir, args.sequence_length, args.data_dir
    )
    workdir = tempfile.mkdtemp(prefix="keras_llm_serving_")
    path = export.export_classifier(
        model, tokenizer, os.path.join(workdir, "classifier"), label_names, length
    )
    serve = tf.saved_model.load(path).signatures[export.SIGNATURE]
    model_function = tf.function(
        lambda ids: model(ids, training=False),
        input_signature=[tf.TensorSpec([None, length], tf.int32)],
    )
    contenders = {
        "SavedModel signature (strings)": lambda batch: serve(text=tf.constant(batch[0])),
        "model.predict (ids)": lambda batch: model.predict(batch[1], verbose=0),
        "tf.function(model) (ids)": lambda batch: model_function(tf.constant(batch[1])),
    }
    if not args.quick:
        tflite_path = export.export_tflite(model, os.path.join(workdir, "c.tflite"), length)
        runner = export.tflite_interpreter(tflite_path).get_signature_runner(export.SIGNATURE)
        contenders["TFLite (ids)"] = lambda batch: runner(token_ids=batch[1])

    rng = np.random.RandomState(0)

    def make_batches(size, count):
        out = []
        for _ in range(count):
            chosen = [texts[i] for i in rng.randint(0, len(texts), size)]
            ids = tokenizer.encode(tf.constant(chosen), length).numpy()
            out.append((chosen, ids))
        return out

    singles = make_batches(1, calls_per_round)
    sixty_fours = make_batches(64, batches_per_round)
    for run_call in contenders.values():  # trace / warm up every path at both sizes
        run_call(singles[0])
        run_call(sixty_fours[0])

    def one_round(batches_of):
        def run_one(name):
            times = []
            for batch in batches_of:
                start = time.perf_counter()
                result = contenders[name](batch)
                tf.nest.map_structure(np.asarray, result)  # results exist
                times.append(time.perf_counter() - start)
            return times

        return run_one

    names = list(contenders)
    latency = interleaved_rounds(names, rounds, one_round(singles))
    throughput = interleaved_rounds(names, rounds, one_round(sixty_fours))

    predict_p50 = percentile(latency["model.predict (ids)"], 50)
    rows = []
    for name in names:
        p50 = percentile(latency[name], 50)
        p99 = percentile(latency[name], 99)
        texts_per_second = 64 * len(throughput[name]) / sum(throughput[name])
        rows.append(
            [
                name,
                f"{1000 * p50:.2f}",
                f"{1000 * p99:.2f}",
                f"{texts_per_second:.0f}",
                f"{predict_p50 / p50:.1f}x",
            ]
        )
    print(machine()[0])
    print(
        f"{description}; sequence_length {length}; batch 1: {len(singles) * rounds} calls, "
        f"batch 64: {len(sixty_fours) * rounds} calls per contender; "
        f"{os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}."
    )
    print()
    print(
        markdown_table(
            [
                "path (input)",
                "batch 1 p50 (ms)",
                "batch 1 p99 (ms)",
                "batch 64 (texts/s)",
                "p50 speed-up vs model.predict",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
