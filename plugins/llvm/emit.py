"""LLVM module → optimized relocatable object for a :class:`~irkit.target.Target`."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir

from irkit.target import CODEGEN_FEATURES, X86_V4, Target


@functools.cache
def _initialize() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


# LLVM's loop vectorizer otherwise turns strided loops (a pooling window's taps, the
# channel loop of a transposed read) into AVX2/AVX-512 gathers and scatters, which are
# slower than scalar code on AMD cores (a 2x2 MaxPool ran 4x slower). irkit's own vector
# loops use contiguous loads and are unaffected.
NO_GATHER = ("+prefer-no-gather", "+prefer-no-scatter")
# x86 extensions a target's CPU name might imply but the target does not have are
# switched off explicitly (a "native" build on a VM that hides AVX-512 from a CPU model
# that has it), so the code never uses what the target lacks.
_X86_EXTENSIONS = frozenset(f for f in CODEGEN_FEATURES | X86_V4
                            if f not in ("neon", "fp-armv8", "dotprod", "fullfp16", "sve",
                                         "simd128"))


def feature_string(target: Target) -> str:
    """The LLVM feature string for ``target``: its features, on x86 every other known
    extension switched off, and the no-gather tuning where gathers exist."""
    features = [f"+{f}" for f in sorted(target.features)]
    if target.machine == "x86_64":
        features += [f"-{f}" for f in sorted(_X86_EXTENSIONS - target.features)]
        if "avx2" in target.features:
            features += NO_GATHER
    return ",".join(features)


def target_machine(target: Target, opt: int = 3) -> llvm.TargetMachine:
    """The target machine for ``target``. The large code model matters: the in-process
    JIT linker (RuntimeDyld) places sections wherever mmap puts them, and in a long-lived
    process with a big heap they land more than 2 GiB apart, where the small model's
    32-bit PC-relative relocations overflow and LLVM aborts the whole process."""
    _initialize()
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=feature_string(target), opt=opt, reloc="pic",
        codemodel="large")


@dataclass(frozen=True)
class ObjectCode:
    data: bytes
    optimized_ir: str
    seconds: float


def emit_object(module: ir.Module, target: Target, opt: int = 3) -> ObjectCode:
    """Verify, optimize at ``-O<opt>`` (loop and SLP vectorization on) and emit an ELF
    object for ``target``."""
    start = time.perf_counter()
    tm = target_machine(target, opt)
    module.triple = target.triple
    module.data_layout = str(tm.target_data)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    builder = llvm.create_pass_builder(tm, pto)
    builder.getModulePassManager().run(parsed, builder)
    data = tm.emit_object(parsed)
    return ObjectCode(bytes(data), str(parsed), time.perf_counter() - start)
