"""Layers against independent oracles: Keras' own MultiHeadAttention, closed-form stds."""

import math

import keras
import numpy as np
import pytest
from helpers import assert_keras_round_trip

from keras_llm.layers import (
    ExplicitMultiHeadAttention,
    TokenAndPositionEmbedding,
    TransformerBlock,
    causal_mask,
)

BATCH, SEQ, DIM, HEADS = 3, 7, 16, 4


def _pair():
    """A Keras MultiHeadAttention and an explicit one holding the same weights."""
    x = np.random.RandomState(0).normal(size=(BATCH, SEQ, DIM)).astype("float32")
    reference = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=DIM // HEADS)
    reference(x, x)
    # Non-zero biases, so a bias in the wrong slot would show.
    weights = [w + 0.1 * np.random.RandomState(i).normal(size=w.shape) for i, w in
               enumerate(reference.get_weights())]
    reference.set_weights(weights)
    explicit = ExplicitMultiHeadAttention(num_heads=HEADS, key_dim=DIM // HEADS)
    explicit(x, x)
    explicit.set_weights(reference.get_weights())
    return x, reference, explicit


def _padding_mask():
    lengths = np.array([SEQ, 4, 1])
    return np.arange(SEQ)[None, :] < lengths[:, None]  # (batch, seq)


def test_explicit_attention_has_keras_weight_layout():
    _, reference, explicit = _pair()
    assert [w.shape for w in explicit.get_weights()] == [
        w.shape for w in reference.get_weights()
    ]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_explicit_attention_equals_keras(causal, padded):
    x, reference, explicit = _pair()
    mask = None
    if padded:
        keys = _padding_mask()[:, None, :]  # (batch, 1, seq): padding keys are masked
        mask = np.broadcast_to(keys, (BATCH, SEQ, SEQ))
    expected, expected_scores = reference(
        x, x, attention_mask=mask, use_causal_mask=causal, return_attention_scores=True
    )
    actual, actual_scores = explicit(
        x, x, attention_mask=mask, use_causal_mask=causal, return_attention_scores=True
    )
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    np.testing.assert_allclose(actual_scores, expected_scores, atol=1e-5)
    # Without returning scores Keras takes its fused dot-product path: still equal.
    np.testing.assert_allclose(
        explicit(x, x, attention_mask=mask, use_causal_mask=causal),
        reference(x, x, attention_mask=mask, use_causal_mask=causal),
        atol=1e-5,
    )


def test_causal_mask_is_lower_triangular():
    np.testing.assert_array_equal(causal_mask(4, 4), np.tril(np.ones((4, 4), bool)))


def test_causal_attention_weights_ignore_the_future():
    x, _, explicit = _pair()
    _, scores = explicit(x, x, use_causal_mask=True, return_attention_scores=True)
    upper = np.triu(np.ones((SEQ, SEQ), bool), k=1)
    assert np.all(np.asarray(scores)[:, :, upper] < 1e-6)
    np.testing.assert_allclose(np.sum(scores, axis=-1), 1.0, atol=1e-5)


def test_embedding_shapes_and_padding_mask():
    layer = TokenAndPositionEmbedding(vocabulary_size=20, sequence_length=8, hidden_dim=6)
    ids = np.array([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9]], "int32")
    out = layer(ids)
    assert out.shape == (2, 5, 6)
    np.testing.assert_array_equal(layer.compute_mask(ids), ids != 0)
    # Same token at different positions differs only by the position vectors.
    table = keras.ops.convert_to_numpy(layer.token_embeddings)
    pos = keras.ops.convert_to_numpy(layer.position_embeddings)
    np.testing.assert_allclose(out[0, 1], table[6] + pos[1], atol=1e-6)
    logits = layer(keras.ops.convert_to_tensor(np.asarray(out)), reverse=True)
    assert logits.shape == (2, 5, 20)


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_block_round_trip(attention, tmp_path):
    block = TransformerBlock(num_heads=2, intermediate_dim=12, attention=attention)
    x = np.random.RandomState(1).normal(size=(2, 5, 8)).astype("float32")
    block(x)
    assert_keras_round_trip(block, x, tmp_path)


def test_layer_round_trips(tmp_path):
    ids = np.array([[3, 4, 0]], "int32")
    assert_keras_round_trip(
        TokenAndPositionEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=4),
        ids,
        tmp_path,
    )
    x = np.random.RandomState(2).normal(size=(1, 3, 8)).astype("float32")
    attention = ExplicitMultiHeadAttention(num_heads=2, key_dim=4)
    attention(x, x)
    config = attention.get_config()
    assert ExplicitMultiHeadAttention.from_config(config).get_config() == config


def test_block_with_explicit_attention_equals_block_with_keras_attention():
    x = np.random.RandomState(3).normal(size=(2, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    keras_block = TransformerBlock(num_heads=2, intermediate_dim=12, attention="keras")
    explicit_block = TransformerBlock(num_heads=2, intermediate_dim=12, attention="explicit")
    keras_block(x)
    explicit_block(x)
    explicit_block.set_weights(keras_block.get_weights())
    for m in (None, mask):
        np.testing.assert_allclose(
            explicit_block(x, mask=m), keras_block(x, mask=m), atol=1e-5
        )


def _block_kernels(initializer, hidden=64, intermediate=256, layers=4):
    block = TransformerBlock(
        num_heads=4, intermediate_dim=intermediate, initializer=initializer, num_layers=layers
    )
    block.build((None, None, hidden))
    return block


@pytest.mark.parametrize(
    "initializer, expected_std",
    [
        # Closed forms for a (fan_in=64, fan_out=256) Dense kernel.
        ("he_normal", math.sqrt(2.0 / 64)),
        ("glorot_uniform", math.sqrt(2.0 / (64 + 256))),
        ("gpt2", 0.02),
    ],
)
def test_initializer_std_matches_closed_form(initializer, expected_std):
    block = _block_kernels(initializer)
    kernel = keras.ops.convert_to_numpy(block.feedforward_intermediate.kernel)
    assert abs(kernel.std() / expected_std - 1) < 0.05


def test_gpt2_scales_residual_projections():
    block = _block_kernels("gpt2", layers=4)
    expected = 0.02 / math.sqrt(2 * 4)
    for kernel in (block.feedforward_output.kernel, block.attention_layer.output_dense.kernel):
        std = keras.ops.convert_to_numpy(kernel).std()
        assert abs(std / expected - 1) < 0.05
