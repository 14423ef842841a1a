"""Training throughput of keras_llm against keras-hub and a PyTorch GPT of the same size.

What is measured: training tokens/s, ms/step and MFU of the causal LM of the `small` preset
(vocabulary 8192, sequence 128, hidden 256, 4 heads, 4 layers, intermediate 1024), batch 32, on
one fixed batch of random token ids (ids 1..vocabulary-1, numpy seed 1337; no padding, so the
padding masks that both Keras models compute are all-true), for:

- keras_llm: `CausalLM(TransformerBackbone(config))`, compiled with `keras.optimizers.AdamW()`
  and the model's default loss (token cross-entropy from logits, label 0 ignored).
- keras-hub: `keras_hub.layers.TokenAndPositionEmbedding` + `num_layers` x
  `keras_hub.layers.TransformerDecoder(normalize_first=True, activation="gelu", dropout=0,
  layer_norm_epsilon=1e-5)` with the padding mask passed explicitly (as keras-hub's GPT-2 does)
  + a final `LayerNormalization` + the LM head: the embedding's own `ReversibleEmbedding` in
  reverse when our config ties embeddings, else a `Dense(vocabulary)`. Same optimizer, same loss
  (`SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)`), same parameter count.
- PyTorch (when `torch` is importable): a nanoGPT-style GPT of the same sizes: token + learned
  position embeddings, pre-LN blocks (fused qkv `Linear`,
  `F.scaled_dot_product_attention(is_causal=True)`, exact-erf GELU MLP), final LayerNorm, head
  tied to the token embedding, cross-entropy (ignore_index=0) inside `forward` so that
  `torch.compile` sees it, `torch.optim.AdamW` (default single-tensor implementation), run in
  eager and `torch.compile` modes, float32 and `torch.autocast("cpu", torch.bfloat16)`;
  `torch.set_num_threads(<cores available to this process>)`.

Keras settings: the `float32` and `mixed_bfloat16` dtype policies x `jit_compile` False/True
(XLA), 4 settings x 2 models; every model is built and compiled in the same process.

How it is timed (and why): every contender (model x setting) is built and warmed up first
(`--warmup` steps, which include tracing and XLA / inductor compilation), then runs one more
untimed step once all are built (a Keras model's first step after other models were traced
costs up to seconds once, in TensorFlow's runtime, not in training). Then `--repeats`
rounds run every contender for `--steps` training steps each, in alternating order (A, B, C, ..
then .., C, B, A), so that a drift of the machine's speed (other processes, clocks) hits all
contenders alike. A Keras round is one `model.fit` call on an in-memory `tf.data` dataset of the
one batch repeated, with a callback that stamps `on_train_batch_begin` / `on_train_batch_end`:
on CPU the compiled train function returns only when the step is done, so each stamp pair is
one full step (the iterator's `next`, forward, backward, optimizer update, and Keras'
per-step host work), while `fit`'s per-call set-up and tear-down (iterator creation and
deletion, callbacks) stays outside the timing: a real run pays them once per epoch, not once
per step. A PyTorch step (forward + loss, backward, `optimizer.step()`, `zero_grad`) is timed
with `time.perf_counter` around it. The reported step time is the median of all timed steps of
a contender (robust to the odd step stalled by another process); tokens/s =
batch x sequence / median step time.

MFU (model FLOPs utilization) = model FLOP/s / peak FLOP/s, with model FLOPs per token
(PaLM appendix B / nanoGPT's `estimate_mfu`):

    flops_per_token = 6 * N_matmul + 12 * num_layers * sequence_length * hidden_dim
    N_matmul = num_layers * (4 * hidden_dim**2 + 2 * hidden_dim * intermediate_dim)
               + vocabulary_size * hidden_dim

N_matmul counts the weights that take part in a matrix multiply once per token (q, k, v, output
projections, the two feed-forward kernels, the LM head; not biases, norms, or the embedding
lookup); the factor 6 is 2 FLOPs per multiply-add x (forward + 2 x backward). The attention
term counts the `QK^T` and `AV` products over the full `seq x seq` score matrix (all
implementations here compute the masked half too). For `small`: N_matmul = 5,242,880, 33.0
MFLOP per token. Model FLOP/s = flops_per_token x tokens/s. The peak is `--peak-flops` if given,
else measured here: the fastest of 10 float32 `tf.matmul` calls on 2048 x 2048 matrices. Every
MFU, the bf16 ones included, is against this float32 peak (bf16 settings can exceed 100%).
For reference, the 2-core AVX-512 machine this was written on has a float32 FMA peak of about
476 GFLOP/s (2 cores x 2 AVX-512 FMA units x 16 lanes x 2 FLOPs x ~3.7 GHz).

Run (about 10 minutes on 2 cores; the numbers mean something only on an otherwise idle machine,
so the script prints the load average before and after):

    python benchmarks/train_throughput.py                 # everything
    python benchmarks/train_throughput.py --only keras,hub --precision float32 --jit off
    python benchmarks/train_throughput.py --quick         # tiny sizes, 2 steps: a smoke run
    python benchmarks/train_throughput.py --json results.json

PyTorch is a benchmark-only dependency: `pip install torch==2.13.0`. Without it the PyTorch
peers are skipped with a line saying so.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common
sys.path.append(os.path.dirname(HERE))  # keras_llm from a checkout that is not pip-installed

import keras_llm  # noqa: E402, I001  (first: selects the TensorFlow backend, quiets TensorFlow)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import _common  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
MODELS = ("keras", "hub", "torch")
MODEL_LABELS = {"keras": "keras_llm", "hub": "keras-hub"}
TORCH_MODES = ("eager", "compile")
TORCH_PRECISIONS = ("float32", "bf16")
TORCH_INSTALL = "pip install torch==2.13.0"
KNOWN_FP32_PEAK = 476e9  # 2 cores x 2 FMA units x 16 fp32 lanes x 2 FLOPs x ~3.7 GHz


# --- Model FLOPs -----------------------------------------------------------------------------


def matmul_parameters(config):
    """Weights that take part in one multiply-add per token (see the module docstring)."""
    h, i = config.hidden_dim, config.intermediate_dim
    per_layer = 4 * h * h + 2 * h * i  # q, k, v, output projections; two feed-forward kernels
    return config.num_layers * per_layer + config.vocabulary_size * h  # + the LM head


def flops_per_token(config):
    """Training FLOPs per token: `6 * N_matmul + 12 * layers * seq * hidden`."""
    attention = 12 * config.num_layers * config.sequence_length * config.hidden_dim
    return 6 * matmul_parameters(config) + attention


# --- The Keras contenders --------------------------------------------------------------------


def build_keras_llm(config):
    return keras_llm.models.CausalLM(keras_llm.models.TransformerBackbone(config))


def build_keras_hub(config):
    """The same causal LM from keras-hub's layers (as keras-hub's GPT-2 assembles them)."""
    import keras_hub

    init = keras.initializers.RandomNormal(stddev=0.02)
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedding = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=config.vocabulary_size,
        sequence_length=config.sequence_length,
        embedding_dim=config.hidden_dim,
        tie_weights=config.tie_embeddings,
        embeddings_initializer=init,
        name="embedding",
    )
    padding_mask = ops.not_equal(token_ids, 0)
    x = embedding(token_ids)
    for i in range(config.num_layers):
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim=config.intermediate_dim,
            num_heads=config.num_heads,
            dropout=config.dropout,
            activation=config.activation,
            layer_norm_epsilon=1e-5,
            kernel_initializer=init,
            normalize_first=True,
            name=f"transformer_decoder_{i}",
        )(x, decoder_padding_mask=padding_mask)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    if config.tie_embeddings:
        logits = embedding.token_embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(config.vocabulary_size, kernel_initializer=init)(x)
    return keras.Model(token_ids, logits, name="keras_hub_causal_lm")


class KerasContender:
    """One Keras model under one precision policy and one `jit_compile` choice."""

    def __init__(self, kind, config, precision, jit_compile, batch, seed):
        keras.utils.set_random_seed(seed)
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            model = build_keras_llm(config) if kind == "keras" else build_keras_hub(config)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        if kind == "keras":
            model.compile(optimizer=keras.optimizers.AdamW(), jit_compile=jit_compile)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
            model.compile(optimizer=keras.optimizers.AdamW(), loss=loss, jit_compile=jit_compile)
        self.model = model
        self.parameters = model.count_params()
        self.dataset = tf.data.Dataset.from_tensors(batch).repeat()

    def run(self, steps):
        timer = _common.step_timer()
        self.model.fit(
            self.dataset,
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[timer],
        )
        return timer.seconds


# --- The PyTorch peer ------------------------------------------------------------------------


def torch_version():
    """The installed torch version, or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def build_torch_gpt(config):
    """A nanoGPT-style GPT with the sizes of `config`; `forward(ids, targets)` -> loss."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            h = config.hidden_dim
            self.attention_norm = nn.LayerNorm(h, eps=1e-5)
            self.qkv = nn.Linear(h, 3 * h)
            self.attention_output = nn.Linear(h, h)
            self.feedforward_norm = nn.LayerNorm(h, eps=1e-5)
            self.feedforward_intermediate = nn.Linear(h, config.intermediate_dim)
            self.feedforward_output = nn.Linear(config.intermediate_dim, h)

        def forward(self, x):
            b, t, h = x.shape
            heads = config.num_heads
            q, k, v = self.qkv(self.attention_norm(x)).split(h, dim=2)
            # (batch, heads, seq, head_dim)
            q, k, v = (z.view(b, t, heads, h // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attention_output(y.transpose(1, 2).reshape(b, t, h))
            y = F.gelu(self.feedforward_intermediate(self.feedforward_norm(x)))
            return x + self.feedforward_output(y)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(config.vocabulary_size, config.hidden_dim)
            self.position_embedding = nn.Embedding(config.sequence_length, config.hidden_dim)
            self.blocks = nn.ModuleList(Block() for _ in range(config.num_layers))
            self.final_norm = nn.LayerNorm(config.hidden_dim, eps=1e-5)
            if not config.tie_embeddings:
                self.lm_head = nn.Linear(config.hidden_dim, config.vocabulary_size, bias=False)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, ids, targets):
            positions = torch.arange(ids.shape[1], device=ids.device)
            x = self.token_embedding(ids) + self.position_embedding(positions)
            for block in self.blocks:
                x = block(x)
            x = self.final_norm(x)
            if config.tie_embeddings:
                logits = F.linear(x, self.token_embedding.weight)  # (batch, seq, vocab)
            else:
                logits = self.lm_head(x)
            return F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=0
            )

    return GPT()


class TorchContender:
    """The PyTorch GPT in one mode (`eager` / `compile`) and precision (`float32` / `bf16`)."""

    def __init__(self, config, mode, precision, batch, seed):
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.model = build_torch_gpt(config)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        # Keras' AdamW defaults, so both sides do the same arithmetic.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.004
        )
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.bf16 = precision == "bf16"
        self.ids = torch.from_numpy(batch[0].astype(np.int64))
        self.targets = torch.from_numpy(batch[1].astype(np.int64))

    def step(self):
        torch = self.torch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.forward(self.ids, self.targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def run(self, steps):
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            seconds.append(time.perf_counter() - start)
        return seconds


# --- The run ---------------------------------------------------------------------------------


def keras_setting_name(precision, jit_compile):
    return f"{precision}, XLA {'on' if jit_compile else 'off'}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Training tokens/s and MFU: keras_llm vs keras-hub vs PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="small", help="keras_llm.ModelConfig preset.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per round.")
    parser.add_argument("--repeats", type=int, default=5, help="Rounds (alternating order).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per contender.")
    parser.add_argument(
        "--only", default="keras,hub,torch", help="Comma-separated subset of keras,hub,torch."
    )
    parser.add_argument("--precision", choices=PRECISIONS + ("all",), default="all")
    parser.add_argument("--jit", choices=("off", "on", "all"), default="all")
    parser.add_argument(
        "--torch-modes", default="eager,compile", help="Comma-separated subset of eager,compile."
    )
    parser.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="Peak FLOP/s for MFU; measured with a float32 tf.matmul when not given.",
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: the tiny preset, batch 4, 2 steps, 1 round (numbers meaningless).",
    )
    args = parser.parse_args(argv)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = sorted(set(only) - set(MODELS))
    if bad or not only:
        parser.error(f"--only takes a comma-separated subset of {list(MODELS)}; got {args.only!r}.")
    args.only = only
    modes = [m.strip() for m in args.torch_modes.split(",") if m.strip()]
    if set(modes) - set(TORCH_MODES) or not modes:
        parser.error(
            f"--torch-modes takes a subset of {list(TORCH_MODES)}; got {args.torch_modes!r}."
        )
    args.torch_modes = modes
    if args.quick:
        args.preset, args.batch_size, args.steps, args.repeats, args.warmup = "tiny", 4, 2, 1, 1
    for name in ("batch_size", "steps", "repeats", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}.")
    return args


def _keras_hub_version():
    import keras_hub

    return keras_hub.__version__


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def main(argv=None):
    """Runs the benchmark, prints the tables, returns the results as a dict."""
    args = parse_args(argv)
    # Every contender traces its own train function; TensorFlow's "retracing" warnings about
    # that are expected here, so they are hidden while the benchmark runs.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return _run(args)
    finally:
        logger.setLevel(level)


def _busy_warning(others_share, cores):
    """A warning when other processes used more than 5% of the CPU during the timed rounds."""
    if others_share is not None and others_share > 0.05:
        return (
            f"WARNING: other processes used {others_share:.0%} of the {cores} cores during the "
            "timed rounds, so these numbers are not a clean benchmark (rerun on an idle machine)."
        )
    return None


def _run(args):
    config = keras_llm.ModelConfig.preset(args.preset)
    cores = _cores()
    tokens_per_step = args.batch_size * config.sequence_length
    per_token = flops_per_token(config)
    load_start = _load()

    rng = np.random.default_rng(args.seed)
    ids = rng.integers(
        1, config.vocabulary_size, size=(args.batch_size, config.sequence_length + 1)
    )
    batch = (ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32"))

    print(f"# Training throughput: preset {args.preset!r}, batch {args.batch_size}")
    machine_line, machine_record = _common.machine()
    print(machine_line)
    print(
        f"config: {json.dumps(dataclasses.asdict(config))}\n"
        f"machine: {platform.machine()}, {cores} cores available, load average {load_start} "
        f"at start; tensorflow {tf.__version__}, keras {keras.__version__}, keras-hub "
        f"{_keras_hub_version()}, torch {torch_version() or 'not installed'}"
    )
    print(
        f"model FLOPs per token: {per_token:,} (6 x {matmul_parameters(config):,} matmul "
        f"weights + 12 x {config.num_layers} layers x {config.sequence_length} seq x "
        f"{config.hidden_dim} hidden)"
    )

    if args.peak_flops:
        peak, peak_source = args.peak_flops, "given with --peak-flops"
    else:
        size, repeats = (512, 3) if args.quick else (2048, 10)
        peak = _common.matmul_peak_flops("float32", size=size, repeats=repeats)
        peak_source = f"measured: best of {repeats} float32 tf.matmul {size}x{size}"
    print(
        f"peak for MFU: {_common.format_si(peak, 'FLOP/s')} ({peak_source}; for reference, the "
        f"2-core AVX-512 machine this script was written on has a float32 FMA peak of about "
        f"{_common.format_si(KNOWN_FP32_PEAK, 'FLOP/s')})"
    )

    # --- Build and warm up every contender.
    contenders, meta = {}, {}
    precisions = PRECISIONS if args.precision == "all" else (args.precision,)
    jits = {"off": (False,), "on": (True,), "all": (False, True)}[args.jit]
    for precision in precisions:
        for jit in jits:
            for kind in ("keras", "hub"):
                if kind not in args.only:
                    continue
                key = (kind, keras_setting_name(precision, jit))
                start = time.perf_counter()
                contender = KerasContender(kind, config, precision, jit, batch, args.seed)
                if args.warmup:
                    contender.run(args.warmup)
                contenders[key] = contender
                meta[key] = dict(precision=precision, jit_compile=jit)
                print(
                    f"built and warmed up {MODEL_LABELS[kind]} [{key[1]}] "
                    f"({contender.parameters:,} parameters) in {time.perf_counter() - start:.1f} s",
                    flush=True,
                )

    torch_skip = None
    if "torch" in args.only:
        version = torch_version()
        if version is None:
            torch_skip = f"PyTorch peers skipped: torch is not installed ({TORCH_INSTALL})."
        else:
            import torch

            torch.set_num_threads(cores)
            for mode in args.torch_modes:
                for precision in TORCH_PRECISIONS:
                    key = ("torch", f"{mode}, {precision}")
                    start = time.perf_counter()
                    try:
                        contender = TorchContender(config, mode, precision, batch, args.seed)
                        if args.warmup:
                            contender.run(max(args.warmup, 2 if mode == "compile" else 1))
                    except Exception as error:  # e.g. torch.compile without a C++ compiler
                        print(f"PyTorch {key[1]} failed, left out: {type(error).__name__}: {error}")
                        continue
                    contenders[key] = contender
                    meta[key] = dict(precision=precision, mode=mode)
                    print(
                        f"built and warmed up PyTorch {version} [{key[1]}] "
                        f"({contender.parameters:,} parameters) in "
                        f"{time.perf_counter() - start:.1f} s",
                        flush=True,
                    )
    if torch_skip:
        print(torch_skip)

    # --- Time: alternating rounds, medians.
    keys = list(contenders)
    if args.warmup:
        # One more untimed step each, now that all are built: a Keras model's first step after
        # other models were traced pays a one-off cost (up to seconds) that is not training.
        for key in keys:
            contenders[key].run(1)
    print(f"timing: {args.repeats} rounds x {args.steps} steps per contender, alternating order")
    with _common.OtherProcessesCpu(cores) as others:
        seconds = _common.interleaved_rounds(
            keys, args.repeats, lambda k: contenders[k].run(args.steps)
        )
    load_end = _load()
    busy = _busy_warning(others.share, cores)

    results = []
    for key in keys:
        stats = _common.summarize(seconds[key])
        tokens_per_second = tokens_per_step / stats["median"]
        results.append(
            dict(
                model={"keras": "keras_llm", "hub": "keras-hub", "torch": "pytorch"}[key[0]],
                setting=key[1],
                **meta[key],
                parameters=contenders[key].parameters,
                ms_per_step=1e3 * stats["median"],
                ms_per_step_iqr=1e3 * stats["iqr"],
                tokens_per_second=tokens_per_second,
                mfu=per_token * tokens_per_second / peak,
                step_seconds=seconds[key],
            )
        )
    by_key = dict(zip(keys, results, strict=True))

    # --- Tables.
    print()
    params = [
        f"{label} {contenders[k].parameters:,}"
        for label, k in (
            ("keras_llm", next((k for k in keys if k[0] == "keras"), None)),
            ("keras-hub", next((k for k in keys if k[0] == "hub"), None)),
            ("PyTorch", next((k for k in keys if k[0] == "torch"), None)),
        )
        if k is not None
    ]
    print("Parameters: " + ", ".join(params))
    print(
        f"Batch {args.batch_size} x sequence {config.sequence_length} = {tokens_per_step} tokens "
        f"per step; medians of {args.repeats} x {args.steps} steps; MFU against "
        f"{_common.format_si(peak, 'FLOP/s')} float32; load average {load_start} -> {load_end} "
        f"on {cores} cores (this benchmark's own threads count in it); other processes used "
        f"{'n/a' if others.share is None else format(others.share, '.1%')} of the CPU during "
        "the timed rounds."
    )
    settings = list(dict.fromkeys(k[1] for k in keys if k[0] in ("keras", "hub")))
    if settings:
        rows = []
        for setting in settings:
            ours, hub = by_key.get(("keras", setting)), by_key.get(("hub", setting))

            def cell(r, field, fmt):
                return format(r[field], fmt) if r else "-"

            ratio = (
                f"{ours['tokens_per_second'] / hub['tokens_per_second']:.2f}"
                if ours and hub
                else "-"
            )
            rows.append(
                [
                    setting,
                    cell(ours, "tokens_per_second", ",.0f"),
                    cell(hub, "tokens_per_second", ",.0f"),
                    ratio,
                    cell(ours, "ms_per_step", ".0f"),
                    cell(hub, "ms_per_step", ".0f"),
                    f"{100 * ours['mfu']:.1f}%" if ours else "-",
                    f"{100 * hub['mfu']:.1f}%" if hub else "-",
                ]
            )
        print()
        print(
            _common.markdown_table(
                [
                    "setting",
                    "keras_llm tokens/s",
                    "keras-hub tokens/s",
                    "keras_llm / keras-hub",
                    "keras_llm ms/step",
                    "keras-hub ms/step",
                    "keras_llm MFU",
                    "keras-hub MFU",
                ],
                rows,
            )
        )

    ours_all = [r for r in results if r["model"] == "keras_llm"]
    best = max(ours_all, key=lambda r: r["tokens_per_second"]) if ours_all else None
    torch_results = [r for r in results if r["model"] == "pytorch"]
    if torch_results:
        rows = [
            [
                f"PyTorch {r['setting']}",
                f"{r['tokens_per_second']:,.0f}",
                f"{r['ms_per_step']:.0f}",
                f"{100 * r['mfu']:.1f}%",
                f"{best['tokens_per_second'] / r['tokens_per_second']:.2f}" if best else "-",
            ]
            for r in torch_results
        ]
        print()
        best_name = f"keras_llm best ({best['setting']})" if best else "keras_llm best"
        print(
            _common.markdown_table(
                ["peer", "tokens/s", "ms/step", "MFU", f"{best_name} / peer"], rows
            )
        )
    if torch_skip:
        print()
        print(torch_skip)
    if busy:
        print()
        print(busy)

    output = dict(
        preset=args.preset,
        config=dataclasses.asdict(config),
        batch_size=args.batch_size,
        tokens_per_step=tokens_per_step,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        flops_per_token=per_token,
        matmul_parameters=matmul_parameters(config),
        peak_flops=peak,
        peak_source=peak_source,
        cores=cores,
        machine=machine_record,
        load_average=[load_start, load_end],
        other_processes_cpu_share=others.share,
        versions=dict(
            tensorflow=tf.__version__,
            keras=keras.__version__,
            keras_hub=_keras_hub_version(),
            torch=torch_version(),
        ),
        busy_warning=busy,
        torch_skipped=torch_skip,
        results=results,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(output, f, indent=2)
        print(f"\nresults written to {args.json}")
    return output


if __name__ == "__main__":
    main()
