"""lm_dataset, classification_dataset and the Augmenter.

Oracles: the token stream and the encode layout rebuilt in plain Python from
`Tokenizer.tokenize`, observed augmentation rates against the configured probabilities
(binomial bounds), and repeated runs for the seeding.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_llm
import keras_llm.data as data
from keras_llm.data import Augmenter, Tokenizer, classification_dataset, lm_dataset

DOCS = [
    "The first document is short.",
    "A second one, a little longer, about films and plays and speeches.",
    "",
    "Third: Hamlet meets a ghost on the platform; the ghost speaks.",
    "Fourth and last, with an ending.",
] * 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    # A small vocabulary trained on part of the real corpus keeps this file fast.
    texts = data.load_pretraining_text("keras_llm_corpus", "train", data_dir=data_dir)
    return Tokenizer.train(texts.take(3000), 2000)


@pytest.fixture(scope="module")
def reviews(data_dir):
    return data.load_text_classification("rotten_tomatoes", "validation", data_dir=data_dir)


def _stream(tokenizer, docs):
    stream = []
    for doc in docs:
        stream += [2] + tokenizer.tokenize(tf.constant(doc)).numpy().tolist() + [3]
    return stream


# -- lm_dataset -------------------------------------------------------------------------------


def test_lm_windows_are_the_marked_token_stream(tokenizer):
    length, batch = 7, 3
    ds = lm_dataset(DOCS, tokenizer, length, batch, shuffle=False)
    assert ds.element_spec == (
        tf.TensorSpec([batch, length], tf.int32),
        tf.TensorSpec([batch, length], tf.int32),
    )
    stream = _stream(tokenizer, DOCS)
    windows = [stream[i : i + length + 1] for i in range(0, len(stream) - length, length + 1)]
    windows = windows[: len(windows) // batch * batch]
    got = [(x.numpy(), y.numpy()) for x, y in ds]
    inputs = np.concatenate([x for x, _ in got])
    targets = np.concatenate([y for _, y in got])
    np.testing.assert_array_equal(inputs, [w[:-1] for w in windows])
    np.testing.assert_array_equal(targets, [w[1:] for w in windows])
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_lm_shuffle_is_seeded_and_repeat_repeats(tokenizer):
    def batches(seed, n=None, **kwargs):
        ds = lm_dataset(DOCS, tokenizer, 5, 2, seed=seed, **kwargs)
        return [x.numpy().tolist() for x, _ in (ds.take(n) if n else ds)]

    plain = batches(None, shuffle=False)
    first, again = batches(7), batches(7)
    assert first == again
    assert first != batches(8)
    assert first != plain
    assert len(batches(7, n=3 * len(plain), repeat=True)) == 3 * len(plain)


def test_lm_dataset_from_a_tfds_text_dataset(tokenizer, data_dir):
    texts = data.load_pretraining_text("keras_llm_corpus", "validation", data_dir=data_dir)
    x, y = next(iter(lm_dataset(texts, tokenizer, 32, 4)))
    assert x.shape == (4, 32) and y.dtype == tf.int32


def test_lm_arguments_are_checked(tokenizer):
    with pytest.raises(ValueError, match="sequence_length"):
        lm_dataset(DOCS, tokenizer, 0, 2)
    with pytest.raises(ValueError, match="scalar strings"):
        lm_dataset(tf.data.Dataset.from_tensor_slices([1, 2]), tokenizer, 4, 2)


# -- classification_dataset ---------------------------------------------------------------------


def test_evaluation_batches_are_exactly_encode(tokenizer, reviews):
    texts = [t for t, _ in reviews.as_numpy_iterator()]
    labels = [int(y) for _, y in reviews.as_numpy_iterator()]
    ds = classification_dataset(reviews, tokenizer, 24, 100)
    assert ds.element_spec == (
        tf.TensorSpec([None, 24], tf.int32),
        tf.TensorSpec([None], tf.int32),
    )
    for _ in range(2):  # and the same on a second pass: nothing random happens
        ids = np.concatenate([x.numpy() for x, _ in ds])
        got_labels = np.concatenate([y.numpy() for _, y in ds])
        np.testing.assert_array_equal(ids, tokenizer.encode(tf.constant(texts), 24))
        assert got_labels.tolist() == labels  # every example, in order (no dropped tail)


def test_classification_from_python_lists(tokenizer):
    ds = classification_dataset((["good", "bad", "fine"], [1, 0, 1]), tokenizer, 8, 2)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [2, 1]
    with pytest.raises(ValueError, match="as many labels"):
        classification_dataset((["a"], [1, 0]), tokenizer, 8, 2)
    with pytest.raises(ValueError, match="Augmenter"):
        classification_dataset((["a"], [1]), tokenizer, 8, 2, augment=0.1)


def test_training_batches_are_augmented_seeded_and_new_each_epoch(tokenizer, reviews):
    augmenter = Augmenter(delete=0.1, swap=0.1, mask=0.1, seed=5)

    def epochs(ds, n=2):
        it = []
        for _ in range(n):
            it.append(np.concatenate([x.numpy() for x, _ in ds]))
        return it

    kwargs = dict(augment=augmenter, seed=11, shuffle=False)
    ds = classification_dataset(reviews, tokenizer, 24, 64, **kwargs)
    first, second = epochs(ds)
    again_first, again_second = epochs(classification_dataset(reviews, tokenizer, 24, 64, **kwargs))
    np.testing.assert_array_equal(first, again_first)  # reproducible ...
    np.testing.assert_array_equal(second, again_second)
    assert not np.array_equal(first, second)  # ... and new every epoch
    clean = tokenizer.encode(tf.constant([t for t, _ in reviews.as_numpy_iterator()]), 24).numpy()
    assert not np.array_equal(first, clean)
    assert np.all(first[:, 0] == tokenizer.start_id)  # markers and padding are added after


def test_augmentation_keeps_rows_with_their_labels(tokenizer, reviews):
    # Swapping every token only permutes each row: rows are never mixed between examples.
    texts = [t for t, _ in reviews.take(200).as_numpy_iterator()]
    labels = [int(y) for _, y in reviews.take(200).as_numpy_iterator()]
    ds = classification_dataset(
        (texts, labels), tokenizer, 128, 32, augment=Augmenter(swap=1.0, seed=1)
    )
    ids = np.concatenate([x.numpy() for x, _ in ds])
    got_labels = np.concatenate([y.numpy() for _, y in ds])
    clean = tokenizer.encode(tf.constant(texts), 128).numpy()
    assert got_labels.tolist() == labels
    for augmented, original in zip(ids, clean, strict=True):
        assert sorted(augmented) == sorted(original)
    assert not np.array_equal(ids, clean)


# -- Augmenter rates ----------------------------------------------------------------------------

ROWS, WIDTH = 400, 250  # 100,000 tokens: a rate is measured to about +-0.003 (3 sigma 0.009)


def _distinct_rows():
    values = np.arange(ROWS * WIDTH, dtype=np.int32) + 10  # all distinct, none is [UNK]
    lengths = np.full(ROWS, WIDTH)
    return tf.RaggedTensor.from_row_lengths(values, lengths)


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_observed_rates_match_the_configured_ones(rate):
    ids = _distinct_rows()
    original = ids.to_list()
    sigma = np.sqrt(rate * (1 - rate) / (ROWS * WIDTH))

    deleted = Augmenter(delete=rate, seed=3)(ids).to_list()
    kept = sum(len(r) for r in deleted)
    assert abs(1 - kept / (ROWS * WIDTH) - rate) < 4 * sigma
    for row, before in zip(deleted, original, strict=True):  # order of the survivors is unchanged
        survivors = set(row)
        assert row == [t for t in before if t in survivors]

    before = np.array(original)
    swapped = Augmenter(swap=rate, seed=3)(ids).to_tensor().numpy()  # rows keep their length
    assert swapped.shape == before.shape
    moved = np.mean(swapped != before)
    assert abs(moved - rate) < 4 * sigma + 1 / WIDTH  # a row's lone pick cannot move
    np.testing.assert_array_equal(np.sort(swapped, axis=1), before)  # a permutation per row

    masked = Augmenter(mask=rate, mask_id=1, seed=3)(ids).to_tensor().numpy()
    assert abs(np.mean(masked == 1) - rate) < 4 * sigma
    assert np.all((masked == 1) | (masked == before))


def test_rates_compose_in_the_pipeline(tokenizer):
    assert len(tokenizer.tokenize(tf.constant("the"))) == 1
    texts = [" ".join(["the"] * 50)] * 200
    ds = classification_dataset(
        (texts, [0] * 200), tokenizer, 64, 50, augment=Augmenter(delete=0.2, mask=0.25, seed=2)
    )
    ids = np.concatenate([x.numpy() for x, _ in ds])
    tokens = ids[(ids != 0) & (ids != 2) & (ids != 3)]
    assert abs(len(tokens) / (200 * 50) - 0.8) < 0.02  # 20% deleted
    assert abs(np.mean(tokens == 1) - 0.25) < 0.025  # 25% of the rest masked


def test_augmenter_is_deterministic_and_checks_its_rates():
    ids = _distinct_rows()
    a = Augmenter(0.1, 0.1, 0.1, seed=9)
    assert a(ids).to_list() == a(ids).to_list()
    assert a(ids, seed=[1, 2]).to_list() != a(ids, seed=[1, 3]).to_list()
    assert Augmenter()(ids).to_list() == ids.to_list()  # all rates 0: unchanged
    with pytest.raises(ValueError, match=r"delete must be a probability in \[0, 1\)"):
        Augmenter(delete=1.0)
    with pytest.raises(ValueError, match="mask"):
        Augmenter(mask=-0.1)


def test_augmenter_from_train_config():
    config = keras_llm.TrainConfig.preset("tiny", augment_delete=0.1, augment_mask=0.2, seed=4)
    augmenter = Augmenter.from_train_config(config)
    assert augmenter.get_config() == {
        "delete": 0.1,
        "swap": 0.0,
        "mask": 0.2,
        "mask_id": 1,
        "seed": 4,
    }
    assert Augmenter.from_train_config(keras_llm.TrainConfig.preset("tiny")) is None


# -- length buckets -----------------------------------------------------------------------------


def _rows(dataset):
    """Every example of a data set of batches as (ids without padding, label), sorted."""
    rows = []
    for ids, labels in dataset.as_numpy_iterator():
        rows += [(tuple(int(t) for t in row if t), int(y)) for row, y in zip(ids, labels)]
    return sorted(rows)


def test_buckets_hold_the_same_examples_in_narrower_batches(tokenizer, reviews):
    boundaries = (8, 16, 24)
    plain = classification_dataset(reviews, tokenizer, 32, 16, shuffle=True, seed=3)
    bucketed = classification_dataset(reviews, tokenizer, 32, 16, shuffle=True, seed=3,
                                      bucket_boundaries=boundaries)
    # The same rows, each exactly once: a bucket cuts only padding.
    assert _rows(bucketed) == _rows(plain)
    widths = (*boundaries, 32)
    padded, seen = 0, set()
    for ids, labels in bucketed.as_numpy_iterator():
        width = ids.shape[1]
        assert width in widths and 1 <= len(ids) <= 16 and len(labels) == len(ids)
        lengths = (ids != 0).sum(axis=1)
        assert lengths.max() <= width
        narrower = max((w for w in widths if w < width), default=0)
        assert (lengths > narrower).all()  # each row is in the narrowest bucket that fits
        padded += ids.size
        seen.add(width)
    assert seen == set(widths)
    # Oracle: every row costs exactly the narrowest width that holds it, and no more.
    lengths = [len(ids) for ids, _ in _rows(plain)]
    assert padded == sum(min(w for w in widths if w >= n) for n in lengths)
    assert padded < sum(ids.size for ids, _ in plain.as_numpy_iterator())
    # Seeded: two new pipelines give the same batches.
    first, second = (
        classification_dataset(reviews, tokenizer, 32, 16, shuffle=True, seed=3,
                               bucket_boundaries=boundaries)
        for _ in range(2)
    )
    for (a, y), (b, z) in zip(first.as_numpy_iterator(), second.as_numpy_iterator(),
                              strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(y, z)


def test_a_bucket_changes_no_prediction(tokenizer, reviews):
    """Cutting trailing padding leaves a classifier's logits as they were (mask oracle)."""
    from keras_llm.models import Classifier, TransformerBackbone

    config = keras_llm.ModelConfig.preset("tiny", vocabulary_size=tokenizer.vocabulary_size)
    for pooling in ("mean", "last"):
        model = Classifier(TransformerBackbone(config), 2, pooling=pooling)
        ids, _ = next(classification_dataset(reviews, tokenizer, 32, 64).as_numpy_iterator())
        ids = ids[(ids != 0).sum(axis=1) <= 24]  # the rows a 24-token bucket holds
        assert len(ids) >= 4
        np.testing.assert_allclose(model(ids[:, :24]), model(ids), atol=1e-5)


@pytest.mark.parametrize("boundaries", [(0, 8), (8, True), ("16",), (4.5,)])
def test_bad_bucket_boundaries_name_themselves(tokenizer, boundaries):
    with pytest.raises(ValueError, match="bucket_boundaries"):
        classification_dataset((["a b"], [1]), tokenizer, 16, 2, bucket_boundaries=boundaries)
