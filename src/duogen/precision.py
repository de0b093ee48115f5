"""Which precision a run trains and samples in: `auto`, `fp32` or `bf16`.

    choice = resolve_precision(cfg.precision, "cpu")  # PrecisionChoice("fp32", "auto: ...", 41.3)

Owns: the `auto` policy, the CPU capability probe, the short bf16-vs-fp32 matmul
timing and its per-machine cache, the warning for an explicit bf16 that is slow.
Does not own: autocast itself (`utils.autocast`), or where a run records the
choice (the engine and the codec recipe write it into `config.yaml`).

The `auto` policy:
- CUDA: bf16 when the GPU runs it natively (compute capability >= 8.0, Ampere
  and later); fp32 on older GPUs (bf16 is emulated there). Not timed: a small
  matmul on a GPU measures launch latency, not arithmetic.
- CPU: the capability says whether bf16 can be native (x86: the `amx_bf16` or
  `avx512_bf16` flag in /proc/cpuinfo; ARM: `bf16` in its features), and a
  short timing confirms it (a 256x256 matmul in bf16 and in fp32, about 0.1 s,
  cached per CPU model, torch version and thread count). bf16 when the
  capability is there (or cannot be read) and bf16 took at most
  `FAST_RATIO` times the fp32 time; fp32 otherwise. Without the capability the
  timing is still taken, for the reason line and the warning.
- Any other device (mps, ...): fp32.

An explicit `fp32` or `bf16` is kept as asked; an explicit bf16 on a CPU where
the timing says it is slow warns once per run with the measured ratio.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

from .errors import ConfigError

__all__ = ["PRECISIONS", "FAST_RATIO", "PrecisionChoice", "CpuSupport", "resolve_precision", "check_precision", "cpu_bf16_support",
           "measure_bf16_ratio", "cached_bf16_ratio", "default_cache_path", "announce", "annotate_config_yaml"]

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 is chosen when its matmul takes at most this multiple of the fp32 time: at equal speed fp32 is
# the better choice (no rounding), so only a real gain switches. AMX machines measure ~0.1-0.5,
# CPUs without native bf16 16-60 (a 2-core AVX2 AMD EPYC: ~40).
FAST_RATIO = 1.0
_CACHE_VERSION = 1
# oneDNN ISA caps (its ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 matmuls there run without the CPU's bf16
# instructions, as on a CPU that lacks them (how an AVX2-only machine is emulated on a newer one).
_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})  # x86 AMX / AVX512-BF16, ARM BF16


def _onednn_isa() -> str:
    """oneDNN's ISA cap from ONEDNN_MAX_CPU_ISA, upper case; "" when unset."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


class PrecisionChoice(NamedTuple):
    precision: str  # "fp32" | "bf16": what the run uses
    reason: str  # one line: why (written into config.yaml and printed first)
    ratio: float | None = None  # measured bf16 / fp32 matmul time on this machine; None when not measured


class CpuSupport(NamedTuple):
    native: bool | None  # None: the flags could not be read (then the timing alone decides)
    detail: str  # e.g. "AMD EPYC, AVX2, no amx_bf16/avx512_bf16 flag"


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    import platform

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_bf16_support() -> CpuSupport:
    """Whether this CPU can run bf16 matmuls natively (AMX / AVX512-BF16 on x86, BF16 on ARM)."""
    import platform

    import torch

    model, flags = _cpu_model_and_flags()
    cap = torch.backends.cpu.get_cpu_capability()
    have = sorted(flags & _BF16_FLAGS)
    isa = _onednn_isa()
    if have and isa in _ISAS_WITHOUT_BF16:
        return CpuSupport(False, f"{model}, {cap}, {'/'.join(have)} unused: ONEDNN_MAX_CPU_ISA={isa}")
    if have:
        return CpuSupport(True, f"{model}, {cap}, {'/'.join(have)}")
    if not flags:
        return CpuSupport(None, f"{model}, {cap}, CPU flags unreadable")
    arch = platform.machine().lower()
    wanted = "bf16" if arch.startswith(("arm", "aarch")) else "amx_bf16/avx512_bf16"
    return CpuSupport(False, f"{model}, {cap}, no {wanted} flag")


