"""What machine this is, and the speed choices that follow from it.

keras_llm's fastest settings depend on the processor. On a CPU whose matrix units compute in
bfloat16 (Intel AMX-BF16 or AVX512-BF16; an NVIDIA GPU of compute capability 8.0 or newer),
`mixed_bfloat16` trains about 1.3-1.4x faster than float32. Everywhere else (AMD Zen 3 and
older, Intel before Cooper Lake, most laptops) bfloat16 is emulated and trains about 2x
*slower* than float32. `precision="auto"`, the default of the `TrainConfig` presets, the CLI
and the quickstart, asks this module which one to use.

The decision reads the CPU's flags (`/proc/cpuinfo`) and the settings that change what
TensorFlow's oneDNN kernels may use (`ONEDNN_MAX_CPU_ISA`, `TF_ENABLE_ONEDNN_OPTS`): flags are
exact and cost nothing, while a timing taken on a busy machine could flip the choice, and
with it the run's numbers. Nothing is cached: every call reads the machine again.

Functions:
- `detect()`: a `Hardware` record of this machine (CPU model, ISA class, cores, GPUs).
- `choose_precision(precision, hardware=None)`: `(policy, reason)`; `"auto"` decides.
- `matmul_peak(seconds)`: float32 `tf.matmul` FLOP/s, measured in well under a second.
- `describe(hardware, peak)`: one line for people.
"""

import dataclasses
import os
import platform
import time

AUTO = "auto"

