"""Text generation: a key/value cache, one compiled decoding loop, and four samplers.

`generate(model, prompts, ...)` is what `CausalLM.generate` runs. Strings in give strings out
(when `model.tokenizer` is set); token ids in give token ids out. Every output is the prompt
followed by its continuation, as in keras-hub.

How a batch of prompts is decoded
---------------------------------
Prompts of different lengths are right-padded to one width `P` (the longest prompt, rounded
up to a multiple of 16 so that nearby lengths share a compiled function). Each row keeps its
own positions: row i's prompt sits at positions `0 .. len_i - 1` and its n-th new token at
position `len_i + n`, exactly as in training, so the learned absolute positions are never
shifted by padding (left padding would shift them).

Each block keeps a cache of keys and values with `P + max_new_tokens` slots:
1. Prefill: one batched forward pass over the padded prompts writes slots `[0, P)`.
2. Decode: the n-th new token of every row is written to slot `P + n` (one write index for
   the whole batch, the same for every row and head), and the token attends
   to its own prompt (slots `< len_i`) and its own new tokens (slots `P .. P + n`). Padding
   slots `[len_i, P)` are never seen. The slot a key sits in does not matter: positions live
   in the embedding, and attention is a softmax over a set of keys.
So each new token costs one position's work per block, plus one row of attention scores.

The loop is a `tf.while_loop` inside one `tf.function`, traced once per input shape (batch,
padded width, `max_new_tokens`) and sampler settings; the temperature, `top_p` and seed are
tensors, so changing them does not retrace. It stops early once every row has emitted the
end id (with `stop_at_end=True`). Id 0 is padding and is never generated.

Samplers: `"greedy"` (most likely token), `"random"` (sample `softmax(logits / temperature)`),
`"top_k"` (sample among the `top_k` most likely), `"top_p"` (sample in the nucleus: the
smallest set of most likely tokens whose probability reaches `top_p`; `top_k` may narrow it
further). Sampling uses TensorFlow's stateless random ops keyed by `(seed, step)`: the same
seed gives the same text; `seed=None` draws one from Python's `random` (which
`keras.utils.set_random_seed` seeds).

This module uses TensorFlow directly (the package's backend) for the compiled loop. The loop
runs as a TensorFlow graph without XLA: on CPU, XLA's single-row matrix products were slower
at batch 1, and outside XLA a `dynamic_update_slice` is compiled op by op, so the cache is
written with a scatter (`tensor_scatter_nd_update`) and the new ids go to a `TensorArray`.
Each block's q, k and v kernels are packed into one matrix once per call, outside the loop
(`layers.attention.decoding_weights`): on CPU a decoding step is dominated by the fixed cost
of small ops (about 40 microseconds for each single-row einsum), not by reading the weights.
"""

import random
import weakref

import numpy as np
import tensorflow as tf
from keras import ops

from keras_llm.layers.attention import decoding_weights

SAMPLERS = ("greedy", "random", "top_k", "top_p")
PAD_ID = 0  # the backbone's padding id; never generated
END_ID = 3  # the Tokenizer contract's `[EOS]`, used when the model has no tokenizer
START_ID = 2  # the Tokenizer contract's `[BOS]`, used when the model has no tokenizer
WIDTH_MULTIPLE = 16

# model -> {static settings -> tf.function}; weak, so functions die with their model.
_FUNCTIONS = weakref.WeakKeyDictionary()


