"""Pooling, CumSum/CumProd and reducing scatters on f16 and bf16: the f32 kernels on
inputs widened to f32, each result rounded once to the 16-bit type.

Reference: ONNX Runtime on the same graph in f32 over the same (exactly widened) inputs,
rounded to the 16-bit type; results may differ from it by one 16-bit rounding step
(rtol 2^-10 for f16, 2^-7 for bf16). Where ORT has an f16 kernel, the f16 graph is also
checked against it directly (its kernels round in other places: rtol 4e-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402

HALVES = {"f16": (TensorProto.FLOAT16, np.float16, 2.0**-10),
          "bf16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16, 2.0**-7)}
BATCHES = (1, 3)


@dataclass
class Case:
    name: str
    op: str
    attrs: dict[str, Any]
    shape: tuple[int, ...]  # of x, without the batch dim
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # constant inputs after x
    float_extra: tuple[str, ...] = ()  # extra inputs of x's type
    outputs: tuple[str, ...] = ("y",)
    ort_f16: bool = True  # ORT has an f16 CPU kernel
    opset: int = 18


def _indices(shape: tuple[int, ...], axis: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, shape[axis], shape).astype(np.int64)


CASES = [
    Case("maxpool", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2],
                                "pads": [1, 1, 1, 1]}, (3, 9, 9)),
    Case("maxpool_indices", "MaxPool", {"kernel_shape": [2, 2]}, (2, 6, 6),
         outputs=("y", "i")),
    Case("averagepool", "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                        "count_include_pad": 1}, (3, 8, 8)),
    Case("averagepool_1d", "AveragePool", {"kernel_shape": [4], "strides": [2]}, (4, 17)),
    Case("lppool", "LpPool", {"kernel_shape": [2, 2], "p": 2}, (2, 6, 6)),
    Case("cumsum", "CumSum", {}, (5, 7), extra={"axis": np.array(1, np.int64)}),
    Case("cumsum_reverse_exclusive", "CumSum", {"reverse": 1, "exclusive": 1}, (6, 4),
         extra={"axis": np.array(-1, np.int64)}),
    Case("cumprod", "CumProd", {}, (3, 6), extra={"axis": np.array(2, np.int64)}, opset=26),
    Case("scatter_elements_add", "ScatterElements", {"axis": 0, "reduction": "add"}, (4, 5),
         extra={"indices": _indices((1, 4, 5), 0, 1)}, float_extra=("updates",),
         ort_f16=False),
    Case("scatter_elements_max", "ScatterElements", {"axis": 2, "reduction": "max"},
         (4, 5), extra={"indices": _indices((1, 4, 5), 2, 2)}, float_extra=("updates",),
         ort_f16=False),
    Case("scatter_nd_mul", "ScatterND", {"reduction": "mul"}, (4, 3),
         extra={"indices": np.array([[0, 1], [0, 3]], np.int64)}, float_extra=("updates",),
         ort_f16=False),
]


def _float_extra_shape(case: Case) -> tuple[int, ...]:
    """ScatterElements: updates like its indices; ScatterND: one row per index pair."""
    if case.op == "ScatterND":
        return (len(case.extra["indices"]), case.shape[-1])
    return (1, *case.shape)


def build(case: Case, elem: int) -> Any:
    inputs = [helper.make_tensor_value_info("x", elem, ["N", *case.shape])]
    inputs += [helper.make_tensor_value_info(n, elem, list(_float_extra_shape(case)))
               for n in case.float_extra]
    inits = [numpy_helper.from_array(a, n) for n, a in case.extra.items()]
    order = ["x", *case.extra, *case.float_extra]
    if case.op.startswith("Scatter"):
        order = ["x", "indices", "updates"]
    node = helper.make_node(case.op, order, list(case.outputs), **case.attrs)
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
               for o in case.outputs]
    graph = helper.make_graph([node], case.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def feeds(case: Case, batch: int, dtype: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    out = {"x": rng.uniform(-2, 2, (batch, *case.shape)).astype(dtype)}
    for name in case.float_extra:
        out[name] = rng.uniform(0.5, 1.5, _float_extra_shape(case)).astype(dtype)
    return out


@pytest.mark.parametrize("half", sorted(HALVES))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_f32_ort_rounded_once(case: Case, half: str, tmp_path: Path) -> None:
    elem, dtype, ulp = HALVES[half]
    model = build(case, elem)
    compiled = irkit.runtime.load(
        irkit.compile(irkit.load_model(model), target="llvm").save(tmp_path / "m"), threads=1)
    wide = ort.InferenceSession(build(case, TensorProto.FLOAT).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    narrow = (ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
              if case.ort_f16 and half == "f16" else None)
    for batch in BATCHES:
        inputs = feeds(case, batch, dtype)
        got = compiled.run(inputs)
        reference = wide.run(list(case.outputs),
                             {k: v.astype(np.float32) for k, v in inputs.items()})
        direct = narrow.run(list(case.outputs), inputs) if narrow else [None] * len(reference)
        for name, want, ort_half in zip(case.outputs, reference, direct):
            assert got[name].shape == want.shape, (name, batch)
            if want.dtype == np.int64:  # MaxPool indices
                np.testing.assert_array_equal(got[name], want)
                continue
            assert got[name].dtype == np.dtype(dtype), name
            np.testing.assert_allclose(got[name].astype(np.float32),
                                       want.astype(dtype).astype(np.float32),
                                       rtol=ulp, atol=ulp * 1e-2,
                                       err_msg=f"{case.name} {half} {name} batch {batch}")
            if ort_half is not None:
                np.testing.assert_allclose(got[name].astype(np.float32),
                                           ort_half.astype(np.float32), rtol=4e-3, atol=1e-3,
                                           err_msg=f"{case.name} vs ORT f16, batch {batch}")
