"""Multimodal: the text models' Transformer block on image patches (scikit-learn's digits).

Two models on the 1,797 bundled 8x8 digit images (`keras_llm.data.digits`, offline), each
trained with `model.fit` and the project's callbacks (`WarmupCosineScheduler`,
`GradientClipping`), the best epoch kept by validation:

- `train_digit_classifier`: `ImageClassifier`, patches -> non-causal blocks -> mean pool ->
  10 classes. Reports test accuracy.
- `train_digit_captioner`: `ImageCaptioner`, one causal sequence of the image's patch tokens
  followed by the caption `[BOS] this is a seven [EOS]`, loss on the text tokens only. Test
  captions are written greedily from the image alone (`[BOS]` is the only prompt); a caption
  counts as correct when it names the right digit (`digit_accuracy`), and `exact_match`
  counts captions equal to the reference word for word.

Both runs also fit a logistic regression on the raw 64 pixels (scikit-learn, C chosen on
the validation split) on the same split, so the numbers have a yardstick measured in the
same run, and write a grid of test images titled with the model's output.

A run directory holds:

    run.json                            kind, patch size, image shape, split seed and sizes
    model_config.json, train_config.json
    digits_classifier.keras | digits_captioner.keras    the best epoch
    tokenizer/                          (captioner) the 18-word caption vocabulary
    history.csv, steps.csv              per epoch, per step (loss, learning rate, grad norm)
    metrics.json                        test numbers, the baseline, seconds
    predictions.png                     test images titled with predictions / captions
    confusion_matrix.png                (classifier)
    loss.png, learning_rate.png, grad_norm.png
    export/                             SavedModel, with `export=True`
"""

import dataclasses
import math
import os
import time

import keras
import numpy as np

from keras_llm import evaluation, plots, training
from keras_llm._io import load_keras_model
from keras_llm.config import ModelConfig, TrainConfig
from keras_llm.data import digits
from keras_llm.models.vision import ImageBackbone, ImageCaptioner, ImageClassifier

CLASSIFIER_FILE = "digits_classifier.keras"
CAPTIONER_FILE = "digits_captioner.keras"
PREDICTIONS_PLOT = "predictions.png"
EXPORT_DIR = "export"
LOGISTIC_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
CHANCE = 1.0 / digits.NUM_CLASSES

# The README's runs (about a minute each on 2 busy CPU cores). vocabulary_size and
# sequence_length are the caption vocabulary's (the classifier does not use them).
DIGITS_MODEL_CONFIG = ModelConfig(
    vocabulary_size=len(digits.CAPTION_VOCABULARY),
    sequence_length=digits.CAPTION_SEQUENCE_LENGTH,
    hidden_dim=64,
    num_heads=4,
    num_layers=2,
    intermediate_dim=128,
    dropout=0.1,
    # Pixels are not token ids: GPT-2's normal(0.02) made the patch tokens so small that the
    # layer norms amplified the gradients (norm 8-30, every step clipped). Three epochs of the
    # quick classifier: test accuracy 0.68 / 0.61 with it, 0.77 / 0.84 with Glorot (peak
    # learning rate 2e-3 / 5e-3).
    initializer="glorot_uniform",
)
DIGITS_TRAIN_CONFIG = TrainConfig(
    batch_size=32,
    finetune_epochs=40,
    finetune_learning_rate=2e-3,
    warmup_fraction=0.05,
    min_learning_rate_ratio=0.02,
    clip_norm=1.0,
    weight_decay=0.05,
    seed=0,
    precision="float32",  # a 50k-parameter model gains nothing from bfloat16 on CPU
)
# `--quick` and the tests: a smaller model, a few epochs.
QUICK_MODEL_CONFIG = dataclasses.replace(
    DIGITS_MODEL_CONFIG, hidden_dim=32, num_heads=2, intermediate_dim=64, dropout=0.0
)
QUICK_TRAIN_CONFIG = dataclasses.replace(
    DIGITS_TRAIN_CONFIG, finetune_epochs=3, finetune_learning_rate=5e-3
)


@dataclasses.dataclass
class DigitsResult:
    """What `train_digit_classifier` / `train_digit_captioner` return."""

    run_dir: str
    model: keras.Model
    metrics: dict
    history: dict
    seconds: float
    tokenizer: object = None


# --------------------------------------------------------------------------- helpers


