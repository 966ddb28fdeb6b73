"""Differential tests of the indexing lowerings (irkit.lower.indexing): small ONNX graphs
compiled by the llvm backend, run through ``irkit.runtime.load``, against ONNX Runtime
(or ONNX's reference evaluator for ops newer than the installed ORT). Float results:
rtol 1e-4, atol 1e-5; integer results and selected indices must match exactly.

Graphs with a symbolic batch ``N`` run at batch 1, 5 and 17; graphs whose size-steering
inputs (pads, K, axis…) are run-time values use static shapes declared on the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto

from irkit.testing.op_cases import (
    KERNEL_TARGETS,
    InputSpec,
    KernelTarget,
    Reference,
    assert_outputs,
    build_model,
    check_batches,
    compile_and_load,
    feeds,
    integers,
    node,
    normal,
    onnxruntime_reference,
)
from irkit.testing.op_cases import OpCase as Case

BATCHES = (1, 5, 17)
RTOL, ATOL = 1e-4, 1e-5
F, D, I64, I32 = np.float32, np.float64, np.int64, np.int32


def x_in(*shape: Any, dtype: type = F, rng: tuple[int, int] | None = None) -> InputSpec:
    """An input of ``shape`` (dims may be "N"): ``rng`` draws integers in [low, high)
    (cast to the dtype, so float inputs get ties); None draws N(0, 1)."""
    return (shape, dtype, normal() if rng is None else integers(*rng))


C = np.array
CASES = [
    # gathers and views
    Case("gather_elements_axis1", [node("GatherElements", ["x", "i"], axis=1)],
         {"x": x_in("N", 4, 3), "i": x_in("N", 2, 3, dtype=I64, rng=(-4, 4))}),
    Case("gather_elements_axis0", [node("GatherElements", ["x", "i"], axis=0)],
         {"x": x_in(5, "N"), "i": x_in(3, "N", dtype=I64, rng=(-5, 5))}),
    Case("trilu_upper_k1", [node("Trilu", ["x", "k"], upper=1)], {"x": x_in("N", 4, 5)},
         {"k": C(1, I64)}),
    Case("trilu_lower", [node("Trilu", ["x"], upper=0)], {"x": x_in("N", 5, 3, dtype=I64,
                                                                    rng=(-9, 9))}),
    Case("trilu_runtime_k", [node("Trilu", ["x", "k"], upper=0)],
         {"x": x_in("N", 4, 4), "k": x_in(dtype=I64, rng=(-2, 3))}),
    Case("eyelike_k", [node("EyeLike", ["x"], k=-1, dtype=TensorProto.FLOAT)],
         {"x": x_in(4, 6, dtype=I32, rng=(0, 3))}),
    Case("onehot_axis1", [node("OneHot", ["i", "depth", "v"], axis=1)],
         {"i": x_in("N", 3, dtype=I64, rng=(-6, 6))},
         {"depth": C(5, I64), "v": C([-1.5, 2.0], F)}, opset=11),
    Case("tile", [node("Tile", ["x", "r"])], {"x": x_in("N", 2, 3)},
         {"r": C([1, 2, 3], I64)}),
    Case("reverse_sequence", [node("ReverseSequence", ["x", "l"], batch_axis=1, time_axis=0)],
         {"x": x_in(5, "N", 3), "l": x_in("N", dtype=I64, rng=(1, 6))}),
    Case("compress_const", [node("Compress", ["x", "c"], axis=1)], {"x": x_in("N", 4, 2)},
         {"c": C([True, False, True, True])}),
    # Pad
    Case("pad_constant", [node("Pad", ["x", "p", "v"])], {"x": x_in("N", 3, 4)},
         {"p": C([0, 1, 2, 0, 2, 1], I64), "v": C(0.5, F)}),
    Case("pad_crop", [node("Pad", ["x", "p"])], {"x": x_in("N", 3, 4)},
         {"p": C([0, -1, 1, 0, 0, -2], I64)}),
    Case("pad_reflect", [node("Pad", ["x", "p"], mode="reflect")], {"x": x_in("N", 4, 5)},
         {"p": C([0, 2, 3, 0, 3, 4], I64)}),
    Case("pad_edge", [node("Pad", ["x", "p"], mode="edge")],
         {"x": x_in("N", 3, 4, dtype=I32, rng=(-50, 50))}, {"p": C([0, 2, 1, 0, 3, 5], I64)}),
    Case("pad_wrap", [node("Pad", ["x", "p"], mode="wrap")], {"x": x_in("N", 3, 4)},
         {"p": C([0, 1, 3, 0, 2, 2], I64)}, opset=19),
    Case("pad_axes", [node("Pad", ["x", "p", "", "a"], mode="reflect")],
         {"x": x_in("N", 3, 4)}, {"p": C([2, 1], I64), "a": C([-1], I64)}),
    # selections
    *[Case(f"{op.lower()}_keep{keep}_last{last}",
           [node(op, ["x"], axis=1, keepdims=keep, select_last_index=last)],
           {"x": x_in("N", 6, 3, rng=(0, 3))})
      for op in ("ArgMax", "ArgMin") for keep in (0, 1) for last in (0, 1)],
    Case("argmax_i64_axis_neg", [node("ArgMax", ["x"], axis=-1, keepdims=0)],
         {"x": x_in("N", 3, 7, dtype=I64, rng=(-4, 4))}),
    Case("topk_largest_ties", [node("TopK", ["x", "k"], ["v", "i"], axis=-1)],
         {"x": x_in("N", 3, 9, rng=(0, 4))}, {"k": C([4], I64)}, outputs=("v", "i")),
    Case("topk_smallest_axis1", [node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=0)],
         {"x": x_in("N", 7, 2)}, {"k": C([3], I64)}, outputs=("v", "i")),
    Case("topk_int64", [node("TopK", ["x", "k"], ["v", "i"], axis=0)],
         {"x": x_in(6, "N", dtype=I64, rng=(-3, 3))}, {"k": C([6], I64)},
         outputs=("v", "i")),
    # running sums
    *[Case(f"cumsum_excl{e}_rev{r}", [node("CumSum", ["x", "a"], exclusive=e, reverse=r)],
           {"x": x_in("N", 5, 3)}, {"a": C(1, I64)})
      for e in (0, 1) for r in (0, 1)],
    Case("cumsum_int32_axis0", [node("CumSum", ["x", "a"])],
         {"x": x_in("N", 4, dtype=I32, rng=(-9, 9))}, {"a": C(0, I32)}),
    Case("cumprod_rev", [node("CumProd", ["x", "a"], reverse=1)], {"x": x_in("N", 4, 3)},
         {"a": C(-1, I64)}, opset=26),
    # scatters
    *[Case(f"scatter_elements_{red}", [node("ScatterElements", ["x", "i", "u"], axis=1,
                                            reduction=red)],
           {"x": x_in("N", 5), "i": x_in("N", 3, dtype=I64, rng=(-5, 5)),
            "u": x_in("N", 3)})
      for red in ("add", "mul", "max", "min")],
    Case("scatternd_add", [node("ScatterND", ["x", "i", "u"], reduction="add")],
         {"x": x_in(4, 3, "N"), "u": x_in(3, 3, "N")}, {"i": C([[1], [3], [1]], I64)}),
    Case("scatternd_elements_max", [node("ScatterND", ["x", "i", "u"], reduction="max")],
         {"x": x_in(3, 4), "u": x_in(3)}, {"i": C([[0, 1], [2, -1], [0, 1]], I64)}),
    Case("tensor_scatter_circular", [node("TensorScatter", ["x", "u", "w"],
                                          mode="circular")],
         {"x": x_in("N", 2, 5, 3), "u": x_in("N", 2, 2, 3),
          "w": x_in("N", dtype=I64, rng=(0, 5))}, opset=24),
    # Einsum
    Case("einsum_batch_matmul", [node("Einsum", ["a", "b"], equation="bij,bjk->bik")],
         {"a": x_in("N", 2, 3), "b": x_in("N", 3, 4)}, opset=12),
    Case("einsum_transpose", [node("Einsum", ["a"], equation="ij->ji")],
         {"a": x_in("N", 3)}, opset=12),
    Case("einsum_implicit", [node("Einsum", ["a", "b"], equation="ij,jk")],
         {"a": x_in("N", 3), "b": x_in(3, 4)}, opset=12),
    Case("einsum_diagonal", [node("Einsum", ["a"], equation="...ii->...i")],
         {"a": x_in("N", 4, 4, dtype=D)}, opset=12),
    Case("einsum_outer", [node("Einsum", ["a", "b"], equation="i,j->ij")],
         {"a": x_in("N"), "b": x_in(3)}, opset=12),
    Case("einsum_inner_scalar", [node("Einsum", ["a", "b"], equation="ni,ni->")],
         {"a": x_in("N", 4, dtype=I64, rng=(-5, 5)), "b": x_in("N", 4, dtype=I64,
                                                              rng=(-5, 5))}, opset=12),
]
STATIC_CASES = [
    # Size-steering inputs as run-time values; the outputs' declared shapes fix sizes.
    Case("pad_runtime_pads_axes", [node("Pad", ["x", "p", "v", "a"])],
         {"x": x_in(2, 3, 4), "p": x_in(4, dtype=I64, rng=(0, 1)),
          "v": x_in(), "a": x_in(2, dtype=I64, rng=(0, 1))},
         declared={"y": ((2, 5, 6), F)}),
    Case("tile_runtime_repeats", [node("Tile", ["x", "r"])],
         {"x": x_in(2, 3), "r": x_in(2, dtype=I64, rng=(0, 1))},
         declared={"y": ((4, 9), F)}),
    Case("topk_runtime_k", [node("TopK", ["x", "k"], ["v", "i"], axis=1)],
         {"x": x_in(3, 6), "k": x_in(1, dtype=I64, rng=(0, 1))}, outputs=("v", "i"),
         declared={"v": ((3, 2), F), "i": ((3, 2), I64)}),
    Case("cumsum_runtime_axis", [node("CumSum", ["x", "a"], exclusive=1)],
         {"x": x_in(3, 4, dtype=D), "a": x_in(dtype=I32, rng=(0, 1))},
         declared={"y": ((3, 4), D)}),
    Case("compress_runtime", [node("Compress", ["x", "c"], axis=0)],
         {"x": x_in(5, 2), "c": x_in(5, dtype=np.bool_, rng=(0, 1))},
         declared={"y": ((3, 2), F)}),
    Case("onehot_runtime_depth", [node("OneHot", ["i", "d", "v"])],
         {"i": x_in(4, dtype=I64, rng=(0, 6)), "d": x_in(dtype=I64, rng=(0, 1)),
          "v": x_in(2)}, declared={"y": ((4, 6), F)}, opset=11),
]
# The run-time values the static cases are fed (they must agree with the declared shapes).
STATIC_VALUES: dict[str, dict[str, np.ndarray]] = {
    "pad_runtime_pads_axes": {"p": C([1, 2, 1, 0], I64), "a": C([-2, 2], I64)},
    "tile_runtime_repeats": {"r": C([2, 3], I64)},
    "topk_runtime_k": {"k": C([2], I64)},
    "cumsum_runtime_axis": {"a": C(-1, I32)},
    "compress_runtime": {"c": C([True, False, True, False, True])},
    "onehot_runtime_depth": {"d": C(6, I64)},
}


def reference(model: Any, names: tuple[str, ...]) -> Reference:
    """ONNX Runtime, or the ONNX reference evaluator where ORT lacks the op."""
    try:
        return onnxruntime_reference(model, names)
    except Exception:  # an opset or op newer than the installed ORT
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        return lambda inputs: list(evaluator.run(list(names), inputs))


def check(case: Case, got: dict[str, np.ndarray], expected: Sequence[np.ndarray],
          batch: int | None = None) -> int:
    """Every output of ``case`` against ``expected``: floats within RTOL/ATOL, the rest
    equal; returns how many were compared."""
    return assert_outputs(case, got, expected, batch=batch, rtol=RTOL, atol=ATOL,
                          exact_integers=True)


@pytest.mark.parametrize("target", KERNEL_TARGETS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_indexing_op_matches_reference(case: Case, target: KernelTarget, tmp_path: Path
                                       ) -> None:
    model = build_model(case, strict=False)
    compiled = compile_and_load(model, tmp_path, threads=1, target=target)
    checked = check_batches(case, compiled, reference(model, case.outputs), BATCHES,
                            rtol=RTOL, atol=ATOL, exact_integers=True)
    assert checked == len(BATCHES) * len(case.outputs)


def test_scatter_elements_none(tmp_path: Path) -> None:
    """Without a reduction duplicate indices are order-dependent, so each column gets
    distinct rows (a permutation), as ONNX requires."""
    case = Case("scatter_elements_none", [node("ScatterElements", ["x", "i", "u"], axis=0)],
                {"x": x_in(4, "N"), "i": x_in(2, "N", dtype=I64), "u": x_in(2, "N")})
    model = build_model(case, strict=False)
    compiled = compile_and_load(model, tmp_path, threads=1)
    expected = reference(model, case.outputs)
    checked = 0
    for batch in BATCHES:
        inputs = feeds(case, batch, seed=batch)
        rng = np.random.default_rng(batch)
        rows = np.stack([rng.permutation(4)[:2] for _ in range(batch)], axis=1)
        inputs["i"] = np.where(rows % 2 == 1, rows - 4, rows).astype(I64)  # some negative
        checked += check(case, compiled(**inputs), expected(inputs), batch)
    assert checked == len(BATCHES)


@pytest.mark.parametrize("case", STATIC_CASES, ids=lambda c: c.name)
def test_runtime_steering_inputs(case: Case, tmp_path: Path) -> None:
    model = build_model(case, strict=False)
    compiled = compile_and_load(model, tmp_path, threads=1)
    inputs = {**feeds(case, 1, seed=3), **STATIC_VALUES[case.name]}
    expected = reference(model, case.outputs)(inputs)
    assert check(case, compiled(**inputs), expected) == len(case.outputs)


def test_out_of_range_indices_stay_in_bounds(tmp_path: Path) -> None:
    """ONNX leaves out-of-range indices undefined; the lowering clamps them, so the
    process neither crashes nor reads past the buffer (the clamped element is read)."""
    case = Case("gather_elements_oob", [node("GatherElements", ["x", "i"], axis=1)],
                {"x": x_in(2, 3), "i": x_in(2, 2, dtype=I64)})
    compiled = compile_and_load(build_model(case, strict=False), tmp_path, threads=1)
    x = np.arange(6, dtype=F).reshape(2, 3)
    got = compiled(x=x, i=np.array([[7, -9], [3, 1 << 40]], I64))["y"]
    np.testing.assert_array_equal(got, [[2.0, 0.0], [5.0, 5.0]])


@pytest.mark.parametrize("case", [
    Case("pad_symbolic_runtime_pads", [node("Pad", ["x", "p"])],
         {"x": x_in("N", 3), "p": x_in(4, dtype=I64)}),
    Case("topk_symbolic_runtime_k", [node("TopK", ["x", "k"], ["v", "i"])],
         {"x": x_in("N", 5), "k": x_in(1, dtype=I64)}, outputs=("v", "i")),
], ids=lambda c: c.name)
def test_runtime_sizes_without_declared_shapes_are_refused(case: Case, tmp_path: Path
                                                             ) -> None:
    with pytest.raises(Exception, match="run-time value"):
        compile_and_load(build_model(case, strict=False), tmp_path, threads=1)


def test_case_count() -> None:
    assert (len(CASES), len(STATIC_CASES)) == (47, 6)