def measure_bf16_ratio(n: int = 256, repeats: int = 5) -> float:
    """bf16 / fp32 time of an n x n matmul on the CPU (best of `repeats`, interleaved: a busy moment
    slows one try, not the best); about 0.15 s without native bf16, a few ms with it."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = {k: math.inf for k in pairs}
    for x, y in pairs.values():
        x @ y  # warm-up: first-call dispatch and allocation
    for _ in range(repeats):
        for k, (x, y) in pairs.items():
            t = time.perf_counter()
            x @ y
            best[k] = min(best[k], time.perf_counter() - t)
    return best["bf16"] / max(best["fp32"], 1e-9)


def default_cache_path() -> Path:
    """$XDG_CACHE_HOME/duogen/precision.json (~/.cache/duogen/precision.json by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "duogen" / "precision.json"


def _cache_key() -> str:
    """What the ratio depends on: the CPU (its name can be generic, "AMD EPYC", so its bf16 flags too), the kernels
    torch and oneDNN may use here (`ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` can lower them), torch, threads."""
    import torch

    model, flags = _cpu_model_and_flags()
    bf16 = "/".join(sorted(flags & _BF16_FLAGS)) or "no bf16 flag"
    isa = _onednn_isa()
    return (f"{model} | {bf16} | {torch.backends.cpu.get_cpu_capability()}{f' | oneDNN {isa}' if isa else ''}"
            f" | torch {torch.__version__} | {torch.get_num_threads()} threads")


def cached_bf16_ratio(measure: Callable[[], float] | None = None, cache_path: str | Path | None = None) -> float:
    """The machine's bf16 / fp32 ratio from the cache, else measured (and cached); a missing, unreadable
    or corrupt cache file is measured over, and a cache that cannot be written is skipped."""
    from .io import atomic_write_json

    path = Path(cache_path) if cache_path is not None else default_cache_path()
    key = _cache_key()
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict) or table.get("version") != _CACHE_VERSION:
            table = {}
    except (OSError, ValueError):
        table = {}
    entry = table.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("ratio"), (int, float)) and 0 < entry["ratio"] < math.inf:
        return float(entry["ratio"])
    ratio = float((measure or measure_bf16_ratio)())
    entries = {k: v for k, v in table.items() if k != "version"}
    entries[key] = {"ratio": round(ratio, 4), "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"version": _CACHE_VERSION, **entries})
    except OSError:
        pass
    return ratio


def check_precision(value: str, key: str = "precision") -> None:
    """A precision name outside PRECISIONS is a ConfigError naming `key` and the allowed values."""
    if value not in PRECISIONS:
        raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {', '.join(PRECISIONS)}")


def _cuda_native(device: str) -> tuple[bool, str]:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) >= (8, 0), f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


def resolve_precision(
    requested: str,
    device: str = "cpu",
    *,
    measure: Callable[[], float] | None = None,
    support: Callable[[], CpuSupport] | None = None,
    cache_path: str | Path | None = None,
) -> PrecisionChoice:
    """`auto` | `fp32` | `bf16` on `device` -> the precision to use and why (the policy: module docstring).

    `measure` (returns the bf16 / fp32 time ratio) and `support` replace the timing and the capability
    probe; an injected `measure` is cached only in an explicitly given `cache_path`.
    """
    check_precision(requested)
    kind = device.split(":")[0]
    if requested == "fp32":
        return PrecisionChoice("fp32", "asked for")
    if kind == "cuda":
        native, gpu = _cuda_native(device)
        if requested == "bf16":
            if not native:
                warnings.warn(f"precision bf16 on {gpu}: this GPU has no native bf16 (emulated, slow); "
                              "train.precision=auto would use fp32", stacklevel=2)
            return PrecisionChoice("bf16", "asked for")
        if native:
            return PrecisionChoice("bf16", f"auto: CUDA GPU {gpu} runs bf16 natively")
        return PrecisionChoice("fp32", f"auto: CUDA GPU {gpu} has no native bf16")
    if kind != "cpu":
        return PrecisionChoice(requested if requested == "bf16" else "fp32",
                               "asked for" if requested == "bf16" else f"auto: bf16 speed on {kind} is not checked")
    cpu = (support or cpu_bf16_support)()
    if measure is not None and cache_path is None:
        ratio = float(measure())
    else:
        ratio = cached_bf16_ratio(measure, cache_path)
    timing = f"a bf16 matmul took {ratio:.2g}x the fp32 time"
    fast = cpu.native is not False and ratio <= FAST_RATIO
    if requested == "bf16":
        if not fast:
            warnings.warn(f"precision bf16 on a CPU where it is slow ({cpu.detail}): {timing}; "
                          "train.precision=auto (or fp32) would train faster", stacklevel=2)
        return PrecisionChoice("bf16", f"asked for ({timing})", ratio)
    if cpu.native is False:
        return PrecisionChoice("fp32", f"auto: CPU without native bf16 ({cpu.detail}); {timing}", ratio)
    if fast:
        return PrecisionChoice("bf16", f"auto: CPU with native bf16 ({cpu.detail}); {timing}", ratio)
    return PrecisionChoice("fp32", f"auto: bf16 measured slow on this CPU ({cpu.detail}); {timing}", ratio)


def announce(choice: PrecisionChoice) -> str:
    """The run's first log line (printed to stderr) about its precision; returned for the caller to reuse."""
    import sys

    line = f"precision: {choice.precision} ({choice.reason})"
    print(line, file=sys.stderr, flush=True)
    return line


def annotate_config_yaml(text: str, choice: PrecisionChoice, section: str = "train") -> str:
    """A resolved config's YAML with the reason as a comment on `section`'s `precision:` line, so the file
    still loads as a config (`--config`) and re-runs in the precision it recorded."""
    lines, current = text.splitlines(), None
    for i, line in enumerate(lines):
        if line and not line[0].isspace():
            current = line.split(":", 1)[0]
        elif current == section and line.startswith("  precision:"):
            lines[i] = f"{line}  # {choice.reason}"
            break
    return "\n".join(lines) + "\n"
