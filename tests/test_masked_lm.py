"""Masked-LM pretraining of keras_llm's own encoder (issue 15): BERT's masking rule, the
`[MASK]` token, `mlm_dataset`, `MaskedLM` against a NumPy loss, and `pretrain(objective=
"mlm")` whose backbone fine-tunes like any other."""

import json
import os

import keras
import numpy as np
import pytest

from keras_llm import ModelConfig, TrainConfig, cli, data, training
from keras_llm.models import MaskedLM, TransformerBackbone

SPECIAL = (0, 2, 3)


def _ids(shape=(256, 128), seed=0):
    ids = np.random.RandomState(seed).randint(5, 500, size=shape)
    ids[:, :4] = 0  # padding
    ids[:, 10] = 2  # [BOS]
    ids[:, 11] = 3  # [EOS]
    return ids


def test_mask_tokens_follows_berts_rule():
    ids = _ids()
    inputs, labels = (t.numpy() for t in data.mask_tokens(ids, [7, 1], 4, 500, SPECIAL))
    chosen = labels != 0
    candidates = ~np.isin(ids, SPECIAL)
    assert not chosen[~candidates].any()  # padding and markers never chosen
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.01
    np.testing.assert_array_equal(labels[chosen], ids[chosen])  # the original ids
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])  # the rest untouched
    masked = inputs[chosen] == 4
    kept = inputs[chosen] == ids[chosen]
    replaced = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(kept.mean() - 0.1) < 0.02  # (plus the rare random draw of the same id)
    assert abs(replaced.mean() - 0.1) < 0.02
    assert inputs[chosen][replaced].min() >= 5  # random regular tokens only


def test_mask_tokens_is_seeded():
    ids = _ids((8, 64))
    first = [t.numpy() for t in data.mask_tokens(ids, [1, 2], 4, 500, SPECIAL)]
    again = [t.numpy() for t in data.mask_tokens(ids, [1, 2], 4, 500, SPECIAL)]
    other = [t.numpy() for t in data.mask_tokens(ids, [1, 3], 4, 500, SPECIAL)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0.0}, "rate must be in"),
    ({"rate": 1.0}, "rate must be in"),
    ({"special_ids": (2, 3)}, "must include the padding id 0"),
])
def test_mask_tokens_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.mask_tokens(_ids((2, 16)), [0, 0], 4, 500, **kwargs)


TEXTS = ["the film was a quiet triumph of acting and light"] * 20 + [
    "a dull and noisy script, badly cut, badly played"] * 20


def test_tokenizer_reserves_the_mask_token():
    plain = data.Tokenizer.train(TEXTS, 120)
    masked = data.Tokenizer.train(TEXTS, 120, mask_token=True)
    assert plain.mask_id is None and "[MASK]" not in plain.vocabulary
    assert masked.mask_id == 4 and masked.vocabulary[4] == "[MASK]" == masked.mask_token
    assert 4 not in masked.tokenize(["[MASK] the [mask] film"]).flat_values.numpy()


def test_mask_token_survives_save_and_load(tmp_path):
    masked = data.Tokenizer.train(TEXTS, 120, mask_token=True)
    masked.save(tmp_path)
    assert data.Tokenizer.load(tmp_path).mask_id == 4


def test_mask_token_needs_split_mode():
    with pytest.raises(ValueError, match="mask_token=True .* whitespace='split' only"):
        data.Tokenizer.train(TEXTS, 120, whitespace="keep", mask_token=True)


def test_mlm_dataset_masks_lm_windows_and_changes_masks_per_batch():
    tokenizer = data.Tokenizer.train(TEXTS, 120, mask_token=True)
    windows = data.lm_dataset(TEXTS, tokenizer, 16, 4, shuffle=False, repeat=True)
    masked = data.mlm_dataset(TEXTS, tokenizer, 16, 4, shuffle=False, repeat=True)
    batches = list(zip(windows.take(6), masked.take(6)))
    for (window, _), (inputs, labels) in batches:
        assert inputs.shape == labels.shape == (4, 16)
        chosen = labels.numpy() != 0
        np.testing.assert_array_equal(inputs.numpy()[~chosen], window.numpy()[~chosen])
        np.testing.assert_array_equal(labels.numpy()[chosen], window.numpy()[chosen])
        assert not np.isin(window.numpy()[chosen], [0, 2, 3]).any()
    again = list(data.mlm_dataset(TEXTS, tokenizer, 16, 4, shuffle=False, repeat=True).take(6))
    for (_, first), second in zip(batches, again):  # seeded: the same masks again
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    chosen = [labels.numpy() != 0 for _, (_, labels) in batches]
    assert any(not np.array_equal(chosen[0], c) for c in chosen[1:])  # fresh masks per batch


