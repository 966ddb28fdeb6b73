"""LLVM module → optimized relocatable object for the host CPU (llvmlite)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir


@functools.cache
def _initialize() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


@dataclass(frozen=True)
class HostTarget:
    triple: str
    cpu: str
    features: str


def host_target() -> HostTarget:
    _initialize()
    return HostTarget(llvm.get_process_triple(), llvm.get_host_cpu_name(),
                      llvm.get_host_cpu_features().flatten())


def target_machine(target: HostTarget, opt: int = 3) -> llvm.TargetMachine:
    """The host target machine. The large code model matters: the in-process JIT linker
    (RuntimeDyld) places sections wherever mmap puts them, and in a long-lived process with
    a big heap they land more than 2 GiB apart, where the small model's 32-bit
    PC-relative relocations overflow and LLVM aborts the whole process."""
    _initialize()
    features = target.features
    if "+avx512f" in features or "+avx2" in features:
        features += NO_GATHER
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=features, opt=opt, reloc="pic", codemodel="large"
    )


# LLVM's loop vectorizer otherwise turns strided loops (a pooling window's taps, the
# channel loop of a transposed read) into AVX2/AVX-512 gathers and scatters, which are
# slower than scalar code on AMD cores (a 2x2 MaxPool ran 4x slower). irkit's own vector
# loops use contiguous loads and are unaffected.
NO_GATHER = ",+prefer-no-gather,+prefer-no-scatter"


@dataclass(frozen=True)
class ObjectCode:
    data: bytes
    optimized_ir: str
    seconds: float


def emit_object(module: ir.Module, target: HostTarget | None = None, opt: int = 3) -> ObjectCode:
    """Verify, optimize at ``-O<opt>`` (loop and SLP vectorization on) and emit an ELF
    object for the host."""
    start = time.perf_counter()
    target = target or host_target()
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
