"""Token-level text augmentation for classifier training: deletion, swap and masking.

`Augmenter` changes a batch of token ids (a ragged `(batch, None)` tensor, before the
`[BOS]`/`[EOS]` markers and padding are added) in three steps, each with its own rate:
1. deletion: every token is dropped with probability `delete`;
2. swap: every remaining token is picked with probability `swap`; the picked tokens of a row
   trade places along a random cycle, so each of them moves to another picked position (a
   row with a single picked token keeps it where it is);
3. masking: every remaining token is replaced by `mask_id` with probability `mask`.
   keras_llm's vocabulary has no `[MASK]` token, so the default `mask_id` is `[UNK]` (1): a
   masked word looks to the model like a word it does not know, which is also what it will
   meet at test time.

Randomness is stateless: the result is a pure function of the ids and a seed, so a
pipeline seeded once gives the same augmented batches on every run, and new ones each epoch
(`classification_dataset` draws one seed per batch from `tf.data.Dataset.random`).
Augmentation belongs to the training split only; `classification_dataset` applies it only
when given an `Augmenter`.
"""

import tensorflow as tf

UNK_ID = 1  # `Tokenizer.unk_id`


class Augmenter:
    """Seeded random token deletion, swap and masking on ragged token ids.

    Args:
        delete: float. Probability of dropping each token, in [0, 1). Defaults to `0.0`.
        swap: float. Probability of picking each token for a swap, in [0, 1].
            Defaults to `0.0`.
        mask: float. Probability of replacing each token by `mask_id`, in [0, 1].
            Defaults to `0.0`.
        mask_id: int. The id masked tokens become. Defaults to `1` (`[UNK]`).
        seed: int. Seeds the draws when `__call__` gets no seed. Defaults to `1337`.

    Example:
    ```python
    augmenter = Augmenter(delete=0.1, swap=0.1, mask=0.1, seed=7)
    ids = tokenizer.tokenize(tf.constant(["a fine film", "a dull one"]))
    augmenter(ids, seed=[7, 0])  # ragged int32, same shape rule
    ```
    """

    def __init__(self, delete=0.0, swap=0.0, mask=0.0, mask_id=UNK_ID, seed=1337):
        for name, value in (("delete", delete), ("swap", swap), ("mask", mask)):
            # Deleting every token would leave nothing to classify, so delete stays below 1.
            ok = 0.0 <= float(value) < 1.0 if name == "delete" else 0.0 <= float(value) <= 1.0
            if not ok:
                bound = "[0, 1)" if name == "delete" else "[0, 1]"
                raise ValueError(
                    f"Augmenter {name} must be a probability in {bound}. Received {name}={value!r}."
                )
        self.delete = float(delete)
        self.swap = float(swap)
        self.mask = float(mask)
        self.mask_id = int(mask_id)
        self.seed = int(seed)

    @classmethod
    def from_train_config(cls, train_config, mask_id=UNK_ID):
        """Returns the `Augmenter` of a `TrainConfig` (its `augment_*` rates and `seed`), or
        `None` when all three rates are 0."""
        rates = (train_config.augment_delete, train_config.augment_swap, train_config.augment_mask)
        if not any(rates):
            return None
        return cls(*rates, mask_id=mask_id, seed=train_config.seed)

    def get_config(self):
        return {
            "delete": self.delete,
            "swap": self.swap,
            "mask": self.mask,
            "mask_id": self.mask_id,
            "seed": self.seed,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augmenter({args})"

    def __call__(self, ids, seed=None):
        """Augments ragged ids.

        Args:
            ids: int `tf.RaggedTensor` of shape `(batch, None)` (or a dense `(batch, n)`
                tensor, read as rows of n tokens).
            seed: shape `[2]` int tensor for the stateless draws. Defaults to
                `[self.seed, 0]`: the same ids then always give the same result.

        Returns:
            `tf.RaggedTensor` of the same dtype and number of rows.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        if seed is None:
            seed = [self.seed, 0]
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        delete_seed, swap_seed, mask_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        if self.delete > 0:
            ids = self._delete(ids, delete_seed)
        if self.swap > 0:
            ids = self._swap(ids, swap_seed)
        if self.mask > 0:
            ids = self._mask(ids, mask_seed)
        return ids

    def _draw(self, ids, seed):
        return tf.random.stateless_uniform(tf.shape(ids.flat_values), seed)

    def _delete(self, ids, seed):
        keep = self._draw(ids, seed) >= self.delete
        return tf.ragged.boolean_mask(ids, ids.with_flat_values(keep))

    def _mask(self, ids, seed):
        masked = self._draw(ids, seed) < self.mask
        values = tf.where(masked, tf.cast(self.mask_id, ids.dtype), ids.flat_values)
        return ids.with_flat_values(values)

    def _swap(self, ids, seed):
        # Picked tokens of each row move one step along a random cycle through the picked
        # positions of that row.
        values = ids.flat_values
        uniform = self._draw(ids, seed)
        picked = tf.where(uniform < self.swap)[:, 0]  # flat positions, row-major order
        rows = tf.gather(ids.value_rowids(), picked)
        # Shuffle within rows: sort by row, then by an independent random key.
        order_key = tf.random.stateless_uniform(
            tf.shape(picked), tf.random.experimental.stateless_fold_in(seed, 1)
        )
        order = tf.argsort(tf.cast(rows, tf.float64) + tf.cast(order_key, tf.float64) * 0.5)
        cycle = tf.gather(picked, order)  # (k,) positions, rows grouped
        cycle_rows = tf.gather(rows, order)
        count = tf.shape(cycle)[0]
        index = tf.range(count)
        first_of_row = tf.searchsorted(cycle_rows, cycle_rows, side="left")
        following = tf.minimum(index + 1, tf.maximum(count - 1, 0))
        same_row = tf.gather(cycle_rows, following) == cycle_rows
        target = tf.where(
            (index + 1 < count) & same_row, index + 1, tf.cast(first_of_row, tf.int32)
        )
        destinations = tf.gather(cycle, target)
        values = tf.tensor_scatter_nd_update(
            values, destinations[:, None], tf.gather(values, cycle)
        )
        return ids.with_flat_values(values)
