"""Compares two output trees of `tools/same_behaviour.sh`: equal but for the timings?

    python tools/compare_runs.py /tmp/A /tmp/B

Checks every `*.log` (the printed output, with durations, tokens/s, FLOP/s, MFU, the time
left estimates, the intermediate progress bar updates, the one-time data preparation line
and the machine's measured matmul peak masked) line by line, and every run
file that holds results (`metrics.json`, reports, `transfer.json`, `speakers.json`,
`samples.json`, `export_report.json`, configs, `run.json`, the tokenizer files and all
`*.csv` logs), JSON keys and CSV columns that hold timings left out, and SavedModel byte
sizes (see `NOT_REPRODUCIBLE`; the exported models' F1 and parity figures are compared).
Prints each difference; exits 1 if there is one.
"""

import csv
import json
import os
import re
import sys

TIMING = re.compile(
    r"seconds|tokens_per_second|flops_per_second|mfu|wall|training_flops|pretrained_at"
)
# SavedModel byte sizes: the same variables, written in another order in the archive's
# `_all_variables` list from one process to the next, encode to sizes a byte apart.
NOT_REPRODUCIBLE = re.compile(r"^(bytes|sizes)$")
RESULT_FILES = {
    "metrics.json", "report.json", "validation_report.json", "transfer.json",
    "speakers.json", "tfidf.json", "samples.json", "export_report.json", "dialogue.json",
    "run.json", "train_config.json", "model_config.json", "labels.json", "tokenizer.json",
    "vocabulary.txt", "study_run.json",
}
MASKS = (
    (r"\b\d+(\.\d+)?(s|ms|us)/step", "T/step"),
    (r" - \d+(\.\d+)?m?s - ", " - T - "),
    (r"(tokens_per_second|flops_per_second|mfu|training_flops): [\d.e+-]+", r"\1: T"),
    (r"\(\d+ s\)", "(T s)"),
    (r"\b\d+(\.\d+)?s\b", "Ts"),
    (r"[\d.]+ GFLOP/s", "G GFLOP/s"),
    (r"Wall time [\d.]+ min", "Wall time T min"),
    (r"^(seconds\s+)[\d.]+$", r"\1T"),
    (r"'seconds': [\d.]+", "'seconds': T"),
    (r": \d+ s, validation", ": T s, validation"),
    (r"\(pretraining included\) [\d.]+ min", "(pretraining included) T min"),
    (r"^(\|[^|]+\|[^|]+\|[^|]+\| \d+ \| )\d+( \|)", r"\1T\2"),  # transfer.md's seconds
    (r"\x1b\[1m[\d:]+s?\x1b\[0m", "ETA"),  # a progress bar's time left
)


def _log_lines(path, roots):
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f.read().splitlines():
            line = line.replace("\x08", "").rstrip()  # progress bars erase, tables pad
            if "time left" in line or line.startswith("Preparing "):
                continue  # estimates; a data set prepared on first use
            bar = re.search(r"(\d+)/(\d+)\S* \S*━", line)
            if bar and bar.group(1) != bar.group(2):
                continue  # how many progress bar updates print depends on the speed
            for pattern, replacement in MASKS:
                line = re.sub(pattern, replacement, line)
            for root in roots:
                line = line.replace(root, "OUT")
            lines.append(line)
    return lines


def _without_timings(value, roots):
    if isinstance(value, dict):
        return {k: _without_timings(v, roots) for k, v in value.items()
                if not TIMING.search(k) and not NOT_REPRODUCIBLE.search(k)}
    if isinstance(value, list):
        return [_without_timings(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "OUT")
    return value


def _read(path, roots):
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return _without_timings(json.load(f), roots)
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            return [{k: v for k, v in row.items() if not TIMING.search(k)}
                    for row in csv.DictReader(f)]
    with open(path, encoding="utf-8") as f:
        return f.read()


def compare(a, b):
    """Returns the list of differences between output trees `a` and `b`."""
    roots = (a, b)
    problems = []
    for name in sorted(os.listdir(a)):
        if not name.endswith(".log"):
            continue
        other = os.path.join(b, name)
        if not os.path.exists(other):
            problems.append(f"missing {other}")
            continue
        left, right = _log_lines(os.path.join(a, name), roots), _log_lines(other, roots)
        for i, (x, y) in enumerate(zip(left, right)):
            if x != y:
                problems.append(f"{name} line {i + 1}:\n  A: {x[:400]}\n  B: {y[:400]}")
        if len(left) != len(right):
            problems.append(f"{name}: {len(left)} lines against {len(right)}")
    compared = 0
    for directory, _, files in os.walk(a):
        for name in sorted(files):
            if name not in RESULT_FILES and not name.endswith(".csv"):
                continue
            path = os.path.join(directory, name)
            other = os.path.join(b, os.path.relpath(path, a))
            if not os.path.exists(other):
                problems.append(f"missing {other}")
                continue
            compared += 1
            if _read(path, roots) != _read(other, roots):
                problems.append(f"differs: {os.path.relpath(path, a)}")
    print(f"{compared} run files and the logs compared; {len(problems)} difference(s)")
    return problems


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    a, b = (os.path.abspath(p) for p in argv[1:])
    problems = compare(a, b)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
