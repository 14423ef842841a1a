"""Generation: the cached loop against the model itself, samplers against numpy oracles."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm import ModelConfig
from keras_llm.data.tokenizer import Tokenizer
from keras_llm.layers import TransformerBlock
from keras_llm.layers.attention import causal_mask, decoding_weights
from keras_llm.models import CausalLM, TransformerBackbone, generation

VOCAB = 256
# Prompts of different lengths, batched together (right-padded inside `generate`).
ROWS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]


def _lm(attention="keras", **overrides):
    keras.utils.set_random_seed(7)
    config = ModelConfig.preset("tiny", attention=attention, **overrides)
    return CausalLM(TransformerBackbone(config))


@pytest.fixture(scope="module")
def lm():
    return _lm()


def _masked(logits):
    """The logits the samplers choose from: id 0 (padding) is never generated."""
    logits = np.array(logits, dtype="float64")
    logits[..., generation.PAD_ID] = -np.inf
    return logits


# -- the cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_block_call_cached_equals_call(attention):
    """Prefilling the whole sequence through the cache path is the ordinary block."""
    block = TransformerBlock(num_heads=2, intermediate_dim=12, attention=attention)
    x = np.random.RandomState(0).normal(size=(2, 6, 8)).astype("float32")
    expected = keras.ops.convert_to_numpy(block(x))
    slots = 9  # a cache longer than the sequence: the extra slots are masked
    cache = np.zeros((2, 2, slots, 4), "float32")
    mask = np.broadcast_to(causal_mask(6, slots)[None], (2, 6, slots))
    actual, keys, values = block.call_cached(x, cache, cache, 0, mask)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), expected, atol=1e-5)
    assert keys.shape == values.shape == (2, 2, slots, 4)
    assert not np.any(keras.ops.convert_to_numpy(keys)[:, :, 6:])  # nothing past slot 5


def _block_with_random_weights(attention):
    """A built block whose every weight, biases included, is random (they start at zero)."""
    block = TransformerBlock(num_heads=2, intermediate_dim=12, attention=attention)
    block(np.zeros((1, 1, 8), "float32"))
    rng = np.random.RandomState(1)
    block.set_weights([rng.normal(size=w.shape).astype("float32") for w in block.get_weights()])
    return block


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_packed_decoding_weights_give_the_same_block(attention):
    """`decoding_weights` (q, k, v in one product) against the per-sublayer path, for a
    prefill of 6 positions and then one decoding step, random biases included."""
    block = _block_with_random_weights(attention)
    packed = decoding_weights(block.attention_layer)
    assert packed["qkv_kernel"].shape == (8, 3 * 8) and packed["output_kernel"].shape == (8, 8)
    rng = np.random.RandomState(0)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    slots = 9
    empty = np.zeros((2, 2, slots, 4), "float32")
    mask = np.broadcast_to(causal_mask(6, slots)[None], (2, 6, slots))
    expected = block.call_cached(x, empty, empty, 0, mask)
    actual = block.call_cached(x, empty, empty, 0, mask, packed)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), e, atol=1e-5)
    # One new position at slot 6, attending slots 0..6 (the decoding loop's shape).
    step = rng.normal(size=(2, 1, 8)).astype("float32")
    step_mask = np.broadcast_to((np.arange(slots) <= 6)[None, None], (2, 1, slots))
    expected = block.call_cached(step, expected[1], expected[2], 6, step_mask)
    actual = block.call_cached(step, actual[1], actual[2], 6, step_mask, packed)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), e, atol=1e-5)
    # Oracle for the step: the ordinary block over all 7 positions, last row.
    full = keras.ops.convert_to_numpy(block(np.concatenate([x, step], axis=1)))[:, -1:]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual[0]), full, atol=1e-4)


def test_quantized_model_decodes_through_its_own_layers():
    model = _lm()
    model.quantize("int8")
    attention = model.backbone.transformer_blocks[0].attention_layer
    assert decoding_weights(attention) is None  # int8 kernels: no packed copy
    cached = generation.generate_ids(model, ROWS, max_new_tokens=4, stop_at_end=False)
    naive = generation.generate_ids(
        model, ROWS, max_new_tokens=4, stop_at_end=False, use_cache=False
    )
    assert cached == naive


@pytest.mark.parametrize("attention", ["keras", "explicit"])
def test_cached_and_uncached_decoding_agree(attention):
    """Same logits (1e-5) and the same greedy ids, for prompts of different lengths."""
    model = _lm(attention)
    kwargs = dict(max_new_tokens=8, stop_at_end=False, return_logits=True)
    cached, cached_logits = generation.generate_ids(model, ROWS, **kwargs)
    naive, naive_logits = generation.generate_ids(model, ROWS, use_cache=False, **kwargs)
    assert cached == naive
    np.testing.assert_allclose(cached_logits, naive_logits, atol=1e-5)
    # Oracle: each row alone (no padding at all) through the ordinary forward pass.
    for row, new, logits in zip(ROWS, cached, cached_logits, strict=True):
        full = np.array([row + new], "int32")
        expected = keras.ops.convert_to_numpy(model(full))[0, len(row) - 1 : -1]
        np.testing.assert_allclose(logits, expected, atol=1e-5)
        assert new == [int(i) for i in np.argmax(_masked(expected), axis=-1)]


def test_untied_head_and_public_generate_agree_with_the_naive_loop():
    model = _lm(tie_embeddings=False)
    out = model.generate(ROWS, max_new_tokens=5, stop_at_end=False)
    naive = generation.generate_ids(
        model, ROWS, max_new_tokens=5, stop_at_end=False, use_cache=False
    )
    assert out == [row + new for row, new in zip(ROWS, naive, strict=True)]


def test_a_second_call_with_the_same_shapes_does_not_retrace(lm):
    function = generation.decode_function(lm, "top_k", top_k=4)
    before = function.experimental_get_tracing_count()
    lm.generate([[4, 5, 6], [7, 8]], max_new_tokens=6, sampler="top_k", top_k=4, seed=1)
    traced = function.experimental_get_tracing_count()
    assert traced == before + 1
    # Other ids, another prompt length in the same 16-wide bucket, seed and temperature:
    # all tensors, so the compiled loop is reused.
    lm.generate(
        [[9, 9, 9, 9, 9], [3, 4]],
        max_new_tokens=6,
        sampler="top_k",
        top_k=4,
        seed=2,
        temperature=0.5,
    )
    assert function.experimental_get_tracing_count() == traced
    lm.generate([[9, 9, 9, 9, 9]], max_new_tokens=6, sampler="top_k", top_k=4)  # batch 1
    assert function.experimental_get_tracing_count() == traced + 1


# -- samplers --------------------------------------------------------------------------------


def _sampled(lm, seed, **kwargs):
    return generation.generate_ids(
        lm, ROWS, max_new_tokens=12, stop_at_end=False, return_logits=True, seed=seed, **kwargs
    )


def test_top_k_never_leaves_the_k_most_likely(lm):
    k = 3
    for seed in range(3):
        new, logits = _sampled(lm, seed, sampler="top_k", top_k=k, temperature=5.0)
        top = np.argsort(-_masked(logits), axis=-1)[..., :k]  # (batch, steps, k)
        assert np.all(np.any(top == np.array(new)[..., None], axis=-1))
    assert len({t for row in new for t in row}) > k  # it does sample, not pick one id


def test_top_p_never_leaves_the_nucleus(lm):
    top_p, temperature = 0.5, 3.0
    counts = []
    for seed in range(3):
        new, logits = _sampled(lm, seed, sampler="top_p", top_p=top_p, temperature=temperature)
        scaled = _masked(logits) / temperature
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for b, row in enumerate(new):
            for step, token in enumerate(row):
                p = probs[b, step]
                order = np.argsort(-p)
                before = np.cumsum(p[order]) - p[order]  # mass of the more likely tokens
                nucleus = set(order[before < top_p].tolist())
                assert token in nucleus
                counts.append(len(nucleus))
    assert max(counts) > 1  # the nucleus holds several tokens: the test can fail


def test_top_p_with_top_k_respects_both(lm):
    new, logits = _sampled(lm, 0, sampler="top_p", top_p=0.9, top_k=2, temperature=5.0)
    top = np.argsort(-_masked(logits), axis=-1)[..., :2]
    assert np.all(np.any(top == np.array(new)[..., None], axis=-1))


def test_temperature_near_zero_is_greedy(lm):
    greedy = lm.generate(ROWS, max_new_tokens=10, stop_at_end=False)
    cold = lm.generate(
        ROWS, max_new_tokens=10, stop_at_end=False, sampler="random", temperature=1e-6, seed=3
    )
    assert cold == greedy


def test_same_seed_same_text_other_seed_other_text(lm):
    kwargs = dict(max_new_tokens=10, stop_at_end=False, sampler="random", temperature=2.0)
    first = lm.generate(ROWS, seed=11, **kwargs)
    assert lm.generate(ROWS, seed=11, **kwargs) == first
    assert lm.generate(ROWS, seed=12, **kwargs) != first
    keras.utils.set_random_seed(5)  # seed=None draws from Python's seeded `random`
    unseeded = lm.generate(ROWS, **kwargs)
    keras.utils.set_random_seed(5)
    assert lm.generate(ROWS, **kwargs) == unseeded


# -- stopping, output forms, strings -----------------------------------------------------------


def _always(token_id):
    """An untied model whose head always prefers `token_id` (a large bias)."""
    model = _lm(tie_embeddings=False)
    bias = model.lm_head.bias
    bias.assign(np.eye(VOCAB, dtype="float32")[token_id] * 100.0)
    return model


def test_stop_at_end_and_padding_after_it():
    model = _always(generation.END_ID)
    assert model.generate([[5, 6], [7]], max_new_tokens=4) == [[5, 6, 3], [7, 3]]
    assert model.generate([5, 6], max_new_tokens=3, stop_at_end=False) == [5, 6, 3, 3, 3]
    model = _always(7)
    arrays = model.generate(np.array([[4, 5, 0, 0], [6, 0, 0, 0]]), max_new_tokens=3)
    assert isinstance(arrays, np.ndarray) and arrays.dtype == np.int32
    np.testing.assert_array_equal(arrays, [[4, 5, 7, 7, 7], [6, 7, 7, 7, 0]])
    single = model.generate(np.array([4, 5]), max_new_tokens=2)
    np.testing.assert_array_equal(single, [4, 5, 7, 7])
    ragged = model.generate(tf.ragged.constant([[4, 5], [6]]), max_new_tokens=1)
    assert ragged == [[4, 5, 7], [6, 7]]


def test_rows_stop_at_their_own_end(lm):
    """A row that ends keeps its tokens up to the end id; the others go on unchanged."""
    full = generation.generate_ids(lm, ROWS, max_new_tokens=10, stop_at_end=False)
    end_id = full[0][3]  # pretend row 0's fourth new token is the end id
    new = generation.generate_ids(lm, ROWS, max_new_tokens=10, end_id=end_id)
    for row, whole in zip(new, full, strict=True):
        expected = whole[: whole.index(end_id) + 1] if end_id in whole else whole
        assert row == expected
    assert len(new[0]) <= 4 and any(len(row) > len(new[0]) for row in new)


def _tokenizer():
    words = ["the", "cat", "sat", "on", "mat", "def", "return", "(", ")", ":", "n", "."]
    filler = [f"w{i}" for i in range(VOCAB - 4 - len(words))]
    return Tokenizer(["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + words + filler)


def test_strings_in_strings_out(lm):
    lm.tokenizer = _tokenizer()
    try:
        one = lm.generate("The cat sat", max_new_tokens=4, stop_at_end=False)
        assert isinstance(one, str) and one.startswith("the cat sat ")
        assert len(one.split()) == 7
        many = lm.generate(["The cat", "def f(n):"], max_new_tokens=3)
        assert isinstance(many, list) and len(many) == 2
        assert many[0].startswith("the cat") and many[1].startswith("def [UNK] ( n ) :")
        # Equal to decoding the ids by hand: [BOS] + tokens, then detokenize.
        ids = [2] + lm.tokenizer.tokenize("The cat").numpy().tolist()
        expected = lm.tokenizer.detokenize(np.array(lm.generate(ids, max_new_tokens=3)))
        assert many[0] == expected.numpy().decode()
    finally:
        lm.tokenizer = None


# -- errors ------------------------------------------------------------------------------------


def test_clear_errors(lm):
    seq = lm.backbone.model_config.sequence_length  # 32
    with pytest.raises(
        ValueError, match=r"5 tokens and max_new_tokens=30.*35.*sequence_length=32.*at most 27"
    ):
        lm.generate([[4, 5, 6, 7, 8]], max_new_tokens=30)
    with pytest.raises(ValueError, match="Shorten the prompt"):
        lm.generate([list(range(1, seq + 1))], max_new_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive"):
        lm.generate([[4]], max_new_tokens=0)
    with pytest.raises(ValueError, match="prompts is empty"):
        lm.generate([])
    with pytest.raises(ValueError, match="Prompt 1 is empty"):
        lm.generate([[4], []])
    with pytest.raises(ValueError, match=r"outside \[1, 256\)"):
        lm.generate([[4, 300]])
    with pytest.raises(
        ValueError, match=r"sampler must be one of \['greedy', 'random', 'top_k', 'top_p'\].*'beam'"
    ):
        lm.generate([[4]], sampler="beam")
    for bad in (0, -1.0, float("nan"), "hot"):
        with pytest.raises(ValueError, match="temperature"):
            lm.generate([[4]], sampler="random", temperature=bad)
    for bad in (0, VOCAB + 1, 2.5):
        with pytest.raises(ValueError, match="top_k must be an integer between 1 and"):
            lm.generate([[4]], sampler="top_k", top_k=bad)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            lm.generate([[4]], sampler="top_p", top_p=bad)
    with pytest.raises(ValueError, match="needs top_k"):
        lm.generate([[4]], sampler="top_k")
    with pytest.raises(ValueError, match="do not apply"):
        lm.generate([[4]], temperature=0.5)
    with pytest.raises(ValueError, match="model.tokenizer is None"):
        lm.generate("a prompt")
    lm.tokenizer = _tokenizer()
    try:
        with pytest.raises(ValueError, match="Prompt 0 .*no tokens"):
            lm.generate("   ")
    finally:
        lm.tokenizer = None


def test_mixed_bfloat16_generation():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = _lm()
    out = model.generate(ROWS, max_new_tokens=4, stop_at_end=False)
    assert [len(r) for r in out] == [len(r) + 4 for r in ROWS]


def test_generate_fills_a_longer_context():
    model = _lm(sequence_length=48)
    assert dataclasses.asdict(model.backbone.model_config)["sequence_length"] == 48
    out = model.generate([[4, 5, 6]], max_new_tokens=45, stop_at_end=False)
    assert len(out[0]) == 48


def test_compiled_functions_do_not_keep_a_model_alive():
    import gc
    import weakref

    model = _lm()
    model.generate([[4, 5]], max_new_tokens=2)
    generation.generate_ids(model, [[4, 5]], max_new_tokens=2, use_cache=False)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
