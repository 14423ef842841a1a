"""A WordPiece tokenizer made of TensorFlow ops, so it runs in tf.data, in Keras models and
inside exported SavedModels.

The vocabulary is learned by the Hugging Face `tokenizers` WordPiece trainer (installed with
keras-hub); text is turned into ids by tensorflow-text's `FastWordpieceTokenizer` (greedy
longest-match-first, as the trainer assumes). Both see exactly the same words, because
keras_llm splits the text itself (`_split_words`) before handing it to either.

How text becomes words:
1. bytes that are not valid UTF-8 are replaced by U+FFFD (so no input can make an op fail);
2. with `lowercase=True`, text is case-folded and accents are stripped (NFD, then marks
   removed), as in BERT's uncased tokenizers;
3. words are split at whitespace (any Unicode separator) and control characters (NUL
   included), and every punctuation mark and CJK character becomes a word of its own.
A word longer than 100 bytes, or one the vocabulary cannot spell, becomes `[UNK]`.

Whitespace: with the default `whitespace="split"`, whitespace only separates words and is
dropped, so `detokenize` joins words with single spaces. For source code, where newlines and
indentation carry meaning, `whitespace="keep"` (with `lowercase=False`) makes the layout
explicit: in step 3 every run of up to 16 spaces becomes one token (`[SP1]` ... `[SP16]`),
every newline `[NL]`, tab `[TAB]`, carriage return `[CR]` (and NUL `[NUL]`); any other
whitespace, control or format character (U+00A0, U+000C, U+200B, ...) becomes a word of its
own, like a punctuation mark. These `WHITESPACE_TOKENS` take the ids right after the four
reserved ones (4 to 23), words of up to 1,000 bytes are spelled, and `detokenize` joins the
pieces with nothing in between, so `detokenize(tokenize(text)) == text` exactly for any valid
UTF-8 text whose characters are all in the vocabulary (with `lowercase=False`). The price is
length: on `python_source`'s validation split (8,192 tokens) "keep" gives 0.39 tokens per
character against 0.25 for the default, a third of them layout (mostly single spaces).

A SavedModel holding this tokenizer uses tensorflow-text ops: the serving process must
`import tensorflow_text` (importing `keras_llm.data` does) before `tf.saved_model.load`.
"""

import collections
import hashlib
import numbers
import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from keras_llm._io import DamagedFileError, read_json, write_json, write_text

PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
RESERVED_TOKENS = (PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN)
MASK_TOKEN = "[MASK]"  # id 4 of a vocabulary trained with `mask_token=True` (masked LM)
SUFFIX_INDICATOR = "##"
VOCABULARY_FILE = "vocabulary.txt"
CONFIG_FILE = "tokenizer.json"
SPECIAL_TOKEN_ROLES = ("pad", "unk", "start", "end", "mask")
BERT_SPECIAL_TOKENS = {
    "pad": "[PAD]", "unk": "[UNK]", "start": "[CLS]", "end": "[SEP]", "mask": "[MASK]"
}

# RE2 patterns, as in BERT (and keras-hub's WordPieceTokenizer).
_WHITESPACE = r"\s|\p{Z}|\p{Cc}|\p{Cf}"
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|\p{P}"
_CJK = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]"
    r"|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)
_SPLIT_PATTERN = "|".join([_WHITESPACE, _PUNCTUATION, _CJK])
_KEEP_PATTERN = "|".join([_PUNCTUATION, _CJK])

# whitespace="keep": the layout is made of tokens too.
WHITESPACE_MODES = ("split", "keep")
MAX_SPACE_RUN = 16  # longest run of spaces one token stands for (four indentation levels)
WHITESPACE_TOKENS = {
    "[NL]": "\n",
    "[TAB]": "\t",
    "[CR]": "\r",
    **{f"[SP{n}]": " " * n for n in range(1, MAX_SPACE_RUN + 1)},
    # Not whitespace, but no WordPiece token can hold it (tensorflow-text's vocabulary trie
    # refuses NUL bytes), so it gets a marker too.
    "[NUL]": "\x00",
}
# A word of bracketed letters can never come out of the splitter (a bracket is punctuation,
# always a word of its own), so these tokens never collide with text.
_LAYOUT_PATTERN = rf" {{1,{MAX_SPACE_RUN}}}|\n|\t|\r"  # leftmost-first: space runs win
_CODE_SPLIT_PATTERN = "|".join([_LAYOUT_PATTERN, _WHITESPACE, _PUNCTUATION, _CJK])
_SINGLE_TOKENS = (("[NL]", "\n"), ("[TAB]", "\t"), ("[CR]", "\r"), ("[NUL]", "\x00"))
_BERT_MAX_CHARS_PER_WORD = 100
_KEEP_MAX_BYTES_PER_WORD = 1000  # "split" keeps BERT's 100; code has long names and literals


