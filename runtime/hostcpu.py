"""What the machine running the artifact can execute: its architecture and ISA features.

Feature names are LLVM's (``avx2``, ``fma``, ``avx512f``, ``avx512vnni``…), the names the
compiler records in an artifact's requirements. They come from llvmlite when it is
installed (it asks the CPU with ``cpuid`` the way LLVM's own ``-march=native`` does), and
otherwise from the ``flags`` line of ``/proc/cpuinfo`` translated to LLVM's names, so an
ONNX-Runtime-only serving box can still say why a kernel artifact will not run on it.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flag -> LLVM feature, where the two differ.
_CPUINFO_NAMES = {
    "pni": "sse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "lahf_lm": "sahf",
    "abm": "lzcnt", "bmi1": "bmi", "pclmulqdq": "pclmul", "sha_ni": "sha",
    "avx512_vnni": "avx512vnni", "avx_vnni": "avxvnni", "avx512_bf16": "avx512bf16",
    "avx512_vbmi2": "avx512vbmi2", "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq", "avx512_fp16": "avx512fp16",
    "rdrand": "rdrnd", "asimd": "neon", "fp": "fp-armv8",
}  # fmt: skip
# The x86-64 psABI micro-architecture levels: each adds to the one before.
X86_LEVELS: dict[str, frozenset[str]] = {}
for _name, _added in (
    ("x86-64", {"cmov", "cx8", "fxsr", "mmx", "sse", "sse2"}),
    ("x86-64-v2", {"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"}),
    ("x86-64-v3", {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}),
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
):
    X86_LEVELS[_name] = frozenset(_added).union(*X86_LEVELS.values())
# Machine names as platform.machine() spells them -> the triple's architecture.
_MACHINES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


@dataclass(frozen=True)
class Host:
    """A machine an artifact may run on: its architecture (``x86_64``, ``aarch64``) and the
    ISA features it has (LLVM names)."""

    arch: str
    features: frozenset[str]
    cpu: str = "generic"

    def missing(self, requires: Mapping[str, object]) -> list[str]:
        """What of ``requires`` (``{"arch": ..., "features": [...]}``) this host lacks:
        the architecture first when it differs, then each absent feature, sorted."""
        arch = str(requires.get("arch", ""))
        if arch and arch != self.arch:
            return ["an NVIDIA GPU" if arch == "nvptx64" else f"an {arch} CPU"]
        wanted = requires.get("features", ())
        names = wanted if isinstance(wanted, list | tuple) else ()
        return sorted(str(f) for f in names if str(f) not in self.features)


def machine_arch() -> str:
    machine = platform.machine().lower()
    return _MACHINES.get(machine, machine)


def _llvm_features() -> tuple[str, frozenset[str]] | None:
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return None
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    features = llvm.get_host_cpu_features()
    return llvm.get_host_cpu_name(), frozenset(k for k, on in features.items() if on)


def _cpuinfo_features(text: str) -> frozenset[str]:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(_CPUINFO_NAMES.get(f, f) for f in value.split())
    return frozenset()


@functools.cache
def host() -> Host:
    """This machine (computed once per process)."""
    found = _llvm_features()
    if found is not None:
        return Host(machine_arch(), found[1], found[0])
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return Host(machine_arch(), _cpuinfo_features(text))


def host_with(features: Iterable[str], arch: str | None = None) -> Host:
    """A host with exactly ``features`` (tests and ``load(..., host=...)`` use it to ask
    whether an artifact would run on another machine)."""
    return Host(arch or machine_arch(), frozenset(features), "(given)")


def host_level(machine: Host) -> str | None:
    """The highest x86-64 level ``machine`` meets (``aarch64`` there, the wasm target a
    WebAssembly engine runs; None elsewhere): what to rebuild for when an artifact's code
    needs more than the machine has."""
    if machine.arch == "wasm32":  # a WebAssembly engine (irkit.runtime.backends.wasm)
        return "wasm32-simd" if "simd128" in machine.features else "wasm32"
    if machine.arch != "x86_64":
        return "aarch64" if machine.arch == "aarch64" else None
    reached = None
    for name, features in X86_LEVELS.items():
        if features <= machine.features:
            reached = name
    return reached or "x86-64"
