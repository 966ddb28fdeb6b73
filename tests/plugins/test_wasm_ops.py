"""The llvm op-case suites, compiled by the wasm backend and run by wasmtime.

Each case list and its checking (reference, tolerances, draws) is the llvm suite's own
test function, called with a :data:`~irkit.testing.op_cases.WASM_TARGETS` target instead
of a CPU one. Compiling and linking a module per case costs about 0.2-5 s, so CI runs a
deterministic sample: every ``EVERY``-th case of each suite on the SIMD build and, with
another offset, every ``EVERY``-th float op case on the scalar build.
``IRKIT_WASM_EVERY=1`` runs every case on both (283 runs; all pass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")
pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

import test_llvm_elementwise_extra as extra  # the suites' own modules (tests/plugins)
import test_llvm_image as image
import test_llvm_indexing as indexing
import test_llvm_ops as ops

from irkit.testing.op_cases import WASM_SCALAR, WASM_SIMD, WASM_TARGETS, KernelTarget

SUITES: dict[str, tuple[Any, Any]] = {
    "ops": (ops.CASES, ops.test_op_matches_onnxruntime),
    "extra": (extra.CASES, extra.test_op_matches_reference),
    "image": (image.CASES, image.test_op_matches_onnxruntime),
    "indexing": (indexing.CASES, indexing.test_indexing_op_matches_reference),
}
EVERY = max(1, int(os.environ.get("IRKIT_WASM_EVERY", "3")))


def sampled(cases: Any, target: KernelTarget) -> list[Any]:
    """Every EVERY-th case; the scalar build starts one case later (other cases)."""
    offset = 1 % EVERY if target is WASM_SCALAR else 0
    return list(cases)[offset::EVERY]


PARAMS = [pytest.param(suite, case, target, id=f"{suite}-{case.name}-{target.arch}")
          for suite, (cases, _) in SUITES.items()
          for target in (WASM_TARGETS if suite == "ops" else (WASM_SIMD,))
          for case in sampled(cases, target)]


@pytest.mark.parametrize("suite,case,target", PARAMS)
def test_op_case_in_wasmtime(suite: str, case: Any, target: KernelTarget,
                             tmp_path: Path) -> None:
    SUITES[suite][1](case, target, tmp_path)


def test_the_sample_spans_every_suite() -> None:
    assert WASM_SCALAR in WASM_TARGETS
    for suite, (cases, _) in SUITES.items():
        names = {case.name for case in cases}
        simd = [p for p in PARAMS if p.values[0] == suite and p.values[2] is WASM_SIMD]
        assert len(simd) == -(-len(cases) // EVERY) and {p.values[1].name for p in simd} <= names
    scalar = {p.values[1].name for p in PARAMS if p.values[2] is WASM_SCALAR}
    assert len(scalar) == len(list(ops.CASES)[1 % EVERY::EVERY])
    if EVERY > 1:  # the two builds run different cases
        assert not scalar & {p.values[1].name for p in PARAMS if p.values[0] == "ops"
                             and p.values[2] is WASM_SIMD}