def test_mlm_dataset_needs_a_mask_token():
    with pytest.raises(ValueError, match="mask_token=True"):
        data.mlm_dataset(TEXTS, data.Tokenizer.train(TEXTS, 120), 16, 4)


def test_masked_lm_loss_counts_masked_positions_only():
    config = ModelConfig.preset("tiny", vocabulary_size=120, causal=False)
    model = MaskedLM(TransformerBackbone(config))
    model.compile()
    ids = _ids((4, 16), seed=1) % 115 + 5
    inputs, labels = (t.numpy() for t in data.mask_tokens(ids, [3, 4], 4, 120, SPECIAL,
                                                          rate=0.3))
    logits = np.asarray(model(inputs), "float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chosen = labels != 0
    expected = -log_probs[chosen, labels[chosen]].mean()  # NumPy: the chosen positions only
    loss = model.evaluate(inputs, labels, batch_size=4, verbose=0)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_masked_lm_needs_an_encoder_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="causal=False"):
        MaskedLM(TransformerBackbone(ModelConfig.preset("tiny")))
    model = MaskedLM(TransformerBackbone(ModelConfig.preset("tiny", causal=False)))
    ids = _ids((2, 16)) % 250 + 5
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, MaskedLM)
    np.testing.assert_allclose(loaded(ids), model(ids), atol=1e-6)


@pytest.mark.parametrize("objective, config, message", [
    ("bert", ModelConfig.preset("tiny"), "objective must be one of"),
    ("mlm", ModelConfig.preset("tiny"), "needs ModelConfig\\(..., causal=False"),
    ("causal", ModelConfig.preset("tiny", causal=False), "needs ModelConfig\\(..., causal=True"),
])
def test_pretrain_refuses_a_bad_objective_before_writing(objective, config, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        training.pretrain(config, "tiny", run_dir=tmp_path / "run", objective=objective)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mlm_pretraining_from_the_cli_then_fine_tuning(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "mlm"
    assert cli.main(["pretrain", "--objective", "mlm", "--preset", "tiny", "--train-preset",
                     "tiny", "--steps", "6", "--run-dir", str(run_dir),
                     "--data-dir", data_dir]) == 0
    assert "validation_masked_accuracy" in capsys.readouterr().out
    assert json.load(open(run_dir / "run.json"))["objective"] == "mlm"
    assert json.load(open(run_dir / "model_config.json"))["causal"] is False
    assert (run_dir / "masked_lm.keras").exists() and (run_dir / "backbone.keras").exists()
    model = training.load_run(str(run_dir))
    assert isinstance(model, MaskedLM) and model.tokenizer.mask_id == 4
    fine = training.finetune(TrainConfig.preset("tiny", finetune_steps_per_epoch=4),
                             run_dir=tmp_path / "fine", pretrained=str(run_dir),
                             data_dir=data_dir, verbose=0)
    # finetune verifies every loaded weight against the file; the encoder stays an encoder.
    assert 0 <= fine.metrics["test_f1"] <= 1
    assert fine.model.backbone.model_config.causal is False
    assert json.load(open(tmp_path / "fine" / "run.json"))["pretrained"] == os.path.abspath(
        run_dir / "backbone.keras")


def test_a_resumed_run_sees_the_masks_an_uninterrupted_one_saw():
    """`pretrain` resumes by skipping the batches already trained on; the masks go with the
    batch's index, so batch k after `skip(k)` is batch k of the uninterrupted stream."""
    tokenizer = data.Tokenizer.train(TEXTS, 120, mask_token=True)
    straight = list(data.mlm_dataset(TEXTS, tokenizer, 16, 4, seed=5, repeat=True).take(5))
    resumed = list(data.mlm_dataset(TEXTS, tokenizer, 16, 4, seed=5, repeat=True)
                   .skip(3).take(2))
    for first, second in zip(straight[3:], resumed):
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
