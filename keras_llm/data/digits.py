"""scikit-learn's bundled handwritten digits, split and captioned, for the multimodal example.

`sklearn.datasets.load_digits()` ships 1,797 grey 8x8 images of the digits 0-9 (about 180 of
each) with scikit-learn, so nothing is downloaded. Pixels are integers 0..16.

- `load_digit_splits(seed)`: stratified train / validation / test splits (65% / 15% / 20%,
  fixed by `seed`), pixels scaled to [0, 1] as float32 `(n, 8, 8)`, labels int32.
- `caption(label)`: `"this is a seven"` (`"this is an eight"`); `caption_tokenizer()`: a
  `keras_llm.data.Tokenizer` over the 18 words of the captions
  (`[PAD] [UNK] [BOS] [EOS] this is a an zero .. nine`), so captions are encoded, decoded and
  exported like any other text of the project. The article comes before the digit, so a
  captioner writing from left to right has to decide on the digit one word early.
- `digit_named(text)`: the digit a caption names, or `None`.
"""

import dataclasses

import numpy as np

from keras_llm.data.tokenizer import RESERVED_TOKENS, Tokenizer

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_WORDS = ("this", "is", "a", "an")
CAPTION_VOCABULARY = (*RESERVED_TOKENS, *CAPTION_WORDS, *DIGIT_NAMES)
# "[BOS] this is a seven [EOS]": every caption is exactly this long.
CAPTION_SEQUENCE_LENGTH = 6
IMAGE_SHAPE = (8, 8)
NUM_CLASSES = 10
PIXEL_MAX = 16.0  # load_digits' pixels are integers 0..16
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DigitSplit:
    """One split: `images` float32 `(n, 8, 8)` in [0, 1], `labels` int32 `(n,)`."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


def load_digit_splits(seed=0, validation_fraction=0.15, test_fraction=0.2):
    """The digits in three stratified, disjoint splits that depend only on `seed`.

    The test split is cut first, then validation from the rest, both with
    `sklearn.model_selection.train_test_split(..., stratify=labels)`, so each split keeps the
    classes' proportions.

    Args:
        seed: int. Fixes the split. Defaults to `0`.
        validation_fraction: float. Share of all images held out for validation.
            Defaults to `0.15`.
        test_fraction: float. Share of all images held out for testing. Defaults to `0.2`.

    Returns:
        dict `{"train", "validation", "test"} -> DigitSplit`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1). Received {name}={value!r}.")
    if validation_fraction + test_fraction >= 0.9:
        raise ValueError(
            "validation_fraction + test_fraction must leave at least 10% for training. "
            f"Received validation_fraction={validation_fraction}, test_fraction={test_fraction}."
        )
    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype("float32")  # (1797, 8, 8)
    labels = digits.target.astype("int32")
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, validation = train_test_split(
        rest,
        test_size=validation_fraction / (1 - test_fraction),
        stratify=labels[rest],
        random_state=seed,
    )
    return {
        name: DigitSplit(images[np.sort(part)], labels[np.sort(part)])
        for name, part in zip(SPLITS, (train, validation, test))
    }


def caption(label):
    """`7 -> "this is a seven"`, `8 -> "this is an eight"`."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not (
        0 <= label < NUM_CLASSES
    ):
        raise ValueError(f"label must be an int digit 0..9. Received label={label!r}.")
    name = DIGIT_NAMES[int(label)]
    return f"this is {'an' if name == 'eight' else 'a'} {name}"


def captions(labels):
    """A list of captions, one per label."""
    return [caption(int(label)) for label in labels]


def caption_tokenizer():
    """A `Tokenizer` whose vocabulary is exactly the caption words (18 ids)."""
    return Tokenizer(list(CAPTION_VOCABULARY))


def digit_named(text):
    """The digit a caption names: `"this is a seven" -> 7`; `None` for none or several."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    named = {DIGIT_NAMES.index(word) for word in text.split() if word in DIGIT_NAMES}
    return named.pop() if len(named) == 1 else None
