"""Models: shapes, causality, padding, initial loss, learning, and `.keras` round trips."""

import math

import keras
import numpy as np
import pytest
from helpers import assert_keras_round_trip

from keras_llm import ModelConfig
from keras_llm.models import CausalLM, Classifier, TransformerBackbone, founding_example


def _ids(batch=4, seq=12, vocabulary=256, seed=0):
    return np.random.RandomState(seed).randint(1, vocabulary, (batch, seq)).astype("int32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_founding_example():
    model = founding_example()
    assert model.output_shape == (None, 10, 512)
    # MHA: 3 x (512*8*64 + 8*64) + (8*64*512 + 512); Dense: 512*512 + 512.
    assert model.count_params() == 3 * (512 * 512 + 512) + (512 * 512 + 512) + (512 * 512 + 512)
    assert _np(model(np.ones((2, 10, 512), "float32"))).min() >= 0  # relu


def test_shapes_and_dtypes(tiny_config):
    ids = _ids()
    backbone = TransformerBackbone(tiny_config)
    assert backbone(ids).shape == (4, 12, tiny_config.hidden_dim)
    logits = CausalLM(backbone)(ids)
    assert logits.shape == (4, 12, tiny_config.vocabulary_size)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    classifier = Classifier(TransformerBackbone(tiny_config), num_classes=3)
    assert classifier(ids).shape == (4, 3)


def test_mixed_bfloat16_dtypes(tiny_config):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    classifier = Classifier(TransformerBackbone(tiny_config), num_classes=2)
    lm = CausalLM(TransformerBackbone(tiny_config))
    dtype = keras.backend.standardize_dtype
    assert dtype(lm(_ids()).dtype) == "bfloat16"
    assert dtype(classifier(_ids()).dtype) == "float32"  # the head stays float32
    assert all(dtype(w.dtype) == "float32" for w in lm.weights)


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_causality(tiny_config, attention):
    lm = CausalLM(TransformerBackbone(tiny_config, attention=attention))
    ids = _ids(batch=2, seq=10)
    base = _np(lm(ids))
    for t in (0, 4, 8):
        changed = ids.copy()
        changed[:, t + 1 :] = _ids(batch=2, seq=10, seed=t + 1)[:, t + 1 :]
        after = _np(lm(changed))
        np.testing.assert_allclose(after[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert not np.allclose(after[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_appending_padding_changes_nothing(tiny_config, pooling):
    ids = _ids(batch=3, seq=8)
    ids[1, 5:] = 0  # a shorter row that is already padded
    padded = np.concatenate([ids, np.zeros((3, 6), "int32")], axis=1)
    backbone = TransformerBackbone(tiny_config)
    np.testing.assert_allclose(_np(backbone(padded))[:, :8][ids != 0],
                               _np(backbone(ids))[ids != 0], atol=1e-5)
    classifier = Classifier(backbone, num_classes=2, pooling=pooling)
    np.testing.assert_allclose(_np(classifier(padded)), _np(classifier(ids)), atol=1e-5)


def test_last_pooling_reads_the_last_real_token(tiny_config):
    ids = np.array([[5, 6, 7, 0, 0]], "int32")
    backbone = TransformerBackbone(tiny_config)
    hidden = _np(backbone(ids))
    pooled = _np(Classifier(backbone, 2, pooling="last").pooler(backbone(ids)))
    np.testing.assert_allclose(pooled[0], hidden[0, 2], atol=1e-6)


def test_padding_does_not_count_in_the_loss(tiny_config):
    lm = CausalLM(TransformerBackbone(tiny_config))
    lm.compile()
    ids = _ids(batch=2, seq=9)
    x, y = ids[:, :-1].copy(), ids[:, 1:].copy()
    x[1, 5:], y[1, 4:] = 0, 0  # second row: 4 real targets
    logits = _np(lm(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = token_losses[y != 0].mean()
    assert lm.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-4)


def test_gpt2_initial_loss_is_near_uniform():
    config = ModelConfig.preset("tiny", vocabulary_size=1024)
    lm = CausalLM(TransformerBackbone(config))
    lm.compile()
    ids = _ids(batch=8, seq=32, vocabulary=1024)
    loss = lm.evaluate(ids[:, :-1], ids[:, 1:], verbose=0)
    assert abs(loss - math.log(1024)) < 0.1


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_lm_learns_a_fixed_batch(tiny_config, tie_embeddings):
    lm = CausalLM(TransformerBackbone(tiny_config, tie_embeddings=tie_embeddings))
    lm.compile(optimizer=keras.optimizers.Adam(3e-3))
    ids = np.tile(_ids(batch=4, seq=17), (300, 1))  # the same batch, 300 steps
    first = lm.evaluate(ids[:4, :-1], ids[:4, 1:], verbose=0)
    lm.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert first > 5.0
    assert lm.evaluate(ids[:4, :-1], ids[:4, 1:], verbose=0) < 0.05


def test_classifier_learns_a_fixed_batch(tiny_config):
    classifier = Classifier(TransformerBackbone(tiny_config), num_classes=3)
    classifier.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids, labels = np.tile(_ids(batch=12, seq=6), (100, 1)), np.tile(np.arange(12) % 3, 100)
    classifier.fit(ids, labels, batch_size=12, epochs=1, shuffle=False, verbose=0)
    assert classifier.evaluate(ids[:12], labels[:12], verbose=0) < 0.05


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_keras_round_trips_and_continued_training(tiny_config, attention, tmp_path):
    config = ModelConfig.preset("tiny", attention=attention, tie_embeddings=False, dropout=0.1)
    ids = _ids(batch=4, seq=9)
    assert_keras_round_trip(TransformerBackbone(config), ids, tmp_path)
    assert_keras_round_trip(
        Classifier(TransformerBackbone(config), 3, pooling="last", dropout=0.2), ids, tmp_path
    )
    # No dropout here: its random masks would differ between the two copies.
    lm = CausalLM(TransformerBackbone(config, dropout=0.0))
    lm.compile(optimizer="adam")
    lm.fit(ids[:, :-1], ids[:, 1:], epochs=2, verbose=0)
    reloaded = assert_keras_round_trip(lm, ids, tmp_path)
    # The optimizer state came back too: one more step matches on both.
    lm.fit(ids[:, :-1], ids[:, 1:], epochs=1, verbose=0, shuffle=False)
    reloaded.fit(ids[:, :-1], ids[:, 1:], epochs=1, verbose=0, shuffle=False)
    for a, b in zip(lm.get_weights(), reloaded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_model_arguments(tiny_config):
    with pytest.raises(ValueError, match="num_classes=1"):
        Classifier(TransformerBackbone(tiny_config), num_classes=1)
    with pytest.raises(ValueError, match="pooling='max'"):
        Classifier(TransformerBackbone(tiny_config), num_classes=2, pooling="max")
    with pytest.raises(ValueError, match="TransformerBackbone"):
        CausalLM(keras.Sequential([keras.layers.Dense(2)]))


def test_attention_scores_for_interpretability(tiny_config):
    backbone = TransformerBackbone(tiny_config)
    scores = backbone.attention_scores(np.array([[4, 5, 6, 0]], "int32"))
    assert len(scores) == tiny_config.num_layers
    assert scores[0].shape == (1, tiny_config.num_heads, 4, 4)
    s = _np(scores[0])[:, :, :3, :]  # the three real query positions
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    assert s[0, :, 1, 2].max() < 1e-6  # causal: position 1 never sees position 2
    assert s[0, :, 2, 3].max() < 1e-6 and s[0, :, :, 3].max() < 1e-6  # padding key


def test_an_attached_tokenizer_is_not_saved_with_the_model(tiny_config, tmp_path):
    from keras_llm.data import Tokenizer

    lm = CausalLM(TransformerBackbone(tiny_config))
    lm.tokenizer = Tokenizer(["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "b"])
    ids = _ids(batch=2, seq=5)
    reloaded = assert_keras_round_trip(lm, ids, tmp_path)
    assert reloaded.tokenizer is None and lm.tokenizer is not None
    assert len(reloaded.weights) == len(lm.weights)


def test_fused_loss_equals_keras_sparse_cross_entropy(tiny_config):
    from keras_llm.models.losses import TokenCrossEntropy

    logits = np.random.RandomState(0).normal(size=(3, 7, 11)).astype("float32")
    labels = np.random.RandomState(1).randint(1, 11, (3, 7))
    labels[1, 4:] = 0
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    assert float(TokenCrossEntropy()(labels, logits)) == pytest.approx(
        float(reference(labels, logits)), rel=1e-6
    )
    bf16 = keras.ops.cast(logits, "bfloat16")
    assert float(TokenCrossEntropy()(labels, bf16)) == pytest.approx(
        float(reference(labels, keras.ops.cast(bf16, "float32"))), rel=1e-5
    )


def test_xla_step_uses_the_unfused_loss_and_trains_like_the_graph_step(tiny_config):
    """With `jit_compile=True` the loss must not be an XLA island nested in the XLA step:
    that nesting made XLA constant-fold the logits and the `small` step 10x slower."""
    from keras_llm.models.losses import TokenCrossEntropy

    ids = np.random.RandomState(3).randint(1, tiny_config.vocabulary_size, (4, 9))
    x, y = ids[:, :-1], ids[:, 1:]
    losses = {}
    for jit in (False, True):
        keras.utils.set_random_seed(5)
        lm = CausalLM(TransformerBackbone(tiny_config))
        lm.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit)
        assert isinstance(lm.loss, TokenCrossEntropy)
        assert lm.loss.fused is (not jit)
        history = lm.fit(x, y, epochs=3, batch_size=4, verbose=0, shuffle=False)
        losses[jit] = history.history["loss"]
    assert losses[True][-1] < losses[True][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert TokenCrossEntropy.from_config(TokenCrossEntropy(fused=False).get_config()).fused is False


def test_mixed_bfloat16_matches_float32_and_learns(tiny_config):
    """The default precision of the `small` and `quick` presets: same weights give float32's
    next-token log-probabilities within 0.01 (measured 0.0027; bfloat16 keeps 8 bits of mantissa,
    ~0.4% relative error per op), and training on a fixed batch drives the loss down."""
    ids = np.random.RandomState(7).randint(1, tiny_config.vocabulary_size, (8, 13))
    x, y = ids[:, :-1], ids[:, 1:]
    keras.utils.set_random_seed(11)
    fp32 = CausalLM(TransformerBackbone(tiny_config))
    reference = _np(keras.ops.log_softmax(fp32(x), axis=-1))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bf16 = CausalLM(TransformerBackbone(tiny_config))
        bf16.set_weights(fp32.get_weights())
        mixed = _np(keras.ops.log_softmax(keras.ops.cast(bf16(x), "float32"), axis=-1))
        np.testing.assert_allclose(mixed, reference, atol=0.01)
        bf16.compile(optimizer=keras.optimizers.AdamW(3e-3))
        history = bf16.fit(x, y, epochs=40, batch_size=8, verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
