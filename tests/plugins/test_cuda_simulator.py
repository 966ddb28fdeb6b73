"""Every op case list of the kernel-backend tests (ops, extra elementwise and int8,
image, indexing) through the cuda backend: compiled to PTX by numba-cuda for sm_90
and run by numba-cuda's CUDA simulator (every thread in Python, so batches 1 and 2),
against the same references and tolerances as on the CPU backends. Needs numba-cuda and
the CUDA 13.0 NVVM (the ``cuda`` extra), no GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from irkit.testing.gpu import ptx_toolchain_missing

if ptx_toolchain_missing():
    pytest.skip(str(ptx_toolchain_missing()), allow_module_level=True)

import test_llvm_elementwise_extra as extra  # the case lists of the sibling modules
import test_llvm_image as image
import test_llvm_indexing as indexing
import test_llvm_ops as ops

from irkit.testing.op_cases import (
    CUDA_SIMULATOR,
    OpCase,
    build_model,
    check_batches,
    compile_and_load,
    onnxruntime_reference,
    reference_for,
)

BATCHES = (1, 2)
# (case list, strict shape inference, reference, draw, integers exact)
SUITES: list[tuple[str, list[OpCase], bool, Any, Any, bool]] = [
    ("ops", ops.CASES, True, lambda case, model: onnxruntime_reference(model, case.outputs),
     None, False),
    ("extra", extra.CASES, True, reference_for, None, True),
    ("image", image.CASES, True,
     lambda case, model: onnxruntime_reference(model, case.outputs), image.DRAW, False),
    ("indexing", indexing.CASES, False,
     lambda case, model: indexing.reference(model, case.outputs), None, True),
]
PARAMS = [pytest.param(suite, case, id=f"{suite[0]}-{case.name}")
          for suite in SUITES for case in suite[1]]


@pytest.mark.slow
@pytest.mark.parametrize(("suite", "case"), PARAMS)
def test_op_on_cuda_simulator(suite: tuple[str, list[OpCase], bool, Any, Any, bool],
                              case: OpCase, tmp_path: Path) -> None:
    _, _, strict, reference, draw, exact = suite
    model = build_model(case, strict=strict)
    compiled = compile_and_load(model, tmp_path, threads=1, target=CUDA_SIMULATOR)
    extra_args = {"draw": draw} if draw is not None else {}
    checked = check_batches(case, compiled, reference(case, model), BATCHES,
                            rtol=ops.RTOL, atol=ops.ATOL, exact_integers=exact, **extra_args)
    assert checked == len(BATCHES) * len(case.outputs)


def test_every_case_list_is_covered() -> None:
    assert len(PARAMS) == sum(len(s[1]) for s in SUITES) >= 200