# -- argument checks -------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_sampler_arguments(sampler, temperature, top_k, top_p, vocabulary_size):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}. Received sampler={sampler!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)):
        raise ValueError(f"temperature must be a number > 0. Received temperature={temperature!r}.")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite number > 0 (use a small value such as 0.01 for "
            f"nearly greedy text). Received temperature={temperature!r}."
        )
    if top_k is not None and not (_is_int(top_k) and 1 <= top_k <= vocabulary_size):
        raise ValueError(
            f"top_k must be an integer between 1 and the vocabulary size ({vocabulary_size}). "
            f"Received top_k={top_k!r}."
        )
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.number)):
            raise ValueError(f"top_p must be a number in (0, 1]. Received top_p={top_p!r}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]. Received top_p={top_p!r}.")
    if sampler == "greedy" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError(
            "sampler='greedy' always takes the most likely token, so temperature, top_k and "
            f"top_p do not apply (received temperature={temperature!r}, top_k={top_k!r}, "
            f"top_p={top_p!r}). Use sampler='random', 'top_k' or 'top_p' to sample."
        )
    if sampler == "random" and (top_k is not None or top_p is not None):
        raise ValueError(
            "sampler='random' samples from the whole vocabulary. Use sampler='top_k' with "
            f"top_k, or sampler='top_p' with top_p. Received top_k={top_k!r}, top_p={top_p!r}."
        )
    if sampler == "top_k":
        if top_k is None:
            raise ValueError("sampler='top_k' needs top_k, e.g. top_k=10.")
        if top_p is not None:
            raise ValueError(
                f"sampler='top_k' does not use top_p (received top_p={top_p!r}); use "
                "sampler='top_p', which also accepts top_k."
            )
    if sampler == "top_p" and top_p is None:
        raise ValueError("sampler='top_p' needs top_p, e.g. top_p=0.9.")


def _check_ids(row, index, vocabulary_size):
    if len(row) == 0:
        raise ValueError(
            f"Prompt {index} is empty. Every prompt needs at least one token id (e.g. the "
            f"start id {START_ID})."
        )
    bad = [t for t in row if not _is_int(t) or not 0 < t < vocabulary_size]
    if bad:
        raise ValueError(
            f"Prompt {index} has token ids outside [1, {vocabulary_size}) (0 is padding): "
            f"{bad[:5]}. Pass ids from the model's vocabulary."
        )


# -- prompts in, outputs out -----------------------------------------------------------------


def _parse_prompts(model, prompts, vocabulary_size):
    """Returns `(rows, kind)`: prompt id lists and how to shape the outputs."""
    if isinstance(prompts, tf.RaggedTensor):
        prompts = prompts.to_list()  # rows of ids (or of bytes)
    if isinstance(prompts, tf.Tensor):
        prompts = prompts.numpy()
    if isinstance(prompts, (str, bytes)):
        return _string_rows(model, [prompts]), "string"
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind in "USO" and prompts.ndim in (0, 1):
            texts = [prompts.item()] if prompts.ndim == 0 else list(prompts)
            kind = "string" if prompts.ndim == 0 else "strings"
            return _string_rows(model, texts), kind
        if prompts.dtype.kind not in "iu" or prompts.ndim not in (1, 2):
            raise ValueError(
                "prompts must be strings, or token ids as a 1-D or 2-D integer array. "
                f"Received an array of dtype {prompts.dtype} and shape {prompts.shape}."
            )
        if prompts.ndim == 1:
            rows = [[int(t) for t in prompts]]
            kind = "array_row"
        else:
            rows = []
            for row in prompts:
                nonzero = np.flatnonzero(row)
                length = nonzero[-1] + 1 if len(nonzero) else 0  # trailing zeros are padding
                rows.append([int(t) for t in row[:length]])
            kind = "array"
    elif isinstance(prompts, (list, tuple)):
        if len(prompts) == 0:
            raise ValueError("prompts is empty. Pass a string, a list of strings, or token ids.")
        if all(isinstance(p, (str, bytes)) for p in prompts):
            return _string_rows(model, list(prompts)), "strings"
        if all(_is_int(t) for t in prompts):
            rows, kind = [list(prompts)], "list_row"
        elif all(isinstance(p, (list, tuple, np.ndarray)) for p in prompts):
            rows, kind = [list(p) for p in prompts], "lists"
        else:
            raise ValueError(
                "prompts must be a string, a list of strings, a list of token ids, or a list "
                f"of token-id lists; not a mix. Received {prompts!r:.200}."
            )
    else:
        raise ValueError(
            "prompts must be a string, a list of strings, or token ids (a list of int lists, "
            f"or a 1-D/2-D integer array). Received {type(prompts).__name__}: {prompts!r:.200}."
        )
    if len(rows) == 0:
        raise ValueError("prompts is empty. Pass at least one prompt.")
    rows = [[int(t) if _is_int(t) else t for t in row] for row in rows]
    for i, row in enumerate(rows):
        _check_ids(row, i, vocabulary_size)
    return rows, kind


