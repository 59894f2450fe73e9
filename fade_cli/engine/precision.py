"""Which number format the engine computes in, and why: ``--precision auto`` and the cast-once towers.

``auto`` picks bf16 where the hardware multiplies bf16 matrices natively (CPUs with
AMX or AVX512-BF16, GPUs that torch says support bf16) and fp32 elsewhere. A CPU's
matrix units are not visible to torch (``torch.backends.cpu.get_cpu_capability()``
says "AVX512" on a CPU with AMX), so the CPU's flags are read from /proc/cpuinfo on
Linux and, where that file is missing, from a short timing of bf16 against fp32
matrix products.

In bf16 and fp16 the vision tower's matrix weights are cast once per loaded model
(:func:`vision_tower`); layer norms, positions, the final projection and the
residual streams stay float32 (FADE_SPEC's numbers move least that way, and those
parts cost little).
"""
from __future__ import annotations

import copy
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from fade_cli.config import PRECISIONS
from fade_cli.core.errors import InputError

LOW_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags (Linux /proc/cpuinfo names) that mean native bf16 matrix products.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Flags worth printing next to a benchmark: the ones above and their int8 / fp16 kin.
REPORTED_CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "amx_fp16", "avx512_bf16", "avx512_vnni", "avx512_fp16",
                      "avx512f")
CPUINFO = Path("/proc/cpuinfo")
# Without /proc/cpuinfo: bf16 must beat fp32 by this factor in the timing probe (emulated bf16 is slower than fp32).
PROBE_SPEEDUP = 1.5
# Weights cast to the low precision; layer norms, embeddings and the projection stay float32.
CAST_MODULES = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers for bf16, and how that was found out."""

    flags: frozenset[str]
    source: str  # "/proc/cpuinfo", "timing probe"
    native_bf16: bool

    def describe(self) -> str:
        found = [flag for flag in REPORTED_CPU_FLAGS if flag in self.flags]
        if self.source == "timing probe":
            return f"timing probe: bf16 matrix products {'faster' if self.native_bf16 else 'not faster'} than fp32"
        return f"{self.source}: {' '.join(found) if found else 'none of ' + ' '.join(BF16_CPU_FLAGS)}"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes in: what was asked for, what runs, and one sentence why."""

    requested: str
    precision: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        asked = "" if self.requested == self.precision else f" (--precision {self.requested})"
        return f"precision {self.precision}{asked}: {self.reason}"


def cpu_flags_from_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo's text (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _bf16_matmul_is_fast() -> bool:
    """Time one 512 x 512 product in fp32 and in bf16 (a few milliseconds): native bf16 is clearly faster."""
    def best_of(dtype: torch.dtype) -> float:
        a = torch.randn(512, 512).to(dtype)
        a @ a  # first call: kernel selection
        times = []
        for _ in range(3):
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
        return min(times)

    return best_of(torch.float32) > PROBE_SPEEDUP * best_of(torch.bfloat16)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU features, read once per process."""
    try:
        flags = cpu_flags_from_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = frozenset()
    if flags:
        return CpuFeatures(flags, str(CPUINFO), any(flag in flags for flag in BF16_CPU_FLAGS))
    return CpuFeatures(frozenset(), "timing probe", _bf16_matmul_is_fast())


def resolve_precision(
    requested: str,
    device: torch.device,
    cpu: Optional[Callable[[], CpuFeatures]] = None,
    cuda_bf16: Optional[Callable[[], bool]] = None,
) -> PrecisionChoice:
    """The precision to compute in on ``device``; ``auto`` decides from the hardware.

    ``cpu`` and ``cuda_bf16`` say what the hardware offers (defaults: this machine's);
    tests pass their own.
    """
    if requested != "auto":
        if requested not in PRECISIONS:
            raise InputError(f"unknown precision {requested!r}: use auto, {', '.join(PRECISIONS)}")
        return PrecisionChoice(requested, requested, "as asked")
    if device.type == "cuda":
        supported = (cuda_bf16 or torch.cuda.is_bf16_supported)()
        name = torch.cuda.get_device_name(device) if cuda_bf16 is None else "the GPU"
        if supported:
            return PrecisionChoice("auto", "bf16", f"{name} supports bf16 (torch.cuda.is_bf16_supported)")
        return PrecisionChoice("auto", "fp32", f"{name} does not support bf16 (torch.cuda.is_bf16_supported)")
    if device.type != "cpu":
        return PrecisionChoice("auto", "fp32", f"no bf16 rule for {device.type} devices")
    features = (cpu or cpu_features)()
    if features.native_bf16:
        return PrecisionChoice("auto", "bf16", f"the CPU multiplies bf16 matrices natively ({features.describe()})")
    return PrecisionChoice("auto", "fp32", f"the CPU has no bf16 matrix instructions ({features.describe()}); "
                                           "emulated bf16 would be slower than fp32")


def vision_tower(model: nn.Module, precision: str, cache: dict[str, nn.Module]) -> nn.Module:
    """``model.visual`` with its matrix weights in ``precision``'s dtype, cast once per ``cache``.

    fp32 and tf32 use the tower as loaded. The copy shares the float32 tensors it
    does not cast (layer norms, embeddings, projection) with the original.
    """
    dtype = LOW_PRECISION_DTYPES.get(precision)
    if dtype is None:
        return model.visual
    if precision not in cache:
        cache[precision] = _cast_matrix_weights(model.visual, dtype)
    return cache[precision]


def _cast_matrix_weights(visual: nn.Module, dtype: torch.dtype) -> nn.Module:
    shared: dict[int, Any] = {id(p): p for p in visual.parameters()}
    shared.update({id(b): b for b in visual.buffers()})
    clone = copy.deepcopy(visual, memo=shared)  # new modules around the same tensors: no float32 copy
    for module in clone.modules():
        if isinstance(module, CAST_MODULES):
            for name, parameter in list(module.named_parameters(recurse=False)):
                module._parameters[name] = nn.Parameter(parameter.detach().to(dtype), requires_grad=False)
    return clone.eval()
