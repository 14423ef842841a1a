"""tf.data pipelines from text to model-ready batches.

- `lm_dataset`: documents -> `[BOS] doc [EOS] [BOS] doc [EOS] ...` -> windows of
  `sequence_length + 1` tokens -> `(ids[:-1], ids[1:])` batches for next-token prediction.
- `mlm_dataset`: the same windows, `sequence_length` tokens each, with BERT's masking
  (`mask_tokens`): `(masked ids, labels)` where labels are the original ids at the chosen
  positions and 0 (ignored) everywhere else, for masked-LM pretraining of an encoder.
- `classification_dataset`: `(text, label)` -> `(Tokenizer.encode(text), label)` batches, with
  optional augmentation (training split only).

All randomness (shuffling, augmentation) is seeded: the same seed gives the same batches on
every run, and each new pass over the data (epoch) a different, equally reproducible order.
"""

import tensorflow as tf

SHUFFLE_BUFFER = 10_000
_TOKENIZE_BATCH = 256  # documents tokenized per op call


def _as_text_dataset(texts):
    if isinstance(texts, tf.data.Dataset):
        spec = texts.element_spec
        if not (
            isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string and spec.shape.rank == 0
        ):
            raise ValueError(
                "texts must be a tf.data.Dataset of scalar strings (one document each), "
                f"e.g. from load_pretraining_text. Received element_spec={spec}."
            )
        return texts
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    return tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))


def _as_pair_dataset(pairs):
    if isinstance(pairs, tf.data.Dataset):
        spec = pairs.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2 and spec[0].dtype == tf.string):
            raise ValueError(
                "pairs must be a tf.data.Dataset of (text, label), e.g. from "
                f"load_text_classification. Received element_spec={spec}."
            )
        return pairs
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2:
        texts, labels = pairs
        if len(texts) != len(labels):
            raise ValueError(
                f"pairs=(texts, labels) needs as many labels as texts. Received "
                f"{len(texts)} texts and {len(labels)} labels."
            )
        return tf.data.Dataset.from_tensor_slices(
            (tf.constant(list(texts), tf.string), tf.constant(list(labels), tf.int32))
        )
    raise ValueError(
        "pairs must be a tf.data.Dataset of (text, label) or a tuple (texts, labels). "
        f"Received {type(pairs).__name__}."
    )


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}. Received {name}={value!r}.")