def _split_words(texts, lowercase, whitespace="split", bert_normalization=False):
    """(batch,) tf.string -> (batch, None) ragged tf.string of words.

    With `whitespace="keep"` every character of the text is in some word: runs of spaces,
    newlines, tabs, carriage returns and NULs are words of their own (see
    `_layout_to_tokens`). With `bert_normalization`, see `_bert_normalize`.
    """
    texts = tf.strings.unicode_transcode(
        texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    if bert_normalization:
        texts = _bert_normalize(texts, lowercase)
    elif lowercase:
        texts = tf_text.case_fold_utf8(texts)
        texts = tf_text.normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
    if whitespace == "keep":
        return _split_code_words(texts)
    # tensorflow-text's regex_split stops reading a text at its first NUL byte; a NUL is a
    # control character (a separator, step 3), so it becomes a space first.
    texts = tf.strings.regex_replace(texts, r"\x00", " ")
    return tf_text.regex_split(texts, _SPLIT_PATTERN, _KEEP_PATTERN)


def _bert_normalize(texts, lowercase):
    """Text as the Hugging Face `BertNormalizer` leaves it (the tokenizer published BERT
    checkpoints were trained with): tab, newline and carriage return become spaces; every
    other control, format, private-use or surrogate character (NUL, U+200B, U+200D, ...)
    and U+FFFD is deleted, joining its neighbours, where keras_llm's own splitting would
    split there; with `lowercase`, accents are stripped (NFD, marks removed) and then the
    text is lowercased (Unicode lowercase, where keras_llm's own tokenizer case-folds with
    NFKC, which also rewrites ligatures and full-width forms)."""
    texts = tf.strings.regex_replace(texts, r"[\t\n\r]", " ")
    texts = tf.strings.regex_replace(texts, r"\p{C}|\x{FFFD}", "")
    if lowercase:
        texts = tf_text.normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        # Character by character, as BertNormalizer: no word-final sigma rule.
        texts = tf.strings.regex_replace(texts, "\u03a3", "\u03c3")
        texts = tf.strings.lower(texts, encoding="utf-8")
    return texts


def _split_code_words(texts):
    """`whitespace="keep"` splitting: (batch,) -> (batch, None) words, every byte kept.

    tensorflow-text's `regex_split` stops reading a text at its first NUL byte, so the
    texts are first cut at NULs (`tf.strings.split` keeps them whole) and each NUL comes
    back as a word of its own between its two pieces.
    """
    pieces = tf.strings.split(texts, sep="\x00")  # (batch, pieces); "" gives one piece
    words = tf_text.regex_split(pieces.flat_values, _CODE_SPLIT_PATTERN, _CODE_SPLIT_PATTERN)
    # Every piece but the last of its text was followed by a NUL.
    row = pieces.value_rowids()
    position = tf.range(tf.size(row, tf.int64)) - tf.gather(pieces.row_starts(), row)
    followed = position < tf.gather(pieces.row_lengths() - 1, row)
    nul = tf.ragged.boolean_mask(
        tf.fill(tf.stack([tf.size(row), 1]), "\x00"), tf.expand_dims(followed, 1)
    )
    words = tf.concat([words.with_row_splits_dtype(nul.row_splits.dtype), nul], axis=1)
    return pieces.with_flat_values(words).merge_dims(1, 2)


def _layout_to_tokens(words):
    """Flat tf.string words -> `(words, is_layout)`: each run of spaces, newline, tab,
    carriage return and NUL replaced by its `WHITESPACE_TOKENS` token, and where."""
    spaces = tf.equal(tf.strings.substr(words, 0, 1), " ")  # a space is only in space runs
    tokens = tf.where(spaces, "[SP" + tf.strings.as_string(tf.strings.length(words)) + "]", words)
    is_layout = spaces
    for token, character in _SINGLE_TOKENS:
        match = tf.equal(words, character)
        tokens = tf.where(match, token, tokens)
        is_layout = is_layout | match
    return tokens, is_layout


def _check_whitespace(whitespace):
    if whitespace not in WHITESPACE_MODES:
        raise ValueError(
            f"whitespace must be one of {list(WHITESPACE_MODES)} ('keep' for source code). "
            f"Received whitespace={whitespace!r}."
        )
    return whitespace


def _complete_alphabet(tokens):
    """The tokens missing from `tokens` among `"##c"` for each one-character token `"c"`
    and `"c"` for each `"##c"`: with them, any word made of known characters is spelled,
    wherever in the word a character sits."""
    present = set(tokens)
    missing = []
    for token in tokens:
        if token.startswith(SUFFIX_INDICATOR) and len(token) == len(SUFFIX_INDICATOR) + 1:
            other = token[len(SUFFIX_INDICATOR) :]
        elif len(token) == 1:
            other = SUFFIX_INDICATOR + token
        else:
            continue
        if other not in present:
            present.add(other)
            missing.append(other)
    return missing


def _surface(token):
    """The text one token stands for with `whitespace="keep"`."""
    if token in WHITESPACE_TOKENS:
        return WHITESPACE_TOKENS[token]
    if token in (PAD_TOKEN, START_TOKEN, END_TOKEN):
        return ""
    if token.startswith(SUFFIX_INDICATOR) and len(token) > len(SUFFIX_INDICATOR):
        return token[len(SUFFIX_INDICATOR) :]
    return token


def _check_sequence_length(sequence_length):
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, numbers.Integral):
        raise ValueError(
            f"sequence_length must be an int. Received sequence_length={sequence_length!r}."
        )
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1. Received {sequence_length}.")
    return int(sequence_length)