def _string_rows(model, texts):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "String prompts need a tokenizer, but model.tokenizer is None. Attach one "
            "(`model.tokenizer = keras_llm.data.Tokenizer.load(run_dir)`) or pass token ids."
        )
    if len(texts) == 0:
        raise ValueError("prompts is empty. Pass at least one prompt.")
    texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in texts]
    ids = tokenizer.tokenize(tf.constant(texts, tf.string))
    rows = []
    for i, (text, row) in enumerate(zip(texts, ids.to_list(), strict=True)):
        if not row:
            raise ValueError(
                f"Prompt {i} ({text!r}) is empty: it has no tokens. Give every prompt some "
                "text to continue."
            )
        rows.append([tokenizer.start_id] + row)
    return rows


def _format_outputs(model, rows, kind):
    if kind in ("string", "strings"):
        ragged = tf.ragged.constant(rows, dtype=tf.int32)
        texts = [t.decode("utf-8", "replace") for t in model.tokenizer.detokenize(ragged).numpy()]
        return texts[0] if kind == "string" else texts
    if kind == "list_row":
        return rows[0]
    if kind == "lists":
        return rows
    if kind == "array_row":
        return np.array(rows[0], dtype="int32")
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype="int32")
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# -- sampling --------------------------------------------------------------------------------


def _sample(logits, step, sampler, top_k, temperature, top_p, seed):
    """Next ids `(batch,)` from float32 logits `(batch, vocab)` at decoding step `step`."""
    vocabulary_size = logits.shape[-1]
    no_pad = tf.one_hot(PAD_ID, vocabulary_size, on_value=-np.inf, off_value=0.0)
    logits = logits + no_pad  # id 0 is padding: never generate it
    if sampler == "greedy":
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = logits / temperature
    neg_inf = tf.fill(tf.shape(logits), -np.inf)
    if top_k is not None:
        kth = tf.math.top_k(logits, k=top_k, sorted=True).values[:, -1:]  # (batch, 1)
        logits = tf.where(logits < kth, neg_inf, logits)
    if sampler == "top_p":
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
        # Keep a token while the mass of the more likely ones is still below top_p.
        before = tf.cumsum(tf.nn.softmax(ordered, axis=-1), axis=-1, exclusive=True)
        kept = tf.where(before < top_p, ordered, tf.fill(tf.shape(ordered), np.inf))
        threshold = tf.reduce_min(kept, axis=-1, keepdims=True)  # least likely kept logit
        logits = tf.where(logits < threshold, neg_inf, logits)
    step_seed = tf.stack([seed, tf.cast(step, seed.dtype)])
    sample = tf.random.stateless_categorical(logits, 1, seed=step_seed, dtype=tf.int32)
    return sample[:, 0]


# -- the compiled loops ----------------------------------------------------------------------


def _embed(embedding, ids, positions, dtype):
    """What `TokenAndPositionEmbedding` computes, at explicit positions and without a mask."""
    tokens = ops.take(embedding.token_embeddings, ids, axis=0)
    return ops.cast(tokens + ops.take(embedding.position_embeddings, positions, axis=0), dtype)


def _logits_head(backbone, lm_head):
    """`hidden (batch, hidden_dim) -> float32 logits (batch, vocab)`; call inside the function.

    The tied head multiplies by the token table transposed once per call, outside the loop
    (what `TokenAndPositionEmbedding(reverse=True)` computes, without a transposed read of the
    table at every step).
    """
    if lm_head is not None:
        return lambda hidden: tf.cast(lm_head(hidden), "float32")
    table = backbone.token_embedding.token_embeddings
    kernel = tf.transpose(tf.cast(table, backbone.dtype_policy.compute_dtype))  # (hidden, vocab)
    return lambda hidden: tf.cast(tf.matmul(hidden, kernel), "float32")


