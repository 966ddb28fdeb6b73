"""Ops without a lowering are expanded through their ONNX function bodies before the llvm
backend lowers a graph; the compiled result matches ONNX Runtime on the unexpanded model
(fp32 rtol 1e-4, atol 1e-5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.lower.driver import lowers  # noqa: E402
from irkit.lower.expand import expand_functions, expandable  # noqa: E402


def _model(node: Any, inputs: dict[str, list[Any]], out_shape: list[Any], opset: int
           ) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "expand",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


CASES = {
    "selu": _model(helper.make_node("Selu", ["x"], ["y"], alpha=1.5, gamma=1.2),
                   {"x": ["N", 6]}, ["N", 6], 18),
    # Selu-22's body is written for opset 18 and its CastLike changed since: the body is
    # moved to 22 through ONNX's version converter, keeping its attribute references.
    "selu_22": _model(helper.make_node("Selu", ["x"], ["y"], alpha=1.5, gamma=1.2),
                      {"x": ["N", 6]}, ["N", 6], 22),
    # No attributes: the body's references to alpha and gamma take the schema defaults
    # (ONNX's inliner alone would leave their Constants empty).
    "selu_defaults": _model(helper.make_node("Selu", ["x"], ["y"]), {"x": ["N", 6]},
                            ["N", 6], 22),
    "mvn": _model(helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[0, 2]),
                  {"x": ["N", 3, 5]}, ["N", 3, 5], 18),
    "reduce_logsumexp": _model(
        helper.make_node("ReduceLogSumExp", ["x"], ["y"], keepdims=1),
        {"x": [4, 3, 5]}, [1, 1, 1], 18),
    "group_norm": _model(
        helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2),
        {"x": ["N", 4, 3, 3], "scale": [4], "bias": [4]}, ["N", 4, 3, 3], 21),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 7])
def test_expanded_op_matches_ort(name: str, batch: int, tmp_path: Path) -> None:
    model = CASES[name]
    graph = irkit.load_model(model)
    assert not lowers(graph.nodes[0].op, "")  # the op itself has no lowering
    compiled = irkit.runtime.load(
        irkit.compile(graph, target="llvm").save(tmp_path / name), threads=1)
    rng = np.random.default_rng(3)
    feeds = {}
    for vi in model.graph.input:
        dims = [batch if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(compiled(**feeds)["y"], want, rtol=1e-4, atol=1e-5)
    compiled.close()


def test_lowered_ops_are_not_expanded() -> None:
    """Relu has a function body too, but its direct lowering wins: nothing changes."""
    graph = irkit.load_model(_model(helper.make_node("Relu", ["x"], ["y"]), {"x": ["N", 4]},
                                    ["N", 4], 18))
    assert expandable("Relu", "", 18)
    assert expand_functions(graph, lowers) is graph


def test_op_without_body_stays_unsupported(tmp_path: Path) -> None:
    """TopK-like ops with no function body are named in the backend's error."""
    model = _model(helper.make_node("Det", ["x"], ["y"]), {"x": [3, 3]}, [], 18)
    with pytest.raises(irkit.IrkitError, match="Det"):
        irkit.compile(irkit.load_model(model), target="llvm")
