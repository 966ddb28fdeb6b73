"""The backend contract: what every backend shares, so a new one is a translator and a
loader, not a copy of the llvm backend.

```
Graph --legalize(capabilities)--> Graph --lower_graph(graph, target)--> kernel-IR Program
      --backend.emit(lowered, target)--> files + KernelProgram --build_artifact--> Artifact
runtime: irkit.runtime.runner.open_program over the backend's KernelLibrary
```

- :func:`build_artifact` turns any backend's files and entry into an Artifact with the
  graph's signature and its optimization report (every backend keeps the pass reports).
- :class:`KernelBackend` is the compile flow of kernel-program backends: options
  (:func:`irkit.runtime.options.resolve_options`), targets (``arch``, one or several:
  one variant each, the runtime picks what the host runs), the legalize pipeline, the
  ORT-fallback partitioner, lowering and the manifest entry. A subclass declares its
  options and target families and implements :meth:`KernelBackend.emit`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from irkit import __version__
from irkit.errors import IrkitError, UnsupportedOpsError
from irkit.ir import Graph, Value
from irkit.ir.types import MapType, SequenceType, TensorType
from irkit.lower import Capabilities, LoweredModel, LoweringError, Tiles
from irkit.lower.dynamic import is_dynamic
from irkit.runtime.artifact import Artifact
from irkit.runtime.options import Option, resolve_options
from irkit.runtime.program import KernelProgram, ProgramEntry, Segment, Variant
from irkit.runtime.signature import TensorSpec
from irkit.target import Target, TargetError, resolve_targets


class BackendError(IrkitError):
    """A graph cannot be compiled by a backend (bad option, target or model)."""


class BackendUnsupportedError(BackendError, UnsupportedOpsError):
    """The graph uses ops, dtypes or attributes the backend does not lower."""


def tensor_spec(value: Value, side: str, graph_name: str,
                rename: Mapping[str, str] | None = None) -> TensorSpec:
    """The signature entry of a graph input or output (``rename`` maps symbolic dims)."""
    if not isinstance(value.type, TensorType):
        hint = (" (scikit-learn's ZipMap writes one: convert with skl2onnx's options="
                "{'zipmap': False} to get the probabilities as a tensor)"
                if isinstance(value.type, SequenceType) and isinstance(value.type.elem, MapType)
                else "")  # fmt: skip
        raise BackendError(
            f"graph {graph_name!r}: {side} {value.name!r} is a {value.type}, which irkit "
            f"artifacts cannot carry (numeric and bool tensors only){hint}")
    dtype = value.type.dtype
    numpy_dtype = np.dtype(dtype.numpy)
    if numpy_dtype.hasobject or numpy_dtype.kind in "USO":
        raise BackendError(
            f"graph {graph_name!r}: {side} {value.name!r} has dtype {dtype.name.lower()}, "
            "which irkit artifacts cannot carry (numeric and bool tensors only)")
    names = rename or {}
    shape = tuple(names.get(d, d) if isinstance(d, str) else d
                  for d in value.type.shape or ())
    try:
        return TensorSpec(value.name, numpy_dtype, shape)
    except ValueError as exc:
        raise BackendError(f"graph {graph_name!r}: {side} {value.name!r}: {exc}") from exc


def pass_reports(graph: Graph) -> list[Any]:
    """The graph's optimization history as JSON-ready dicts."""
    items: list[Any] = []
    for entry in getattr(graph, "history", None) or []:
        to_dict = getattr(entry, "to_dict", None)
        items.append(to_dict() if callable(to_dict) else entry)
    return items


def build_artifact(graph: Graph, *, backend: str, target: str, files: Mapping[str, bytes],
                   entry: Mapping[str, Any], options: Mapping[str, Any],
                   report: Sequence[Any] = (), rename: Mapping[str, str] | None = None
                   ) -> Artifact:
    """The Artifact of ``graph`` compiled by ``backend``: its signature, the backend's
    files and entry, the options used and the graph's pass reports followed by
    ``report`` (the backend's own notes, such as a fallback)."""
    name = getattr(graph, "name", "") or "model"
    return Artifact(
        name=name, backend=backend, target=target,
        inputs=tuple(tensor_spec(v, "input", name, rename) for v in graph.inputs),
        outputs=tuple(tensor_spec(v, "output", name, rename) for v in graph.outputs),
        files=dict(files), entry=dict(entry), options=dict(options),
        report=[*pass_reports(graph), *report], created_by=f"irkit {__version__}",
    )