@keras.saving.register_keras_serializable(package="keras_llm")
class Tokenizer(keras.layers.Layer):
    """WordPiece tokenizer with reserved ids `[PAD]`=0, `[UNK]`=1, `[BOS]`=2, `[EOS]`=3.

    Build one with `Tokenizer.train(texts, vocabulary_size)` or `Tokenizer.load(directory)`,
    or take a published checkpoint's with `Tokenizer.from_preset("all-MiniLM-L6-v2")` (its
    own vocabulary and special tokens: `[PAD]`=0, `[UNK]`=100, `[CLS]`=101 starts and
    `[SEP]`=102 ends every encoded text, `[MASK]`=103).
    Every method is made of TensorFlow ops: call them eagerly, inside `tf.data.Dataset.map`,
    inside a `tf.function`, or inside a model exported as a SavedModel.

    Args:
        vocabulary: list of str. WordPiece tokens; the first four must be
            `["[PAD]", "[UNK]", "[BOS]", "[EOS]"]`, continuation pieces start with `"##"`.
            With `whitespace="keep"` the next ones must be the `WHITESPACE_TOKENS`.
        lowercase: bool. Case-fold and strip accents before splitting; must match how the
            vocabulary was trained. Defaults to `True`.
        whitespace: str. `"split"`: whitespace separates words and is dropped (text comes
            back with single spaces between words). `"keep"`: spaces, newlines, tabs and
            indentation are tokens and text comes back exactly as it was (for code; use
            with `lowercase=False`). Defaults to `"split"`.
        special_tokens: dict or None. For an external vocabulary: which tokens play the
            roles `"pad"` (must be id 0, the padding id every model masks), `"unk"`,
            `"start"`, `"end"` and optionally `"mask"`, e.g. `BERT_SPECIAL_TOKENS`. `None`:
            keras_llm's own reserved tokens, the first four of the vocabulary.
            Defaults to `None`.
        bert_normalization: bool. Normalise text as BERT's own tokenizer does
            (`_bert_normalize`), so ids equal a published checkpoint's. Defaults to `False`.
        **kwargs: Passed to `keras.layers.Layer` (e.g. `name`).

    Example:
    ```python
    tokenizer = Tokenizer.train(["a first text", "a second text"], vocabulary_size=64)
    ids = tokenizer.encode(tf.constant(["a text"]), sequence_length=8)  # (1, 8) int32
    tokenizer.detokenize(ids)  # [b"a text"]

    code = Tokenizer.train(python_files, 8192, lowercase=False, whitespace="keep")
    code.detokenize(code.tokenize("def f(x):\n    return x\n"))  # the same bytes back
    ```
    """

    pad_id, unk_id, start_id, end_id, mask_id = 0, 1, 2, 3, None
    pad_token, unk_token, start_token, end_token = RESERVED_TOKENS
    mask_token = None

    def __init__(
        self,
        vocabulary,
        lowercase=True,
        whitespace="split",
        special_tokens=None,
        bert_normalization=False,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        vocabulary = [str(token) for token in vocabulary]
        self.special_tokens = None
        self.bert_normalization = bool(bert_normalization)
        if special_tokens is not None:
            if whitespace != "split":
                raise ValueError(
                    "special_tokens (an external vocabulary) work with whitespace='split' only. "
                    f"Received whitespace={whitespace!r}."
                )
            self._set_special_tokens(special_tokens, vocabulary)
        elif tuple(vocabulary[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(
                f"The vocabulary must start with the reserved tokens {list(RESERVED_TOKENS)}. "
                f"Received the first tokens {vocabulary[: len(RESERVED_TOKENS)]}; build the "
                "vocabulary with `Tokenizer.train`."
            )
        if len(set(vocabulary)) != len(vocabulary):
            repeated = sorted(t for t, n in collections.Counter(vocabulary).items() if n > 1)
            raise ValueError(
                f"The vocabulary has duplicate tokens {repeated[:10]}; each token must be unique."
            )
        self.whitespace = _check_whitespace(whitespace)
        keep = self.whitespace == "keep"
        if keep:
            layout = list(WHITESPACE_TOKENS)
            found = vocabulary[len(RESERVED_TOKENS) : len(RESERVED_TOKENS) + len(layout)]
            if found != layout:
                raise ValueError(
                    f"whitespace='keep' needs the tokens {layout} right after the reserved "
                    f"tokens (ids {len(RESERVED_TOKENS)} to "
                    f"{len(RESERVED_TOKENS) + len(layout) - 1}). Received {found}; train the "
                    "vocabulary with `Tokenizer.train(..., whitespace='keep')`."
                )
        if special_tokens is None and vocabulary[len(RESERVED_TOKENS):][:1] == [MASK_TOKEN]:
            self.mask_id, self.mask_token = len(RESERVED_TOKENS), MASK_TOKEN
        self.vocabulary = vocabulary
        self.lowercase = bool(lowercase)
        self.vocabulary_size = len(vocabulary)
        self._token_ids = {token: i for i, token in enumerate(vocabulary)}
        wordpiece_options = {"max_bytes_per_word": _KEEP_MAX_BYTES_PER_WORD} if keep else {}
        if self.bert_normalization:
            # BERT's limit counts characters (`_bert_long_words_unknown`), not bytes.
            wordpiece_options = {"max_bytes_per_word": 4 * _BERT_MAX_CHARS_PER_WORD}
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=vocabulary,
            suffix_indicator=SUFFIX_INDICATOR,
            token_out_type=tf.int32,
            unknown_token=self.unk_token,
            no_pretokenization=True,  # we split the words ourselves (`_split_words`)
            support_detokenization=True,
            **wordpiece_options,
        )
        # whitespace="keep" detokenizes by table: each id's text, joined with nothing between.
        self._surfaces = None
        if keep:
            self._surfaces = [_surface(token) for token in vocabulary]
        self.built = True  # no weights to create; keras.export.ExportArchive needs it built

    def _set_special_tokens(self, special_tokens, vocabulary):
        """Checks an external vocabulary's special tokens and sets the `*_id`/`*_token`s."""
        if not isinstance(special_tokens, dict) or not set(SPECIAL_TOKEN_ROLES[:4]) <= set(
            special_tokens
        ) or not set(special_tokens) <= set(SPECIAL_TOKEN_ROLES):
            raise ValueError(
                f"special_tokens must be a dict with the keys {list(SPECIAL_TOKEN_ROLES[:4])} "
                f"(and optionally 'mask'), e.g. {BERT_SPECIAL_TOKENS}. "
                f"Received special_tokens={special_tokens!r}."
            )
        ids = {token: i for i, token in enumerate(vocabulary)}
        absent = sorted(t for t in special_tokens.values() if t not in ids)
        if absent:
            raise ValueError(f"The special tokens {absent} are not in the vocabulary.")
        if ids[special_tokens["pad"]] != 0:
            raise ValueError(
                f"The padding token {special_tokens['pad']!r} must have id 0 (models mask id "
                f"0); it has id {ids[special_tokens['pad']]}."
            )
        self.special_tokens = dict(special_tokens)
        for role, token in special_tokens.items():
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_id", ids[token])

    # -- building --------------------------------------------------------------------------

    @classmethod
    def train(cls, dataset, vocabulary_size, lowercase=True, batch_size=256, whitespace="split",
              mask_token=False):
        """Learns a WordPiece vocabulary from text and returns a tokenizer.

        The words (see the module docstring) are counted with TensorFlow and the vocabulary
        is learned by the Hugging Face `tokenizers` WordPiece trainer (Rust; a dependency of
        keras-hub), which takes seconds where the pure-Python tensorflow-text learner behind
        `keras_hub.tokenizers.compute_word_piece_vocabulary` takes most of a minute and
        stops short of the size asked. Pieces must occur at least twice to be merged, so a
        tiny corpus can give fewer tokens than asked: the result's `vocabulary_size` is the
        real size (never more than asked). Every character of the training text gets a
        token (unless the size asked is smaller than the alphabet), so `[UNK]` only comes
        from characters never seen in training and from words over 100 bytes. With
        `whitespace="keep"` the layout tokens come right after the reserved ones and every
        character also gets its continuation piece (`"c"` and `"##c"`), so any word made of
        seen characters is spelled, never `[UNK]`. The same text gives the same vocabulary
        in every process (word counting and the trainer's ids are order-independent).

        Args:
            dataset: `tf.data.Dataset` of scalar `tf.string` (one document each), or a list
                of str.
            vocabulary_size: int. Largest vocabulary, reserved tokens included.
            lowercase: bool. Case-fold and strip accents. Defaults to `True`.
            batch_size: int. Documents split per step while counting words.
            whitespace: str. `"split"` or `"keep"` (layout as tokens, for code; see the
                class). Defaults to `"split"`.
            mask_token: bool. Reserve `[MASK]` as id 4 (`mask_id`), for masked-LM
                pretraining; text never tokenizes to it (`[` and `]` split words). Only with
                `whitespace="split"`. Defaults to `False`.

        Returns:
            A `Tokenizer`.
        """
        whitespace = _check_whitespace(whitespace)
        if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, numbers.Integral):
            raise ValueError(f"vocabulary_size must be an int. Received {vocabulary_size!r}.")
        vocabulary_size = int(vocabulary_size)
        if vocabulary_size <= len(RESERVED_TOKENS):
            raise ValueError(
                f"vocabulary_size must exceed the {len(RESERVED_TOKENS)} reserved tokens. "
                f"Received vocabulary_size={vocabulary_size}."
            )
        if mask_token and whitespace != "split":
            raise ValueError(
                "mask_token=True (a masked-LM vocabulary) works with whitespace='split' only. "
                f"Received whitespace={whitespace!r}."
            )
        counts = _word_counts(dataset, lowercase, whitespace, batch_size)
        layout = list(WHITESPACE_TOKENS) if whitespace == "keep" else []
        layout += [MASK_TOKEN] if mask_token else []
        vocabulary = _learn_vocabulary(counts, vocabulary_size, layout, whitespace, batch_size)
        return cls(vocabulary[:vocabulary_size], lowercase=lowercase, whitespace=whitespace)

    def save(self, directory):
        """Writes `vocabulary.txt` (one token a line) and `tokenizer.json` into `directory`."""
        os.makedirs(directory, exist_ok=True)
        text = "".join(token + "\n" for token in self.vocabulary)
        write_text(os.path.join(directory, VOCABULARY_FILE), text)
        config = {"lowercase": self.lowercase, "vocabulary_size": self.vocabulary_size,
                  # `load` checks it: a token altered in place is refused, not used.
                  "vocabulary_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        # Written only when not the default: keras_llm's own tokenizers save as before.
        if self.whitespace != "split":
            config["whitespace"] = self.whitespace
        if self.special_tokens is not None:
            config["special_tokens"] = self.special_tokens
        if self.bert_normalization:
            config["bert_normalization"] = True
        write_json(os.path.join(directory, CONFIG_FILE), config)

    @classmethod
    def load(cls, directory):
        """Reads a tokenizer written by `save(directory)`.

        A `tokenizer.json` without `"whitespace"` (every tokenizer saved before the option
        existed) means `"split"`; without `tokenizer.json`, `lowercase=True` as well.
        """
        vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
        if not os.path.isfile(vocabulary_path):
            raise FileNotFoundError(
                f"No tokenizer in {directory!r}: {VOCABULARY_FILE} is missing. Save one with "
                "`tokenizer.save(directory)`."
            )
        with open(vocabulary_path, "rb") as f:
            raw = f.read()
        config_path = os.path.join(directory, CONFIG_FILE)
        config = read_json(config_path) if os.path.isfile(config_path) else {}
        damaged = f"{vocabulary_path} is damaged (truncated or altered)"
        try:
            vocabulary = raw.decode("utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise DamagedFileError(f"{damaged}: it is not UTF-8 ({error}).") from None
        if vocabulary[-1] != "":
            raise DamagedFileError(f"{damaged}: its last line is cut off ({vocabulary[-1]!r}).")
        vocabulary = vocabulary[:-1]
        if not isinstance(config, dict):
            raise DamagedFileError(
                f"{config_path} must hold a JSON object. Received {config!r:.100}."
            )
        expected = config.get("vocabulary_size")
        if expected is not None and expected != len(vocabulary):
            raise DamagedFileError(
                f"{damaged}: it holds {len(vocabulary)} tokens but {config_path} says "
                f"vocabulary_size={expected!r}. Restore the tokenizer folder (or train the run "
                "again); a different vocabulary would silently give different ids."
            )
        checksum = config.get("vocabulary_sha256")
        if checksum is not None and checksum != hashlib.sha256(raw).hexdigest():
            raise DamagedFileError(
                f"{damaged}: its sha256 differs from the one {config_path} recorded when it "
                "was saved. Restore the tokenizer folder (or train the run again); a different "
                "vocabulary would silently give different ids."
            )
        try:
            return cls(
                vocabulary,
                lowercase=config.get("lowercase", True),
                whitespace=config.get("whitespace", "split"),
                special_tokens=config.get("special_tokens"),
                bert_normalization=config.get("bert_normalization", False),
            )
        except ValueError as error:
            raise DamagedFileError(
                f"The tokenizer in {directory} cannot be loaded: {error}"
            ) from None

    @classmethod
    def from_preset(cls, preset):
        """The tokenizer of a published checkpoint: a registered name such as
        `"all-MiniLM-L6-v2"` (see `keras_llm.presets.PRESETS`) or a Hugging Face BERT-layout
        folder. Reads its `vocab.txt` and `tokenizer_config.json` (`do_lower_case`), with
        BERT's special tokens and text normalisation, so ids equal the checkpoint's own
        tokenizer's."""
        from keras_llm import presets

        directory = presets.preset_directory(preset)
        presets.read_config(directory)  # refuses an unsupported model_type
        vocabulary_path = os.path.join(directory, presets.VOCABULARY_FILE)
        if not os.path.isfile(vocabulary_path):
            raise FileNotFoundError(f"{directory!r} has no {presets.VOCABULARY_FILE}.")
        with open(vocabulary_path, encoding="utf-8") as f:
            vocabulary = [line.rstrip("\r\n") for line in f]
        while vocabulary and vocabulary[-1] == "":
            vocabulary.pop()
        config_path = os.path.join(directory, "tokenizer_config.json")
        config = read_json(config_path) if os.path.isfile(config_path) else {}
        return cls(
            vocabulary,
            lowercase=config.get("do_lower_case", True),
            special_tokens=BERT_SPECIAL_TOKENS,
            bert_normalization=True,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": list(self.vocabulary),
                "lowercase": self.lowercase,
                "whitespace": self.whitespace,
            }
        )
        if self.special_tokens is not None:
            config.update(
                special_tokens=self.special_tokens, bert_normalization=self.bert_normalization
            )
        return config

    # -- ids ---------------------------------------------------------------------------------

    def id_to_token(self, token_id):
        """Returns the token string of one id (Python int)."""
        return self.vocabulary[token_id]

    def token_to_id(self, token):
        """Returns the id of one token string, or `unk_id` if it is not in the vocabulary."""
        return self._token_ids.get(token, self.unk_id)

    def tokenize(self, texts):
        """Text -> WordPiece ids, no special tokens.

        Args:
            texts: tf.string scalar or rank-1 tensor (or a Python str / list of str).

        Returns:
            int32 rank-1 tensor for a scalar input; int32 `tf.RaggedTensor` of shape
            `(batch, None)` for a rank-1 input.
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        rank = texts.shape.rank
        if rank not in (0, 1):
            raise ValueError(
                f"tokenize expects a scalar or a rank-1 string tensor. Received shape "
                f"{texts.shape}; reshape your batch to (batch,)."
            )
        words = _split_words(
            tf.reshape(texts, [-1]), self.lowercase, self.whitespace, self.bert_normalization
        )
        if self.whitespace == "keep":
            words = words.with_flat_values(_layout_to_tokens(words.flat_values)[0])
        if self.bert_normalization:
            words = words.with_flat_values(self._bert_long_words_unknown(words.flat_values))
        ids = self._wordpiece.tokenize(words)
        ids = ids.merge_dims(-2, -1)  # (batch, words, pieces) -> (batch, pieces)
        return ids[0] if rank == 0 else ids

    def _bert_long_words_unknown(self, words):
        """A word of over 100 characters becomes the unknown token, as in BERT's WordPiece
        (`max_input_chars_per_word`); tensorflow-text's limit counts bytes."""
        long = tf.strings.length(words, unit="UTF8_CHAR") > _BERT_MAX_CHARS_PER_WORD
        return tf.where(long, self.unk_token, words)

    def detokenize(self, ids):
        """Ids -> text, dropping `[PAD]`, `[BOS]`, `[EOS]` (or the special tokens playing
        those roles) and out-of-range ids.

        `[UNK]` stays visible as the string "[UNK]". With `whitespace="split"` pieces are
        joined into words and words are joined with single spaces (so punctuation comes
        back space-separated, and lowercased when the tokenizer lowercases). With
        `whitespace="keep"` the pieces are joined with nothing between them and the layout
        tokens become their spaces, newlines and tabs again: the text comes back as it was.

        Args:
            ids: int rank-1 tensor (one sequence) or rank-2 dense / ragged tensor (a batch).

        Returns:
            A tf.string scalar for rank-1 input, or a `(batch,)` tf.string tensor.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        rank = ids.shape.rank
        if rank not in (1, 2):
            raise ValueError(f"detokenize expects ids of rank 1 or 2. Received shape {ids.shape}.")
        if rank == 1:
            ids = tf.expand_dims(ids, 0)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        keep = (
            (ids != self.pad_id)
            & (ids != self.start_id)
            & (ids != self.end_id)
            & (ids >= 0)
            & (ids < self.vocabulary_size)
        )
        ids = tf.ragged.boolean_mask(ids, keep)
        if self.whitespace == "keep":
            pieces = tf.gather(tf.constant(self._surfaces, tf.string), ids.flat_values)
            texts = tf.strings.reduce_join(
                ids.with_flat_values(pieces).to_tensor(default_value=""), axis=-1
            )
        else:
            texts = self._wordpiece.detokenize(ids)
        return texts[0] if rank == 1 else texts

    def encode(self, texts, sequence_length):
        """Text -> fixed-length ids: `[BOS] + tokens + [EOS]` (BERT: `[CLS] + tokens +
        [SEP]`), cut to `sequence_length` (keeping the start token; a cut text loses its end
        token), right-padded with `[PAD]` (0).

        This is the one function classifier training, evaluation and SavedModel serving all
        use, so they tokenize identically. It is `pack(tokenize(texts), sequence_length)`.

        Args:
            texts: tf.string rank-1 tensor `(batch,)` (a scalar gives a `(sequence_length,)`
                result).
            sequence_length: int. Length of every output row.

        Returns:
            int32 tensor of shape `(batch, sequence_length)`.
        """
        sequence_length = _check_sequence_length(sequence_length)
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        scalar = texts.shape.rank == 0
        ids = self.pack(self.tokenize(tf.reshape(texts, [-1])), sequence_length)
        return ids[0] if scalar else ids

    def pack(self, ids, sequence_length):
        """Ragged token ids `(batch, None)` -> `[BOS] + ids + [EOS]`, cut to
        `sequence_length` (keeping `[BOS]`; with `special_tokens`, keeping both markers and
        cutting the text, as BERT's tokenizer does), right-padded with 0: int32
        `(batch, sequence_length)`. The second half of `encode`, for ids changed in between
        (e.g. by augmentation)."""
        sequence_length = _check_sequence_length(sequence_length)
        if self.special_tokens is not None and sequence_length >= 2:
            # An external vocabulary's model always saw its end token (`[SEP]`): cut the
            # text, not the marker, as the checkpoint's own tokenizer truncates.
            ids = ids[:, : sequence_length - 2]
        ids = tf.cast(self.add_markers(ids), tf.int32)[:, :sequence_length]
        return ids.to_tensor(default_value=self.pad_id, shape=[None, sequence_length])

    def add_markers(self, ids):
        """Wraps each row of ragged ids `(batch, None)` in `[BOS]` ... `[EOS]`."""
        batch = ids.nrows()
        start = tf.fill([batch, 1], tf.constant(self.start_id, ids.dtype))
        end = tf.fill([batch, 1], tf.constant(self.end_id, ids.dtype))
        return tf.concat([start, ids, end], axis=1)

    def call(self, texts, sequence_length=None):
        """`encode(texts, sequence_length)` when a length is given, else `tokenize(texts)`."""
        if sequence_length is None:
            return self.tokenize(texts)
        return self.encode(texts, sequence_length)


def _word_counts(dataset, lowercase, whitespace, batch_size):
    """How often each word (see the module docstring) occurs in `dataset`, a
    `tf.data.Dataset` of scalar strings or a list of str; counted with TensorFlow ops."""
    if isinstance(dataset, (str, bytes)):
        dataset = [dataset]
    if not isinstance(dataset, tf.data.Dataset):
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(dataset), tf.string))
    spec = dataset.element_spec
    if not (
        isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string and spec.shape.rank == 0
    ):
        raise ValueError(
            "Tokenizer.train needs a tf.data.Dataset of scalar strings (map your data "
            f"set to its text first). Received element_spec={spec}."
        )
    if whitespace == "keep":

        def split(texts):
            words = _split_words(texts, lowercase, whitespace).flat_values
            return tf.boolean_mask(words, ~_layout_to_tokens(words)[1])

    else:

        def split(texts):
            return _split_words(texts, lowercase).flat_values

    words = dataset.batch(batch_size).map(split, num_parallel_calls=tf.data.AUTOTUNE)
    counts = collections.Counter()
    for batch in words:
        counts.update(word.decode("utf-8") for word in batch.numpy())
    return counts


def _learn_vocabulary(counts, vocabulary_size, layout, whitespace, batch_size):
    """The WordPiece vocabulary (reserved tokens, `layout`, then the learned pieces by id)
    that Hugging Face's trainer learns from the word `counts`."""
    import tokenizers  # Hugging Face tokenizers: only needed to train

    # The trainer gives a continuation piece ("##c") its id when it first meets it while
    # walking a hash map, so ids (and the merges that break count ties by id) would
    # change from one process to the next (huggingface/tokenizers#1794). Handing it
    # every continuation piece up front, in sorted order, fixes the ids: the same text
    # always gives the same vocabulary.
    continuation = sorted({char for word in counts for char in word[1:]})
    fixed = list(RESERVED_TOKENS) + layout
    special = fixed + [SUFFIX_INDICATOR + char for char in continuation]

    def word_batches():
        batch = []
        for word, count in sorted(counts.items()):
            batch.extend([word] * count)
            if len(batch) >= batch_size * 64:
                yield batch
                batch = []
        if batch:
            yield batch

    learner = tokenizers.Tokenizer(
        tokenizers.models.WordPiece(
            unk_token=UNK_TOKEN, continuing_subword_prefix=SUFFIX_INDICATOR
        )
    )
    if whitespace == "split":
        # Our words contain no whitespace, so this only separates them again.
        learner.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    # (With "keep", a word may be one whitespace character such as U+00A0: each word is
    # one sequence, with no pre-tokenizer to drop it.)
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=vocabulary_size,
        min_frequency=2,
        special_tokens=special,
        continuing_subword_prefix=SUFFIX_INDICATOR,
        show_progress=False,
    )
    learner.train_from_iterator(word_batches(), trainer)
    ids = learner.get_vocab()
    vocabulary = sorted(ids, key=ids.get)
    if whitespace == "keep":
        learned = [token for token in vocabulary if token not in fixed]
        single = [t for t in learned if len(t.removeprefix(SUFFIX_INDICATOR)) == 1]
        longer = [t for t in learned if len(t.removeprefix(SUFFIX_INDICATOR)) != 1]
        # The alphabet first: longer pieces are what the size limit gives up.
        vocabulary = fixed + single + _complete_alphabet(single) + longer
    return vocabulary