def _stack(array, size):
    """A `TensorArray` of `n <= size` elements `(batch, ...)` -> `(batch, size, ...)`.

    A loop that stops early writes fewer than `size` elements; the rest come back as zeros
    (padding).
    """
    stacked = array.stack()  # (n, batch, ...)
    rank = len(stacked.shape)
    stacked = tf.transpose(stacked, [1, 0] + list(range(2, rank)))
    missing = size - tf.shape(stacked)[1]
    return tf.pad(stacked, [[0, 0], [0, missing]] + [[0, 0]] * (rank - 2))


def _build_cached(model, sampler, top_k, stop_at_end, end_id, return_logits):
    # The function holds the backbone and head, not `model`, so that `_FUNCTIONS` (weak in
    # `model`) lets the model be garbage-collected.
    backbone = model.backbone
    lm_head = None if backbone.model_config.tie_embeddings else model.lm_head
    config = backbone.model_config
    embedding = backbone.token_embedding
    blocks = backbone.transformer_blocks
    heads, head_dim = config.num_heads, config.hidden_dim // config.num_heads
    dtype = backbone.dtype_policy.compute_dtype

    def run(prompt_ids, prompt_lengths, temperature, top_p, seed, max_new_tokens):
        batch = tf.shape(prompt_ids)[0]
        width = prompt_ids.shape[1]  # P, static
        head = _logits_head(backbone, lm_head)
        slots = width + max_new_tokens
        slot_ids = tf.range(slots)

        # Each block's projections packed once per call, outside the loop (loop invariants).
        packed = [decoding_weights(block.attention_layer) for block in blocks]
        # Prefill: the padded prompts in one pass; slot t holds position t.
        x = _embed(embedding, prompt_ids, tf.range(width), dtype)  # (batch, P, hidden)
        causal = slot_ids[None, :] <= tf.range(width)[:, None]  # (P, slots)
        mask = tf.broadcast_to(causal[None], [batch, width, slots])
        caches = []
        for block, weights in zip(blocks, packed, strict=True):
            empty = tf.zeros([batch, heads, slots, head_dim], dtype)
            x, key_cache, value_cache = block.call_cached(x, empty, empty, 0, mask, weights)
            caches += [key_cache, value_cache]
        last = tf.gather(x, prompt_lengths - 1, axis=1, batch_dims=1)  # (batch, hidden)
        logits = head(backbone.final_norm(last))  # (batch, vocab) float32

        token = _sample(logits, 0, sampler, top_k, temperature, top_p, seed)
        done = tf.equal(token, end_id) if stop_at_end else tf.zeros([batch], tf.bool)
        # Step n's ids (and logits) go to element n; unwritten elements stack as zeros (pad).
        tokens = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        tokens = tokens.write(0, token)
        all_logits = ()
        if return_logits:
            all_logits = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
            all_logits = (all_logits.write(0, logits),)
        own_prompt = slot_ids[None, :] < prompt_lengths[:, None]  # (batch, slots)

        def cond(step, token, done, tokens, caches, all_logits):
            going = step < max_new_tokens
            if stop_at_end:
                going = tf.logical_and(going, tf.logical_not(tf.reduce_all(done)))
            return going

        def body(step, token, done, tokens, caches, all_logits):
            # Feed the previous token: position len_i + step - 1, cache slot P + step - 1.
            slot = width + step - 1
            positions = prompt_lengths + step - 1
            x = _embed(embedding, token, positions, dtype)[:, None, :]  # (batch, 1, hidden)
            generated = tf.logical_and(slot_ids >= width, slot_ids <= slot)  # (slots,)
            mask = tf.logical_or(own_prompt, generated[None, :])[:, None, :]  # (batch, 1, slots)
            new_caches = []
            for i, (block, weights) in enumerate(zip(blocks, packed, strict=True)):
                x, key_cache, value_cache = block.call_cached(
                    x, caches[2 * i], caches[2 * i + 1], slot, mask, weights
                )
                new_caches += [key_cache, value_cache]
            logits = head(backbone.final_norm(x[:, 0]))
            token = _sample(logits, step, sampler, top_k, temperature, top_p, seed)
            token = tf.where(done, PAD_ID, token)
            if stop_at_end:
                done = tf.logical_or(done, tf.equal(token, end_id))
            tokens = tokens.write(step, token)
            if return_logits:
                all_logits = (all_logits[0].write(step, logits),)
            return step + 1, token, done, tokens, new_caches, all_logits

        loop_vars = (tf.constant(1), token, done, tokens, caches, all_logits)
        outputs = tf.while_loop(cond, body, loop_vars, maximum_iterations=max_new_tokens)
        tokens = _stack(outputs[3], max_new_tokens)  # (batch, N)
        return (tokens, _stack(outputs[5][0], max_new_tokens)) if return_logits else tokens

    return tf.function(run)


