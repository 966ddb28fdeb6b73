"""What compiled code records about itself, so that a manifest cannot describe it otherwise.

``manifest.json``'s hash is unkeyed: anyone who edits the manifest can recompute it. Most
edits still contradict something the loader can see (the signature, the file sizes), but
some describe only the compiled code: the order of the ``io`` pointers it reads, the
``workspace`` bytes it writes, its kernels, symbols, constraints and guards. The compiler
therefore writes those facts into the code itself, as a constant the loader reads after
linking and compares with the manifest before the first call::

    <run>_facts = {int64 length, length bytes of JSON}
    {"facts": 1, "io": [...], "symbols": [...], "workspace": {...}, "kernels": [...],
     "run": "...", "native": {...}, "input_shapes": {...}, "output_shapes": {...},
     "output_dtypes": {...}, "constraints": [...], "guards": [...], "weights_bytes": n,
     "input_dtypes": {"x": "float32"}, "weights_sha256": "...",
     "requires": {"arch": "x86_64", "features": [...]}}   # the variant's

Each field the manifest states differently is an :class:`ArtifactError` naming it. Only a
changed code file could drop or alter the facts, and whoever can change the code needs no
manifest edit: for that, sign the artifact (:mod:`irkit.runtime.signing`). Code compiled
before the facts existed has no such symbol and loads as before (the calling convention,
``ABI_VERSION``, is unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, sha256_bytes
from irkit.runtime.program import KernelProgram, ProgramEntry
from irkit.runtime.signature import canonical_dtype, parse_dtype

FACTS_FORMAT = 1
MAX_FACTS_BYTES = 1 << 24
FIELDS = ("io", "workspace", "symbols", "kernels", "run", "native", "input_shapes",
          "output_shapes", "output_dtypes", "constraints", "guards", "weights_bytes")
"""The entry fields the facts record, in the order a mismatch is reported."""


def facts_symbol(run: str) -> str:
    return f"{run}_facts"


def program_facts(program: KernelProgram, input_dtypes: Mapping[str, str],
                  weights: bytes, requires: Mapping[str, Any]) -> bytes:
    """The facts of ``program`` (its manifest entry as the compiler writes it, and the
    ``requires`` of its variant: what a machine must have to run the code) as JSON."""
    entry = program.to_json()
    facts = {"facts": FACTS_FORMAT, **{k: entry[k] for k in FIELDS if k in entry},
             "input_dtypes": dict(input_dtypes), "weights_sha256": sha256_bytes(weights),
             "requires": dict(requires)}
    return json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()


def _requires_of(manifest: Manifest, code: str) -> tuple[str, Any]:
    """(where, requires) of the variant whose segments run the code file ``code``."""
    for i, variant in enumerate(ProgramEntry.from_json(dict(manifest.entry)).variants):
        if any(p.code == code for s in variant.segments for p in s.programs()):
            return f"variants[{i}].requires", variant.requires
    return "requires", None


def has_facts(object_code: bytes, run: str) -> bool:
    """Whether the object's string table names ``<run>_facts`` (its symbol's name)."""
    return b"\0" + facts_symbol(run).encode() + b"\0" in object_code


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_facts(text: bytes, program: KernelProgram, manifest: Manifest, where: str) -> None:
    """ArtifactError naming the first field where the manifest's ``program`` (and its
    signature and weights file) disagrees with the facts its code recorded."""
    source = f"{where}: the facts recorded in {program.code}"
    try:
        facts = json.loads(text)
    except (ValueError, RecursionError):
        raise ArtifactError(f"{source} are not JSON") from None
    if not isinstance(facts, dict) or facts.get("facts") != FACTS_FORMAT:
        raise ArtifactError(f"{source} are not facts format {FACTS_FORMAT}")
    current = program.to_json()
    recorded = KernelProgram.from_json(
        {**current, **{k: facts[k] for k in FIELDS if k in facts}}, source).to_json()
    current, recorded = _normal(current), _normal(recorded)
    for key in FIELDS:
        if current.get(key) != recorded.get(key):
            raise ArtifactError(
                f"{where}: manifest.json entry {key} is {_short(current.get(key))}, but "
                f"{program.code} was compiled with {_short(recorded.get(key))}")
    if "requires" in facts:  # a variant the host must not run claimed runnable: SIGILL
        field, requires = _requires_of(manifest, program.code)
        if _normal(requires) != _normal(facts["requires"]):
            raise ArtifactError(
                f"{where}: manifest.json entry {field} is {_short(requires)}, but "
                f"{program.code} was compiled for {_short(facts['requires'])}")
    if facts.get("weights_sha256") != manifest.files.get(program.weights):
        raise ArtifactError(f"{where}: {program.weights} is not the weights file "
                            f"{program.code} was compiled with (sha256 differs)")
    inputs = {spec.name: spec.dtype for spec in manifest.inputs}
    dtypes = facts.get("input_dtypes")
    if not isinstance(dtypes, dict):
        raise ArtifactError(f"{source} lack input_dtypes")
    for name, recorded_dtype in dtypes.items():
        declared = inputs.get(name)
        if declared is None:
            continue  # a tensor between segments
        try:
            reads = canonical_dtype(parse_dtype(str(recorded_dtype)))
        except (TypeError, ValueError):
            raise ArtifactError(f"{source} give input {name!r} dtype "
                                f"{_short(recorded_dtype)}") from None
        if canonical_dtype(np.dtype(declared)) != reads:
            raise ArtifactError(f"{where}: manifest.json signature gives input {name!r} dtype "
                                f"{np.dtype(declared).name}, {program.code} reads {reads.name}")
