"""Op cases through the numba backend (the generated ``@njit`` module, compiled by
Numba), against the same references and tolerances as on llvm. CI runs a sample across
the op families (below); ``IRKIT_FULL_SWEEPS=1`` runs every case of the four lists
(about 12 minutes on 2 cores). ``tests/kir/test_interpret_vs_numba_cuda.py`` checks the
backend against the kernel IR interpreter rule by rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("numba")

from op_case_suites import params, run_case

from irkit.testing.op_cases import NUMBA_NATIVE, OpCase

SAMPLE = (
    "ops-gelu_tanh",                  # elementwise, math calls
    "ops-gemm_bias_relu_residual",    # the 1x8 GEMM tile with an epilogue
    "ops-conv_groups_strides",        # convolution as a loop nest
    "ops-layernorm",                  # row reductions
    "extra-quantize_f16",             # 16-bit float rounding
    "extra-conv_integer_pads",        # int8 convolution
    "image-gridsample_linear_reflection_align0",  # fmod, floor, computed gathers
    "indexing-topk_largest_ties",     # sorting with ties
    "indexing-scatter_elements_add",  # scatter (not independent)
)
BATCHES = (1, 3)


@pytest.mark.parametrize(("suite", "case"), params(SAMPLE))
def test_op_on_numba(suite: Any, case: OpCase, tmp_path: Path) -> None:
    run_case(suite, case, NUMBA_NATIVE, tmp_path, BATCHES)
