"""Starts one command on N local workers of a `tf.distribute.MultiWorkerMirroredStrategy`.

`keras-llm launch --workers 2 -- keras-llm pretrain --run-dir runs/pretrain` runs the
command N times on this machine, each process with its own `TF_CONFIG` (the same cluster of
N workers on free 127.0.0.1 ports, its own task index; worker 0 is the chief). A `keras-llm`
training command gets `--strategy multi_worker` added when it does not say it; any other
command (`python my_script.py`) must build its strategy from `TF_CONFIG` itself.

The chief's output is streamed to this terminal; every other worker's goes to
`<log_dir>/worker-<i>.log`. When a worker fails (non-zero exit or killed), the others are
stopped at once (SIGTERM, then SIGKILL), the failed worker's last lines are printed and its
exit status is returned. Workers die with the launcher too (Linux: `PR_SET_PDEATHSIG`), so no
worker is left behind blocked in a collective. Started again with the same command, a
training run resumes from its last finished epoch on every worker.

On several hosts, run the same command on each host with `TF_CONFIG` set by hand (the same
`cluster`, this host's `task`), or let a cluster resolver (Slurm, Kubernetes) set it.

Functions:
- `launch(command, workers=2, log_dir=None)`: runs it; the exit status.
- `cluster_configs(workers)`: the `TF_CONFIG` of each local worker.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# `keras-llm` commands that run on several workers (training, with its final evaluation).
STRATEGY_COMMANDS = ("pretrain", "finetune")
_PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 5.0


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports free on `host` right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_configs(workers, host="127.0.0.1"):
    """One `TF_CONFIG` dict per local worker: the same cluster, each its own task index."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1. Received workers={workers!r}.")
    cluster = {"worker": [f"{host}:{port}" for port in free_ports(workers, host)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(workers)]


def with_strategy(command):
    """`command` with `--strategy multi_worker` added if it is a `keras-llm` training command
    that does not name a strategy. Refuses one naming another strategy, and any other
    `keras-llm` command (each worker would run it whole and write the same files)."""
    command = list(command)
    if not command:
        raise ValueError("launch needs a command to run, e.g. -- keras-llm pretrain ...")
    module = command[1:3] == ["-m", "keras_llm"]
    if os.path.basename(command[0]) != "keras-llm" and not module:
        return command  # a script of the user's: it builds its strategy from TF_CONFIG
    rest = command[3:] if module else command[1:]
    if not rest or rest[0] not in STRATEGY_COMMANDS:
        raise ValueError(
            f"launch runs keras-llm {' or '.join(STRATEGY_COMMANDS)} on several workers; "
            f"received keras-llm {rest[0] if rest else '(no command)'}. Run that one without "
            "launch."
        )
    values = [rest[i + 1] if arg == "--strategy" and i + 1 < len(rest) else arg.partition("=")[2]
              for i, arg in enumerate(rest) if arg == "--strategy" or arg.startswith("--strategy=")]
    if not values:
        return command + ["--strategy", "multi_worker"]
    if any(value != "multi_worker" for value in values):
        raise ValueError(
            f"launch runs the command on several workers, but it says --strategy {values[0]}; "
            "drop --strategy (launch adds multi_worker) or say --strategy multi_worker."
        )
    return command


def _die_with_parent():
    """In the child, before exec: get SIGKILL when the launcher dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    os.setpgrp()  # its own process group: stopping it stops its children too


def _stop(processes):
    """SIGTERM to every process group still running, then SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in processes if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _GRACE_SECONDS
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in processes:
        p.wait()


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def launch(command, workers=2, log_dir=None, *, env=None, poll_seconds=0.1, out=sys.stderr):
    """Runs `command` on `workers` local workers; returns the first failure's exit status.

    Args:
        command: list of str. The program and its arguments (see `with_strategy`).
        workers: int. Number of worker processes, at least 1.
        log_dir: str. Where `worker-<i>.log` of the non-chief workers go. Defaults to a new
            temporary directory (printed).
        env: dict. Environment of the workers (defaults to this process's), plus `TF_CONFIG`.
        poll_seconds: float. How often the workers are checked.
        out: text stream for the launcher's own lines.

    Returns:
        int: 0 when every worker exited 0; else the first failed worker's exit status
        (128 + signal number for a worker killed by a signal).
    """
    command = with_strategy(command)
    if os.path.basename(command[0]) == "keras-llm" and shutil.which(command[0]) is None:
        command = [sys.executable, "-m", "keras_llm", *command[1:]]  # this installation's
    elif shutil.which(command[0]) is None:
        raise FileNotFoundError(f"cannot start {command[0]!r}: no such program on PATH")
    configs = cluster_configs(workers)
    log_dir = log_dir or tempfile.mkdtemp(prefix="keras-llm-launch-")
    os.makedirs(log_dir, exist_ok=True)
    print(f"keras-llm launch: {workers} worker(s) on {', '.join(configs[0]['cluster']['worker'])}"
          f"; chief's output below, the others' in {log_dir}", file=out, flush=True)
    processes, logs = [], []
    try:
        for index, config in enumerate(configs):
            worker_env = dict(os.environ if env is None else env, TF_CONFIG=json.dumps(config))
            log = None
            if index > 0:
                log = open(os.path.join(log_dir, f"worker-{index}.log"), "w")
                logs.append(log)
            processes.append(subprocess.Popen(
                command, env=worker_env, stdout=log, stderr=subprocess.STDOUT if log else None,
                preexec_fn=_die_with_parent,
            ))
        while True:
            codes = [p.poll() for p in processes]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index = failed[0]
                status = _exit_status(codes[index])
                print(f"keras-llm launch: worker {index} failed (exit status {status}); "
                      "stopping the others.", file=out, flush=True)
                if index > 0:
                    print(_tail(os.path.join(log_dir, f"worker-{index}.log")), file=out)
                _stop(processes)
                return status
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    except BaseException:  # Ctrl-C or an error here: no worker outlives the launcher
        _stop(processes)
        raise
    finally:
        for log in logs:
            log.close()


def _exit_status(code):
    """Popen's return code as a shell exit status (a signal N becomes 128 + N)."""
    return 128 - code if code < 0 else code