@dataclass
class EmittedProgram:
    """What :meth:`KernelBackend.emit` returns: the files it wrote and how to call them
    (``program.code``/``program.weights`` name files in ``files``)."""

    files: dict[str, bytes]
    program: KernelProgram
    seconds: float = 0.0  # code generation time


KERNEL_OPTIONS: dict[str, Option] = {
    "arch": Option((str, list, tuple), "native",
                   "target(s) to compile for: a preset (native, x86-64-v3, x86-64-v4, ...; "
                   "see `irkit targets`) or a list, one artifact holding each (the runtime "
                   "runs the best one the host supports)"),
    "threads": Option(int, 0, "worker threads at run time; 0 = all cores"),
    "fallback": Option(str, "none", "unsupported ops: 'none' raises one error naming them "
                       "all; 'ort' runs those nodes (in segments) with ONNX Runtime",
                       choices=("none", "ort")),
}


@dataclass
class _Compiled:
    files: dict[str, bytes] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"lower": 0.0, "codegen": 0.0})


class KernelBackend:
    """The shared compile flow of kernel-program backends (llvm; numba, cuda, wasm)."""

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("cpu",)
    default_arch: ClassVar[str] = "native"
    options: ClassVar[dict[str, Option]] = KERNEL_OPTIONS
    # Whether its runtime runs data-dependent ops (NonZero, Unique…) as segments whose
    # outputs are cut to a size the kernel reports (irkit.lower.dynamic).
    dynamic_shapes: ClassVar[bool] = False

    # -- what a backend provides -------------------------------------------------------
    def capabilities(self, target: Target) -> Capabilities:
        """Which ops this backend lowers for ``target`` (default: every op the kernel-IR
        lowering has)."""
        return Capabilities(self.name)

    def tiles(self, target: Target, options: Mapping[str, Any]) -> Tiles:
        """Heavy-op template parameters for ``target`` (default: its register tiles)."""
        return Tiles.for_target(target)

    def requirements(self, target: Target) -> dict[str, Any]:
        """What a machine must have to run this backend's code for ``target`` (recorded
        per variant, checked at load): by default the target's ISA features."""
        return target.requirements()

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise BackendError for option values the types alone do not rule out."""
        if options["threads"] < 0:
            raise BackendError(f"{self.name} option threads must be >= 0")

    def emit(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
             prefix: str) -> EmittedProgram:
        """Translate one lowered program; file names start with ``prefix``."""
        raise NotImplementedError

    # -- the shared flow -------------------------------------------------------------
    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = resolve_options(f"{self.name} backend", self.options, options, BackendError)
        self.check_options(resolved)
        return resolved

    def targets(self, options: Mapping[str, Any]) -> list[Target]:
        try:
            targets = resolve_targets(options["arch"], families=self.families,
                                      default=self.default_arch)
        except TargetError as exc:
            raise BackendError(f"{self.name} backend: {exc}") from exc
        return [t.with_threads(options["threads"]) for t in targets]

    def compile(self, graph: Graph, **options: Any) -> Artifact:
        """Legalize, lower and emit ``graph`` for each target; one artifact."""
        from irkit.lower.control import is_host_node
        from irkit.lower.dynamic import prepare_dynamic
        from irkit.lower.legalize import legalize
        from irkit.lower.onnx_ml import adopt_output_types, name_unknown_input_dims
        from irkit.lower.onnx_ml_trees import tree_notes

        opts = self.resolve(options)
        targets = self.targets(opts)
        graph = prepare_dynamic(graph, self.name, self.dynamic_shapes, BackendUnsupportedError)
        graph = name_unknown_input_dims(graph)  # skl2onnx leaves the batch dim unnamed
        start = time.perf_counter()
        compiled = _Compiled()
        notes: list[Any] = tree_notes(graph)
        for target in targets:
            caps = self.capabilities(target)
            legal = legalize(graph, caps)
            prefix = f"{target.name}/" if len(targets) > 1 else ""
            try:
                segments = self._segments(legal, target, caps, opts, prefix, compiled)
            except LoweringError as exc:
                if opts["fallback"] == "ort":
                    return self._ort_fallback(legal, opts, str(exc), caps)
                raise BackendUnsupportedError(str(exc)) from exc
            compiled.variants.append(Variant(target.to_json(), self.requirements(target),
                                             tuple(segments)))
            fallback_ops = sorted({n.qualified_op for n in caps.unsupported(legal)
                                   if not is_dynamic(n) and not is_host_node(n)})
            if fallback_ops and not any("fallback_ops" in n for n in notes):
                notes.append({"fallback": "ort", "fallback_ops": fallback_ops})
            control_ops = sorted({n.op for n in legal.nodes if is_host_node(n)})
            if control_ops and not any("control_flow" in n for n in notes):
                notes.append({"control_flow": "runtime", "ops": control_ops})
        entry = ProgramEntry(tuple(compiled.variants)).to_json()
        entry["compile_seconds"] = {**{k: round(v, 4) for k, v in compiled.seconds.items()},
                                    "total": round(time.perf_counter() - start, 4)}
        entry["targets"] = [t.name for t in targets]
        for note in notes:
            if "fallback_ops" in note:
                entry["fallback_ops"] = note["fallback_ops"]
        graph = adopt_output_types(graph, legal)  # ONNX-ML outputs are typed once rewritten
        return build_artifact(graph, backend=self.name,
                              target=",".join(t.name for t in targets),
                              files=compiled.files, entry=entry, options=opts, report=notes,
                              rename=_first_symbol_is_n(graph))

    def _segments(self, graph: Graph, target: Target, caps: Capabilities,
                  options: Mapping[str, Any], prefix: str, compiled: _Compiled
                  ) -> list[Segment]:
        from irkit.backend_control import control_segments, needs_control
        from irkit.interop.onnx_export import to_onnx
        from irkit.lower.partition import split_graph

        if needs_control(graph):  # Loop/If/sequences run by the runtime: their own segments
            return control_segments(self, graph, target, caps, options, prefix, compiled)
        if self.dynamic_shapes and any(is_dynamic(n) for n in graph.nodes):
            return self._dynamic_segments(graph, target, caps, options, prefix, compiled)
        missing = caps.unsupported(graph)
        if not missing or options["fallback"] != "ort":
            program = self._program(graph, target, caps, options, prefix, compiled)
            return [Segment("kernels", tuple(v.name for v in graph.inputs),
                            tuple(v.name for v in graph.outputs), program=program)]
        segments = []
        for index, part in enumerate(split_graph(graph, set(missing))):
            if part.kind == "ort":
                name = f"{prefix}seg{index}.onnx"
                compiled.files[name] = to_onnx(part.graph).SerializeToString()
                segments.append(Segment("ort", tuple(part.inputs), tuple(part.outputs),
                                        model=name))
                continue
            program = self._program(part.graph, target, caps, options,
                                    f"{prefix}seg{index}_", compiled)
            segments.append(Segment("kernels", tuple(part.inputs), tuple(part.outputs),
                                    program=program))
        return segments

    def _dynamic_segments(self, graph: Graph, target: Target, caps: Capabilities,
                          options: Mapping[str, Any], prefix: str, compiled: _Compiled
                          ) -> list[Segment]:
        """Each data-dependent node a program of its own whose outputs the runtime cuts
        to the count it writes; the runs between them as usual (ORT fallback included)."""
        from irkit.lower.dynamic import lower_dynamic_graph, split_dynamic
        from irkit.runtime.dynamic import Trim

        segments: list[Segment] = []
        for index, part in enumerate(split_dynamic(graph)):
            tag = f"{prefix}seg{index}_"
            if not part.dynamic:
                segments.extend(self._segments(part.graph, target, caps, options, tag,
                                               compiled))
                continue
            start = time.perf_counter()
            lowered = lower_dynamic_graph(part.graph, target, self.tiles(target, options))
            compiled.seconds["lower"] += time.perf_counter() - start
            program = self._emitted(lowered, target, options, tag, compiled)
            assert part.trim is not None
            segments.append(Segment("kernels", tuple(part.inputs),
                                    (*part.outputs, part.count), program=program,
                                    trim=Trim(part.count, part.trim)))
        return segments

    def _program(self, graph: Graph, target: Target, caps: Capabilities,
                 options: Mapping[str, Any], prefix: str, compiled: _Compiled
                 ) -> KernelProgram:
        from irkit.lower import lower_graph

        start = time.perf_counter()
        lowered = lower_graph(graph, target, tiles=self.tiles(target, options),
                              capabilities=caps)
        compiled.seconds["lower"] += time.perf_counter() - start
        return self._emitted(lowered, target, options, prefix, compiled)

    def _emitted(self, lowered: LoweredModel, target: Target, options: Mapping[str, Any],
                 prefix: str, compiled: _Compiled) -> KernelProgram:
        emitted = self.emit(lowered, target, options, prefix)
        compiled.seconds["codegen"] += emitted.seconds
        program = emitted.program
        for name, data in emitted.files.items():
            if name == program.weights:
                # Variants whose weights are byte-identical share one file.
                same = next((n for n, d in compiled.files.items() if d == data and
                             n.endswith(name.rsplit("/", 1)[-1])), None)
                if same is not None:
                    program = _with_weights(program, same)
                    continue
            compiled.files[name] = data
        return program

    def _ort_fallback(self, graph: Graph, options: Mapping[str, Any], why: str,
                      caps: Capabilities) -> Artifact:
        """The whole model on ONNX Runtime, when lowering fails on a node it claimed."""
        from irkit.plugins.ort import OrtBackend

        art = OrtBackend().compile(graph, threads=options["threads"])
        ops = sorted({n.qualified_op for n in caps.unsupported(graph)})
        art.report = [*art.report, {f"{self.name}_fallback": "ort", "unsupported_ops": ops,
                                    "reason": why}]
        return art


def _with_weights(program: KernelProgram, weights: str) -> KernelProgram:
    from dataclasses import replace

    return replace(program, weights=weights)


def _first_symbol_is_n(graph: Graph) -> dict[str, str]:
    """Kernel programs call the first symbolic input dim ``N`` (``N1``, ``N2``… the
    others); the signature says ``N`` for it too, other dims keep their names."""
    from irkit.lower.driver import graph_symbols

    symbols = list(graph_symbols(graph))
    return {symbols[0]: "N"} if symbols and "N" not in symbols[1:] else {}


def program_entry(lowered: LoweredModel, *, code: str, weights: str, run: str,
                  kernels: Sequence[str], native: Mapping[str, str] | None = None,
                  info: Mapping[str, Any] | None = None) -> KernelProgram:
    """The manifest entry of one lowered program (every size a polynomial)."""
    from irkit.lower.symbolic import to_json
    from irkit.runtime.program import poly_from_json

    program = lowered.program
    workspace = {("N",): program.workspace_n, (): program.workspace_c}
    for monomial, coefficient in program.workspace_terms:
        key = tuple(sorted(monomial))
        workspace[key] = workspace.get(key, 0) + coefficient

    def shapes(table: Mapping[str, list[dict[str, int]]]
               ) -> dict[str, tuple[dict[tuple[str, ...], int], ...]]:
        return {name: tuple(poly_from_json(d, f"shape of {name}") for d in dims)
                for name, dims in table.items()}

    return KernelProgram(
        code=code, weights=weights, run=run, kernels=tuple(kernels),
        io=tuple(program.io_order), symbols=tuple(program.symbols),
        workspace=poly_from_json(to_json(workspace), "workspace"),
        input_shapes=shapes(lowered.input_shapes), output_shapes=shapes(lowered.output_shapes),
        output_dtypes={v.name: np.dtype(v.type.dtype.numpy).name  # type: ignore[union-attr]
                       for v in lowered.outputs},
        constraints=tuple((poly_from_json(c["size"], "constraint"), str(c["why"]))
                          for c in lowered.constraints),
        guards=tuple(lowered.guards), native=dict(native or {}), info=dict(info or {}),
        weights_bytes=len(program.weights),
    )
