"""Decoding speed: keras_llm with its key/value cache, without it, and keras-hub's GPT-2.

All three models have the `small` preset's sizes (vocabulary 8192, 4 layers, 4 heads, width
256, feed-forward 1024, tied embeddings) and random weights (speed does not depend on the
weights). The `small` preset has `sequence_length=128`; 256 new tokens need more room, so
the keras_llm model is built with `sequence_length=512` (`dataclasses.replace`) and
keras-hub's `GPT2Backbone` with `max_sequence_length=512`.

Contenders, in one process and one run, interleaved round by round (`_common`):
- `keras_llm cache`: `CausalLM.generate` (a batched prefill, then one position per block per
  new token against the key/value cache).
- `keras_llm no cache`: the naive loop (`generation.generate_ids(use_cache=False)`): the whole
  model over the whole prefix for every new token, compiled the same way.
- `keras-hub GPT-2`: `keras_hub.models.GPT2CausalLM(preprocessor=None).generate` on
  `{"token_ids", "padding_mask"}` of width prompt + new tokens, `sampler="greedy"`,
  `stop_token_ids=None`. On a CPU-only machine keras-hub compiles it with `tf.function`
  without XLA, as keras_llm does.

Every call: a batch of prompts of 16 random token ids, greedy decoding of `--new-tokens` new
tokens (256; `--quick`: 32) without stopping at an end id. One untimed call per contender
first (tracing), then `--rounds` timed calls each; the fastest counts (load on a shared
machine only ever slows a call down). Tokens per second = batch x new tokens / seconds.

Usage: `python benchmarks/generation.py [--quick] [--batch-sizes 1 8] [--new-tokens 256]`.
Prints a Markdown table with the ratios cache / no cache and keras_llm / keras-hub. On a
shared machine the numbers are measured under load: compare the ratios within one run.
"""

import argparse
import dataclasses
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common
sys.path.append(os.path.dirname(HERE))  # keras_llm from a checkout that is not pip-installed
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras_llm  # noqa: E402, F401, I001  (first: selects the backend, quiets TensorFlow)
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from _common import interleaved_rounds, machine, markdown_table  # noqa: E402
from keras_llm import ModelConfig  # noqa: E402
from keras_llm.models import CausalLM, TransformerBackbone, generation  # noqa: E402

PROMPT_LENGTH = 16
CONTENDERS = ("keras_llm cache", "keras_llm no cache", "keras-hub GPT-2")


def build_models(config):
    """keras_llm's `CausalLM` and keras-hub's `GPT2CausalLM` of the same sizes."""
    keras.utils.set_random_seed(0)
    ours = CausalLM(TransformerBackbone(config))
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=config.vocabulary_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_dim,
        intermediate_dim=config.intermediate_dim,
        max_sequence_length=config.sequence_length,
    )
    theirs = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    theirs.compile(sampler="greedy")
    return ours, theirs


def generators(ours, theirs, batch_size, new_tokens):
    """`name -> callable` decoding the same prompts `new_tokens` further."""
    vocabulary_size = ours.backbone.model_config.vocabulary_size
    prompts = np.random.RandomState(batch_size).randint(
        4, vocabulary_size, (batch_size, PROMPT_LENGTH)
    )
    prompts = prompts.astype("int32")
    width = PROMPT_LENGTH + new_tokens
    hub_inputs = {
        "token_ids": np.pad(prompts, [[0, 0], [0, new_tokens]]),
        "padding_mask": np.arange(width)[None, :].repeat(batch_size, 0) < PROMPT_LENGTH,
    }
    rows = prompts.tolist()
    return {
        CONTENDERS[0]: lambda: ours.generate(prompts, max_new_tokens=new_tokens, stop_at_end=False),
        CONTENDERS[1]: lambda: generation.generate_ids(
            ours, rows, max_new_tokens=new_tokens, stop_at_end=False, use_cache=False
        ),
        CONTENDERS[2]: lambda: theirs.generate(hub_inputs, stop_token_ids=None),
    }


def measure(ours, theirs, batch_size, new_tokens, rounds):
    """`name -> best tokens per second` over `rounds` interleaved calls, after one warm-up."""
    calls = generators(ours, theirs, batch_size, new_tokens)
    for call in calls.values():
        call()  # trace and compile

    def run_one(name):
        start = time.perf_counter()
        calls[name]()
        return time.perf_counter() - start

    seconds = interleaved_rounds(list(calls), rounds, run_one)
    return {name: batch_size * new_tokens / min(times) for name, times in seconds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, 1 round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=512)
    args = parser.parse_args(argv)
    new_tokens = 32 if args.quick else args.new_tokens
    rounds = 1 if args.quick else args.rounds

    config = dataclasses.replace(ModelConfig.preset("small"), sequence_length=args.sequence_length)
    ours, theirs = build_models(config)
    print(machine()[0])
    print(
        f"`small` preset with sequence_length={config.sequence_length}: "
        f"{ours.count_params():,} parameters (keras_llm), {theirs.count_params():,} "
        f"(keras-hub GPT-2); prompts of {PROMPT_LENGTH} tokens, {new_tokens} new tokens, "
        f"greedy, best of {rounds} round(s). Tokens per second:\n"
    )
    rows = []
    for batch_size in args.batch_sizes:
        speed = measure(ours, theirs, batch_size, new_tokens, rounds)
        cache, naive, hub = (speed[name] for name in CONTENDERS)
        rows.append(
            [
                batch_size,
                f"{cache:,.0f}",
                f"{naive:,.0f}",
                f"{hub:,.0f}",
                f"{cache / naive:.1f}x",
                f"{cache / hub:.2f}x",
            ]
        )
    headers = ["batch", *CONTENDERS, "cache / no cache", "keras_llm / keras-hub"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
