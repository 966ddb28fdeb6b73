"""The ``cuda`` backend: kernel IR → numba-cuda kernels → PTX for ``sm_90``.

``irkit.compile(graph, target="cuda", arch="sm_90", fallback="none")`` lowers the graph
for the GPU target — the ``gpu`` family's templates (:mod:`irkit.lower.gpu`: shared-memory
tiled GEMM and convolution, attention, warp-shuffle reductions) instead of the CPU
register tiles — renders every kernel as a numba-cuda function (:mod:`.codegen`) and
compiles each to PTX with ``numba.cuda.compile_ptx(..., cc=(9, 0))``. The artifact holds
``kernels.py`` (the source, with the host-side launch and buffer tables), ``ptx/<kernel>.ptx``
and ``weights.bin``. Building needs numba-cuda and the CUDA 13.0 NVVM from pip (the
``cuda`` extra), no GPU.

The runtime (:mod:`irkit.runtime.backends.cuda`) loads the PTX through numba-cuda's driver
on an sm_90-or-newer GPU, keeps the weights and the workspace on the device and moves only
inputs and outputs; ``irkit.runtime.load(path, device="simulator")`` runs the same kernels
in numba-cuda's simulator instead (every thread in Python: tests, small shapes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from irkit.backend import (
    KERNEL_OPTIONS,
    BackendError,
    EmittedProgram,
    KernelBackend,
    program_entry,
)
from irkit.lower import Capabilities, LoweredModel, Tiles
from irkit.runtime.options import Option
from irkit.target import Target

SOURCE_FILE = "kernels.py"
WEIGHTS_FILE = "weights.bin"
PTX_DIR = "ptx"
COMPUTE_CAPABILITY = {"sm_90": (9, 0)}
# Fused ops whose CPU kernels have no GPU template: legalized back to their parts.
EXCLUDED = frozenset({"irkit.ConvBiasActPool"})
_ENTRY = re.compile(r"^\.visible \.entry (\S+)\(", re.M)


class CudaBackend(KernelBackend):
    """Compile a Graph to numba-cuda kernels and their PTX."""

    name = "cuda"
    families = ("gpu",)
    default_arch = "sm_90"
    options: ClassVar[dict[str, Option]] = {
        **KERNEL_OPTIONS,
        "arch": Option((str, list, tuple), "sm_90", "GPU target: sm_90 (Hopper: H100, "
                       "H200); the PTX also runs on newer GPUs"),
    }

    def capabilities(self, target: Target) -> Capabilities:
        return Capabilities(self.name, EXCLUDED)

    def tiles(self, target: Target, options: Mapping[str, Any]) -> Tiles:
        # The GPU templates choose their own blocks; these serve the CPU templates a GPU
        # has no template for (int8), run per thread, and the packed-weight panels the
        # GPU GEMM reads (32 columns: a warp reads one panel row).
        return Tiles(mr=1, nr=32, vec=8, conv_mr=1, conv_nr=8)

    def requirements(self, target: Target) -> dict[str, Any]:
        return {"arch": target.machine, "features": [target.cpu]}

    def emit(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
             prefix: str) -> EmittedProgram:
        from irkit.plugins.cuda.codegen import render_module

        start = time.perf_counter()
        program = lowered.program
        module = render_module(program, target.name)
        ptx = compile_kernels(module, list(program.symbols), target)
        source_file, weights_file = f"{prefix}{SOURCE_FILE}", f"{prefix}{WEIGHTS_FILE}"
        files = {source_file: module.source.encode("utf-8"), weights_file: program.weights}
        native: dict[str, str] = {}
        for kernel, (text, entry) in zip(program.kernels, ptx):
            name = f"{prefix}{PTX_DIR}/{kernel.name}.ptx"
            files[name] = text.encode("utf-8")
            native[f"ptx:{kernel.name}"] = name
            native[f"entry:{kernel.name}"] = entry
        shapes: dict[str, int] = {}
        for k in module.kernels:
            shapes[k.shape] = shapes.get(k.shape, 0) + 1
        info = {"memory_plan": lowered.plan.report(), "fused": lowered.fused,
                "kernel_shapes": shapes, "compute_capability": list(
                    COMPUTE_CAPABILITY.get(target.name, (9, 0)))}
        entry = program_entry(lowered, code=source_file, weights=weights_file,
                              run="launches", kernels=[k.name for k in program.kernels],
                              native=native, info=info)
        return EmittedProgram(files, entry, time.perf_counter() - start)


def compile_kernels(module: Any, symbols: list[str], target: Target
                    ) -> list[tuple[str, str]]:
    """(PTX text, entry name) of every kernel of a rendered module."""
    try:
        from numba import cuda
    except ImportError as exc:
        raise BackendError("the cuda backend compiles PTX with numba-cuda and the CUDA "
                           "13.0 NVVM: pip install 'irkit[cuda]' "
                           f"({exc})") from exc
    from numba import config as numba_config

    from irkit.plugins.cuda.codegen import kernel_signature

    if getattr(numba_config, "ENABLE_CUDASIM", False):
        raise BackendError("NUMBA_ENABLE_CUDASIM=1 replaces numba-cuda's PTX compiler with "
                           "its simulator, so cuda artifacts cannot be compiled in this "
                           "process: unset it to compile (an artifact runs in the simulator "
                           "with irkit.runtime.load(path, device='simulator'))")  # fmt: skip
    namespace: dict[str, Any] = {"__name__": "irkit_cuda_build", "IRKIT_PURE_PYTHON": False}
    exec(compile(module.source, SOURCE_FILE, "exec"), namespace)
    cc = COMPUTE_CAPABILITY.get(target.name, (9, 0))
    out = []
    for kernel in module.kernels:
        signature = kernel_signature(kernel, symbols)
        try:
            text, _ = cuda.compile_ptx(namespace[kernel.name], signature, cc=cc)
        except Exception as exc:
            message = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
            raise BackendError(f"numba-cuda could not compile kernel {kernel.name} to PTX: "
                               f"{type(exc).__name__}: {message[:1500]}") from exc
        found = _ENTRY.search(text)
        if found is None:
            raise BackendError(f"no .entry in the PTX of kernel {kernel.name}")
        out.append((text, found.group(1)))
    return out


__all__ = ["CudaBackend", "compile_kernels"]
