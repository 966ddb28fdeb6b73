"""The ``llvm`` backend: Graph → kernel IR → LLVM IR (llvmlite) → host object file.

``irkit.compile(graph, target="llvm", threads=0, fallback="none", mr=0, nr=0, vec=0,
conv_mr=0, conv_nr=0, emit="object", fast_math=True)`` returns an Artifact holding
``model.o`` (relocatable, host triple and CPU features, -O3), ``weights.bin`` (64-byte
aligned raw blobs, GEMM weights pre-packed into panels) and a manifest whose ``entry``
names the entry symbols, io order, the symbolic dims, shapes (``[a, b]`` for ``a*N+b``,
or polynomials such as ``{"N*N1": 384}`` when a model has several symbolic dims, e.g.
batch and sequence), the workspace plan with its peak bytes, the fused ops and the
compile time. Tile sizes of 0 pick defaults for the host
(AVX-512: vec=16, 8x32 GEMM and 4x64 conv microkernels; AVX2: vec=8, 6x16 and 3x32).
The runtime loader ``irkit.runtime.backends.llvm`` links the object in process with
llvmlite's ORC JIT, so serving needs no system linker. ``emit="shared"`` also links
``model.so`` and writes ``model.h`` when a C compiler driver (``cc``) exists.

Ops it cannot lower: one error naming all of them, or with ``fallback="ort"`` the graph
is split into segments and ONNX Runtime runs the unsupported ones (see ``segments``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from irkit import __version__
from irkit.errors import IrkitError, UnsupportedOpsError
from irkit.runtime.artifact import Artifact
from irkit.runtime.options import Option
from irkit.runtime.signature import TensorSpec

OBJECT_FILE = "model.o"
WEIGHTS_FILE = "weights.bin"


class LlvmBackendError(IrkitError):
    """The graph cannot be compiled by the llvm backend."""


class LlvmUnsupportedError(LlvmBackendError, UnsupportedOpsError):
    """The graph uses ops, dtypes or attributes the llvm backend does not lower."""


def _tensor_spec(value: Any, symbols: list[str]) -> TensorSpec:
    """The first symbolic dim is called ``N`` in the signature; others keep their names."""
    rename = {symbols[0]: "N"} if symbols and "N" not in symbols[1:] else {}
    shape = tuple(rename.get(d, d) if isinstance(d, str) else d for d in value.type.shape)
    return TensorSpec(value.name, np.dtype(value.type.dtype.numpy), shape)


class LlvmBackend:
    """Compile a Graph to native code for the host CPU."""

    name = "llvm"
    options: dict[str, Option] = {
        "threads": Option(int, 0, "worker threads at run time; 0 = all cores"),
        "fallback": Option(str, "none", "unsupported ops: 'none' raises one error naming them "
                           "all; 'ort' runs those nodes (in segments) with ONNX Runtime",
                           choices=("none", "ort")),
        "mr": Option(int, 0, "GEMM microkernel rows; 0 = 8 with AVX-512 (32 vector "
                     "registers), else 6"),
        "nr": Option(int, 0, "GEMM microkernel columns (multiple of vec); 0 = 2 * vec"),
        "conv_mr": Option(int, 0, "convolution microkernel rows (output channels); 0 = 4 "
                          "with AVX-512, else 3"),
        "conv_nr": Option(int, 0, "convolution microkernel columns (pixels); 0 = 4 * vec"),
        "vec": Option(int, 0, "vector lanes (f32) of the GEMM microkernel; 0 = 16 with "
                      "AVX-512, else 8"),
        "emit": Option(str, "object", "'object', or 'shared' to also link model.so + model.h",
                       choices=("object", "shared")),
        "fast_math": Option(bool, True, "reassociation/contraction flags (vectorized "
                            "reductions); NaN/Inf semantics are kept"),
    }

    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise LlvmBackendError(f"llvm backend has no option(s) {', '.join(unknown)}; "
                                   f"its options: {', '.join(self.options)}")
        resolved = {}
        for key, opt in self.options.items():
            value = options.get(key, opt.default)
            ok = isinstance(value, opt.type) and (opt.type is bool or not isinstance(value, bool))
            if not ok:
                raise LlvmBackendError(f"llvm option {key}={value!r} must be {opt.type.__name__}")
            if opt.choices is not None and value not in opt.choices:
                raise LlvmBackendError(f"llvm option {key}={value!r} must be one of "
                                       f"{', '.join(opt.choices)}")
            resolved[key] = value
        if resolved["threads"] < 0:
            raise LlvmBackendError("llvm option threads must be >= 0")
        if resolved["vec"] not in (0, 4, 8, 16):
            raise LlvmBackendError("llvm option vec must be 0 (auto), 4, 8 or 16")
        if not (0 <= resolved["mr"] <= 16 and 0 <= resolved["conv_mr"] <= 16) or \
                resolved["nr"] < 0 or resolved["nr"] % 4 or resolved["conv_nr"] % 4:
            raise LlvmBackendError("tile sizes: 1 <= mr <= 16 and nr a multiple of 4")
        return resolved

    def compile(self, graph: Any, **options: Any) -> Artifact:
        """Lower, translate and emit ``graph``; see the module docstring for options."""
        from irkit.lower import LoweringError, unsupported_nodes
        from irkit.lower.driver import graph_symbols, lowers
        from irkit.lower.expand import expand_functions
        from irkit.lower.fused import decompose_fused_ops
        from irkit.lower.unroll import unroll_control_flow
        from irkit.plugins.llvm.emit import host_target

        opts = self._resolve(options)
        graph = decompose_fused_ops(graph)  # irkit fused ops -> ops the GEMM epilogues fuse
        graph = expand_functions(graph, lowers)  # ONNX function bodies for ops without lowering
        graph = unroll_control_flow(graph, lowers)  # If/Loop/Scan/RNN/GRU/LSTM unrolled
        start = time.perf_counter()
        target = host_target()
        missing = unsupported_nodes(graph)
        try:
            if missing and opts["fallback"] == "ort":
                files, entry = self._compile_segments(graph, set(missing), opts)
            else:
                files, entry = _compile_program(graph, opts, "")
        except LoweringError as exc:
            if opts["fallback"] == "ort":
                return self._fallback(graph, opts, str(exc))
            raise LlvmUnsupportedError(str(exc)) from exc
        entry["target"] = {"triple": target.triple, "cpu": target.cpu}
        entry["compile_seconds"]["total"] = round(time.perf_counter() - start, 4)
        symbol = list(graph_symbols(graph))
        return Artifact(
            name=getattr(graph, "name", "") or "model", backend=self.name,
            target=f"cpu:{target.cpu}",
            inputs=tuple(_tensor_spec(v, symbol) for v in graph.inputs),
            outputs=tuple(_tensor_spec(v, symbol) for v in graph.outputs),
            files=files, entry=entry, options=opts,
            report=[], created_by=f"irkit {__version__}",
        )

    def _compile_segments(self, graph: Any, missing: set[Any], opts: dict[str, Any]
                          ) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Per-node fallback: llvm segments as objects, the rest as ONNX for ORT."""
        from irkit.api import to_onnx
        from irkit.plugins.llvm.segments import split_graph

        files: dict[str, bytes] = {}
        segments: list[dict[str, Any]] = []
        seconds = {"lower": 0.0, "llvm": 0.0}
        for index, segment in enumerate(split_graph(graph, missing)):
            if segment.kind == "ort":
                name = f"seg{index}.onnx"
                files[name] = to_onnx(segment.graph).SerializeToString()
                segments.append({"kind": "ort", "model": name, "inputs": segment.inputs,
                                 "outputs": segment.outputs})
                continue
            seg_files, seg_entry = _compile_program(segment.graph, opts, f"seg{index}_")
            files.update(seg_files)
            for key in seconds:
                seconds[key] += seg_entry["compile_seconds"][key]
            segments.append({"kind": "llvm", **seg_entry, "inputs": segment.inputs,
                             "outputs": segment.outputs})
        ops = sorted({n.op for n in missing})
        return files, {"segments": segments, "fallback_ops": ops,
                       "compile_seconds": {k: round(v, 4) for k, v in seconds.items()}}

    def _fallback(self, graph: Any, opts: dict[str, Any], why: str = "") -> Artifact:
        from irkit.lower import unsupported_nodes
        from irkit.plugins.ort import OrtBackend

        art = OrtBackend().compile(graph, threads=opts["threads"])
        ops = sorted({n.op for n in unsupported_nodes(graph)})
        art.report = [*art.report, {"llvm_fallback": "ort", "unsupported_ops": ops,
                                    "reason": why}]
        return art


