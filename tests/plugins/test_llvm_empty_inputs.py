"""Zero-size inputs whose outputs are not empty run the llvm kernels: loops over the empty
input run zero times (a GEMM with K = 0 gives zeros, a reduction over an empty batch its
identity) and match ONNX Runtime exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402


def _model(nodes: list[object], inputs: list[object], outputs: list[object]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "empty", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _f32(name: str, shape: list[object]) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


CASES = {
    "gemm_k0": _model(
        [helper.make_node("Transpose", ["a"], ["at"], perm=[1, 0]),
         helper.make_node("MatMul", ["at", "b"], ["y"])],
        [_f32("a", ["N", 3]), _f32("b", ["N", 32])], [_f32("y", [3, 32])]),
    "reduce_batch": _model(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
         helper.make_node("Exp", ["s"], ["y"])],
        [_f32("x", ["N", 5])], [_f32("y", [5])]),
    "castlike_empty_like": _model(
        [helper.make_node("CastLike", ["x", "like"], ["y"])],
        [_f32("x", [3, 4]), helper.make_tensor_value_info("like", TensorProto.DOUBLE, [0])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 4])]),
}
CASES["reduce_batch"].graph.initializer.append(
    onnx.numpy_helper.from_array(np.array([0], np.int64), "axes"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_input_matches_ort(name: str, tmp_path: Path) -> None:
    model = CASES[name]
    compiled = irkit.runtime.load(
        irkit.compile(irkit.load_model(model), target="llvm").save(tmp_path / name), threads=1)
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        dims = [0 if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = np.float64 if vi.type.tensor_type.elem_type == TensorProto.DOUBLE else np.float32
        feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = compiled(**feeds)
    for vi, expected in zip(model.graph.output, want):
        assert got[vi.name].shape == expected.shape and got[vi.name].dtype == expected.dtype
        np.testing.assert_allclose(got[vi.name], expected, rtol=1e-6, atol=0)
    compiled.close()
