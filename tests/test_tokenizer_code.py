"""Tokenizer(whitespace="keep"): source code comes back byte for byte.

Oracles: the standard library's own files (the round trip must give them back exactly), ids
and bytes written down from the tokenizer as it was before the option existed (the default
mode must not change), the token -> text rules written out here in Python, and a fresh
process serving a SavedModel.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm import ModelConfig, TrainConfig, cli, export, training
from keras_llm.data import Tokenizer
from keras_llm.data.builders import python_source
from keras_llm.data.tokenizer import WHITESPACE_TOKENS
from keras_llm.models import CausalLM, TransformerBackbone

STDLIB = python_source.stdlib_folder()
# Non-ASCII characters in strings and comments: shlex, re/_casefix, zipfile, fractions.
ROUND_TRIP_FILES = [
    "os.py", "json/decoder.py", "textwrap.py",
    "shlex.py", "re/_casefix.py", "zipfile.py", "fractions.py",
]
# Whitespace, control and format characters the standard library lacks, learned from here.
EXOTIC = "a\u00a0b\x0cc\x0bd\u2028e\u200bf\ufeffg\x00h\u3000i\ufffd"
LAYOUT = ["[NL]", "[TAB]", "[CR]"] + [f"[SP{n}]" for n in range(1, 17)] + ["[NUL]"]


def _read(path):
    with open(os.path.join(STDLIB, path), encoding="utf-8", newline="") as f:
        return f.read()


def _with_tabs(text):
    """Each leading group of four spaces becomes a tab (the standard library has no tabs)."""
    return re.sub(r"^(?:    )+", lambda m: "\t" * (len(m.group()) // 4), text, flags=re.M)


@pytest.fixture(scope="module")
def training_files():
    files = python_source.source_files()[::8]  # about 90 modules, 1.5 MB
    return sorted(set(files) | set(ROUND_TRIP_FILES))


@pytest.fixture(scope="module")
def code(training_files):
    texts = [_read(p) for p in training_files] + [EXOTIC] * 2
    return Tokenizer.train(texts, 4096, lowercase=False, whitespace="keep")


def _round_trip(tokenizer, texts):
    ids = tokenizer.tokenize(tf.constant(texts))
    return ids, [t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy()]


# -- the round trip ----------------------------------------------------------------------------


def test_standard_library_files_round_trip_exactly(code):
    texts = [_read(p) for p in ROUND_TRIP_FILES]
    textwrap = _read("textwrap.py")
    variants = [
        _with_tabs(textwrap),
        textwrap.replace("\n", "\r\n"),  # Windows line ends
        "x = 1   \n\n\n\t\n" + " " * 37 + "y\n",  # trailing spaces, blank lines, a long run
        EXOTIC,
        "",
    ]
    assert "\t" in variants[0] and "\n\n" in textwrap
    assert any(not t.isascii() for t in texts)
    ids, back = _round_trip(code, texts + variants)
    assert back == texts + variants
    assert not np.any(ids.flat_values.numpy() == code.unk_id)


def test_a_held_out_module_round_trips(code, training_files):
    alphabet = {t.removeprefix("##") for t in code.vocabulary if len(t.removeprefix("##")) == 1}
    alphabet |= {" ", "\n", "\t", "\r"}
    held_out = [
        p for p in python_source.source_files()
        if p not in training_files and set(_read(p)) <= alphabet
    ][:3]
    assert len(held_out) == 3  # the property is tested on real files, not vacuously
    texts = [_read(p) for p in held_out]
    assert _round_trip(code, texts)[1] == texts


def test_layout_tokens_come_after_the_reserved_ids(code):
    assert code.vocabulary[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert (code.pad_id, code.unk_id, code.start_id, code.end_id) == (0, 1, 2, 3)
    assert code.vocabulary[4:24] == LAYOUT == list(WHITESPACE_TOKENS)
    assert code.whitespace == "keep" and not code.lowercase
    t = code.token_to_id
    ids = code.tokenize("if x:\n        y = 1  # c\n").numpy().tolist()
    assert ids == [
        t("if"), t("[SP1]"), t("x"), t(":"), t("[NL]"), t("[SP8]"), t("y"), t("[SP1]"),
        t("="), t("[SP1]"), t("1"), t("[SP2]"), t("#"), t("[SP1]"), t("c"), t("[NL]"),
    ]
    assert code.tokenize(" " * 20).numpy().tolist() == [t("[SP16]"), t("[SP4]")]
    assert code.tokenize("\t\r\n\x00").numpy().tolist() == [5, 6, 4, 23]
    # Text that spells a layout token is split like any text, never mapped to it.
    spelled = code.tokenize("[NL] [SP4]").numpy()
    assert [i for i in spelled.tolist() if 4 <= i < 24] == [t("[SP1]")]  # the space only
    assert code.detokenize(spelled).numpy() == b"[NL] [SP4]"


def test_detokenize_follows_the_token_rules(code):
    def oracle(row):
        parts = []
        for i in row:
            if not 0 <= i < code.vocabulary_size or i in (0, 2, 3):
                continue  # padding, markers and out-of-range ids are dropped
            token = code.vocabulary[i]
            if token in WHITESPACE_TOKENS:
                parts.append(WHITESPACE_TOKENS[token])
            elif token.startswith("##") and len(token) > 2:
                parts.append(token[2:])  # a continuation piece glues to what comes before
            else:
                parts.append(token)
        return "".join(parts).encode("utf-8")

    rng = np.random.default_rng(0)
    dense = rng.integers(-3, code.vocabulary_size + 3, size=(6, 40))
    dense[:, -5:] = 0  # padding
    expected = [oracle(row) for row in dense.tolist()]
    assert code.detokenize(dense).numpy().tolist() == expected
    ragged = tf.ragged.constant([row[: 7 * (i + 1)] for i, row in enumerate(dense.tolist())])
    assert code.detokenize(ragged).numpy().tolist() == [oracle(r) for r in ragged.to_list()]
    assert code.detokenize(dense[0]).numpy() == expected[0]
    assert code.detokenize(tf.constant([[2, 1, 4, 3]])).numpy().tolist() == [b"[UNK]\n"]


NASTY = ["", "   ", b"\xff\xfe broken \xc3", "x" * 100_000, "word " * 20_000, "\n" * 300]


@pytest.mark.parametrize("where", ["eager", "tf.function"])
def test_nasty_inputs_never_crash(code, where):
    if where == "eager":
        ids, back = code.encode(tf.constant(NASTY), 32), code.detokenize(code.tokenize(NASTY))
    else:
        fn = tf.function(
            lambda x: (code.encode(x, 32), code.detokenize(code.tokenize(x))),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        ids, back = fn(tf.constant(NASTY))
    ids, back = ids.numpy(), back.numpy().tolist()
    assert ids.shape == (len(NASTY), 32) and np.all(ids[:, 0] == 2)
    assert back[0] == b"" and back[1] == b"   " and back[5] == b"\n" * 300
    assert back[2] == "\ufffd\ufffd broken \ufffd".encode()  # invalid bytes -> U+FFFD
    assert back[3] == b"[UNK]"  # a word over 1,000 bytes
    assert back[4] == b"word " * 20_000


# -- the default mode is what it was -------------------------------------------------------------

GOLDEN_VOCABULARY = [
    "[PAD]", "[UNK]", "[BOS]", "[EOS]", "the", "cat", "##s", "sat", ".", "def", "f", "(", "x",
    ")", ":", "return", "cafe", "deja", "日", "本", "語", "broken", "tab", "new", "line", "null",
    "##t", "c", "a", "t", "\ufffd", "##a", "Cafe", "The",
]
GOLDEN_INPUTS = [
    "The cats sat.", "def f(x):\n    return x\n", "Café déjà", "日本語 😀",
    b"\xff\xfe broken", "", "tab\tnew\nline\x00null", "x" * 150, "cat  cats\r\n",
]
# Written down from the tokenizer at commit 1695a6e, before `whitespace=` existed, with one
# deliberate change since: text after a NUL byte is kept ("null", id 25; it used to be
# dropped, because tensorflow-text's regex_split stops reading at a NUL).
GOLDEN_IDS = {
    True: [
        [4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 12], [16, 17], [18, 19, 20, 1], [1, 21],
        [], [22, 23, 24, 25], [1], [5, 5, 6],
    ],
    False: [
        [33, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 12], [1, 1], [18, 19, 20, 1], [1, 21],
        [], [22, 23, 24, 25], [1], [5, 5, 6],
    ],
}
GOLDEN_TEXTS = {
    True: [
        "the cats sat .", "def f ( x ) : return x", "cafe deja", "日 本 語 [UNK]",
        "[UNK] broken", "", "tab new line null", "[UNK]", "cat cats",
    ],
    False: [
        "The cats sat .", "def f ( x ) : return x", "[UNK] [UNK]", "日 本 語 [UNK]",
        "[UNK] broken", "", "tab new line null", "[UNK]", "cat cats",
    ],
}


@pytest.mark.parametrize("lowercase", [True, False])
def test_default_mode_is_unchanged(lowercase, tmp_path):
    tokenizer = Tokenizer(GOLDEN_VOCABULARY, lowercase=lowercase)
    assert tokenizer.whitespace == "split"
    ids = tokenizer.tokenize(tf.constant(GOLDEN_INPUTS))
    assert ids.to_list() == GOLDEN_IDS[lowercase]
    texts = [t.decode() for t in tokenizer.detokenize(ids).numpy()]
    assert texts == GOLDEN_TEXTS[lowercase]
    # The saved files, byte for byte.
    tokenizer.save(str(tmp_path))
    vocabulary = (tmp_path / "vocabulary.txt").read_bytes()
    digest = hashlib.sha256("".join(t + "\n" for t in GOLDEN_VOCABULARY).encode()).hexdigest()
    assert hashlib.sha256(vocabulary).hexdigest() == digest
    config = (tmp_path / "tokenizer.json").read_bytes()
    assert config == (  # the same keys as always, plus the vocabulary's checksum
        b'{\n  "lowercase": %s,\n  "vocabulary_size": 34,\n  "vocabulary_sha256": "%s"\n}'
        % (b"true" if lowercase else b"false", digest.encode())
    )


def test_default_training_has_no_layout_tokens():
    corpus = ["The cat sat on the mat.", "def fibonacci(n):\n    return n"] * 3
    tokenizer = Tokenizer.train(corpus, 120)
    assert tokenizer.vocabulary[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert not set(WHITESPACE_TOKENS) & set(tokenizer.vocabulary)
    assert tokenizer.detokenize(tokenizer.tokenize(corpus[1])).numpy() == (
        b"def fibonacci ( n ) : return n"
    )


# -- saving, loading, serving --------------------------------------------------------------------


def test_save_load_keeps_the_mode(code, tmp_path):
    code.save(str(tmp_path / "tok"))
    with open(tmp_path / "tok" / "tokenizer.json") as f:
        saved = json.load(f)
        assert saved.pop("vocabulary_sha256") == hashlib.sha256(
            (tmp_path / "tok" / "vocabulary.txt").read_bytes()).hexdigest()
        assert saved == {
            "lowercase": False, "vocabulary_size": code.vocabulary_size, "whitespace": "keep",
        }
    loaded = Tokenizer.load(str(tmp_path / "tok"))
    assert (loaded.whitespace, loaded.lowercase) == ("keep", False)
    assert loaded.vocabulary == code.vocabulary
    text = _with_tabs(_read("textwrap.py"))
    np.testing.assert_array_equal(loaded.tokenize(text), code.tokenize(text))
    assert loaded.detokenize(loaded.tokenize(text)).numpy().decode() == text
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(code))
    assert rebuilt.whitespace == "keep" and rebuilt.get_config() == code.get_config()


def test_tokenizers_saved_before_the_option_load_as_split(tmp_path):
    vocabulary = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "def", "f", "(", "x", ")", ":"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "vocabulary.txt").write_text("".join(t + "\n" for t in vocabulary))
    (old / "tokenizer.json").write_text('{\n  "lowercase": true,\n  "vocabulary_size": 10\n}')
    loaded = Tokenizer.load(str(old))
    assert (loaded.whitespace, loaded.lowercase) == ("split", True)
    assert loaded.detokenize(loaded.tokenize("def f(x):\n")).numpy() == b"def f ( x ) :"
    os.remove(old / "tokenizer.json")  # the oldest layout: the vocabulary alone
    assert Tokenizer.load(str(old)).whitespace == "split"
    config = loaded.get_config()
    del config["whitespace"]  # a Keras config written before the option
    assert Tokenizer.from_config(config).whitespace == "split"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="whitespace must be one of.*'preserve'"):
        Tokenizer(["[PAD]", "[UNK]", "[BOS]", "[EOS]"], whitespace="preserve")
    with pytest.raises(ValueError, match=r"right after the reserved tokens.*whitespace='keep'"):
        Tokenizer(["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a"], whitespace="keep")
    with pytest.raises(ValueError, match="whitespace must be one of"):
        Tokenizer.train(["a b"], 100, whitespace="tabs")


def test_inside_tf_data(code):
    texts = [_read(p) for p in ROUND_TRIP_FILES[:3]]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    ds = ds.map(lambda x: code.detokenize(code.tokenize(x)), num_parallel_calls=2)
    assert [t.decode() for batch in ds.as_numpy_iterator() for t in batch] == texts


SERVE = """
import json
import sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the SavedModel uses
served = tf.saved_model.load(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
out = served.signatures["serving_default"](texts=tf.constant(texts))
with open(sys.argv[3], "w", encoding="utf-8") as f:
    json.dump({"text": [t.decode("utf-8") for t in out["text"].numpy()],
               "ids": out["ids"].numpy().tolist()}, f)
"""


def test_savedmodel_round_trips_code_in_a_fresh_process(code, tmp_path):
    class Served(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = code

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(self, texts):
            ids = self.tokenizer.encode(texts, 64)
            return {"text": self.tokenizer.detokenize(self.tokenizer.tokenize(texts)), "ids": ids}

    path = str(tmp_path / "saved")
    served = Served()
    tf.saved_model.save(served, path, signatures={"serving_default": served.serve})
    texts = [_read("shlex.py"), _with_tabs(_read("textwrap.py"))[:3000], EXOTIC, ""]
    (tmp_path / "in.json").write_text(json.dumps(texts), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-c", SERVE, path, str(tmp_path / "in.json"), str(tmp_path / "out.json")],
        check=True, capture_output=True,
    )
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert out["text"] == texts
    assert out["ids"] == code.encode(tf.constant(texts), 64).numpy().tolist()


# -- generation ----------------------------------------------------------------------------------


def test_generate_and_the_exported_generator_keep_the_layout(code, tmp_path):
    config = ModelConfig.preset(
        "tiny", vocabulary_size=code.vocabulary_size, tie_embeddings=False
    )
    lm = CausalLM(TransformerBackbone(config))
    bias = np.zeros(code.vocabulary_size, "float32")
    bias[code.token_to_id("[NL]")] = 50.0  # every next token is a newline
    lm.lm_head.bias.assign(bias)
    lm.tokenizer = code
    prompt = "def fibonacci(n):"
    assert lm.generate(prompt, max_new_tokens=3, sampler="greedy") == prompt + "\n\n\n"
    sampled = lm.generate([prompt, "\tx = 'ab'"], max_new_tokens=4, sampler="top_p", top_p=0.99,
                          seed=3)
    assert sampled == [prompt + "\n" * 4, "\tx = 'ab'" + "\n" * 4]

    path = export.export_generator(lm, code, str(tmp_path / "generator"),
                                   max_new_tokens_limit=8)
    reloaded = tf.saved_model.load(path)
    out = reloaded.signatures["serving_default"](
        prompt=tf.constant([prompt]), max_new_tokens=tf.constant(2)
    )
    assert out["text"].numpy().tolist() == [(prompt + "\n\n").encode()]
    assert out["generated"].numpy().tolist() == [b"\n\n"]


@pytest.mark.slow
def test_pretrain_on_python_source_then_generate_from_the_command_line(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    training.pretrain(
        ModelConfig.preset("tiny", vocabulary_size=1024, sequence_length=64),
        TrainConfig.preset("tiny", pretrain_steps=4),
        data="python_source",
        run_dir=run_dir,
        data_dir=str(tmp_path / "tfds"),
        steps_per_epoch=4,
        verbose=0,
    )
    with open(os.path.join(run_dir, "run.json")) as f:
        assert json.load(f)["tokenizer"] == {"lowercase": False, "whitespace": "keep"}
    tokenizer = Tokenizer.load(os.path.join(run_dir, "tokenizer"))
    assert (tokenizer.whitespace, tokenizer.lowercase) == ("keep", False)
    prompt = "class Fibonacci:\n    def __init__(self):\n        "  # 20-odd tokens
    argv = ["generate", run_dir, prompt, "--max-new-tokens", "6", "--sampler", "top_k"]
    capsys.readouterr()  # drop what preparing the data set printed
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(prompt)  # case, newlines and indentation as typed
