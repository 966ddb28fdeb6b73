"""The ``llvm`` backend: kernel IR → LLVM IR (llvmlite) → a relocatable object per target.

``irkit.compile(graph, target="llvm", arch="native", threads=0, fallback="none", mr=0,
nr=0, vec=0, conv_mr=0, conv_nr=0, emit="object", fast_math=True)`` returns an Artifact
holding, for each target named by ``arch`` (``"x86-64-v3"``, ``["x86-64-v3",
"x86-64-v4"]``…; see :mod:`irkit.target`), ``model.o`` (relocatable, -O3, for that
target's triple, CPU and features) and ``weights.bin`` (64-byte aligned raw blobs, GEMM
weights pre-packed into panels). Several targets go into one artifact, each under its own
directory; the runtime runs the best one the host supports and refuses, naming the
missing features, when there is none.

Everything but translation is the shared kernel-program flow (:mod:`irkit.backend`):
legalize, ORT-fallback partitioning, lowering for the target and the manifest entry.
This plugin translates the kernel IR (:mod:`.codegen`), adds the entry points
(:mod:`.entry`) and emits the object (:mod:`.emit`); the runtime loader
:mod:`irkit.runtime.backends.llvm` JIT-links it in process, so serving needs no system
linker. ``emit="shared"`` also links ``model.so`` and writes ``model.h`` when a C
compiler driver (``cc``) exists (single target only).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from irkit.backend import (
    KERNEL_OPTIONS,
    BackendError,
    BackendUnsupportedError,
    EmittedProgram,
    KernelBackend,
    program_entry,
)
from irkit.lower import LoweredModel, LoweringError, Tiles
from irkit.runtime.options import Option
from irkit.target import Target

OBJECT_FILE = "model.o"
WEIGHTS_FILE = "weights.bin"
# Kept for code that catches the llvm-specific names.
LlvmBackendError = BackendError
LlvmUnsupportedError = BackendUnsupportedError


class LlvmBackend(KernelBackend):
    """Compile a Graph to native code for one or several CPU targets."""

    name = "llvm"
    families = ("cpu",)
    dynamic_shapes = True  # NonZero, Unique, NonMaxSuppression… (irkit.lower.dynamic)
    options: ClassVar[dict[str, Option]] = {
        **KERNEL_OPTIONS,
        "mr": Option(int, 0, "GEMM microkernel rows; 0 = 8 with 32 vector registers "
                     "(AVX-512), else 6"),
        "nr": Option(int, 0, "GEMM microkernel columns (multiple of vec); 0 = 2 * vec"),
        "conv_mr": Option(int, 0, "convolution microkernel rows (output channels); 0 = 4"),
        "conv_nr": Option(int, 0, "convolution microkernel columns (pixels); 0 = 4 * vec "
                          "with 32 vector registers, else 3 * vec"),
        "vec": Option(int, 0, "vector lanes (f32) of the heavy-op templates; 0 = the "
                      "target's (16 with AVX-512, 8 with AVX2)"),
        "emit": Option(str, "object", "'object', or 'shared' to also link model.so + model.h",
                       choices=("object", "shared")),
        "fast_math": Option(bool, True, "reassociation/contraction flags (vectorized "
                            "reductions); NaN/Inf semantics are kept"),
    }

    def check_options(self, options: dict[str, Any]) -> None:
        super().check_options(options)
        if options["vec"] not in (0, 4, 8, 16):
            raise BackendError("llvm option vec must be 0 (the target's), 4, 8 or 16")
        if not (0 <= options["mr"] <= 16 and 0 <= options["conv_mr"] <= 16) or \
                options["nr"] < 0 or options["nr"] % 4 or options["conv_nr"] % 4:
            raise BackendError("tile sizes: 1 <= mr <= 16 and nr a multiple of 4")

    def tiles(self, target: Target, options: Mapping[str, Any]) -> Tiles:
        try:
            return Tiles.for_target(target, mr=options["mr"], nr=options["nr"],
                                    vec=options["vec"], conv_mr=options["conv_mr"],
                                    conv_nr=options["conv_nr"])
        except LoweringError as exc:
            raise BackendError(f"llvm options: {exc}") from exc

    def emit(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
             prefix: str) -> EmittedProgram:
        from irkit.plugins.llvm.codegen import entry_symbol, translate_program
        from irkit.plugins.llvm.emit import emit_object
        from irkit.plugins.llvm.entry import add_facts, call_symbol, table_symbol
        from irkit.runtime.facts import program_facts

        start = time.perf_counter()
        program = lowered.program
        lanes = self.tiles(target, options).vec
        module = translate_program(program, target, fast_math=options["fast_math"],
                                   lanes=lanes)
        object_file, weights_file = f"{prefix}{OBJECT_FILE}", f"{prefix}{WEIGHTS_FILE}"
        run = entry_symbol(program)
        entry = program_entry(
            lowered, code=object_file, weights=weights_file, run=run,
            kernels=[k.name for k in program.kernels],
            # The CPython fast entry and the global its table address goes in (entry.py).
            native={"call": call_symbol(run), "call_table": table_symbol(run)})
        # What the code is, recorded in it: a re-hashed manifest cannot say otherwise.
        input_dtypes = {v.name: np.dtype(v.type.dtype.numpy).name  # type: ignore[union-attr]
                        for v in lowered.inputs}
        add_facts(module, run, program_facts(entry, input_dtypes, program.weights,
                                             self.requirements(target)))
        obj = emit_object(module, target)
        files = {object_file: obj.data, weights_file: program.weights}
        if options["emit"] == "shared":
            if prefix:
                raise BackendError("emit='shared' links one model.so: name one arch")
            files.update(_link_shared(obj.data, program))
        info = {
            "memory_plan": lowered.plan.report(),
            "fused": lowered.fused,
            "compile_seconds": {"llvm": round(obj.seconds, 4)},
            "int8_dot": target.int8_dot(lanes) if _uses_int8_dot(program) else None,
            "kernels_chosen": lowered.kernel_notes or None,
        }
        entry = replace(entry, info={k: v for k, v in info.items() if v is not None})
        return EmittedProgram(files, entry, time.perf_counter() - start)


def _uses_int8_dot(program: Any) -> bool:
    from irkit.kir.visit import calls_in

    return any({"dot4_u8s8", "dot4_u8s7", "dot8_u8s6"} & calls_in(kernel.body) for kernel in program.kernels)


def _link_shared(object_code: bytes, program: Any) -> dict[str, bytes]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "model.o"
        obj.write_bytes(object_code)
        so = Path(tmp) / "model.so"
        result = subprocess.run([cc, "-shared", "-o", str(so), str(obj), "-lm"],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BackendError(f"linking model.so failed: {result.stderr.strip()}")
        shared = so.read_bytes()
    run = f"{program.name}_run"
    extra = "".join(f" + {c}*{'*'.join(m)}" for m, c in program.workspace_terms)
    header = (
        "/* irkit llvm artifact: call run(io, weights, workspace, dims). io holds one pointer\n"
        f" * per tensor in this order: {', '.join(program.io_order)}.\n"
        f" * dims points at the symbolic dims as int64_t: {', '.join(program.symbols)}.\n"
        f" * workspace needs {program.workspace_n}*N + {program.workspace_c}{extra} bytes, "
        "64-byte aligned; weights is weights.bin. */\n#include <stdint.h>\n"
        f"void {run}(void **io, const void *weights, void *workspace, const int64_t *dims);\n"
    )
    return {"model.so": shared, "model.h": header.encode()}
