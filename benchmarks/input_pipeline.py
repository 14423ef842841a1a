"""Is training ever input-bound? Input pipeline speed beside the training step rate.

What is measured, all in one process on the same machine:
- tokenizer training: seconds for `Tokenizer.train(keras_llm_corpus train, vocabulary_size)`;
- tokenizer throughput: MB/s of UTF-8 text through `Tokenizer.tokenize` inside a `tf.data`
  map (batches of 256 documents, the way `lm_dataset` calls it), over the whole corpus;
- pipeline rate: batches/s out of `lm_dataset(corpus, tokenizer, sequence_length,
  batch_size, repeat=True)` (pretraining) and `classification_dataset(rotten_tomatoes train,
  ..., augment=Augmenter(0.1, 0.1, 0.1), shuffle=True)` (fine-tuning, with augmentation);
- training rate: optimizer steps/s of `CausalLM(TransformerBackbone(config))` compiled with
  `keras.optimizers.Adam()` and `SparseCategoricalCrossentropy(from_logits=True,
  ignore_class=0)`, fed from one in-memory batch so that the input pipeline costs nothing.

Target: the pretraining pipeline delivers at least 10x the batches per second that training
consumes, so training is never input-bound.

How it is timed: every rate is the median over `--repeats` rounds, after a warm-up (tracing,
the first shuffle-buffer fill). A training step is timed between Keras'
`on_train_batch_begin` and `on_train_batch_end` (on CPU the step is done when the compiled
function returns). The numbers mean something only on an otherwise idle machine, so the
script prints the load average before and after.

Run:

    python benchmarks/input_pipeline.py                  # `small` preset, batch 32 (minutes)
    python benchmarks/input_pipeline.py --quick          # tiny sizes: a smoke run (~1 min)
    python benchmarks/input_pipeline.py --json results.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import machine, markdown_table, step_timer  # noqa: E402

import keras_llm  # noqa: E402  (sets the backend before TensorFlow starts)


def _load_average():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _median_rate(count, run, repeats):
    """Median of `count / seconds` over `repeats` calls of `run()`."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def tokenizer_throughput(tokenizer, texts, repeats):
    import tensorflow as tf

    megabytes = sum(len(t) for t in texts.as_numpy_iterator()) / 1e6
    tokens = texts.batch(256).map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE)

    def run():
        for _ in tokens:
            pass

    run()  # trace
    return _median_rate(megabytes, run, repeats)


def pipeline_rate(dataset, batches, repeats):
    iterator = iter(dataset)
    for _ in range(min(batches, 20)):  # warm-up: tracing and the shuffle buffers
        next(iterator)

    def run():
        for _ in range(batches):
            next(iterator)

    return _median_rate(batches, run, repeats)


def training_rate(model_config, batch_size, steps, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_llm.models import CausalLM, TransformerBackbone

    keras.utils.set_random_seed(1337)
    model = CausalLM(TransformerBackbone(model_config))
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    rng = np.random.default_rng(1337)
    shape = (batch_size, model_config.sequence_length + 1)
    window = rng.integers(1, model_config.vocabulary_size, size=shape).astype("int32")
    batch = (window[:, :-1], window[:, 1:])
    dataset = tf.data.Dataset.from_tensors(batch).repeat()

    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # warm-up
    stamps = step_timer()
    for _ in range(repeats):
        model.fit(
            dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[stamps]
        )
    return 1.0 / statistics.median(stamps.seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, few steps: a smoke run")
    parser.add_argument("--preset", default=None, help="ModelConfig preset (default: small)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="training steps per round")
    parser.add_argument("--batches", type=int, default=None, help="pipeline batches per round")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="tfds data dir (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from keras_llm import data

    preset = args.preset or ("tiny" if args.quick else "small")
    config = keras_llm.ModelConfig.preset(preset)
    steps = args.steps or (3 if args.quick else 30)
    batches = args.batches or (20 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 3)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="keras_llm_bench_")
    load_before = _load_average()

    corpus = data.load_pretraining_text("keras_llm_corpus", "train", data_dir=data_dir)
    if args.quick:
        corpus = corpus.take(2000)
    reviews = data.load_text_classification("rotten_tomatoes", "train", data_dir=data_dir)

    start = time.perf_counter()
    tokenizer = data.Tokenizer.train(corpus, config.vocabulary_size)
    train_seconds = time.perf_counter() - start

    megabytes_per_second = tokenizer_throughput(tokenizer, corpus, repeats)
    lm_rate = pipeline_rate(
        data.lm_dataset(corpus, tokenizer, config.sequence_length, args.batch_size, repeat=True),
        batches,
        repeats,
    )
    classifier_length = keras_llm.TrainConfig.preset("small").classifier_sequence_length
    classification_rate = pipeline_rate(
        data.classification_dataset(
            reviews.repeat(),
            tokenizer,
            classifier_length,
            args.batch_size,
            augment=data.Augmenter(0.1, 0.1, 0.1),
            shuffle=True,
        ),
        batches,
        repeats,
    )
    step_rate = training_rate(config, args.batch_size, steps, repeats)
    ratio = lm_rate / step_rate

    results = {
        "preset": preset,
        "batch_size": args.batch_size,
        "sequence_length": config.sequence_length,
        "vocabulary_size": tokenizer.vocabulary_size,
        "tokenizer_train_seconds": train_seconds,
        "tokenizer_mb_per_second": megabytes_per_second,
        "lm_pipeline_batches_per_second": lm_rate,
        "classification_pipeline_batches_per_second": classification_rate,
        "training_steps_per_second": step_rate,
        "pipeline_to_training_ratio": ratio,
        "target_met": ratio >= 10,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "tensorflow": tf.__version__,
        "machine": machine()[1],
    }
    print(machine()[0])
    print(
        f"\nInput pipeline vs training, preset {preset!r} (vocabulary {tokenizer.vocabulary_size},"
        f" sequence {config.sequence_length}), batch {args.batch_size}:\n"
    )
    rows = [
        ["tokenizer training (keras_llm_corpus)", f"{train_seconds:.1f}", "s"],
        ["tokenizer throughput", f"{megabytes_per_second:.1f}", "MB/s"],
        ["lm_dataset", f"{lm_rate:.1f}", "batches/s"],
        [
            f"classification_dataset (augmented, seq {classifier_length})",
            f"{classification_rate:.1f}",
            "batches/s",
        ],
        ["CausalLM training (Adam, float32)", f"{step_rate:.2f}", "steps/s"],
        ["lm_dataset / training", f"{ratio:.1f}", "x (target >= 10)"],
    ]
    print(markdown_table(["what", "value", "unit"], rows))
    print(f"\nload average before: {load_before}; after: {results['load_average_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