def lm_dataset(
    texts,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=1337,
    repeat=False,
    shuffle_buffer=SHUFFLE_BUFFER,
):
    """Causal-LM batches: `(inputs, targets)`, targets being inputs shifted by one token.

    Every document is tokenized and wrapped in `[BOS]` ... `[EOS]`; the documents are
    concatenated into one token stream, which is cut into non-overlapping windows of
    `sequence_length + 1` tokens (the tail shorter than a window is dropped, so every batch
    has the static shape `(batch_size, sequence_length)`). Windows cross document borders;
    the `[EOS]`/`[BOS]` markers tell the model where one text ends.

    Args:
        texts: `tf.data.Dataset` of scalar strings, or a list of str.
        tokenizer: `keras_llm.data.Tokenizer`.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch (every batch is full).
        shuffle: bool. Shuffle documents, then windows (buffers of `shuffle_buffer`).
            Defaults to `True`.
        seed: int. Seed of both shuffles. Defaults to `1337`.
        repeat: bool. Repeat forever (for step-budgeted training). Defaults to `False`.
        shuffle_buffer: int. Shuffle buffer size, in documents and in windows.

    Returns:
        `tf.data.Dataset` of `(inputs, targets)`, both int32 `(batch_size, sequence_length)`.
    """
    _check_int("sequence_length", sequence_length)
    _check_int("batch_size", batch_size)
    dataset = _as_text_dataset(texts)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(_TOKENIZE_BATCH).map(
        lambda batch: tokenizer.add_markers(tokenizer.tokenize(batch)).flat_values,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # (tokens,) chunks of any length -> windows of exactly sequence_length + 1 tokens.
    dataset = dataset.rebatch(sequence_length + 1, drop_remainder=True)
    if shuffle:
        window_seed = None if seed is None else seed + 1
        dataset = dataset.shuffle(shuffle_buffer, seed=window_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(
        lambda window: (window[:, :-1], window[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def mask_tokens(ids, seed, mask_id, vocabulary_size, special_ids=(0,), rate=0.15,
                random_from=None):
    """BERT's masking of a batch of token ids: `(inputs, labels)` for a masked-LM step.

    Each position whose id is not in `special_ids` is chosen with probability `rate`; a
    chosen position becomes `mask_id` 80% of the time, a random regular token 10% of the time
    and stays itself 10% of the time (the model cannot tell which positions to predict from
    the input alone). `labels` holds the original id at chosen positions and 0 elsewhere, so
    a loss or metric ignoring label 0 (`TokenCrossEntropy`, `NextTokenAccuracy`) counts the
    chosen positions only.

    Args:
        ids: int tensor, any shape (e.g. `(batch, sequence_length)`).
        seed: int tensor of shape `(2,)`: a stateless seed. The same seed and ids give the
            same result on every run.
        mask_id: int. The `[MASK]` id.
        vocabulary_size: int. Random replacements are drawn from
            `[random_from, vocabulary_size)`.
        special_ids: ints never chosen (padding, `[BOS]`, `[EOS]`...). Must include 0.
        rate: float in (0, 1). Share of positions chosen. Defaults to `0.15`.
        random_from: int. Smallest random replacement id. Defaults to one more than the
            largest of `special_ids` and `mask_id`.

    Returns:
        `(inputs, labels)`, int32 tensors shaped like `ids`.
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1). Received rate={rate!r}.")
    if 0 not in special_ids:
        raise ValueError(f"special_ids must include the padding id 0. Received {special_ids}.")
    random_from = max(*special_ids, mask_id) + 1 if random_from is None else random_from
    ids = tf.cast(ids, tf.int32)
    choose_seed, kind_seed, token_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    )
    candidate = tf.reduce_all(ids[..., None] != tf.constant(special_ids, tf.int32), axis=-1)
    chosen = candidate & (tf.random.stateless_uniform(tf.shape(ids), choose_seed) < rate)
    kind = tf.random.stateless_uniform(tf.shape(ids), kind_seed)
    random_ids = tf.random.stateless_uniform(
        tf.shape(ids), token_seed, minval=random_from, maxval=vocabulary_size, dtype=tf.int32
    )
    inputs = tf.where(chosen & (kind < 0.8), mask_id,
                      tf.where(chosen & (kind < 0.9), random_ids, ids))
    labels = tf.where(chosen, ids, tf.zeros_like(ids))
    return inputs, labels


def mlm_dataset(texts, tokenizer, sequence_length, batch_size, shuffle=True, seed=1337,
                repeat=False, rate=0.15, shuffle_buffer=SHUFFLE_BUFFER):
    """Masked-LM batches: `lm_dataset`'s windows (`sequence_length` tokens, documents joined
    by `[EOS]` `[BOS]`) with `mask_tokens` applied; `[PAD]`, `[BOS]` and `[EOS]` are never
    masked. Each batch draws its own masks (seeded by `seed` and the batch's index), so every
    pass over the data masks other positions, the same on every run.

    Args:
        texts, tokenizer, sequence_length, batch_size, shuffle, seed, repeat, shuffle_buffer:
            as `lm_dataset`. The tokenizer needs a mask token (`Tokenizer.train(...,
            mask_token=True)`, or a checkpoint's own).
        rate: float. Share of tokens chosen for prediction. Defaults to `0.15`.

    Returns:
        `tf.data.Dataset` of `(inputs, labels)`, int32 `(batch_size, sequence_length)`.
    """
    if tokenizer.mask_id is None:
        raise ValueError(
            "mlm_dataset needs a tokenizer with a mask token: train it with "
            "Tokenizer.train(..., mask_token=True)."
        )
    windows = lm_dataset(texts, tokenizer, sequence_length, batch_size, shuffle=shuffle,
                         seed=seed, repeat=repeat, shuffle_buffer=shuffle_buffer)
    special = (tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id)
    base = 0 if seed is None else int(seed)
    return windows.enumerate().map(
        lambda index, pair: mask_tokens(
            pair[0], tf.stack([tf.constant(base, tf.int64), index]), tokenizer.mask_id,
            tokenizer.vocabulary_size, special_ids=special, rate=rate,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def classification_dataset(
    pairs,
    tokenizer,
    sequence_length,
    batch_size,
    augment=None,
    shuffle=False,
    seed=1337,
    drop_remainder=False,
    shuffle_buffer=SHUFFLE_BUFFER,
    bucket_boundaries=None,
):
    """Classifier batches: `(Tokenizer.encode(texts, sequence_length), labels)`.

    Without `augment` the ids are exactly `tokenizer.encode(texts, sequence_length)`, the
    function an exported SavedModel applies to raw strings, so evaluation and serving see
    the same ids. Pass an `Augmenter` for the training split only: the tokens are then
    augmented before the `[BOS]`/`[EOS]` markers and padding are added.

    Args:
        pairs: `tf.data.Dataset` of `(text, label)` (e.g. from `load_text_classification`)
            or a tuple `(texts, labels)` of lists.
        tokenizer: `keras_llm.data.Tokenizer`.
        sequence_length: int. Tokens per example (markers included); longer texts are cut.
        batch_size: int. Examples per batch.
        augment: `keras_llm.data.Augmenter` or None. Defaults to `None` (no augmentation).
        shuffle: bool. Shuffle examples (buffer `shuffle_buffer`) each epoch. Defaults to
            `False`.
        seed: int. Seeds the shuffle and, per batch, the augmentation. Defaults to `1337`.
        drop_remainder: bool. Drop the last, smaller batch (static batch size). Defaults to
            `False`, so evaluation sees every example.
        shuffle_buffer: int. Shuffle buffer size.
        bucket_boundaries: tuple of int or None. Batch examples of similar length together
            and pad each batch only to its bucket's width: an example of `n` ids (markers
            included) goes to the smallest boundary `>= n`, the longest to
            `sequence_length`. Review snippets average about 26 of 64 tokens, so fixed-width
            batches are mostly padding. Each row's ids are the same as without buckets, cut
            where only padding follows. Defaults to `None` (every batch
            `sequence_length` wide, the rows in shuffled order).

    Returns:
        `tf.data.Dataset` of `(ids, labels)`: int32 `(batch, sequence_length)` (with buckets:
        `(batch, width)`, `width <= sequence_length`) and int32 `(batch,)`.
    """
    _check_int("sequence_length", sequence_length)
    _check_int("batch_size", batch_size)
    if augment is not None and not callable(augment):
        raise ValueError(
            "augment must be a keras_llm.data.Augmenter (or a callable on ragged ids) or None. "
            f"Received augment={augment!r}."
        )
    dataset = _as_pair_dataset(pairs)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    if augment is None:

        def prepare(texts, labels):
            return tokenizer.encode(texts, sequence_length), tf.cast(labels, tf.int32)

        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # One fresh seed per batch; rerandomized (reproducibly) on every pass over the data.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def prepare_augmented(batch, batch_seed):
            texts, labels = batch
            ids = augment(
                tokenizer.tokenize(texts), seed=tf.stack([batch_seed, tf.constant(0, tf.int64)])
            )
            return tokenizer.pack(ids, sequence_length), tf.cast(labels, tf.int32)

        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            prepare_augmented, num_parallel_calls=tf.data.AUTOTUNE
        )
    if bucket_boundaries:
        dataset = _bucketed(dataset, bucket_boundaries, sequence_length, batch_size,
                            drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _bucketed(batches, boundaries, sequence_length, batch_size, drop_remainder):
    """Re-batches `(ids, labels)` batches by length bucket, each cut to its bucket's width."""
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in boundaries):
        raise ValueError(
            "bucket_boundaries must be positive integers (token counts). "
            f"Received bucket_boundaries={boundaries!r}."
        )
    widths = sorted({min(b, sequence_length) for b in boundaries} | {sequence_length})
    widths = tf.constant(widths, tf.int32)

    def bucket(ids, label):  # (width,) ids padded with 0 -> index of the narrowest fit
        length = tf.reduce_sum(tf.cast(ids != 0, tf.int32))
        return tf.cast(tf.searchsorted(widths, [length])[0], tf.int64)

    def batch_bucket(key, examples):
        width = widths[key]
        return examples.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda ids, labels: (ids[:, :width], labels)
        )

    return batches.unbatch().group_by_window(bucket, batch_bucket, window_size=batch_size)
