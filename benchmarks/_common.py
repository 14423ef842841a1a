"""Small timing helpers shared by the benchmark scripts.

- `interleaved_rounds`: run several contenders in alternating order (A, B, C, then C, B, A,
  ...) so that slow drifts of the machine (other jobs, thermal limits) hit all of them alike.
- `summarize`: median, min and spread of a list of timings.
- `matmul_peak_flops`: a measured matrix-multiply peak (FLOP/s) to compute MFU against.
- `machine`: the machine class and description every benchmark prints and records.
- `markdown_table`: a table that reads well in a terminal and pastes into a README.
- `step_timer`: a Keras callback that records the seconds of every training step.

Nothing here imports keras_llm: a benchmark imports keras_llm first (it sets up the backend and
quiets TensorFlow), then these helpers.
"""

import gc
import os
import statistics
import time


def interleaved_rounds(contenders, rounds, run_one):
    """Runs every contender once per round, alternating the order from round to round.

    Python's garbage collector is paused during the rounds (after one full collection).

    Args:
        contenders: list of hashable names.
        rounds: int. Number of rounds.
        run_one: callable `(name) -> list[float]` (or a float): one measurement of one
            contender, e.g. the seconds of each of a few training steps.

    Returns:
        dict `name -> list of floats`, all measurements of that contender, in order.
    """
    results = {name: [] for name in contenders}
    # As `timeit` does: no garbage-collection pauses inside the measurements (a full collection
    # of a process holding several Keras models takes long enough to distort a step).
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            order = contenders if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                measured = run_one(name)
                results[name].extend(
                    measured if isinstance(measured, (list, tuple)) else [measured]
                )
    finally:
        if was_enabled:
            gc.enable()
    return results


def summarize(values):
    """`{"median", "min", "max", "iqr", "n"}` of a non-empty list of numbers."""
    values = sorted(values)
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = values[-1] - values[0]
    return {
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
        "iqr": iqr,
        "n": len(values),
    }


def matmul_peak_flops(dtype="float32", size=2048, repeats=10):
    """Best achieved FLOP/s of `tf.matmul` on two `(size, size)` matrices of `dtype`.

    `keras_llm.hardware.matmul_peak` with no time limit: `repeats` timed calls after a
    warm-up, the fastest counting.
    """
    from keras_llm import hardware

    return hardware.matmul_peak(seconds=float("inf"), size=size, dtype=dtype, repeats=repeats)


def machine():
    """This machine as the benchmarks report it: `(line for the header, dict for JSON)`.

    The class (`amx`, `avx512_bf16`, `avx2`, ..., `gpu`) says which README column a figure
    belongs to; the precision `"auto"` would choose here is part of it.
    """
    from keras_llm import hardware

    found = hardware.detect()
    policy, reason = hardware.choose_precision("auto", found)
    record = {**found.to_dict(), "auto_precision": policy, "auto_precision_reason": reason}
    line = (f"machine class: {found.machine_class} ({hardware.describe(found)}); "
            f"precision 'auto' here: {policy}")
    return line, record


def format_si(value, unit=""):
    """`1.23e9` -> `"1.23 G"` + unit."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def markdown_table(headers, rows):
    """A Markdown table with padded columns; columns of numbers are right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    columns = list(zip(*cells, strict=True))
    widths = [max(len(c) for c in column) for column in columns]
    right = [all(_is_number(c) for c in column[1:]) for column in columns]

    def line(row):
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rules = [
        "-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)
    ]
    return "\n".join([line(cells[0]), "|" + "|".join(rules) + "|"] + [line(r) for r in cells[1:]])


def _is_number(text):
    """`"1,234"`, `"-0.5"`, `"12.3%"`, or a placeholder `"-"` / `""`."""
    text = text.lstrip("+-")
    return text == "" or text[:1].isdigit()


class OtherProcessesCpu:
    """How much of the machine's CPU other processes used while the block ran.

    The load average cannot tell: it counts this benchmark's own threads (a 2-thread benchmark
    on 2 cores drives it to about 2 by itself). Instead this reads the machine's busy CPU time
    from `/proc/stat` and subtracts this process's own CPU time (`os.times`), both over the
    block. `share` is the others' CPU seconds / (wall seconds x cores): 0.0 on an idle
    machine, 0.5 when other processes kept half the cores busy; None where `/proc/stat` is
    missing (not Linux).
    """

    def __init__(self, cores):
        self.cores = cores
        self.share = None

    @staticmethod
    def _machine_busy_seconds():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self._start = (time.perf_counter(), self._machine_busy_seconds(), self._own_seconds())
        return self

    def __exit__(self, *exc):
        wall0, busy0, own0 = self._start
        busy1 = self._machine_busy_seconds()
        if busy0 is not None and busy1 is not None:
            wall = time.perf_counter() - wall0
            others = (busy1 - busy0) - (self._own_seconds() - own0)
            self.share = max(0.0, others) / (wall * self.cores)
        return False


def step_timer():
    """A Keras callback recording each training step's seconds in `.seconds`, from
    `on_train_batch_begin` to `on_train_batch_end` (on CPU the compiled train function
    returns only when the step is done, so a stamp pair is one whole step)."""
    import keras  # the benchmark has imported keras_llm first (the backend is set)

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._start = None

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()