def parse_patch_size(text, image_shape=digits.IMAGE_SHAPE):
    """`"2"` -> `(2, 2)`, `"1x8"` -> `(1, 8)`, `"rows"` -> one token per pixel row.

    Also takes an int or a pair. Raises `ValueError` naming the value if it is malformed or
    does not divide `image_shape`.
    """
    if isinstance(text, (tuple, list, int)):
        parts = list(text) if isinstance(text, (tuple, list)) else [text, text]
    elif str(text).strip().lower() == "rows":
        parts = [1, image_shape[1]]
    else:
        try:
            parts = [int(v) for v in str(text).strip().lower().split("x")]
        except ValueError:
            parts = []
        parts = parts * 2 if len(parts) == 1 else parts
    if len(parts) != 2 or not all(isinstance(v, int) and v >= 1 for v in parts):
        raise ValueError(
            "patch_size must be an int, 'HxW' (e.g. '2x2', '1x8') or 'rows'. "
            f"Received patch_size={text!r}."
        )
    if image_shape[0] % parts[0] or image_shape[1] % parts[1]:
        raise ValueError(
            f"patch_size={text!r} does not divide the {image_shape[0]}x{image_shape[1]} images; "
            "use sides that divide them, e.g. '2x2', '4x4', '1x8' or 'rows'."
        )
    return tuple(parts)


def _transformer_args(model_config):
    return {
        name: getattr(model_config, name)
        for name in ("hidden_dim", "num_heads", "num_layers", "intermediate_dim", "dropout",
                     "activation", "initializer", "attention")
    }


