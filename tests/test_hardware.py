"""Hardware-aware defaults: `precision="auto"` on faked and real machines."""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_llm import TrainConfig, hardware, training
from keras_llm.callbacks import TimeLeft, format_duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trimmed /proc/cpuinfo of the two machine classes this project runs on.
AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile
"""
AVX2_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni
"""
COOPER_LAKE_CPUINFO = AVX2_CPUINFO.replace("AMD EPYC 7B13 64-Core Processor", "Xeon 8380H") \
    .replace("sha_ni", "avx512f avx512_bf16")
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\nCPU part\t: 0xd0c\n"
NO_GPU = ((), False)


def fake(cpuinfo, environ=None, gpus=NO_GPU):
    return hardware.detect(environ=environ or {}, cpuinfo=cpuinfo, gpus=gpus)


def test_parse_cpuinfo_reads_model_and_flags():
    model, flags = hardware.parse_cpuinfo(AVX2_CPUINFO)
    assert model == "AMD EPYC 7B13 64-Core Processor"
    assert {"avx2", "fma"} <= flags and "avx512f" not in flags


@pytest.mark.parametrize(
    "cpuinfo, isa, machine_class, policy",
    [
        (AMX_CPUINFO, "AMX", "amx", "mixed_bfloat16"),
        (COOPER_LAKE_CPUINFO, "AVX-512 BF16", "avx512_bf16", "mixed_bfloat16"),
        (AVX2_CPUINFO, "AVX2", "avx2", "float32"),
        (AVX2_CPUINFO.replace("avx2", "avx512f"), "AVX-512", "avx512", "float32"),
        (ARM_CPUINFO, "NEON", "neon", "float32"),
        ("", "other", None, "float32"),  # no /proc/cpuinfo (macOS, Windows): the safe choice
    ],
)
def test_auto_precision_follows_the_cpu(cpuinfo, isa, machine_class, policy):
    machine = fake(cpuinfo)
    assert machine.isa == isa
    if machine_class:
        assert machine.machine_class == machine_class
    chosen, reason = hardware.choose_precision("auto", machine)
    assert chosen == policy
    assert reason.startswith("auto: ")
    if policy == "float32":
        assert "emulated" in reason or "no bfloat16" in reason


def test_explicit_precision_always_wins():
    for cpuinfo in (AMX_CPUINFO, AVX2_CPUINFO):
        for precision in ("float32", "mixed_bfloat16"):
            assert hardware.choose_precision(precision, fake(cpuinfo)) == (
                precision, "chosen explicitly"
            )


@pytest.mark.parametrize(
    "environ, native",
    [
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, False),
        ({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False),
        ({"TF_ENABLE_ONEDNN_OPTS": "1"}, True),
    ],
)
def test_onednn_settings_that_hide_bf16_are_respected(environ, native):
    machine = fake(AMX_CPUINFO, environ)
    chosen, reason = hardware.choose_precision("auto", machine)
    assert (chosen == "mixed_bfloat16") is native
    if not native:
        assert next(iter(environ.values())).upper() in reason.upper()


def test_gpus_decide_over_the_cpu():
    modern = fake(AVX2_CPUINFO, gpus=(("NVIDIA H100 (compute capability 9.0)",), True))
    assert modern.machine_class == "gpu"
    assert hardware.choose_precision("auto", modern)[0] == "mixed_bfloat16"
    old = fake(AMX_CPUINFO, gpus=(("Tesla T4 (compute capability 7.5)",), False))
    assert hardware.choose_precision("auto", old)[0] == "float32"


def test_this_machine_is_read_afresh_and_consistently():
    machine = hardware.detect()
    assert machine.cores == len(os.sched_getaffinity(0))
    assert machine == hardware.detect()
    record = hardware.precision_record("auto", machine)
    assert record["used"] == hardware.choose_precision("auto", machine)[0]
    assert json.loads(json.dumps(record))["machine"]["isa"] == machine.isa
    line = hardware.describe(machine, 1.23e11)
    assert machine.isa in line and f"{machine.cores} cores" in line and "123 GFLOP/s" in line


def test_matmul_peak_is_a_plausible_rate_and_fast():
    import time

    start = time.perf_counter()
    peak = hardware.matmul_peak(seconds=0.2, size=512)
    assert time.perf_counter() - start < 5
    assert 1e9 < peak < 1e14  # between 1 GFLOP/s and 100 TFLOP/s


