"""Where one training step of keras_llm spends its time, by category of operation.

Builds the `CausalLM` of a preset (default `small`, batch 32, the model of
`train_throughput.py`), compiles it with `keras.optimizers.AdamW()` and its default loss, warms
it up with `fit`, then records `--steps` steps of `fit` with the TensorFlow profiler
(`tf.profiler.experimental.start/stop`). The trace (`<logdir>/plugins/profile/<run>/*.xplane.pb`,
viewable in TensorBoard's profile plugin) is read back with the `XSpace` protocol buffer that
ships with TensorFlow, and every executed TensorFlow op (an event named `<node>:<OpType>`) is
put in one category:

    optimizer update        ops in the optimizer's name scope (`.../adam_w/...`): the AdamW
                            arithmetic, variable reads and `Assign*VariableOp`s
    vocab projection + loss the LM head's matmuls (and transposes) and everything under
                            `compile_loss` (softmax cross-entropy, its gradient, masking)
    embedding lookup + grad `GatherV2`/`ResourceGather`, `UnsortedSegmentSum`, scatters, and the
                            other ops of the token/position embedding
    matmuls                 the remaining `MatMul`/`BatchMatMul*`/`Einsum`/oneDNN `_Mkl*`
                            and `_Fused*MatMul` ops (attention projections, scores, feed-forward)
    attention softmax       ops with `softmax` in their name or type (forward and gradient)
    attention mask          ops building/applying the padding and causal masks
    layer norm              ops under the `*_norm` layers (moments, scale, shift, gradients)
    GELU                    the activation and its gradient
    casts                   `Cast` ops not in a category above (mixed precision)
    other ops               the rest (residual adds, reshapes, bias gradients, ...)
    host / idle             step time during which no op ran on any thread (executor
                            scheduling, function-call overhead, waiting)
    host: fit loop          time between the end of one step and the start of the next
                            (Keras' per-step Python: callbacks, iterator checks)

TensorFlow runs independent ops concurrently (inter-op parallelism), so op durations overlap and
their sum exceeds the wall time. The table therefore splits the measured busy time (the union
of all op intervals) among the categories in proportion to their summed op durations; `ops` is
the number of op executions per step, a direct measure of per-op overhead. `--jit on` is not
offered: XLA compiles the whole step into one cluster, which the trace shows as a single op.

Run (about a minute on 2 cores; the numbers mean something only on an idle machine):

    python benchmarks/profile_step.py                          # float32 and mixed_bfloat16
    python benchmarks/profile_step.py --precision mixed_bfloat16 --logdir /tmp/profile
    python benchmarks/profile_step.py --quick                  # tiny preset, smoke run
    python benchmarks/profile_step.py --checkpoint all-MiniLM-L6-v2 --precision mixed_bfloat16
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common
sys.path.append(os.path.dirname(HERE))  # keras_llm from a checkout that is not pip-installed

import keras_llm  # noqa: E402, I001  (first: selects the TensorFlow backend, quiets TensorFlow)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _common  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
CATEGORIES = (
    "matmuls",
    "attention softmax",
    "attention mask",
    "layer norm",
    "GELU",
    "vocab projection + loss",
    "embedding lookup + grad",
    "optimizer update",
    "casts",
    "other ops",
    "host / idle",
    "host: fit loop",
)
CONTAINER_OPS = {"StatefulPartitionedCall", "PartitionedCall", "While", "If", "StatelessIf"}
EMBEDDING_OPS = {
    "GatherV2",
    "ResourceGather",
    "UnsortedSegmentSum",
    "ResourceScatterAdd",
    "ScatterNd",
    "TensorScatterAdd",
    "SparseSegmentSum",
    "Unique",
}
STEP_FUNCTIONS = ("multi_step_on_iterator", "one_step_on_iterator")


def is_matmul(op_type):
    return "MatMul" in op_type or "Einsum" in op_type


def categorize(node, op_type, optimizer_scope="adam_w"):
    """The category of one executed op, from its node name, op type and optimizer's name."""
    name = node.lower()
    # Whole name-scope segments only: Grappler's rewrites carry "ArithmeticOptimizer/..."
    # segments on ops of every kind.
    scope = re.compile(re.escape(optimizer_scope) + r"(_\d+)?")  # adam_w, adam_w_1, ...
    if any(scope.fullmatch(s) for s in node.split("/")) or op_type.startswith("ResourceApply"):
        return "optimizer update"
    if "compile_loss" in name or "sparse_categorical" in name or "lm_head" in name:
        return "vocab projection + loss"
    embedding = "token_embedding" in name or "position_embedding" in name
    if embedding and (is_matmul(op_type) or op_type == "Transpose"):
        return "vocab projection + loss"  # the tied head: hidden @ embedding^T
    if op_type in EMBEDDING_OPS or embedding:
        return "embedding lookup + grad"
    if is_matmul(op_type):
        return "matmuls"
    if "softmax" in name or "Softmax" in op_type:
        return "attention softmax"
    if "mask" in name or op_type in ("LogicalAnd", "GreaterEqual"):
        return "attention mask"
    if "_norm" in name or "layer_norm" in name or "layernorm" in name:
        return "layer norm"
    if "gelu" in name or op_type in ("Erf", "Erfc"):
        return "GELU"
    if op_type == "Cast":
        return "casts"
    return "other ops"


