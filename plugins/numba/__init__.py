"""The ``numba`` backend: kernel IR → Python source with ``@njit`` functions.

``irkit.compile(graph, target="numba", arch="native", threads=0, fallback="none",
fast_math=True)`` returns an Artifact holding ``kernels.py`` (the generated module,
:mod:`.codegen`) and ``weights.bin`` (the same raw blobs as the llvm backend's; no
pickle). Nothing is compiled to machine code at build time, so building needs no Numba;
``irkit.runtime.load`` compiles the module with Numba (:mod:`irkit.runtime.backends.numba`),
keeping Numba's cache in the artifact directory so a second load is fast.

It is the backend for reading and stepping through the code a model runs:
``irkit inspect ARTIFACT`` prints ``kernels.py``, and with ``NUMBA_DISABLE_JIT=1`` the
module runs as plain Python under a debugger. Lowering, legalization, the ORT fallback
and the manifest entry are the shared kernel-program flow (:mod:`irkit.backend`); the
register-tile templates come from the target (``arch``), whose features the code does not
require: Numba compiles for the machine that loads it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from irkit.backend import KERNEL_OPTIONS, EmittedProgram, KernelBackend, program_entry
from irkit.lower import Capabilities, LoweredModel, Tiles
from irkit.runtime.options import Option
from irkit.target import Target

SOURCE_FILE = "kernels.py"
WEIGHTS_FILE = "weights.bin"


class NumbaBackend(KernelBackend):
    """Compile a Graph to a Python module of Numba kernels."""

    name = "numba"
    dynamic_shapes = True  # NonZero, Unique, NonMaxSuppression… (irkit.lower.dynamic)
    families = ("cpu",)
    options: ClassVar[dict[str, Option]] = {
        **KERNEL_OPTIONS,
        # Numba compiles the prange variants several times slower than the serial ones,
        # so they are opt-in.
        "threads": Option(int, 1, "threads at run time: 1 runs the serial kernels; more "
                          "runs the prange variants on Numba's threads (0 = all cores)"),
        "fast_math": Option(bool, True, "Numba fastmath flags contract, nsz and reassoc "
                            "(vectorized reductions); NaN/Inf semantics and exact "
                            "division are kept"),
    }

    def capabilities(self, target: Target) -> Capabilities:
        # Its conv-pool kernel packs im2col panels: legalized into Conv + pool instead.
        return Capabilities(self.name, frozenset({"irkit.ConvBiasActPool"}))

    def tiles(self, target: Target, options: Mapping[str, Any]) -> Tiles:
        # Numba compiles a few milliseconds per operation and more per nested branch, so
        # the templates are kept small: a 1 x 8 GEMM tile (its 8 lanes a loop LLVM
        # vectorizes; the register tiles' unrolled rows and remainder copies took
        # minutes per kernel) and convolutions as loop nests rather than panel packing.
        return Tiles(mr=1, nr=8, vec=8, conv_mr=1, conv_nr=8, conv="direct")

    def requirements(self, target: Target) -> dict[str, Any]:
        # Numba compiles the source for the machine that loads it: only the
        # architecture the templates were sized for is recorded, no ISA features.
        return {"arch": target.machine, "features": []}

    def emit(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
             prefix: str) -> EmittedProgram:
        from irkit.plugins.numba.codegen import render_module

        start = time.perf_counter()
        program = lowered.program
        source = render_module(program, fast_math=options["fast_math"], target=target.name)
        compile(source, SOURCE_FILE, "exec")  # a syntax error is a compiler bug: fail here
        source_file, weights_file = f"{prefix}{SOURCE_FILE}", f"{prefix}{WEIGHTS_FILE}"
        files = {source_file: source.encode("utf-8"), weights_file: program.weights}
        info = {"memory_plan": lowered.plan.report(), "fused": lowered.fused,
                "source_lines": source.count("\n") + 1}
        entry = program_entry(lowered, code=source_file, weights=weights_file, run="run",
                              kernels=[k.name for k in program.kernels], info=info)
        return EmittedProgram(files, entry, time.perf_counter() - start)


__all__ = ["NumbaBackend"]
