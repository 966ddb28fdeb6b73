"""The op case lists of the kernel-backend tests (ops, extra elementwise and int8, image,
indexing) with how each is checked, for backends that run a sample of them: numba
(``test_numba_ops.py``) and the cuda backend in numba-cuda's simulator
(``test_cuda_simulator.py``). Every case runs on llvm (native and x86-64-v3) in the
lists' own modules; the Python-generating backends compile slowly (Numba, NVVM) or run
every GPU thread in Python, so CI runs one or two cases per kernel family on them, and
``IRKIT_FULL_SWEEPS=1`` runs every case (about 12 minutes each on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import test_llvm_elementwise_extra as extra  # the case lists of the sibling modules
import test_llvm_image as image
import test_llvm_indexing as indexing
import test_llvm_ops as ops

from irkit.testing.gpu import full_sweeps
from irkit.testing.op_cases import (
    KernelTarget,
    OpCase,
    build_model,
    check_batches,
    compile_and_load,
    onnxruntime_reference,
    reference_for,
)

ALL = full_sweeps()
# (name, case list, strict shape inference, reference, draw, integers exact)
Suite = tuple[str, list[OpCase], bool, Any, Any, bool]
SUITES: list[Suite] = [
    ("ops", ops.CASES, True, lambda case, model: onnxruntime_reference(model, case.outputs),
     None, False),
    ("extra", extra.CASES, True, reference_for, None, True),
    ("image", image.CASES, True,
     lambda case, model: onnxruntime_reference(model, case.outputs), image.DRAW, False),
    ("indexing", indexing.CASES, False,
     lambda case, model: indexing.reference(model, case.outputs), None, True),
]


def params(sample: Iterable[str]) -> list[Any]:
    """pytest params ``(suite, case)`` named ``suite-case``: the ``sample`` (names like
    ``ops-softmax_last``), or every case with ``IRKIT_FULL_SWEEPS=1``."""
    every = {f"{suite[0]}-{case.name}": (suite, case) for suite in SUITES
             for case in suite[1]}
    wanted = list(every) if ALL else list(sample)
    missing = [name for name in wanted if name not in every]
    if missing:
        raise ValueError(f"no such op cases: {missing}")
    return [pytest.param(*every[name], id=name) for name in wanted]


def run_case(suite: Suite, case: OpCase, target: KernelTarget, tmp_path: Path,
             batches: tuple[int, ...]) -> None:
    """``case`` compiled for ``target`` and checked at ``batches`` against the suite's
    reference, with the llvm tests' tolerances."""
    _, _, strict, reference, draw, exact = suite
    model = build_model(case, strict=strict)
    compiled = compile_and_load(model, tmp_path, threads=1, target=target)
    extra_args = {"draw": draw} if draw is not None else {}
    checked = check_batches(case, compiled, reference(case, model), batches,
                            rtol=ops.RTOL, atol=ops.ATOL, exact_integers=exact, **extra_args)
    assert checked == len(batches) * len(case.outputs)
