"""Configuration: presets, overrides, and errors that name the bad value."""

import dataclasses

import pytest

from keras_llm import ModelConfig, TrainConfig
from keras_llm.models import TransformerBackbone


def test_presets():
    small = ModelConfig.preset("small")
    assert (small.vocabulary_size, small.sequence_length, small.hidden_dim) == (8192, 128, 256)
    assert (small.num_heads, small.num_layers, small.intermediate_dim) == (4, 4, 1024)
    assert ModelConfig.preset("base").hidden_dim == 768
    assert ModelConfig.preset("tiny", num_layers=3).num_layers == 3


def test_mini_preset_is_the_notebooks_former_override():
    # The notebooks' committed outputs were measured with this override of "small"; the
    # named preset must stay equal to it.
    assert ModelConfig.preset("mini") == ModelConfig.preset(
        "small", vocabulary_size=2048, sequence_length=64, hidden_dim=128, num_layers=2,
        intermediate_dim=512,
    )
    assert TransformerBackbone(ModelConfig.preset("mini")).count_params() == 667_136


def test_tiny_preset_is_well_under_100k_parameters():
    assert TransformerBackbone(ModelConfig.preset("tiny")).count_params() < 50_000


def test_field_names_are_the_contract():
    assert [f.name for f in dataclasses.fields(ModelConfig)] == [
        "vocabulary_size", "sequence_length", "hidden_dim", "num_heads", "num_layers",
        "intermediate_dim", "dropout", "activation", "initializer", "attention",
        "tie_embeddings",
        # the GPT/BERT switches (issue 14), appended so positional use stays valid
        "causal", "norm_position", "embedding_norm", "token_type_vocabulary_size",
        "layer_norm_epsilon",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_dim=30, num_heads=4), "hidden_dim=30, num_heads=4"),
        (dict(num_layers=0), "num_layers=0"),
        (dict(vocabulary_size=-5), "vocabulary_size=-5"),
        (dict(initializer="xavier"), "'glorot_uniform', 'he_normal', 'gpt2'"),
        (dict(attention="flash"), "attention='flash'"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(activation="swishy"), "activation='swishy'"),
    ],
)
def test_model_config_errors_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig.preset("tiny", **overrides)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match=r"'huge'.*\['base', 'mini', 'small', 'tiny'\]"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_size=0), "batch_size=0"),
        (dict(precision="float16"), "precision='float16'"),
        (dict(decay="step"), "decay='step'"),
        (dict(warmup_fraction=1.5), "warmup_fraction=1.5"),
        (dict(freeze_backbone_epochs=9), "freeze_backbone_epochs=9"),
        (dict(strategy="tpu"), "strategy='tpu'"),
    ],
)
def test_train_config_errors_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.preset("tiny", **overrides)


def test_json_round_trip(tmp_path):
    config = ModelConfig.preset("tiny", dropout=0.1)
    config.save(tmp_path / "model.json")
    assert ModelConfig.load(tmp_path / "model.json") == config
    with pytest.raises(ValueError, match="hiden_dim"):
        ModelConfig.from_dict({"hiden_dim": 3})


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_coerce_takes_a_config_a_preset_name_or_a_dict(cls):
    tiny = cls.preset("tiny")
    assert cls.coerce(tiny) is tiny
    assert cls.coerce("tiny") == tiny
    assert cls.coerce(tiny.to_dict()) == tiny
    message = r"model_config must be a keras_llm\..*Received model_config=3"
    with pytest.raises(ValueError, match=message):
        cls.coerce(3, "model_config")


def test_length_buckets_are_checked_and_survive_json(tmp_path):
    assert TrainConfig.preset("small").length_buckets == ()
    bucketed = TrainConfig(length_buckets=[16, 24, 32])
    assert bucketed.length_buckets == (16, 24, 32)
    for bad in ((0, 16), (16, "32"), 32, (True,)):
        with pytest.raises(ValueError, match="length_buckets"):
            TrainConfig(length_buckets=bad)
    path = tmp_path / "train_config.json"
    bucketed.save(path)
    assert TrainConfig.load(path) == bucketed  # a JSON list comes back a tuple
