"""The manifest entry of a kernel-program artifact, shared by compiler and runtime.

Every kernel-program backend (llvm, and the ones that translate the same kernel IR)
writes ``manifest.json``'s ``entry`` through :class:`ProgramEntry.to_json` and every loader
reads it through :meth:`ProgramEntry.from_json`, which checks each field's type before
anything is linked or called, so a malformed entry is an :class:`ArtifactError` naming the
field, never a crash in native code::

    {"abi": 3,
     "variants": [                       # most capable first; load picks the first the
       {"target": {...},                 # host can run (irkit.target.Target.to_json)
        "requires": {"arch": "x86_64", "features": ["avx", "avx2", "fma", ...]},
        "segments": [
          {"kind": "kernels", "inputs": ["x"], "outputs": ["y"],
           "code": "model.o", "weights": "weights.bin", "run": "mlp_run",
           "kernels": ["k1", ...], "io": ["x", "y"], "symbols": ["N"],
           "workspace": {"N": 1024, "": 64},           # bytes: a polynomial in symbols
           "input_shapes": {"x": [{"N": 1}, {"": 64}]},  # each dim a polynomial
           "output_shapes": {"y": [{"N": 1}, {"": 10}]},
           "output_dtypes": {"y": "float32"},
           "constraints": [{"size": {"": 512, "N1": -1}, "why": "..."}],  # each >= 0
           "guards": [...],                            # irkit.runtime.guards
           "native": {"call": "mlp_run_call", ...},    # backend-specific symbols
           "info": {...}},                             # reports only: plan, fused ops
          {"kind": "ort", "inputs": [...], "outputs": [...], "model": "seg1.onnx"}]}]}

Sizes have one encoding: a polynomial as ``{monomial: coefficient}`` where a monomial is
symbol names joined by ``*`` and ``""`` is the constant term (``{"N": 4, "": 2}`` is
``4*N + 2``; ``{"N*N1": 384}`` is ``384*N*N1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from irkit.runtime.artifact import ArtifactError
from irkit.runtime.dynamic import Trim
from irkit.runtime.hostcpu import Host, host_level

ABI_VERSION = 3
"""Version of the calling convention between runtime and compiled code: kernels take
``(io, weights, workspace, dims, start, end)``, ``dims`` pointing at the symbol values."""

Poly = dict[tuple[str, ...], int]
"""A polynomial in the symbolic dims: monomial (sorted symbol names) -> coefficient."""

_MAX_SYMBOLS = 16
_MAX_WORKSPACE_TERM = 1 << 40
"""Largest coefficient of a workspace size term, in bytes (per unit of its symbols)."""


def poly_from_json(obj: Any, where: str) -> Poly:
    if not isinstance(obj, dict) or not obj:
        raise ArtifactError(f"{where}: a size must be a non-empty object of monomial -> int, "
                            f"got {_short(obj)}")
    poly: Poly = {}
    for key, value in obj.items():
        if not isinstance(key, str) or type(value) is not int:
            raise ArtifactError(f"{where}: size term {_short(key)}: {_short(value)} is not "
                                "'monomial': integer")
        monomial = tuple(key.split("*")) if key else ()
        if not all(s.isidentifier() for s in monomial) or len(monomial) > _MAX_SYMBOLS:
            raise ArtifactError(f"{where}: {key!r} is not a product of symbol names")
        poly[monomial] = poly.get(monomial, 0) + value
    return poly


def poly_to_json(poly: Mapping[tuple[str, ...], int]) -> dict[str, int]:
    return {"*".join(monomial): int(c) for monomial, c in poly.items() if c} or {"": 0}


def evaluate_poly(poly: Mapping[tuple[str, ...], int], values: Mapping[str, int]) -> int:
    total = 0
    for monomial, coefficient in poly.items():
        term = coefficient
        for symbol in monomial:
            term *= values[symbol]
        total += term
    return total


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(obj: Any, where: str, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(obj, list) or not all(isinstance(n, str) and n for n in obj):
        raise ArtifactError(f"{where}: expected a list of names, got {_short(obj)}")
    if not allow_empty and not obj:
        raise ArtifactError(f"{where}: must not be empty")
    return tuple(obj)


def _text(obj: Any, where: str) -> str:
    if not isinstance(obj, str) or not obj:
        raise ArtifactError(f"{where}: expected a non-empty string, got {_short(obj)}")
    return obj


def _object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected an object, got {_short(obj)}")
    return obj


def _shapes(obj: Any, where: str) -> dict[str, tuple[Poly, ...]]:
    shapes: dict[str, tuple[Poly, ...]] = {}
    for name, dims in _object(obj, where).items():
        if not isinstance(dims, list):
            raise ArtifactError(f"{where}.{name}: expected a list of sizes")
        shapes[name] = tuple(poly_from_json(d, f"{where}.{name}[{i}]")
                             for i, d in enumerate(dims))
    return shapes


@dataclass(frozen=True)
class KernelProgram:
    """One compiled kernel program: a code file, a weights file and how to call it."""

    code: str
    weights: str
    run: str
    kernels: tuple[str, ...]
    io: tuple[str, ...]
    symbols: tuple[str, ...]
    workspace: Poly
    input_shapes: dict[str, tuple[Poly, ...]]
    output_shapes: dict[str, tuple[Poly, ...]]
    output_dtypes: dict[str, str]
    constraints: tuple[tuple[Poly, str], ...] = ()
    guards: tuple[dict[str, Any], ...] = ()
    native: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    weights_bytes: int | None = None  # the weights file's size; None in older artifacts

    def to_json(self) -> dict[str, Any]:
        sized = {} if self.weights_bytes is None else {"weights_bytes": self.weights_bytes}
        return {**sized,
            "code": self.code, "weights": self.weights, "run": self.run,
            "kernels": list(self.kernels), "io": list(self.io), "symbols": list(self.symbols),
            "workspace": poly_to_json(self.workspace),
            "input_shapes": {k: [poly_to_json(d) for d in v]
                             for k, v in self.input_shapes.items()},
            "output_shapes": {k: [poly_to_json(d) for d in v]
                              for k, v in self.output_shapes.items()},
            "output_dtypes": dict(self.output_dtypes),
            "constraints": [{"size": poly_to_json(p), "why": why} for p, why in self.constraints],
            "guards": [dict(g) for g in self.guards],
            "native": dict(self.native), "info": dict(self.info),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str) -> KernelProgram:
        data = _object(data, where)
        for key in ("code", "weights", "run", "kernels", "io", "symbols", "workspace",
                    "input_shapes", "output_shapes", "output_dtypes"):
            if key not in data:
                raise ArtifactError(f"{where}: lacks {key!r}")
        io = _names(data["io"], f"{where}.io", allow_empty=False)
        symbols = _names(data["symbols"], f"{where}.symbols")
        if len(symbols) > _MAX_SYMBOLS or len(set(symbols)) != len(symbols) or not all(
                s.isidentifier() for s in symbols):
            raise ArtifactError(f"{where}.symbols: {len(symbols)} symbol names, distinct "
                                f"identifiers, at most {_MAX_SYMBOLS}")
        inputs = _shapes(data["input_shapes"], f"{where}.input_shapes")
        outputs = _shapes(data["output_shapes"], f"{where}.output_shapes")
        dtypes = _object(data["output_dtypes"], f"{where}.output_dtypes")
        if set(inputs) | set(outputs) != set(io) or set(inputs) & set(outputs) or \
                len(io) != len(set(io)):
            raise ArtifactError(f"{where}: io {list(io)} must list each input and output "
                                "shape exactly once")
        if set(dtypes) != set(outputs) or not all(isinstance(d, str) for d in dtypes.values()):
            raise ArtifactError(f"{where}.output_dtypes: one dtype name per output")
        known = set(symbols)
        for name, dims in {**inputs, **outputs}.items():
            for dim in dims:
                if any(s not in known for m in dim for s in m):
                    raise ArtifactError(f"{where}: shape of {name!r} uses a symbol not in "
                                        f"symbols {list(symbols)}")
        constraints = []
        for i, item in enumerate(_list(data.get("constraints", []), f"{where}.constraints")):
            item = _object(item, f"{where}.constraints[{i}]")
            constraints.append((poly_from_json(item.get("size"), f"{where}.constraints[{i}]"),
                                str(item.get("why", ""))))
        for size, _ in constraints:
            if set(size) <= {()} and size.get((), 0) < 0:
                raise ArtifactError(f"{where}.constraints: a constant negative size "
                                    f"{poly_to_json(size)} admits no input at all")
        workspace = poly_from_json(data["workspace"], f"{where}.workspace")
        if not all(0 <= c <= _MAX_WORKSPACE_TERM for c in workspace.values()):
            raise ArtifactError(f"{where}.workspace: {poly_to_json(workspace)} needs terms "
                                f"between 0 and {_MAX_WORKSPACE_TERM} bytes")
        weights_bytes = data.get("weights_bytes")
        if weights_bytes is not None and (type(weights_bytes) is not int or weights_bytes < 0):
            raise ArtifactError(f"{where}.weights_bytes: {_short(weights_bytes)} is not a "
                                "byte count")
        guards = tuple(_object(g, f"{where}.guards[{i}]")
                       for i, g in enumerate(_list(data.get("guards", []), f"{where}.guards")))
        native = _object(data.get("native", {}), f"{where}.native")
        if not all(isinstance(v, str) for v in native.values()):
            raise ArtifactError(f"{where}.native: symbol names must be strings")
        return cls(
            code=_text(data["code"], f"{where}.code"),
            weights=_text(data["weights"], f"{where}.weights"),
            run=_text(data["run"], f"{where}.run"),
            kernels=_names(data["kernels"], f"{where}.kernels"),
            io=io, symbols=symbols,
            workspace=workspace, weights_bytes=weights_bytes,
            input_shapes=inputs, output_shapes=outputs, output_dtypes=dict(dtypes),
            constraints=tuple(constraints), guards=guards, native=dict(native),
            info=_object(data.get("info", {}), f"{where}.info"),
        )


def _list(obj: Any, where: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ArtifactError(f"{where}: expected a list, got {_short(obj)}")
    return obj


@dataclass(frozen=True)
class Segment:
    """A run of the model: a kernel program, ONNX nodes ONNX Runtime executes
    (``fallback = "ort"``), or host control flow between compiled segments (``loop``,
    ``if``, ``seq``: :mod:`irkit.runtime.control`). ``inputs``/``outputs`` name the values
    it reads and writes."""

    kind: str  # "kernels", "ort", or one of irkit.runtime.control.CONTROL_KINDS
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    program: KernelProgram | None = None
    model: str | None = None  # the ONNX file of an "ort" segment
    # Outputs cut to a size the kernels report (irkit.runtime.dynamic): NonZero, Unique…
    trim: Trim | None = None
    control: Any = None  # irkit.runtime.control.Control of a control segment

    def to_json(self) -> dict[str, Any]:
        if self.control is not None:
            body = self.control.to_json()
        else:
            body = self.program.to_json() if self.program is not None else {"model": self.model}
        if self.trim is not None:
            body["trim"] = self.trim.to_json()
        return {"kind": self.kind, "inputs": list(self.inputs), "outputs": list(self.outputs),
                **body}

    @classmethod
    def from_json(cls, data: Any, where: str, depth: int = 0) -> Segment:
        from irkit.runtime.control import CONTROL_KINDS, Control, check_control

        data = _object(data, where)
        kind = data.get("kind")
        inputs = _names(data.get("inputs"), f"{where}.inputs")
        outputs = _names(data.get("outputs"), f"{where}.outputs", allow_empty=False)
        if kind == "ort":
            return cls("ort", inputs, outputs, model=_text(data.get("model"), f"{where}.model"))
        if kind in CONTROL_KINDS:
            segment = cls(kind, inputs, outputs,
                          control=Control.from_json(kind, data, where, depth))
            check_control(segment, where)
            return segment
        if kind != "kernels":
            raise ArtifactError(f"{where}.kind: {_short(kind)} is not one of 'kernels', "
                                f"'ort', {', '.join(repr(k) for k in CONTROL_KINDS)}")
        program = KernelProgram.from_json(data, where)
        if set(program.input_shapes) != set(inputs) or set(program.output_shapes) != set(outputs):
            raise ArtifactError(f"{where}: inputs/outputs disagree with its shapes")
        trim = None if "trim" not in data else Trim.from_json(
            data["trim"], outputs, {k: len(v) for k, v in program.output_shapes.items()}, where)
        return cls("kernels", inputs, outputs, program=program, trim=trim)

    def programs(self) -> list[KernelProgram]:
        """Its kernel programs, those of nested bodies and branches included."""
        if self.program is not None:
            return [self.program]
        control = self.control
        if control is None:
            return []
        bodies = [b for b in (control.body, control.then, control.other) if b is not None]
        return [p for b in bodies for s in b.segments for p in s.programs()]


@dataclass(frozen=True)
class Variant:
    """The model compiled for one target."""

    target: dict[str, Any]
    requires: dict[str, Any]
    segments: tuple[Segment, ...]

    @property
    def name(self) -> str:
        return str(self.target.get("name", "?"))

    def to_json(self) -> dict[str, Any]:
        return {"target": dict(self.target), "requires": dict(self.requires),
                "segments": [s.to_json() for s in self.segments]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Variant:
        data = _object(data, where)
        target = _object(data.get("target"), f"{where}.target")
        requires = _object(data.get("requires"), f"{where}.requires")
        _text(requires.get("arch"), f"{where}.requires.arch")
        _names(requires.get("features", []), f"{where}.requires.features")
        segments = _list(data.get("segments"), f"{where}.segments")
        if not segments:
            raise ArtifactError(f"{where}.segments: must not be empty")
        return cls(dict(target), dict(requires),
                   tuple(Segment.from_json(s, f"{where}.segments[{i}]")
                         for i, s in enumerate(segments)))


@dataclass(frozen=True)
class ProgramEntry:
    """``manifest.json``'s ``entry`` for a kernel-program artifact."""

    variants: tuple[Variant, ...]
    abi: int = ABI_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"abi": self.abi, "variants": [v.to_json() for v in self.variants]}

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest.json: entry") -> ProgramEntry:
        data = _object(data, where)
        abi = data.get("abi")
        if abi != ABI_VERSION:
            raise ArtifactError(f"{where}: its code uses kernel ABI {_short(abi)}, this runtime "
                                f"calls ABI {ABI_VERSION}; recompile the model with this irkit")
        variants = _list(data.get("variants"), f"{where}.variants")
        if not variants:
            raise ArtifactError(f"{where}.variants: must not be empty")
        return cls(tuple(Variant.from_json(v, f"{where}.variants[{i}]")
                         for i, v in enumerate(variants)))

    def select(self, machine: Host, where: str) -> Variant:
        """The first variant ``machine`` can run; otherwise an error that names, for each
        variant, what the machine lacks, and what to rebuild for."""
        problems = []
        for variant in self.variants:
            missing = machine.missing(variant.requires)
            if not missing:
                return variant
            problems.append(f"{variant.name} needs {', '.join(missing)}")
        level = host_level(machine)
        hint = (f"rebuild with arch = \"{level}\" (or a list of arches, one artifact for "
                "several CPUs)") if level else "rebuild on or for this machine"
        raise ArtifactError(
            f"{where}: this machine ({machine.arch}, cpu {machine.cpu}) cannot run the "
            f"compiled code: {'; '.join(problems)}; {hint}")