def test_auto_is_the_default_and_a_valid_choice():
    assert TrainConfig().precision == "auto"
    assert TrainConfig.preset("quick").precision == "auto"
    assert TrainConfig.preset("small").precision == "auto"
    assert TrainConfig.preset("tiny").precision == "float32"  # tests stay exact everywhere


@pytest.mark.parametrize("cpuinfo, policy", [(AMX_CPUINFO, "mixed_bfloat16"),
                                             (AVX2_CPUINFO, "float32")])
def test_precision_policy_resolves_auto_and_says_so_once(cpuinfo, policy, monkeypatch, capsys):
    machine = fake(cpuinfo)
    monkeypatch.setattr(hardware, "detect", lambda *a, **k: machine)
    monkeypatch.setattr(hardware, "_ANNOUNCED", set())
    for _ in range(2):
        with training.precision_policy("auto"):
            assert keras.mixed_precision.global_policy().name == policy
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    out = capsys.readouterr().out
    assert out.count(f"training in {policy}") == 1
    with training.precision_policy("float32"):  # explicit: nothing to announce
        pass
    assert capsys.readouterr().out == ""


def test_run_directory_records_the_choice_on_a_faked_avx2_machine(
    data_dir, tmp_path, monkeypatch
):
    machine = fake(AVX2_CPUINFO)
    monkeypatch.setattr(hardware, "detect", lambda *a, **k: machine)
    result = training.pretrain(
        "tiny", TrainConfig.preset("tiny", pretrain_steps=2, precision="auto"),
        run_dir=str(tmp_path), data_dir=data_dir, steps_per_epoch=2, verbose=0,
    )
    assert result.model.compute_dtype == "float32"
    record = json.load(open(tmp_path / "run.json"))["precision"]
    assert (record["requested"], record["used"]) == ("auto", "float32")
    assert record["machine"]["cpu_model"] == "AMD EPYC 7B13 64-Core Processor"
    assert record["machine"]["machine_class"] == "avx2"
    assert "AVX2" in record["reason"]


@pytest.mark.slow
def test_a_onednn_cap_makes_this_machine_train_in_float32(data_dir, tmp_path):
    """A real machine without usable bf16 kernels, not a fake: oneDNN capped at AVX2.

    On an AMX CPU a bfloat16 matmul under `ONEDNN_MAX_CPU_ISA=AVX2` aborts the process
    (oneDNN finds no kernel), so "auto" must pick float32 here, from the environment.
    """
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    completed = subprocess.run(
        [sys.executable, "-m", "keras_llm", "pretrain", "--preset", "tiny",
         "--train-preset", "quick", "--steps", "2", "--run-dir", str(tmp_path),
         "--data-dir", data_dir],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    said = "keras_llm: training in float32 (auto: ONEDNN_MAX_CPU_ISA=AVX2"
    assert completed.stdout.count(said) == 1
    record = json.load(open(tmp_path / "run.json"))["precision"]
    assert (record["requested"], record["used"]) == ("auto", "float32")


def test_format_duration():
    assert [format_duration(s) for s in (9.4, 75, 4000)] == ["9 s", "1 min 15 s", "1 h 6 min"]


def test_time_left_estimates_from_the_steps_after_the_first(tiny_config):
    import numpy as np

    from keras_llm.models import CausalLM, TransformerBackbone

    model = CausalLM(TransformerBackbone(tiny_config))
    model.compile(optimizer="adam")
    lines = []
    callback = TimeLeft(12, after_steps=3, label="testing", then=lambda: 6, then_label="more",
                        print_fn=lines.append)
    ids = np.random.default_rng(0).integers(1, 256, size=(24, 32))
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=2, epochs=1, callbacks=[callback], verbose=0)
    assert len(lines) == 1  # once
    estimate = callback.estimate
    assert estimate["seconds_per_step"] > 0
    # After the first (untimed) step and three timed ones, 8 of 12 steps are left.
    assert estimate["seconds_left"] == pytest.approx(8 * estimate["seconds_per_step"])
    assert estimate["then_seconds"] == pytest.approx(6 * estimate["seconds_per_step"])
    assert "of testing" in lines[0] and "8 to go" in lines[0] and "of more" in lines[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=0), "total_steps=0"), (dict(total_steps=5, after_steps=1.5),
                                             "after_steps=1.5"),
    (dict(total_steps=5, then=-1), "then=-1"),
])
def test_time_left_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimeLeft(**kwargs)