# oneDNN's ISA names, in increasing order of capability; the bf16 matrix kernels need at
# least AVX512_CORE_BF16. Names not listed (a newer oneDNN's) are taken as capable.
_ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
    "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "DEFAULT", "ALL",
)
_FIRST_BF16_ISA = _ONEDNN_ISAS.index("AVX512_CORE_BF16")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One machine, as far as keras_llm's speed choices are concerned.

    Args:
        cpu_model: str. The CPU's model name, e.g. `"AMD EPYC 7B13"`.
        isa: str. The widest vector/matrix class the CPU offers: `"AMX"`, `"AVX-512 BF16"`,
            `"AVX-512"`, `"AVX2"`, `"NEON"` (64-bit Arm) or `"other"`.
        cores: int. CPU cores this process may use.
        flags: frozenset of str. The CPU flags read (empty where the system hides them).
        gpus: tuple of str. One `"name (compute capability X.Y)"` per visible GPU.
        bf16_gpu: bool. Every visible GPU computes bfloat16 matrix products natively.
        onednn_isa_cap: str or None. `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) if set.
        onednn_enabled: bool. False when `TF_ENABLE_ONEDNN_OPTS=0` turned TensorFlow's oneDNN
            kernels off.
    """

    cpu_model: str
    isa: str
    cores: int
    flags: frozenset = dataclasses.field(default=frozenset(), repr=False)
    gpus: tuple = ()
    bf16_gpu: bool = False
    onednn_isa_cap: str = None
    onednn_enabled: bool = True

    @property
    def machine_class(self):
        """`"gpu"`, or the CPU's class: `"amx"`, `"avx512_bf16"`, `"avx512"`, `"avx2"`, ..."""
        if self.gpus:
            return "gpu"
        return self.isa.lower().replace("-", "").replace(" ", "_")

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["flags"] = sorted(self.flags & _REPORTED_FLAGS)
        values["gpus"] = list(self.gpus)
        values["machine_class"] = self.machine_class
        return values


_REPORTED_FLAGS = frozenset({
    "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile",
    "asimd", "sve", "bf16",
})


def parse_cpuinfo(text):
    """`(model name, flags)` from the text of `/proc/cpuinfo` (x86 or Arm layout)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, frozenset(flags)


def isa_class(flags, machine=None):
    """The widest class a set of CPU flags offers (see `Hardware.isa`)."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "asimd" in flags or (machine or "").lower() in ("arm64", "aarch64"):
        return "NEON"
    return "other"


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # macOS, Windows: no flags to read
        return ""


def _gpus():
    """`(descriptions, all_bf16)` of the visible GPUs (bf16 needs compute capability 8.0)."""
    import tensorflow as tf

    descriptions, capable = [], []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability") or (0, 0)
        name = details.get("device_name", device.name)
        descriptions.append(f"{name} (compute capability {capability[0]}.{capability[1]})")
        capable.append(tuple(capability) >= (8, 0))
    return tuple(descriptions), bool(capable) and all(capable)


def detect(environ=None, cpuinfo=None, gpus=None):
    """Returns a `Hardware` record of this machine, read now (nothing is cached).

    Args:
        environ: mapping. Environment to read the oneDNN settings from. Defaults to
            `os.environ`.
        cpuinfo: str. Text in `/proc/cpuinfo`'s layout. Defaults to this machine's.
        gpus: `(descriptions, all_bf16)` as `_gpus()` returns. Defaults to TensorFlow's view.

    Tests pass `cpuinfo`, `environ` and `gpus` to stand for another machine.
    """
    environ = os.environ if environ is None else environ
    model, flags = parse_cpuinfo(_read_cpuinfo() if cpuinfo is None else cpuinfo)
    gpu_names, bf16_gpu = _gpus() if gpus is None else gpus
    cap = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or None
    return Hardware(
        cpu_model=model or platform.processor() or platform.machine() or "unknown CPU",
        isa=isa_class(flags, platform.machine()),
        cores=_cores(),
        flags=flags,
        gpus=tuple(gpu_names),
        bf16_gpu=bf16_gpu,
        onednn_isa_cap=cap.upper() if cap else None,
        onednn_enabled=environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false"),
    )


def _cap_allows_bf16(cap):
    if cap is None or cap not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap) >= _FIRST_BF16_ISA


def native_bf16(hardware):
    """`(bool, reason)`: whether bfloat16 matrix products run in hardware here."""
    if hardware.gpus:
        if hardware.bf16_gpu:
            return True, "the GPU computes bfloat16 natively (compute capability >= 8.0)"
        return False, "the GPU has no native bfloat16 (compute capability < 8.0)"
    if hardware.isa not in ("AMX", "AVX-512 BF16"):
        return False, (
            f"the CPU ({hardware.isa}) has no bfloat16 matrix instructions, so bfloat16 "
            "would be emulated (about 2x slower than float32)"
        )
    if not hardware.onednn_enabled:
        return False, (
            "TF_ENABLE_ONEDNN_OPTS=0 turned off the oneDNN kernels that use the CPU's "
            "bfloat16 instructions"
        )
    if not _cap_allows_bf16(hardware.onednn_isa_cap):
        return False, (
            f"ONEDNN_MAX_CPU_ISA={hardware.onednn_isa_cap} keeps oneDNN below "
            "AVX512_CORE_BF16, so bfloat16 would be emulated"
        )
    unit = "AMX-BF16" if hardware.isa == "AMX" else "AVX512-BF16"
    return True, f"the CPU's {unit} instructions compute bfloat16 matrix products natively"


def choose_precision(precision=AUTO, hardware=None):
    """Returns `(policy, reason)`: the Keras dtype policy to train in, and why.

    Args:
        precision: str. `"auto"`, `"float32"` or `"mixed_bfloat16"`. Anything but `"auto"` is
            returned as is (an explicit choice always wins).
        hardware: `Hardware`. Defaults to `detect()`.
    """
    if precision != AUTO:
        return precision, "chosen explicitly"
    native, why = native_bf16(hardware or detect())
    return ("mixed_bfloat16" if native else "float32"), f"auto: {why}"


def matmul_peak(seconds=0.5, size=2048, dtype="float32", repeats=10):
    """Measures the best `tf.matmul` FLOP/s of this machine, in about `seconds` at most.

    One warm-up call, then up to `repeats` timed calls of a `(size, size)` product (at least
    three, even past `seconds`); the fastest counts, because the question is what the
    machine can do, not what it did while something else ran. A lower bound on what dense
    layers reach here, and the denominator of the MFU that `callbacks.Throughput` logs.
    """
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((size, size), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((size, size), seed=(3, 4)), dtype)
    tf.linalg.matmul(a, b).numpy()  # warm-up: kernel selection, allocation
    best, deadline = float("inf"), time.perf_counter() + seconds
    for i in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return 2.0 * size**3 / best


def describe(hardware, peak=None):
    """One line for people: CPU model, ISA class, cores, GPUs, measured float32 peak."""
    parts = [hardware.cpu_model, hardware.isa, f"{hardware.cores} cores"]
    if hardware.onednn_isa_cap:
        parts.append(f"ONEDNN_MAX_CPU_ISA={hardware.onednn_isa_cap}")
    if not hardware.onednn_enabled:
        parts.append("oneDNN off")
    parts.extend(hardware.gpus)
    if peak:
        parts.append(f"float32 matmul {peak / 1e9:.0f} GFLOP/s")
    return ", ".join(parts)


_ANNOUNCED = set()


def announce_precision(policy, reason):
    """Prints the precision choice once per process (again only if it changes)."""
    if (policy, reason) not in _ANNOUNCED:
        _ANNOUNCED.add((policy, reason))
        print(f"keras_llm: training in {policy} ({reason})", flush=True)


def precision_record(requested, hardware=None):
    """What a run directory records: requested and used precision, why, and the machine."""
    hardware = hardware or detect()
    policy, reason = choose_precision(requested, hardware)
    return {"requested": requested, "used": policy, "reason": reason,
            "machine": hardware.to_dict()}