def variants_summary(entry: ProgramEntry) -> list[dict[str, Any]]:
    """One row per variant for ``irkit inspect``: target, CPU, vector width, int8 kernel,
    required features, code files."""
    rows = []
    for variant in entry.variants:
        programs = [p for s in variant.segments for p in s.programs()]
        rows.append({
            "arch": variant.name,
            "cpu": variant.target.get("cpu"),
            "vector_bits": variant.target.get("vector_bits"),
            "int8_dot": sorted({str(p.info.get("int8_dot")) for p in programs
                                if p.info.get("int8_dot")}),
            "requires": list(variant.requires.get("features", [])),
            "files": [f for p in programs for f in (p.code, p.weights)]
                     + [s.model for s in variant.segments if s.model],
        })
    return rows



def programs(entry: Mapping[str, Any], arch: str | None = None) -> list[KernelProgram]:
    """The kernel programs (in segment order) of variant ``arch`` of a kernel-program
    manifest entry — the first, most capable variant by default."""
    parsed = ProgramEntry.from_json(dict(entry))
    variant = parsed.variants[0] if arch is None else next(
        (v for v in parsed.variants if v.name == arch), None)
    if variant is None:
        raise ArtifactError(f"no variant {arch!r} (has: "
                            f"{', '.join(v.name for v in parsed.variants)})")
    return [p for s in variant.segments for p in s.programs()]
