"""The ``wasm`` backend: kernel IR → LLVM IR → wasm32 object → one standalone ``.wasm``.

``irkit.compile(graph, target="wasm", arch=["wasm32-simd", "wasm32"], fallback="none",
fast_math=True)`` returns an Artifact holding, for each target named by ``arch``,
``<arch>/model.wasm`` (the model's own kernels, linked with ``wasm-ld`` from the
``ziglang`` wheel), one ``weights.bin`` (64-byte aligned raw blobs, GEMM weights packed;
the variants share it when their packing agrees), and a JavaScript ES module loader
``model.mjs`` with its TypeScript declarations ``model.d.ts``.

Translation is the llvm backend's (:func:`irkit.plugins.llvm.codegen.translate_program`)
for the ``wasm32`` triple: ``wasm32-simd`` code uses 128-bit vectors (4 f32 lanes), the
scalar ``wasm32`` build runs on engines without SIMD. Math the kernels call resolves
inside the module (:mod:`.link`): a module imports nothing and exports ``memory``, the
entry ``<model>_run(io, weights, workspace, dims)`` (pointers into its linear memory),
each kernel with its extent, and the allocator ``irkit_alloc``/``irkit_release``.

Loaders: :mod:`irkit.runtime.backends.wasm` runs the artifact in ``wasmtime`` from Python
(``irkit.runtime.load``; every adapter can serve it), ``model.mjs`` in browsers and node.
Both pick the SIMD build when the engine validates a SIMD module, else the scalar one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from irkit.backend import KERNEL_OPTIONS, BackendError, EmittedProgram, KernelBackend, program_entry
from irkit.ir import Graph
from irkit.lower import LoweredModel, LoweringError, Tiles
from irkit.runtime.artifact import Artifact
from irkit.runtime.options import Option
from irkit.target import Target

CODE_FILE = "model.wasm"
WEIGHTS_FILE = "weights.bin"
DEFAULT_ARCH = "wasm32-simd,wasm32"
# Register tiles (rows x columns of f32) of the heavy-op templates. Engines give wasm code
# the 16 xmm registers of x86-64 (V8 keeps one or two as scratch), and LLVM, which sees
# unlimited wasm locals, hoists every row's broadcast ahead of the multiplies: with the
# CPU default (6 x 8 GEMM, 3 x 16 conv) accumulators spilled on every k step. 2 x 16 keeps
# 8 accumulators, 4 B vectors and 2 broadcasts (14 registers), and a one-row GEMM (batch
# 1) still has 4 independent accumulator chains. Measured against 6x8, 4x8, 5x8 and 3x16
# in node (benchmarks/bench_wasm.py --option mr=... --option nr=...).
GEMM_TILE = (2, 16)
CONV_TILE = (2, 16)


def simd_arch(arch: str | list[str] | tuple[str, ...], simd: bool | None) -> Any:
    """``arch`` as the spec's ``simd = true|false`` narrows it (``target wasm { simd =
    false }`` builds wasm32 alone); an arch list that contradicts it is an error."""
    names = [a.strip() for a in (arch.split(",") if isinstance(arch, str) else arch)]
    if simd is None:
        return arch
    if not simd and names == DEFAULT_ARCH.split(","):
        return "wasm32"
    if simd != ("wasm32-simd" in names) or (not simd and names != ["wasm32"]):
        raise BackendError(f"wasm options simd = {str(simd).lower()} and arch = "
                           f"{','.join(names)!r} disagree: simd = false builds wasm32 alone, "
                           "simd = true needs wasm32-simd in arch")
    return arch


class WasmBackend(KernelBackend):
    """Compile a Graph to WebAssembly modules (SIMD and scalar) plus a JS loader."""

    name = "wasm"
    families = ("wasm",)
    default_arch = DEFAULT_ARCH
    options: ClassVar[dict[str, Option]] = {
        **KERNEL_OPTIONS,
        "arch": Option((str, list, tuple), DEFAULT_ARCH,
                       "WebAssembly target(s): wasm32-simd (128-bit SIMD), wasm32 (no SIMD) "
                       "or both (the default; loaders run SIMD where the engine has it)"),
        "threads": Option(int, 0, "ignored: a WebAssembly module runs on one thread"),
        "fast_math": Option(bool, True, "reassociation/contraction flags (vectorized "
                            "reductions); NaN/Inf semantics are kept"),
        "mr": Option(int, 0, f"GEMM microkernel rows; 0 = {GEMM_TILE[0]}"),
        "nr": Option(int, 0, f"GEMM microkernel columns (multiple of 4); 0 = {GEMM_TILE[1]}"),
        "conv_mr": Option(int, 0, f"convolution microkernel rows (output channels); 0 = "
                          f"{CONV_TILE[0]}"),
        "conv_nr": Option(int, 0, f"convolution microkernel columns (pixels); 0 = "
                          f"{CONV_TILE[1]}"),
        "loader": Option(bool, True, "write the JavaScript loader model.mjs and model.d.ts"),
        "simd": Option((bool, type(None)), None, "false: only the scalar build (wasm32); "
                       "true: the SIMD build, with the scalar one as the fallback unless "
                       "arch names wasm32-simd alone (the default)"),
    }

    def targets(self, options: Mapping[str, Any]) -> list[Target]:
        return super().targets({**options, "arch": simd_arch(options["arch"],
                                                             options["simd"])})

    def tiles(self, target: Target, options: Mapping[str, Any]) -> Tiles:
        try:
            return Tiles.for_target(target, mr=options["mr"] or GEMM_TILE[0],
                                    nr=options["nr"] or GEMM_TILE[1], vec=4,
                                    conv_mr=options["conv_mr"] or CONV_TILE[0],
                                    conv_nr=options["conv_nr"] or CONV_TILE[1])
        except LoweringError as exc:
            raise BackendError(f"wasm options: {exc}") from exc

    def emit(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
             prefix: str) -> EmittedProgram:
        from irkit.plugins.llvm.codegen import entry_symbol, translate_program
        from irkit.plugins.llvm.emit import emit_object
        from irkit.plugins.wasm.link import ALLOC_SYMBOL, RELEASE_SYMBOL, link_module

        start = time.perf_counter()
        program = lowered.program
        module = translate_program(program, target, fast_math=options["fast_math"],
                                   lanes=self.tiles(target, options).vec)
        obj = emit_object(module, target)
        run = entry_symbol(program)
        kernels = [k.name for k in program.kernels]
        exports = [run, *kernels, *(f"{k}_extent" for k in kernels)]
        link_start = time.perf_counter()
        wasm = link_module(obj.data, exports)
        code_file, weights_file = f"{prefix}{CODE_FILE}", f"{prefix}{WEIGHTS_FILE}"
        info = {
            "memory_plan": lowered.plan.report(),
            "fused": lowered.fused,
            "module_bytes": len(wasm),
            "compile_seconds": {"llvm": round(obj.seconds, 4),
                                "link": round(time.perf_counter() - link_start, 4)},
        }
        entry = program_entry(
            lowered, code=code_file, weights=weights_file, run=run, kernels=kernels,
            native={"memory": "memory", "alloc": ALLOC_SYMBOL, "release": RELEASE_SYMBOL},
            info=info)
        files = {code_file: wasm, weights_file: program.weights}
        return EmittedProgram(files, entry, time.perf_counter() - start)

    def compile(self, graph: Graph, **options: Any) -> Artifact:
        artifact = super().compile(graph, **options)
        if artifact.backend == self.name and self.resolve(options)["loader"]:
            from irkit.plugins.wasm.js import loader_files

            artifact.files.update(loader_files(artifact))
        return artifact

    def check_options(self, options: dict[str, Any]) -> None:
        super().check_options(options)
        simd_arch(options["arch"], options["simd"])
        if not (0 <= options["mr"] <= 16 and 0 <= options["conv_mr"] <= 16) or \
                options["nr"] < 0 or options["nr"] % 4 or options["conv_nr"] % 4:
            raise BackendError("wasm tile sizes: 0 <= mr <= 16, nr a multiple of 4")
        if options["threads"] > 1:
            raise BackendError("wasm option threads: a WebAssembly module runs on one "
                               "thread (0 or 1)")