def _build_uncached(model, sampler, top_k, stop_at_end, end_id, return_logits):
    """The naive loop: the whole model over the whole prefix for every new token."""
    model_ref = weakref.ref(model)  # see `_build_cached`

    def run(prompt_ids, prompt_lengths, temperature, top_p, seed, max_new_tokens):
        batch = tf.shape(prompt_ids)[0]
        width = prompt_ids.shape[1]
        ids = tf.pad(prompt_ids, [[0, 0], [0, max_new_tokens]])  # (batch, P + N)
        rows = tf.range(batch)
        done = tf.zeros([batch], tf.bool)
        tokens = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        all_logits = (
            (tf.TensorArray(tf.float32, size=0, dynamic_size=True),) if return_logits else ()
        )

        def cond(step, ids, done, tokens, all_logits):
            going = step < max_new_tokens
            if stop_at_end:
                going = tf.logical_and(going, tf.logical_not(tf.reduce_all(done)))
            return going

        def body(step, ids, done, tokens, all_logits):
            prefix = ids[:, : width + step]  # every row's tokens so far (and some padding)
            logits = model_ref()(prefix, training=False)  # (batch, P + step, vocab)
            logits = tf.gather(logits, prompt_lengths + step - 1, axis=1, batch_dims=1)
            logits = tf.cast(logits, "float32")
            token = _sample(logits, step, sampler, top_k, temperature, top_p, seed)
            token = tf.where(done, PAD_ID, token)
            if stop_at_end:
                done = tf.logical_or(done, tf.equal(token, end_id))
            where = tf.stack([rows, prompt_lengths + step], axis=1)
            ids = tf.tensor_scatter_nd_update(ids, where, token)
            tokens = tokens.write(step, token)
            if return_logits:
                all_logits = (all_logits[0].write(step, logits),)
            return step + 1, ids, done, tokens, all_logits

        loop_vars = (tf.constant(0), ids, done, tokens, all_logits)
        outputs = tf.while_loop(cond, body, loop_vars, maximum_iterations=max_new_tokens)
        tokens = _stack(outputs[3], max_new_tokens)
        return (tokens, _stack(outputs[4][0], max_new_tokens)) if return_logits else tokens

    return tf.function(run)


def decode_function(
    model,
    sampler="greedy",
    top_k=None,
    stop_at_end=True,
    end_id=END_ID,
    use_cache=True,
    return_logits=False,
):
    """The compiled decoding function of `model` for these settings (made once, then reused).

    Its signature is `(prompt_ids, prompt_lengths, temperature, top_p, seed, max_new_tokens)`
    -> new ids `(batch, max_new_tokens)` (and float32 logits `(batch, max_new_tokens,
    vocabulary_size)` with `return_logits=True`). Tests read its
    `experimental_get_tracing_count()`.
    """
    key = (sampler, top_k, bool(stop_at_end), int(end_id), bool(use_cache), bool(return_logits))
    functions = _FUNCTIONS.setdefault(model, {})
    if key not in functions:
        if use_cache:
            functions[key] = _build_cached(
                model, sampler, top_k, stop_at_end, end_id, return_logits
            )
        else:
            functions[key] = _build_uncached(
                model, sampler, top_k, stop_at_end, end_id, return_logits
            )
    return functions[key]