def _compile_program(graph: Any, opts: dict[str, Any], prefix: str
                     ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One kernel program: object file, weights blob and its manifest entry."""
    from irkit.lower import lower_graph
    from irkit.plugins.llvm.codegen import entry_symbol, translate_program
    from irkit.plugins.llvm.emit import emit_object, host_target
    from irkit.plugins.llvm.entry import call_symbol, table_symbol

    start = time.perf_counter()
    target = host_target()
    tiles = _tiles(opts, target.features)
    lowered = lower_graph(graph, tiles)
    lower_s = time.perf_counter() - start
    program = lowered.program
    module = translate_program(program, fast_math=opts["fast_math"], lanes=tiles.vec)
    obj = emit_object(module, target)
    object_file, weights_file = f"{prefix}{OBJECT_FILE}", f"{prefix}{WEIGHTS_FILE}"
    files = {object_file: obj.data, weights_file: program.weights}
    if opts["emit"] == "shared" and not prefix:
        files.update(_link_shared(obj.data, program))
    entry = {
        "object": object_file,
        "weights": weights_file,
        "run": entry_symbol(program),
        # The CPython fast entry and the global its table address goes in (entry.py).
        "call": call_symbol(entry_symbol(program)),
        "call_table": table_symbol(entry_symbol(program)),
        "kernels": [k.name for k in program.kernels],
        "io": list(program.io_order),
        "abi": 2,  # kernels take a pointer to the symbol values (irkit.runtime.backends.llvm)
        "symbols": list(program.symbols),
        "workspace": [program.workspace_n, program.workspace_c],
        "workspace_terms": {"*".join(m): c for m, c in program.workspace_terms},
        "input_shapes": lowered.input_shapes,
        "output_shapes": lowered.output_shapes,
        "constraints": lowered.constraints,
        "guards": lowered.guards,
        "output_dtypes": {v.name: np.dtype(v.type.dtype.numpy).name for v in graph.outputs},
        "memory_plan": lowered.plan.report(),
        "fused": lowered.fused,
        "compile_seconds": {"lower": round(lower_s, 4), "llvm": round(obj.seconds, 4)},
    }
    return files, entry


def _tiles(opts: dict[str, Any], features: str) -> Any:
    from irkit.lower import Tiles

    wide = "+avx512f" in features.split(",")
    vec = opts["vec"] or (16 if wide else 8)
    # Accumulators must leave registers for the B row and the A broadcast: 32 vector
    # registers with AVX-512, 16 with AVX2.
    mr = opts["mr"] or (8 if vec == 16 and wide else 6)
    conv_mr = opts["conv_mr"] or (4 if vec == 16 and wide else 3)
    nr = opts["nr"] or 2 * vec
    if nr % vec:
        raise LlvmBackendError(f"nr={nr} must be a multiple of vec={vec}")
    conv_nr = opts["conv_nr"] or (4 * vec if vec == 16 else 32)
    if conv_nr % vec:
        raise LlvmBackendError(f"conv_nr={conv_nr} must be a multiple of vec={vec}")
    return Tiles(mr=mr, nr=nr, vec=vec, conv_mr=conv_mr, conv_nr=conv_nr)


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
            raise LlvmBackendError(f"linking model.so failed: {result.stderr.strip()}")
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