def _configs(model_config, train_config, quick, epochs, seed):
    model_config = model_config or (QUICK_MODEL_CONFIG if quick else DIGITS_MODEL_CONFIG)
    train_config = train_config or (QUICK_TRAIN_CONFIG if quick else DIGITS_TRAIN_CONFIG)
    overrides = {}
    if epochs is not None:
        overrides["finetune_epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    return model_config, dataclasses.replace(train_config, **overrides)


def _fit(run, model, inputs, labels, validation, checkpoint, monitor):
    """Compiled `model` -> `fit` with the run's schedule, clipping, logs and the best-epoch
    checkpoint by `monitor`; then the kept epoch's weights are restored. Returns the
    history as a dict."""
    config = run.train_config
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    run.callbacks(
        steps_per_epoch * config.finetune_epochs, config.finetune_learning_rate,
        checkpoint=checkpoint, monitor=monitor, tensorboard=False,
    )
    history = run.fit(
        model, inputs, labels,
        batch_size=config.batch_size,
        epochs=config.finetune_epochs,
        validation_data=validation,
        shuffle=True,
    )
    run.restore_best(model)
    return training.history_dict(history)


def _write_files(run, kind, model_config, patch_size, splits, split_seed):
    run.write_files(kind, {
        "dataset": "sklearn.datasets.load_digits",
        "image_shape": list(digits.IMAGE_SHAPE),
        "patch_size": list(patch_size),
        "split_seed": split_seed,
        "split_sizes": {name: len(split) for name, split in splits.items()},
    }, model_config=model_config)


def pixel_baseline(splits, c_grid=LOGISTIC_C_GRID):
    """Logistic regression on the raw 64 pixels: the yardstick for both models.

    Fitted on the train split (scikit-learn's `LogisticRegression`, lbfgs, multinomial); the
    C with the best validation accuracy is kept (the smallest on ties) and scored on test.

    Returns:
        dict with `test_accuracy`, `validation_accuracy`, `C`, `grid` (C -> validation
        accuracy), `seconds`.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()

    def flat(split):
        return split.images.reshape(len(split), -1)

    grid, best = {}, None
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=5000)
        # One BLAS thread: on 2 busy cores OpenBLAS' own threads made each fit about 100
        # times slower (5 s instead of 0.05 s).
        with threadpool_limits(limits=1):
            model.fit(flat(splits["train"]), splits["train"].labels)
        score = float(model.score(flat(splits["validation"]), splits["validation"].labels))
        grid[str(c)] = score
        if best is None or score > best[1]:
            best = (c, score, model)
    c, validation_accuracy, model = best
    return {
        "test_accuracy": float(model.score(flat(splits["test"]), splits["test"].labels)),
        "validation_accuracy": validation_accuracy,
        "C": float(c),
        "grid": grid,
        "seconds": time.perf_counter() - start,
    }


def plot_digit_grid(images, titles, path, correct=None, labels=None, columns=8, suptitle=None):
    """Writes a grid of grey images, each titled (red when `correct` says it is wrong).

    Args:
        images: `(n, H, W)` array.
        titles: list of n str.
        path: str. Where the PNG goes.
        correct: optional list of n bools.
        labels: optional n true digits, named under the title of each wrong image.
        columns: int. Images per row.
        suptitle: str. Figure title.

    Returns:
        `path`.
    """
    import matplotlib.pyplot as plt  # keras_llm.plots (imported above) selected Agg

    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 1.95 * rows + 0.4))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
        wrong = correct is not None and not correct[i]
        color = "red" if wrong else "black"
        title = titles[i].replace("this is ", "this is\n")  # two short lines
        if wrong and labels is not None:
            title += f"\n(true: {digits.DIGIT_NAMES[int(labels[i])]})"
        ax.set_title(title, fontsize=8, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- export


def export_digit_classifier(model, path):
    """A SavedModel with `serve(images float32 (batch, 8, 8)) -> logits (batch, 10)`."""
    model.export(path, format="tf_saved_model", verbose=False)
    return path


def export_digit_captioner(model, tokenizer, path, max_new_tokens=None):
    """A SavedModel that captions images: pixels in, words out.

    Endpoints: `caption(images float32 (batch, H, W)) -> {"caption": tf.string (batch,),
    "generated_ids": int32 (batch, max_new_tokens)}` (greedy, `ImageCaptioner.greedy_decode`
    traced into the graph, the tokenizer's `detokenize` after it); and
    `serve({"images", "token_ids"}) -> logits`. Loading needs `import tensorflow_text`.
    """
    import tensorflow as tf

    max_new_tokens = max_new_tokens or model.sequence_length - 1
    archive = keras.export.ExportArchive()
    archive.track(model)
    image_spec = tf.TensorSpec((None, *model.image_shape), tf.float32, name="images")

    def caption(images):
        ids = model.greedy_decode(images, max_new_tokens, tokenizer.start_id, tokenizer.end_id)
        return {"caption": tokenizer.detokenize(ids), "generated_ids": ids}

    archive.add_endpoint("caption", caption, input_signature=[image_spec])
    archive.add_endpoint(
        "serve",
        lambda inputs: model(inputs, training=False),
        input_signature=[{
            "images": image_spec,
            "token_ids": tf.TensorSpec((None, None), tf.int32, name="token_ids"),
        }],
    )
    archive.write_out(path, verbose=False)
    return path


# --------------------------------------------------------------------------- classifier


def train_digit_classifier(
    run_dir="runs/digits_classifier",
    model_config=None,
    train_config=None,
    *,
    patch_size=(2, 2),
    epochs=None,
    seed=None,
    split_seed=0,
    quick=False,
    export=False,
    verbose="auto",
):
    """Trains an `ImageClassifier` on the digits and reports its test accuracy.

    Args:
        run_dir: str. Where everything is written.
        model_config: `ModelConfig`. The Transformer's sizes (`hidden_dim`, `num_heads`,
            `num_layers`, `intermediate_dim`, `dropout`, ...). Defaults to
            `DIGITS_MODEL_CONFIG` (`QUICK_MODEL_CONFIG` with `quick=True`).
        train_config: `TrainConfig`. Uses `batch_size`, `finetune_epochs`,
            `finetune_learning_rate`, the schedule, `clip_norm`, `weight_decay`, `seed`,
            `precision`. Defaults to `DIGITS_TRAIN_CONFIG` (`QUICK_TRAIN_CONFIG`).
        patch_size: int, `(height, width)` or a string for `parse_patch_size` (`"rows"`).
            Defaults to `(2, 2)`: 16 tokens.
        epochs: int. Overrides `train_config.finetune_epochs`.
        seed: int. Overrides `train_config.seed` (weights, shuffling).
        split_seed: int. Fixes the train / validation / test split. Defaults to `0`.
        quick: bool. The small quick configs (tests, smoke runs).
        export: bool. Also write a SavedModel to `run_dir/export`.
        verbose: passed to `fit`.

    Returns:
        `DigitsResult`; `metrics` holds `test_accuracy`, `test_loss`,
        `validation_accuracy`, `best_epoch`, `baseline` (`pixel_baseline`), `chance`.
    """
    model_config, train_config = _configs(model_config, train_config, quick, epochs, seed)
    patch_size = parse_patch_size(patch_size)
    run = training.TrainingRun(run_dir, train_config, verbose=verbose)
    splits = digits.load_digit_splits(split_seed)
    _write_files(run, "digits_classifier", model_config, patch_size, splits, split_seed)
    train, validation, test = (splits[name] for name in digits.SPLITS)

    with run.policy():
        backbone = ImageBackbone(digits.IMAGE_SHAPE, patch_size, **_transformer_args(model_config))
        model = ImageClassifier(backbone, digits.NUM_CLASSES)
        run.compile(
            model, train_config.finetune_learning_rate,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        history = _fit(run, model, train.images, train.labels,
                       (validation.images, validation.labels), run.path(CLASSIFIER_FILE),
                       "val_accuracy")
        test_metrics = run.evaluate(model, test.images, test.labels, batch_size=256)
        validation_metrics = run.evaluate(model, validation.images, validation.labels,
                                          batch_size=256)
        logits = model.predict(test.images, batch_size=256, verbose=0)
    predictions = np.argmax(logits, axis=-1)

    validation_curve = history.get("val_accuracy", [])
    metrics = {
        "test_accuracy": test_metrics["accuracy"],
        "test_loss": test_metrics["loss"],
        "validation_accuracy": validation_metrics["accuracy"],
        "best_epoch": int(np.argmax(validation_curve)) + 1 if validation_curve else None,
        "epochs": train_config.finetune_epochs,
        "parameters": int(model.count_params()),
        "num_patches": backbone.num_patches,
        "baseline": pixel_baseline(splits),
        "chance": CHANCE,
    }
    matrix = np.zeros((digits.NUM_CLASSES, digits.NUM_CLASSES), dtype=np.int64)
    np.add.at(matrix, (test.labels, predictions), 1)
    report = evaluation.report_from_confusion_matrix(matrix, list(digits.DIGIT_NAMES))
    metrics["test_macro_f1"] = report["macro"]["f1"]
    _plot_classifier(run, test, predictions, matrix, metrics["test_accuracy"])
    if export:
        export_digit_classifier(model, run.path(EXPORT_DIR))
    result = run.finish(model, metrics, history)
    return DigitsResult(run.run_dir, model, metrics, history, result.seconds)


def _plot_classifier(run, test, predictions, matrix, accuracy):
    """`confusion_matrix.png` and `predictions.png` (the first 32 test images)."""
    plots.plot_confusion_matrix(
        matrix, list(digits.DIGIT_NAMES), run.path("confusion_matrix.png"),
        title=f"Digits classifier, test accuracy {accuracy:.3f}",
    )
    shown = slice(0, 32)
    plot_digit_grid(
        test.images[shown],
        [digits.DIGIT_NAMES[p] for p in predictions[shown]],
        run.path(PREDICTIONS_PLOT),
        correct=list(predictions[shown] == test.labels[shown]),
        labels=test.labels[shown],
        suptitle=f"Predicted digits (red: wrong); test accuracy {accuracy:.3f}",
    )


# --------------------------------------------------------------------------- captioner


def caption_scores(generated_texts, labels):
    """`digit_accuracy` (names the right digit) and `exact_match` of generated captions."""
    named = [digits.digit_named(text) for text in generated_texts]
    references = digits.captions(labels)
    return {
        "digit_accuracy": float(np.mean([n == int(y) for n, y in zip(named, labels)])),
        "exact_match": float(np.mean([t == r for t, r in zip(generated_texts, references)])),
    }


def write_captions(model, tokenizer, images, batch_size=512):
    """Greedy captions (list of str) for images, from `[BOS]` alone."""
    ids = model.generate(
        images, start_id=tokenizer.start_id, end_id=tokenizer.end_id, batch_size=batch_size
    )
    texts = keras.ops.convert_to_numpy(tokenizer.detokenize(ids))
    return [t.decode("utf-8", "replace") for t in texts]


def caption_arrays(split, tokenizer):
    """`({"images", "token_ids"}, next_ids)`: the teacher-forced inputs and labels of a split."""
    ids = keras.ops.convert_to_numpy(
        tokenizer.encode(digits.captions(split.labels), digits.CAPTION_SEQUENCE_LENGTH)
    )
    return {"images": split.images, "token_ids": ids[:, :-1]}, ids[:, 1:]


def train_digit_captioner(
    run_dir="runs/digits_captioner",
    model_config=None,
    train_config=None,
    *,
    patch_size=(2, 2),
    epochs=None,
    seed=None,
    split_seed=0,
    quick=False,
    export=False,
    verbose="auto",
):
    """Trains an `ImageCaptioner` to write "this is a <digit>" and scores its captions.

    The arguments are those of `train_digit_classifier`; `model_config.vocabulary_size` and
    `sequence_length` are set from the caption vocabulary. The best epoch is kept by
    validation loss (teacher-forced next-token cross-entropy on the caption tokens).

    Returns:
        `DigitsResult` (with the caption `tokenizer`); `metrics` holds `test_digit_accuracy`
        (the generated caption names the right digit), `test_exact_match`, the same two on
        validation, `test_loss`, `test_examples` (a few generated captions), `baseline`
        (`pixel_baseline`) and `chance`.
    """
    model_config, train_config = _configs(model_config, train_config, quick, epochs, seed)
    tokenizer = digits.caption_tokenizer()
    model_config = dataclasses.replace(
        model_config,
        vocabulary_size=tokenizer.vocabulary_size,
        sequence_length=digits.CAPTION_SEQUENCE_LENGTH,
    )
    patch_size = parse_patch_size(patch_size)
    run = training.TrainingRun(run_dir, train_config, verbose=verbose)
    splits = digits.load_digit_splits(split_seed)
    _write_files(run, "digits_captioner", model_config, patch_size, splits, split_seed)
    tokenizer.save(run.path(training.TOKENIZER))
    train, validation, test = (splits[name] for name in digits.SPLITS)

    with run.policy():
        model = ImageCaptioner(
            vocabulary_size=model_config.vocabulary_size,
            sequence_length=model_config.sequence_length,
            image_shape=digits.IMAGE_SHAPE,
            patch_size=patch_size,
            tie_embeddings=model_config.tie_embeddings,
            **_transformer_args(model_config),
        )
        run.compile(model, train_config.finetune_learning_rate)
        history = _fit(run, model, *caption_arrays(train, tokenizer),
                       caption_arrays(validation, tokenizer), run.path(CAPTIONER_FILE),
                       "val_loss")
        test_loss = run.evaluate(
            model, *caption_arrays(test, tokenizer), batch_size=256
        )["loss"]
        test_texts = write_captions(model, tokenizer, test.images)
        validation_texts = write_captions(model, tokenizer, validation.images)

    metrics = _captioner_metrics(model, history, splits, test_texts, validation_texts, test_loss,
                                 train_config.finetune_epochs)
    metrics["baseline"] = pixel_baseline(splits)
    metrics["chance"] = CHANCE
    _plot_captions(run, test, test_texts, metrics["test_digit_accuracy"])
    if export:
        export_digit_captioner(model, tokenizer, run.path(EXPORT_DIR))
    result = run.finish(model, metrics, history)
    return DigitsResult(run.run_dir, model, metrics, history, result.seconds, tokenizer)


def _captioner_metrics(model, history, splits, test_texts, validation_texts, test_loss,
                       epochs):
    test, validation = splits["test"], splits["validation"]
    test_scores = caption_scores(test_texts, test.labels)
    validation_scores = caption_scores(validation_texts, validation.labels)
    validation_curve = history.get("val_loss", [])
    return {
        "test_digit_accuracy": test_scores["digit_accuracy"],
        "test_exact_match": test_scores["exact_match"],
        "test_loss": test_loss,
        "validation_digit_accuracy": validation_scores["digit_accuracy"],
        "validation_exact_match": validation_scores["exact_match"],
        "best_epoch": int(np.argmin(validation_curve)) + 1 if validation_curve else None,
        "epochs": epochs,
        "parameters": int(model.count_params()),
        "num_patches": model.num_patches,
        "test_examples": [
            {"label": int(y), "caption": t} for y, t in zip(test.labels[:10], test_texts[:10])
        ],
    }


def _plot_captions(run, test, test_texts, accuracy):
    """`predictions.png`: the first 32 test images titled with their generated captions."""
    shown = slice(0, 32)
    plot_digit_grid(
        test.images[shown],
        test_texts[shown],
        run.path(PREDICTIONS_PLOT),
        correct=[digits.digit_named(t) == int(y) for t, y in zip(test_texts[shown],
                                                                   test.labels[shown])],
        labels=test.labels[shown],
        suptitle=f"Generated captions (red: wrong digit); test digit accuracy {accuracy:.3f}",
    )


def load_digit_run(run_dir):
    """`(model, tokenizer)` of a digits run directory (`tokenizer` is None for a classifier)."""
    from keras_llm import data as llm_data

    for name in (CAPTIONER_FILE, CLASSIFIER_FILE):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            model = load_keras_model(path)
            tokenizer_dir = os.path.join(run_dir, training.TOKENIZER)
            tokenizer = (
                llm_data.Tokenizer.load(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
            )
            return model, tokenizer
    raise FileNotFoundError(
        f"{run_dir!r} holds neither {CAPTIONER_FILE} nor {CLASSIFIER_FILE}: is it a "
        "keras-llm digits run directory?"
    )
