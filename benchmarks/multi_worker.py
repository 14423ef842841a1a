"""What training on several workers costs: the step time of 2 local workers against one process.

Contenders, each in fresh processes, all training the same `CausalLM` on the same global batch
(one in-memory batch repeated, so the input pipeline costs nothing) for the same steps:
- `one process`: no `tf.distribute` strategy (the peer every ratio is against);
- `mirrored x2`: one process, `MirroredStrategy` over 2 logical CPUs (the batch split in two,
  gradients gathered in memory);
- `2 workers`: two processes on 127.0.0.1 started by `keras_llm.launch`,
  `MultiWorkerMirroredStrategy` (keras_llm's override), gradients all-reduced over gRPC after
  every step.

On one machine the workers share the cores the single process had to itself, so this measures
the *overhead* of the collective (and of two TensorFlow runtimes), not a speed-up; on N hosts
each worker brings its own cores and the overhead is what stays. The payload of each step's
all-reduce (the float32 gradients) is printed beside it.

How it is timed: each step between Keras' `on_train_batch_begin` and `on_train_batch_end`
(on CPU the step is done when the compiled function returns), after `--warmup` steps; the
chief worker's steps for `2 workers`. Contenders run in alternating order over `--rounds`
rounds; the figure is the median step over all rounds. Meaningful only on an otherwise idle
machine: the load average is printed before and after.

Run:

    python benchmarks/multi_worker.py                   # `mini` model, batch 32 (about 3 min)
    python benchmarks/multi_worker.py --quick           # tiny sizes: a smoke run
    python benchmarks/multi_worker.py --json results.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

CONTENDERS = ("one process", "mirrored x2", "2 workers")

# One contender's training process; argv: strategy, preset, batch, steps, out (JSON).
WORKER = """
import json, os, sys
strategy_name, preset, batch, steps, out = sys.argv[1:6]
import tensorflow as tf
if strategy_name == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_llm.run_loop import get_strategy, is_chief, precision_policy
strategy = get_strategy(strategy_name)
import keras
import numpy as np
import _common
from keras_llm import ModelConfig
from keras_llm.models import CausalLM, TransformerBackbone

keras.utils.set_random_seed(0)
config = ModelConfig.preset(preset)
ids = np.random.RandomState(0).randint(1, config.vocabulary_size,
                                       size=(int(batch), config.sequence_length + 1))
data = tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat()
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
data = data.with_options(options)
with precision_policy("auto"):
    with strategy.scope():
        model = CausalLM(TransformerBackbone(config))
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    timer = _common.step_timer()
    model.fit(data, epochs=1, steps_per_epoch=int(steps), callbacks=[timer], verbose=0)
if is_chief():
    with open(out, "w") as f:
        json.dump({"seconds": timer.seconds, "parameters": model.count_params(),
                   "replicas": strategy.num_replicas_in_sync}, f)
"""


def run_contender(name, preset, batch, steps, scratch):
    """Trains once as `name`; the chief's per-step seconds and the parameter count."""
    from keras_llm import launch

    out = os.path.join(scratch, "result.json")
    args = [preset, str(batch), str(steps), out]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    if name == "2 workers":
        command = [sys.executable, "-c", WORKER, "multi_worker", *args]
        with open(os.path.join(scratch, "launcher.log"), "w") as log:
            status = launch.launch(command, 2, log_dir=scratch, env=env, out=log)
        if status != 0:
            raise RuntimeError(f"2 workers failed ({status}): see {scratch}/worker-1.log")
    else:
        strategy = "mirrored" if name == "mirrored x2" else "default"
        completed = subprocess.run([sys.executable, "-c", WORKER, strategy, *args], env=env,
                                   capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{name} failed: {completed.stderr[-2000:]}")
    with open(out) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini", help="ModelConfig preset (default: mini)")
    parser.add_argument("--batch", type=int, default=32, help="global batch (default: 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.steps, args.warmup, args.rounds = "tiny", 8, 4, 1, 1

    import keras_llm  # noqa: F401,I001  (first: sets up the backend, quiets TensorFlow)
    import _common

    line, record = _common.machine()
    print(line)
    print(f"load average before: {os.getloadavg()}")
    print(f"model preset {args.preset!r}, global batch {args.batch}, {args.steps} timed steps "
          f"after {args.warmup}, {args.rounds} round(s), precision 'auto'")
    parameters = None
    with tempfile.TemporaryDirectory() as scratch:
        def run_one(name):
            nonlocal parameters
            result = run_contender(name, args.preset, args.batch, args.warmup + args.steps,
                                   scratch)
            parameters = result["parameters"]
            return result["seconds"][args.warmup:]

        timings = _common.interleaved_rounds(list(CONTENDERS), args.rounds, run_one)
    steps = timings
    peer = statistics.median(steps["one process"])
    rows, results = [], {"machine": record, "settings": vars(args), "contenders": {}}
    for name in CONTENDERS:
        median = statistics.median(steps[name])
        rows.append((name, f"{median * 1e3:.1f} ms", f"{median / peer:.2f}x"))
        results["contenders"][name] = {"median_step_seconds": median,
                                       "ratio_to_one_process": median / peer,
                                       "steps": steps[name]}
    print(_common.markdown_table(["contender", "median step", "step time / one process"],
                                 rows))
    payload = parameters * 4
    print(f"all-reduced per step: {parameters:,} float32 gradients = {payload / 1e6:.1f} MB; "
          "2 workers on one 2-core machine share its cores: overhead, not speed-up")
    print(f"load average after: {os.getloadavg()}")
    results["allreduce_bytes_per_step"] = payload
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
