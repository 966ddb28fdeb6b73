"""MatMul and Gemm on f64 and integer operands (the plain loop-nest path) against numpy:
exact for integers (wrapping like numpy), rtol 1e-12 for f64; broadcast batch dims and
1-D operands included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402

DTYPES = {TensorProto.DOUBLE: np.float64, TensorProto.INT32: np.int32,
          TensorProto.INT64: np.int64}
SHAPES = [([2, 3, 4], [4, 5]), ([4], [2, 4, 3]), ([3, 4], [4]), ([2, 1, 3, 4], [5, 4, 2])]


def _compile(node: object, inputs: dict[str, tuple[int, list[int]]], tmp: Path
             ) -> irkit.runtime.CompiledModel:
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("y", next(iter(inputs.values()))[0], None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = onnx.shape_inference.infer_shapes(model)
    return irkit.runtime.load(irkit.compile(irkit.load_model(model), target="llvm").save(tmp),
                              threads=1)


@pytest.mark.parametrize("elem", sorted(DTYPES))
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matmul_matches_numpy(elem: int, shapes: tuple[list[int], list[int]],
                              tmp_path: Path) -> None:
    sa, sb = shapes
    model = _compile(helper.make_node("MatMul", ["a", "b"], ["y"]),
                     {"a": (elem, sa), "b": (elem, sb)}, tmp_path / "m")
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(sa) * 5).astype(DTYPES[elem])
    b = (rng.standard_normal(sb) * 5).astype(DTYPES[elem])
    got, want = model(a=a, b=b)["y"], np.matmul(a, b)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12)
    model.close()


def test_gemm_f64_transposed_scaled(tmp_path: Path) -> None:
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5,
                            beta=2.0)
    d = TensorProto.DOUBLE
    model = _compile(node, {"a": (d, [4, 3]), "b": (d, [5, 4]), "c": (d, [5])}, tmp_path / "g")
    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    np.testing.assert_allclose(model(a=a, b=b, c=c)["y"], 0.5 * a.T @ b.T + 2 * c, rtol=1e-12)
    model.close()
