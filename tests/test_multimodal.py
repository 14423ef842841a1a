"""Multimodal: PatchEmbedding, the image classifier and captioner, the digits application."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_llm import cli
from keras_llm.applications import multimodal
from keras_llm.data import digits
from keras_llm.layers import PatchEmbedding
from keras_llm.models.vision import ImageBackbone, ImageCaptioner, ImageClassifier
from tests.helpers import assert_keras_round_trip

TINY = dict(hidden_dim=16, num_heads=2, num_layers=2, intermediate_dim=32)


def patches_by_slicing(images, patch_height, patch_width):
    """The oracle: patches cut one by one with slices, row by row, flattened (r, c, ch)."""
    if images.ndim == 3:
        images = images[..., None]
    batch, height, width, _ = images.shape
    out = []
    for b in range(batch):
        row = []
        for i in range(0, height, patch_height):
            for j in range(0, width, patch_width):
                row.append(images[b, i : i + patch_height, j : j + patch_width, :].ravel())
        out.append(row)
    return np.array(out)


# --------------------------------------------------------------------------- PatchEmbedding


@pytest.mark.parametrize(
    "shape, patch_size, num_patches",
    [((3, 8, 8), 2, 16), ((3, 8, 8), (1, 8), 8), ((2, 6, 4, 3), (3, 2), 4)],
)
def test_patches_match_slicing_oracle(shape, patch_size, num_patches):
    images = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer = PatchEmbedding(patch_size, hidden_dim=8)
    layer.build(shape)
    ph, pw = layer.patch_size
    expected = patches_by_slicing(images, ph, pw)
    assert expected.shape[1] == num_patches == layer.num_patches
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.extract_patches(images)),
                                  expected)


def test_patch_embedding_is_projection_plus_positions():
    images = np.random.default_rng(1).normal(size=(2, 8, 8)).astype("float32")
    layer = PatchEmbedding(2, hidden_dim=4)
    layer(images)
    kernel = np.random.default_rng(2).normal(size=(4, 4)).astype("float32")
    bias = np.arange(4, dtype="float32")
    positions = np.random.default_rng(3).normal(size=(16, 4)).astype("float32")
    layer.projection.set_weights([kernel, bias])
    layer.position_embeddings.assign(positions)
    expected = patches_by_slicing(images, 2, 2) @ kernel + bias + positions[None]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, atol=1e-5)


def test_patch_embedding_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"8x8 is not divisible by patch_size=\(3, 3\)"):
        PatchEmbedding(3, hidden_dim=8)(np.zeros((1, 8, 8), "float32"))
    with pytest.raises(ValueError, match=r"8x8 is not divisible by patch_size=\(2, 3\)"):
        ImageBackbone((8, 8), (2, 3))
    with pytest.raises(ValueError, match="patch_size=0"):
        PatchEmbedding(0, hidden_dim=8)
    with pytest.raises(ValueError, match=r"patch_size=\(2, 2, 2\)"):
        PatchEmbedding((2, 2, 2), hidden_dim=8)
    with pytest.raises(ValueError, match="hidden_dim=0"):
        PatchEmbedding(2, hidden_dim=0)
    with pytest.raises(ValueError, match=r"input_shape=\(1, 64\)"):
        PatchEmbedding(2, hidden_dim=8)(np.zeros((1, 64), "float32"))
    with pytest.raises(ValueError, match="image_shape=8"):
        ImageBackbone(8, 2)


def test_patch_embedding_round_trip(tmp_path):
    images = np.random.default_rng(4).normal(size=(2, 8, 8, 1)).astype("float32")
    assert_keras_round_trip(PatchEmbedding((1, 8), hidden_dim=8, name="rows"), images, tmp_path)


# --------------------------------------------------------------------------- models


def tiny_captioner(**overrides):
    args = dict(vocabulary_size=18, sequence_length=6, image_shape=(8, 8), patch_size=2, **TINY)
    return ImageCaptioner(**{**args, **overrides})


def test_model_shapes_and_configs(tmp_path):
    images = np.random.default_rng(5).uniform(size=(3, 8, 8)).astype("float32")
    classifier = ImageClassifier(ImageBackbone((8, 8), (1, 8), **TINY), num_classes=10)
    assert classifier(images).shape == (3, 10)
    assert classifier.backbone.num_patches == 8
    assert_keras_round_trip(classifier, images, tmp_path)

    captioner = tiny_captioner(tie_embeddings=False)
    ids = np.array([[2, 4, 5, 6, 14]] * 3, "int32")
    assert captioner({"images": images, "token_ids": ids}).shape == (3, 5, 18)
    assert captioner.get_config() == ImageCaptioner.from_config(captioner.get_config()).get_config()


def test_captioner_reads_the_image_and_only_earlier_words():
    model = tiny_captioner()
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(2, 8, 8)).astype("float32")
    ids = np.array([[2, 4, 5, 6, 14], [2, 4, 5, 6, 9]], "int32")
    logits = keras.ops.convert_to_numpy(model({"images": images, "token_ids": ids}))
    # Changing the last word changes no earlier position (causal); changing the image does.
    changed = ids.copy()
    changed[:, -1] = 16
    later = keras.ops.convert_to_numpy(model({"images": images, "token_ids": changed}))
    np.testing.assert_allclose(later[:, :-1], logits[:, :-1], atol=1e-6)
    other = keras.ops.convert_to_numpy(model({"images": images[::-1], "token_ids": ids}))
    assert np.abs(other[0] - logits[0]).max() > 1e-4


def test_captioner_loss_counts_text_tokens_only():
    """The loss is the cross-entropy of the text labels that are not padding, nothing else."""
    model = tiny_captioner()
    model.compile(optimizer="adam")
    rng = np.random.default_rng(7)
    images = rng.uniform(size=(4, 8, 8)).astype("float32")
    tokenizer = digits.caption_tokenizer()
    ids = keras.ops.convert_to_numpy(
        tokenizer.encode(["this is a one", "this is a two", "this is", "a"], 6)
    )
    inputs, labels = {"images": images, "token_ids": ids[:, :-1]}, ids[:, 1:]
    assert (labels == 0).any()  # short captions leave padding labels
    logits = keras.ops.convert_to_numpy(model(inputs)).astype("float64")
    assert logits.shape[1] == labels.shape[1]  # no logits at the 16 image positions
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    expected = -picked[labels != 0].mean()
    loss = model.evaluate(inputs, labels, batch_size=4, verbose=0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Other words at the positions whose label is padding change their logits, not the loss.
    changed = inputs["token_ids"].copy()
    changed[(labels == 0) & (changed == 0)] = 9
    moved = keras.ops.convert_to_numpy(model({"images": images, "token_ids": changed}))
    assert np.abs(moved - logits).max() > 1e-4
    np.testing.assert_allclose(
        model.evaluate({"images": images, "token_ids": changed}, labels, batch_size=4, verbose=0),
        loss, rtol=1e-6,
    )


def test_greedy_generation_agrees_with_teacher_forcing():
    model = tiny_captioner()
    images = np.random.default_rng(8).uniform(size=(5, 8, 8)).astype("float32")
    new = model.generate(images, max_new_tokens=5, end_id=3)
    assert new.shape == (5, 5) and (new[:, 0] != 0).all()
    # Oracle: one forward pass over [BOS] + the generated ids; each generated id is the
    # argmax (padding excluded) of the position before it, until [EOS].
    prefix = np.concatenate([np.full((5, 1), 2, "int32"), new[:, :-1]], axis=1)
    logits = keras.ops.convert_to_numpy(model({"images": images, "token_ids": prefix}))
    logits[..., 0] = -np.inf
    expected = logits.argmax(-1)
    for row, want in zip(new, expected):
        end = list(row).index(3) + 1 if 3 in row else len(row)
        np.testing.assert_array_equal(row[:end], want[:end])
        assert (row[end:] == 0).all()
    with pytest.raises(ValueError, match="max_new_tokens=9"):
        model.generate(images, max_new_tokens=9)


# --------------------------------------------------------------------------- data


def test_digit_splits_are_stratified_disjoint_and_fixed():
    splits = digits.load_digit_splits(seed=0)
    again = digits.load_digit_splits(seed=0)
    sizes = {name: len(split) for name, split in splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 360
    for name in digits.SPLITS:
        np.testing.assert_array_equal(splits[name].images, again[name].images)
        split = splits[name]
        assert split.images.shape[1:] == (8, 8) and split.images.dtype == np.float32
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        counts = np.bincount(split.labels, minlength=10) / len(split)
        np.testing.assert_allclose(counts, 0.1, atol=0.015)  # every class ~10%
    keys = {name: {s.tobytes() for s in splits[name].images} for name in digits.SPLITS}
    # The bundled set holds a few identical images; no more than those may be shared.
    assert len(keys["test"] & keys["train"]) <= 3 and len(keys["validation"] & keys["train"]) <= 3
    assert not np.array_equal(digits.load_digit_splits(seed=1)["test"].labels,
                              splits["test"].labels)


def test_captions_and_their_tokenizer():
    assert digits.caption(7) == "this is a seven"
    assert digits.caption(8) == "this is an eight"
    assert len(digits.captions(range(10))) == 10
    tokenizer = digits.caption_tokenizer()
    ids = keras.ops.convert_to_numpy(tokenizer.encode(["this is a seven"], 6))
    vocabulary = digits.CAPTION_VOCABULARY
    assert [vocabulary[i] for i in ids[0]] == ["[BOS]", "this", "is", "a", "seven", "[EOS]"]
    assert tokenizer.detokenize(ids).numpy()[0] == b"this is a seven"
    assert digits.digit_named("this is a seven") == 7
    assert digits.digit_named("this is a") is None
    assert digits.digit_named("seven two") is None
    with pytest.raises(ValueError, match="label=10"):
        digits.caption(10)
    assert multimodal.parse_patch_size("rows") == (1, 8)
    assert multimodal.parse_patch_size("2") == (2, 2)
    assert multimodal.parse_patch_size("4x2") == (4, 2)
    assert multimodal.parse_patch_size((1, 8)) == (1, 8)
    with pytest.raises(ValueError, match="patch_size='2y2'"):
        multimodal.parse_patch_size("2y2")


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A quick classifier run through the command line (3 epochs, ~10 s)."""
    run_dir = str(tmp_path_factory.mktemp("digits_classifier"))
    assert cli.main(["digits", "classify", run_dir, "--quick", "--epochs", "3"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("digits_captioner"))
    result = multimodal.train_digit_captioner(run_dir, quick=True, epochs=4, verbose=0)
    return run_dir, result


def test_classifier_learns_well_above_chance(classifier_run):
    with open(os.path.join(classifier_run, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["test_accuracy"] > 0.6, metrics  # chance: 0.1
    assert metrics["baseline"]["test_accuracy"] > 0.9
    for name in ("run.json", "model_config.json", "train_config.json", "history.csv",
                 "steps.csv", "predictions.png", "confusion_matrix.png", "loss.png",
                 multimodal.CLASSIFIER_FILE):
        assert os.path.exists(os.path.join(classifier_run, name)), name


@pytest.mark.slow
def test_captioner_names_digits_above_chance(captioner_run):
    run_dir, result = captioner_run
    metrics = result.metrics
    assert metrics["test_digit_accuracy"] > 0.3, metrics  # chance: 0.1
    assert metrics["test_exact_match"] <= metrics["test_digit_accuracy"]
    assert os.path.exists(os.path.join(run_dir, "predictions.png"))
    assert os.path.exists(os.path.join(run_dir, "tokenizer", "vocabulary.txt"))
    # The reported score is what the scoring function gives on the examples it wrote.
    examples = metrics["test_examples"]
    named = [digits.digit_named(e["caption"]) == e["label"] for e in examples]
    assert len(examples) == 10 and all(isinstance(n, bool) for n in named)


def test_cli_usage_errors(capsys, tmp_path):
    run_dir = str(tmp_path / "never_written")
    assert cli.main(["digits", "classify", run_dir, "--patch-size", "3x"]) == 2
    assert "patch_size='3x'" in capsys.readouterr().err
    assert cli.main(["digits", "caption", run_dir, "--patch-size", "3x3"]) == 2
    assert "patch_size='3x3' does not divide the 8x8 images" in capsys.readouterr().err
    assert cli.main(["digits", "caption", run_dir, "--epochs", "0"]) == 2
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(run_dir)


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the captioner's SavedModel detokenizes)
    import keras_llm  # registers the layers and models
    from keras_llm.applications import multimodal

    directory = sys.argv[1]
    images = np.load(f"{directory}/images.npy")
    ids = np.load(f"{directory}/ids.npy")
    classifier = keras.models.load_model(sys.argv[2])
    captioner = keras.models.load_model(sys.argv[3])
    np.save(f"{directory}/fresh_classifier.npy", classifier.predict(images, verbose=0))
    inputs = {"images": images, "token_ids": ids}
    np.save(f"{directory}/fresh_captioner.npy", captioner.predict(inputs, verbose=0))
    np.save(f"{directory}/fresh_generated.npy", captioner.generate(images))
    served = tf.saved_model.load(f"{directory}/classifier_export")
    np.save(f"{directory}/served_classifier.npy", served.serve(tf.constant(images)).numpy())
    served = tf.saved_model.load(f"{directory}/captioner_export")
    outputs = served.caption(tf.constant(images))
    np.save(f"{directory}/served_generated.npy", outputs["generated_ids"].numpy())
    np.save(f"{directory}/served_captions.npy", outputs["caption"].numpy().astype(str))
    np.save(f"{directory}/served_captioner.npy", served.serve(inputs).numpy())
    """
)


@pytest.mark.slow
def test_fresh_process_reload_and_export(classifier_run, captioner_run, tmp_path):
    """.keras files reload in a new process with identical outputs; SavedModels agree."""
    captioner_dir, result = captioner_run
    classifier_path = os.path.join(classifier_run, multimodal.CLASSIFIER_FILE)
    captioner_path = os.path.join(captioner_dir, multimodal.CAPTIONER_FILE)
    classifier, _ = multimodal.load_digit_run(classifier_run)
    captioner, tokenizer = multimodal.load_digit_run(captioner_dir)
    images = digits.load_digit_splits()["test"].images[:12]
    inputs, _ = multimodal.caption_arrays(digits.DigitSplit(images, np.arange(12) % 10), tokenizer)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "ids.npy", inputs["token_ids"])
    multimodal.export_digit_classifier(classifier, str(tmp_path / "classifier_export"))
    multimodal.export_digit_captioner(captioner, tokenizer, str(tmp_path / "captioner_export"))

    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path), classifier_path, captioner_path],
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    def load(name):
        return np.load(tmp_path / f"{name}.npy")

    expected_classifier = classifier.predict(images, verbose=0)
    expected_captioner = captioner.predict(inputs, verbose=0)
    expected_generated = captioner.generate(images)
    np.testing.assert_array_equal(load("fresh_classifier"), expected_classifier)
    np.testing.assert_array_equal(load("fresh_captioner"), expected_captioner)
    np.testing.assert_array_equal(load("fresh_generated"), expected_generated)
    np.testing.assert_allclose(load("served_classifier"), expected_classifier, atol=1e-5)
    np.testing.assert_allclose(load("served_captioner"), expected_captioner, atol=1e-5)
    np.testing.assert_array_equal(load("served_generated"), expected_generated)
    assert list(load("served_captions")) == multimodal.write_captions(captioner, tokenizer, images)
    # The reloaded captioner is the trained one: it scores what the run reported.
    assert result.metrics["test_examples"][0]["caption"] == multimodal.write_captions(
        captioner, tokenizer, digits.load_digit_splits()["test"].images[:1]
    )[0]
