"""The llvm op-case suites, compiled by the wasm backend and run by wasmtime.

Each case list and its checking (reference, tolerances, draws) is the llvm suite's own
test function, called with a :data:`~irkit.testing.op_cases.WASM_TARGETS` target instead
of a CPU one: every case on the SIMD build, the float op cases on the scalar build too.
"""

from __future__ import annotations

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
PARAMS = [pytest.param(suite, case, target, id=f"{suite}-{case.name}-{target.arch}")
          for suite, (cases, _) in SUITES.items() for case in cases
          for target in (WASM_TARGETS if suite == "ops" else (WASM_SIMD,))]


@pytest.mark.parametrize("suite,case,target", PARAMS)
def test_op_case_in_wasmtime(suite: str, case: Any, target: KernelTarget,
                             tmp_path: Path) -> None:
    SUITES[suite][1](case, target, tmp_path)


def test_every_case_runs() -> None:
    assert len(PARAMS) == 2 * len(ops.CASES) + sum(
        len(cases) for name, (cases, _) in SUITES.items() if name != "ops")
    assert WASM_SCALAR in WASM_TARGETS