# -- the public entry points -----------------------------------------------------------------


def generate_ids(
    model,
    rows,
    max_new_tokens=64,
    sampler="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    stop_at_end=True,
    end_id=END_ID,
    use_cache=True,
    return_logits=False,
):
    """Continues prompts given as lists of token ids; returns the new ids of every row.

    Args: as `generate`, with `rows` a non-empty list of non-empty id lists, `end_id` the id
    that ends a row with `stop_at_end=True`, `use_cache=False` for the naive loop (the whole
    model over the whole prefix at every step; for tests and benchmarks) and
    `return_logits=True` to also get the float32 logits each new token was sampled from.

    Returns:
        A list of id lists (each row's new tokens, through the end id if one was emitted);
        with `return_logits=True`, also a `(batch, max_new_tokens, vocabulary_size)` array.
    """
    config = model.backbone.model_config
    _check_sampler_arguments(sampler, temperature, top_k, top_p, config.vocabulary_size)
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(
            "max_new_tokens must be a positive integer. "
            f"Received max_new_tokens={max_new_tokens!r}."
        )
    longest = max(len(row) for row in rows)
    if longest + max_new_tokens > config.sequence_length:
        room = config.sequence_length - longest
        fix = f"Lower max_new_tokens to at most {room}" if room > 0 else "Shorten the prompt"
        raise ValueError(
            f"The longest prompt has {longest} tokens and max_new_tokens={max_new_tokens}: "
            f"{longest + max_new_tokens} positions exceed the model's context length "
            f"(sequence_length={config.sequence_length}). {fix}, or use a model with a "
            "longer sequence_length."
        )
    # Round the width up so that nearby prompt lengths share one compiled function.
    width = -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    width = max(longest, min(width, config.sequence_length - max_new_tokens))
    prompt_ids = np.zeros((len(rows), width), dtype="int32")
    for i, row in enumerate(rows):
        prompt_ids[i, : len(row)] = row
    lengths = np.array([len(row) for row in rows], dtype="int32")
    if seed is None:
        seed = random.randrange(2**31 - 1)
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer or None. Received seed={seed!r}.")

    function = decode_function(model, sampler, top_k, stop_at_end, end_id, use_cache, return_logits)
    outputs = function(
        tf.constant(prompt_ids),
        tf.constant(lengths),
        tf.constant(float(temperature), tf.float32),
        tf.constant(float(top_p if top_p is not None else 1.0), tf.float32),
        tf.constant(int(seed) % (2**63), tf.int64),
        int(max_new_tokens),
    )
    tokens, logits = outputs if return_logits else (outputs, None)
    new = []
    for row in tokens.numpy().tolist():
        if stop_at_end and end_id in row:
            row = row[: row.index(end_id) + 1]
        new.append(row)
    if return_logits:
        return new, logits.numpy()
    return new


def generate(
    model,
    prompts,
    max_new_tokens=64,
    sampler="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    stop_at_end=True,
):
    """Continues prompts with a `CausalLM`; see `CausalLM.generate` for the arguments.

    Returns the prompt followed by its continuation, in the form of the input: a string for
    a string, a list of strings for a list of strings (both need `model.tokenizer`); a list
    of ids for a list of ids, a list of id lists for a list of id lists; a 1-D int32 array
    for a 1-D array, and for a 2-D array `(batch, width)` (trailing zeros are padding) a 2-D
    int32 array holding each row's prompt + continuation, right-padded with 0.
    """
    vocabulary_size = model.backbone.model_config.vocabulary_size
    rows, kind = _parse_prompts(model, prompts, vocabulary_size)
    tokenizer = getattr(model, "tokenizer", None)
    end_id = getattr(tokenizer, "end_id", END_ID) if tokenizer is not None else END_ID
    new = generate_ids(
        model,
        rows,
        max_new_tokens=max_new_tokens,
        sampler=sampler,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_at_end=stop_at_end,
        end_id=end_id,
    )
    return _format_outputs(model, [row + extra for row, extra in zip(rows, new, strict=True)], kind)