def _merged_length(intervals):
    """Total length covered by a list of `(start, end)` intervals."""
    total, current_start, current_end = 0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def summarize_trace(xplane_path, optimizer_scope="adam_w"):
    """Per-step category times (ms), op counts and the slowest ops of one profiler trace.

    Returns:
        dict with `steps`, `step_ms` (mean wall time of a step), `cycle_ms` (step plus the fit
        loop's gap before the next), `categories` (`name -> {"ms", "ops"}` per step) and
        `top_ops` (list of `(node, op_type, ms per step)`).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    plane = next(p for p in space.planes if p.name.startswith("/host:CPU"))
    metadata = plane.event_metadata

    steps, ops = [], []  # (start_ps, end_ps); (start_ps, end_ps, node, op_type)
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        for event in line.events:
            meta = metadata[event.metadata_id]
            start, end = base + event.offset_ps, base + event.offset_ps + event.duration_ps
            if meta.name in STEP_FUNCTIONS:
                steps.append((start, end))
            elif meta.display_name and meta.name.endswith(":" + meta.display_name):
                if meta.display_name not in CONTAINER_OPS:
                    ops.append(
                        (start, end, meta.name[: -len(meta.display_name) - 1], meta.display_name)
                    )
    if not steps:
        raise RuntimeError(f"No training step ({' or '.join(STEP_FUNCTIONS)}) in {xplane_path}.")
    steps.sort()
    n = len(steps)
    step_ps = sum(end - start for start, end in steps)
    gaps = [b[0] - a[1] for a, b in zip(steps[:-1], steps[1:], strict=True)]
    gap_ps = sum(gaps) / len(gaps) if gaps else 0.0

    op_time = collections.Counter()
    op_count = collections.Counter()
    per_node = collections.Counter()
    busy_ps = 0
    for step_start, step_end in steps:
        intervals = []
        for start, end, node, op_type in ops:
            if start >= step_start and end <= step_end:
                category = categorize(node, op_type, optimizer_scope)
                op_time[category] += end - start
                op_count[category] += 1
                per_node[(node, op_type)] += end - start
                intervals.append((start, end))
        busy_ps += _merged_length(intervals)
    total_op = sum(op_time.values()) or 1

    categories = {}
    for category in CATEGORIES:
        if category == "host / idle":
            ps = step_ps - busy_ps
        elif category == "host: fit loop":
            ps = gap_ps * n
        else:
            ps = busy_ps * op_time[category] / total_op
        categories[category] = {"ms": ps / n / 1e9, "ops": op_count[category] / n}
    top = [
        (node, op_type, ps / n / 1e9 * busy_ps / total_op)
        for (node, op_type), ps in per_node.most_common(12)
    ]
    return dict(
        steps=n,
        step_ms=step_ps / n / 1e9,
        cycle_ms=(step_ps / n + gap_ps) / 1e9,
        categories=categories,
        top_ops=top,
        op_time_to_wall=total_op / max(busy_ps, 1),
    )


def profile(config, precision, batch_size, warmup, steps, logdir, seed=1337, checkpoint=None,
            sequence_length=64):
    """Trains `warmup` steps, profiles `steps` more, returns `summarize_trace`'s dict.

    With `checkpoint` (a preset name) the model is `Classifier.from_preset(checkpoint, 2)` on
    `(batch_size, sequence_length)` random ids and labels instead of the causal LM."""
    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        if checkpoint:
            model = keras_llm.models.Classifier.from_preset(checkpoint, num_classes=2)
        else:
            model = keras_llm.models.CausalLM(keras_llm.models.TransformerBackbone(config))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(seed)
    if checkpoint:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.AdamW(), loss=loss, jit_compile=False)
        vocabulary = model.backbone.model_config.vocabulary_size
        ids = rng.integers(1, vocabulary, size=(batch_size, sequence_length)).astype("int32")
        labels = rng.integers(0, 2, size=(batch_size,)).astype("int32")
        data = tf.data.Dataset.from_tensors((ids, labels))
    else:
        model.compile(optimizer=keras.optimizers.AdamW(), jit_compile=False)
        ids = rng.integers(1, config.vocabulary_size,
                           size=(batch_size, config.sequence_length + 1))
        data = tf.data.Dataset.from_tensors(
            (ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")))
    data = data.repeat()
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)

    os.makedirs(logdir, exist_ok=True)
    before = set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    tf.profiler.experimental.start(logdir)
    try:
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    finally:
        tf.profiler.experimental.stop()
    after = set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    new = sorted(after - before, key=os.path.getmtime)
    if not new:
        raise RuntimeError(f"The profiler wrote no *.xplane.pb under {logdir!r}.")
    summary = summarize_trace(new[-1], optimizer_scope=model.optimizer.name)
    summary["trace"] = new[-1]
    return summary


def print_summary(summary, title):
    print(f"\n## {title}")
    print(
        f"{summary['steps']} profiled steps: {summary['step_ms']:.0f} ms per step inside the "
        f"train function, {summary['cycle_ms']:.0f} ms per step with the fit loop; summed op "
        f"time is {summary['op_time_to_wall']:.2f}x the busy wall time (concurrent ops). "
        f"Trace: {summary['trace']}"
    )
    cycle = summary["cycle_ms"]
    rows = [
        [name, f"{c['ms']:.1f}", f"{100 * c['ms'] / cycle:.1f}%", f"{c['ops']:.0f}"]
        for name, c in summary["categories"].items()
    ]
    rows.append(
        [
            "total",
            f"{cycle:.1f}",
            "100.0%",
            f"{sum(c['ops'] for c in summary['categories'].values()):.0f}",
        ]
    )
    print()
    print(_common.markdown_table(["category", "ms/step", "% of step", "ops/step"], rows))
    print("\nSlowest ops (ms per step, same scaling):")
    for node, op_type, ms in summary["top_ops"]:
        print(f"  {ms:7.1f}  {op_type:<28} {node}")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Profile one keras_llm training step and summarize it by category.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="small", help="keras_llm.ModelConfig preset.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=PRECISIONS + ("all",), default="all")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before the trace.")
    parser.add_argument("--steps", type=int, default=3, help="Profiled steps.")
    parser.add_argument("--logdir", default=None, help="Trace directory (default: a temp dir).")
    parser.add_argument("--quick", action="store_true", help="Tiny preset, batch 4, 2 steps.")
    parser.add_argument("--checkpoint", default=None,
                        help="Profile the fine-tuning step of a published checkpoint instead "
                        "(e.g. all-MiniLM-L6-v2: Classifier.from_preset, 64 tokens a row).")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch_size, args.warmup, args.steps = "tiny", 4, 1, 2
    for name in ("batch_size", "warmup", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    return args


def main(argv=None):
    """Profiles each requested precision; prints and returns `{precision: summary}`."""
    args = parse_args(argv)
    config = keras_llm.ModelConfig.preset(args.preset)
    logdir = args.logdir or tempfile.mkdtemp(prefix="keras_llm_profile_")
    precisions = PRECISIONS if args.precision == "all" else (args.precision,)
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    print(
        f"# Profile of one training step: keras_llm "
        f"{f'Classifier on {args.checkpoint!r}, 64 tokens' if args.checkpoint else 'CausalLM'}"
        f"{'' if args.checkpoint else f', preset {args.preset!r}'}, batch "
        f"{args.batch_size}, AdamW, XLA off; load average {load} at start"
    )
    print(_common.machine()[0])
    summaries = {}
    for precision in precisions:
        start = time.perf_counter()
        summary = profile(config, precision, args.batch_size, args.warmup, args.steps, logdir,
                          checkpoint=args.checkpoint)
        print_summary(summary, f"{precision} ({time.perf_counter() - start:.0f} s to run)")
        summaries[precision] = summary
    return summaries


if __name__ == "__main__":
    main()
