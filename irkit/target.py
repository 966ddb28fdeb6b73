"""Targets: what generated code is for — never the machine that happens to build it.

A :class:`Target` names a triple, an LLVM CPU, the ISA features the code may use and the
capabilities lowering asks about (vector width, vector registers, an int8 dot-product
instruction, fp16 arithmetic, shared memory, warp size). Lowering and code generation read
only the Target; the artifact records :meth:`Target.requirements` and the runtime refuses
a host that lacks them (an error naming the missing features, never SIGILL).

Presets (``irkit targets`` lists them):

============== =========================================================================
native         the build host: its CPU name and every feature it has (the default)
x86-64         the x86-64 baseline (SSE2): every 64-bit x86 CPU
x86-64-v2      + SSE3/SSSE3/SSE4.1/SSE4.2/POPCNT (Nehalem, Jaguar and newer)
x86-64-v3      + AVX, AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE (Haswell, Zen 1-3 and newer)
x86-64-v4      + AVX-512 F/BW/CD/DQ/VL (Skylake-X, Ice Lake, Zen 4 and newer)
x86-64-v3-vnni x86-64-v3 + AVX-VNNI (Alder Lake, Zen 5): int8 dot products in 256 bits
x86-64-v4-vnni x86-64-v4 + AVX512-VNNI (Cascade Lake, Ice Lake, Zen 4): int8 dot products
aarch64        ARMv8-A with NEON (cross-compilation: objects are produced, not run here)
wasm32         WebAssembly without SIMD
wasm32-simd    WebAssembly with the 128-bit SIMD proposal
sm_90          NVIDIA Hopper (H100/H200) through PTX
============== =========================================================================

The psABI levels (``x86-64-v2``…``v4``) are the ones compilers and Linux distributions
use; the ``-vnni`` presets are irkit's, for int8 models on CPUs that have the instruction.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from irkit.errors import IrkitError
from irkit.runtime.hostcpu import X86_LEVELS, host

X86_V1, X86_V2, X86_V3, X86_V4 = (X86_LEVELS[name] for name in X86_LEVELS)
# Extensions LLVM may emit for compute code. A native build requires those of them its
# host has; the others (rdrand, sgx, …) never appear in generated kernels.
CODEGEN_FEATURES = X86_V4 | {
    "adx", "gfni", "vaes", "vpclmulqdq", "pclmul", "aes", "sse4a", "avxvnni",
    "avx512vnni", "avx512bf16", "avx512fp16", "avx512ifma", "avx512vbmi", "avx512vbmi2",
    "avx512bitalg", "avx512vpopcntdq", "avxvnniint8", "neon", "fp-armv8", "dotprod",
    "fullfp16", "sve", "simd128",
}  # fmt: skip


class TargetError(IrkitError):
    """An unknown target name, or a target a backend cannot compile for."""


@dataclass(frozen=True)
class Target:
    """What code is compiled for. Frozen; :func:`get_target` builds the presets."""

    name: str
    family: str  # "cpu", "wasm" or "gpu"
    triple: str
    cpu: str  # the LLVM CPU name (scheduling model and implied features)
    features: frozenset[str] = field(default_factory=frozenset)
    vector_bits: int = 128  # widest SIMD register the code may use; 0: no SIMD
    vector_registers: int = 16
    entry: str = "cpython"  # "cpython" (fast CPython call + C ABI), "c", "wasm", "cuda"
    threads: int = 0  # run-time worker threads; 0 = every core the process may use
    fp16_arithmetic: bool = False
    shared_memory: int = 0  # bytes per thread block (GPU)
    warp_size: int = 0  # threads per warp (GPU)

    # -- capabilities lowering asks about ------------------------------------------
    @property
    def machine(self) -> str:
        """The triple's architecture: ``x86_64``, ``aarch64``, ``wasm32``, ``nvptx64``."""
        return self.triple.split("-", 1)[0]

    @property
    def f32_lanes(self) -> int:
        """f32 lanes of the widest vector (4 for 128-bit SIMD, 8 AVX2, 16 AVX-512); 4 with
        no SIMD, where LLVM splits vectors into scalar code."""
        return max(self.vector_bits // 32, 4)

    def int8_dot(self, lanes: int | None = None) -> str:
        """The instruction behind an int8 dot product of ``lanes`` i32 accumulators
        (default: :attr:`f32_lanes`): ``vpdpbusd`` where the target has VNNI at that
        width; ``vpmaddubsw`` (u8 x s8 pairs into int16, then ``vpmaddwd`` into int32:
        exact for weights within [-64, 64]) on other x86 targets with SSSE3, AVX2 or
        AVX-512BW at that width; else ``widen`` (bytes widened to i32 and multiplied)."""
        lanes = lanes or self.f32_lanes
        has = self.features.__contains__
        if lanes == 16 and has("avx512vnni"):
            return "vpdpbusd"
        if lanes == 8 and (has("avxvnni") or (has("avx512vnni") and has("avx512vl"))):
            return "vpdpbusd"
        madd = {4: "ssse3", 8: "avx2", 16: "avx512bw"}.get(lanes)
        if self.machine == "x86_64" and madd is not None and has(madd):
            return "vpmaddubsw"
        return "widen"

    @property
    def has_int8_dot(self) -> bool:
        """Whether the target has an int8 dot-product instruction (VNNI) at its width."""
        return self.int8_dot() == "vpdpbusd"

    # -- what the artifact records --------------------------------------------------
    def requirements(self) -> dict[str, Any]:
        """What a host must have to run this target's code: the architecture and the
        ISA features the code may use (LLVM names), checked by the runtime at load."""
        needed = sorted(self.features & CODEGEN_FEATURES)
        return {"arch": self.machine, "features": needed}

    def llvm_features(self) -> str:
        """The LLVM feature string (``+avx2,+fma,…``)."""
        return ",".join(f"+{f}" for f in sorted(self.features))

    def with_threads(self, threads: int) -> Target:
        return replace(self, threads=threads)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "triple": self.triple, "cpu": self.cpu,
            "features": sorted(self.features), "vector_bits": self.vector_bits,
            "vector_registers": self.vector_registers, "entry": self.entry,
            "threads": self.threads, "fp16_arithmetic": self.fp16_arithmetic,
            "shared_memory": self.shared_memory, "warp_size": self.warp_size,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        fields = dict(data)
        fields["features"] = frozenset(fields.get("features", ()))
        return cls(**fields)

    def __str__(self) -> str:
        return self.name


def _x86(name: str, cpu: str, features: frozenset[str], bits: int, registers: int) -> Target:
    return Target(name, "cpu", "x86_64-unknown-linux-gnu", cpu, features, bits, registers)


def _native() -> Target:
    machine = host()
    features = frozenset(machine.features)
    if machine.arch == "x86_64":
        bits = 512 if "avx512f" in features else 256 if "avx" in features else 128
        registers = 32 if "avx512f" in features else 16
        triple = "x86_64-unknown-linux-gnu"
    elif machine.arch == "aarch64":
        bits, registers, triple = 128, 32, "aarch64-unknown-linux-gnu"
    else:
        raise TargetError(f"the build host is {machine.arch}: irkit knows no native target "
                          f"for it; name one of {', '.join(PRESET_NAMES)}")
    return Target("native", "cpu", triple, machine.cpu, features, bits, registers,
                  fp16_arithmetic="avx512fp16" in features or "fullfp16" in features)


_PRESETS: dict[str, Target] = {
    "x86-64": _x86("x86-64", "x86-64", X86_V1, 128, 16),
    "x86-64-v2": _x86("x86-64-v2", "x86-64-v2", X86_V2, 128, 16),
    "x86-64-v3": _x86("x86-64-v3", "x86-64-v3", X86_V3, 256, 16),
    "x86-64-v4": _x86("x86-64-v4", "x86-64-v4", X86_V4, 512, 32),
    "x86-64-v3-vnni": _x86("x86-64-v3-vnni", "x86-64-v3", X86_V3 | {"avxvnni"}, 256, 16),
    "x86-64-v4-vnni": _x86("x86-64-v4-vnni", "x86-64-v4", X86_V4 | {"avx512vnni"}, 512, 32),
    "aarch64": Target("aarch64", "cpu", "aarch64-unknown-linux-gnu", "generic",
                      frozenset({"neon", "fp-armv8"}), 128, 32, entry="c"),
    "wasm32": Target("wasm32", "wasm", "wasm32-unknown-unknown", "generic", frozenset(), 0,
                     0, entry="wasm"),
    "wasm32-simd": Target("wasm32-simd", "wasm", "wasm32-unknown-unknown", "generic",
                          frozenset({"simd128"}), 128, 16, entry="wasm"),
    "sm_90": Target("sm_90", "gpu", "nvptx64-nvidia-cuda", "sm_90", frozenset({"ptx80"}), 0,
                    0, entry="cuda", fp16_arithmetic=True, shared_memory=227 * 1024,
                    warp_size=32),
}
PRESET_NAMES = ("native", *_PRESETS)


def get_target(name: str | Target) -> Target:
    """The preset called ``name`` (``native`` is the build host), or ``name`` itself."""
    if isinstance(name, Target):
        return name
    if not isinstance(name, str):
        raise TargetError(f"a target is a preset name, got {name!r}")
    key = name.strip()
    if key == "native":
        return _native()
    if key in _PRESETS:
        return _PRESETS[key]
    close = difflib.get_close_matches(key, PRESET_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TargetError(f"unknown target {name!r}{hint} (known: {', '.join(PRESET_NAMES)})")


def _capability(target: Target) -> tuple[int, int, int]:
    return (target.vector_bits, int(target.has_int8_dot), len(target.features))


def resolve_targets(arch: str | Target | Sequence[str | Target] | None, *,
                    families: Iterable[str] = ("cpu",), default: str = "native"
                    ) -> list[Target]:
    """One or more targets, most capable first (the order a runtime tries them in).

    ``arch`` is a preset name, a comma-separated list of names (``"x86-64-v3,x86-64-v4"``),
    a list, or None for ``default``. Every target must be of one of ``families``; the same
    target named twice is kept once.
    """
    if arch is None or arch == "" or arch == []:
        arch = default
    items: list[str | Target]
    if isinstance(arch, str):
        items = [a for a in arch.split(",") if a.strip()]
    elif isinstance(arch, Target):
        items = [arch]
    else:
        items = list(arch)
    if not items:
        raise TargetError("no target named")
    allowed = tuple(families)
    targets: list[Target] = []
    for item in items:
        target = get_target(item)
        if target.family not in allowed:
            raise TargetError(f"target {target.name!r} is a {target.family} target; this "
                              f"backend compiles for {' or '.join(allowed)} targets")
        if all(t.to_json() != target.to_json() for t in targets):
            targets.append(target)
    return sorted(targets, key=_capability, reverse=True)
