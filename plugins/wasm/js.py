"""The JavaScript side of a wasm artifact: ``model.mjs`` (an ES-module loader for browsers
and node) and ``model.d.ts`` (its TypeScript declarations).

``loader.mjs`` is the loader's code; :func:`loader_files` fills in the model's signature
and, per variant, what the loader needs to call the module: the files and their sha256,
the entry and allocator exports, the io order, where each symbolic dim comes from, the
workspace and output sizes as polynomials and the shape constraints. Variants the loader
cannot run (ONNX Runtime fallback segments, size-setting inputs) make ``load()`` throw
an Error that says so.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from typing import Any

from irkit.runtime.artifact import Artifact
from irkit.runtime.program import KernelProgram, ProgramEntry, poly_to_json

LOADER_FILE = "model.mjs"
TYPES_FILE = "model.d.ts"
_PLACEHOLDER = "/*IRKIT_MODEL*/ null"
_TS_ARRAYS = {
    "float32": "Float32Array", "float64": "Float64Array", "int8": "Int8Array",
    "uint8": "Uint8Array", "int16": "Int16Array", "uint16": "Uint16Array",
    "int32": "Int32Array", "uint32": "Uint32Array", "int64": "BigInt64Array",
    "uint64": "BigUint64Array", "bool": "Uint8Array", "float16": "Uint16Array",
    "bfloat16": "Uint16Array",
}  # fmt: skip


def _sources(program: KernelProgram) -> dict[str, list[Any]]:
    """Per symbol, the first input dim ``a * symbol + b`` that carries it (as the Python
    runner binds them): ``[input, axis, a, b]``; ``["", 0, 1, 0]`` when none does."""
    found: dict[str, list[Any]] = {}
    for symbol in program.symbols:
        found[symbol] = ["", 0, 1, 0]
        for name, dims in program.input_shapes.items():
            hit = next((axis for axis, dim in enumerate(dims)
                        if dim.get((symbol,)) and set(dim) <= {(symbol,), ()}), None)
            if hit is not None:
                dim = dims[hit]
                found[symbol] = [name, hit, dim[(symbol,)], dim.get((), 0)]
                break
    return found


def _digest(artifact: Artifact, name: str) -> str:
    return hashlib.sha256(artifact.files[name]).hexdigest()


def model_description(artifact: Artifact) -> dict[str, Any]:
    """What ``model.mjs`` embeds (JSON)."""
    entry = ProgramEntry.from_json(artifact.entry)
    variants = []
    problems = []
    for variant in entry.variants:
        segments = variant.segments
        program = segments[0].program if len(segments) == 1 else None
        if program is None:
            problems.append(f"{variant.name} runs parts of the model with ONNX Runtime "
                            "(fallback = \"ort\"); serve it from Python instead")
            continue
        if program.guards:
            problems.append(f"{variant.name} has size-setting inputs whose values the "
                            "JavaScript loader does not check; serve it from Python")
            continue
        variants.append({
            "name": variant.name,
            "requires": list(variant.requires.get("features", [])),
            "code": program.code, "code_sha256": _digest(artifact, program.code),
            "weights": program.weights, "weights_sha256": _digest(artifact, program.weights),
            "weights_bytes": len(artifact.files[program.weights]),
            "run": program.run, "alloc": program.native["alloc"],
            "release": program.native["release"], "io": list(program.io),
            "symbols": list(program.symbols), "sources": _sources(program),
            "workspace": poly_to_json(program.workspace),
            "output_shapes": {k: [poly_to_json(d) for d in v]
                              for k, v in program.output_shapes.items()},
            "constraints": [[poly_to_json(p), why] for p, why in program.constraints],
        })  # fmt: skip
    description: dict[str, Any] = {
        "name": artifact.name,
        "inputs": [spec.to_dict() for spec in artifact.inputs],
        "outputs": [spec.to_dict() for spec in artifact.outputs],
        "variants": variants,
    }
    if not variants:
        description["error"] = "; ".join(problems)
    return description


def _ts_name(name: str) -> str:
    return name if name.isidentifier() else json.dumps(name)


def types_text(description: dict[str, Any]) -> str:
    """``model.d.ts``: the loader's API with this model's input and output names."""
    lines = [f"// TypeScript declarations of model.mjs, irkit's loader for {description['name']}.",
             "export interface Tensor<T> { data: T; shape: number[] }",
             "export interface Output<T> { data: T; shape: number[]; dtype: string }",
             "export interface Inputs {"]
    for spec in description["inputs"]:
        array = _TS_ARRAYS.get(spec["dtype"], "ArrayBufferView")
        lines.append(f"  /** {spec['dtype']}[{', '.join(map(str, spec['shape']))}] */")
        lines.append(f"  {_ts_name(spec['name'])}: {array} | Tensor<{array} | number[]>;")
    lines.append("}")
    lines.append("export interface Outputs {")
    for spec in description["outputs"]:
        array = _TS_ARRAYS.get(spec["dtype"], "ArrayBufferView")
        lines.append(f"  /** {spec['dtype']}[{', '.join(map(str, spec['shape']))}] */")
        lines.append(f"  {_ts_name(spec['name'])}: Output<{array}>;")
    lines.append("}")
    lines += [
        "export interface TensorInfo { name: string; dtype: string; shape: (number | string)[] }",
        "export interface Signature { name: string; inputs: TensorInfo[]; outputs: TensorInfo[] }",
        "export interface Model {",
        "  /** The build this engine runs: \"wasm32-simd\" or \"wasm32\". */",
        "  readonly variant: string;",
        "  readonly signature: Signature;",
        "  /** Whether run() refuses NaN and +/-inf in floating inputs (default true). */",
        "  rejectNonfinite: boolean;",
        "  /** Throws an Error naming the input on a wrong name, dtype, shape, or a NaN or",
        "   *  +/-inf value while rejectNonfinite is true. */",
        "  run(inputs: Inputs): Outputs;",
        "}",
        "export interface LoadOptions {",
        "  /** Force a build (default: SIMD where the engine validates SIMD). */",
        "  variant?: \"wasm32-simd\" | \"wasm32\";",
        "  /** Check fetched files against their sha256 (default true). */",
        "  verify?: boolean;",
        "  /** Refuse NaN and +/-inf in floating inputs, as irkit's Python runtime does",
        "   *  (default true); false passes them to the model. */",
        "  rejectNonfinite?: boolean;",
        "}",
        "export type Bytes = ArrayBuffer | ArrayBufferView;",
        "/** The artifact directory's URL (default: this module's), or the files' bytes. */",
        "export function load(source?: string | URL | Bytes | { wasm: Bytes; weights?: Bytes },",
        "                     options?: LoadOptions): Promise<Model>;",
        "/** [\"simd128\"] where the engine has WebAssembly SIMD, else []. */",
        "export function engineFeatures(): string[];",
        "export const signature: Signature;",
        "",
    ]
    return "\n".join(lines)


def loader_files(artifact: Artifact) -> dict[str, bytes]:
    """``model.mjs`` and ``model.d.ts`` for ``artifact`` (a wasm artifact)."""
    template = importlib.resources.files("irkit.plugins.wasm").joinpath("loader.mjs")
    code = template.read_text(encoding="utf-8")
    if code.count(_PLACEHOLDER) != 1:
        raise RuntimeError("loader.mjs lacks its model placeholder")
    description = model_description(artifact)
    code = code.replace(_PLACEHOLDER, json.dumps(description, separators=(",", ":")))
    return {LOADER_FILE: code.encode("utf-8"),
            TYPES_FILE: types_text(description).encode("utf-8")}
