"""The public API (irkit.load_model / evaluate / to_onnx / compile) on a small ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irkit
from irkit.errors import EvaluationError, IrkitError, ModelLoadError
from irkit.interop.onnx_export import ExportError
from irkit.ir import DType, Graph, TensorType, parse_graph, verify

ATOL = 1e-5


def mlp_model() -> onnx.ModelProto:
    """x f32[N,4] -> Gemm(w, b) -> Relu -> y f32[N,3]; fixed weights."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def numpy_mlp(x: np.ndarray) -> np.ndarray:
    init = {t.name: numpy_helper.to_array(t) for t in mlp_model().graph.initializer}
    return np.maximum(x @ init["w"].T + init["b"], 0)


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_model(), path)
    return path


def test_public_names() -> None:
    for name in ("load_model", "evaluate", "to_onnx", "optimize", "compile", "build",
                 "Artifact", "IrkitError"):
        assert name in irkit.__all__ and callable(getattr(irkit, name))
    with pytest.raises(AttributeError):
        _ = irkit.no_such_thing  # type: ignore[attr-defined]


def test_load_model_from_path_and_proto(mlp_path: Path) -> None:
    from_path = irkit.load_model(mlp_path)
    from_str = irkit.load_model(str(mlp_path))
    from_proto = irkit.load_model(mlp_model())
    for graph in (from_path, from_str, from_proto):
        assert isinstance(graph, Graph)
        verify(graph)
        assert [n.op for n in graph.nodes] == ["Gemm", "Relu"]
        assert graph.inputs[0].type == TensorType(DType.FLOAT32, ("N", 4))
    assert irkit.load_model(from_path) is from_path
    assert irkit.load_model(mlp_path, frontend="onnx").to_text() == from_path.to_text()


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(IrkitError, match="no such model file"):
        irkit.load_model(tmp_path / "missing.onnx")
    with pytest.raises(IrkitError, match="no such model file"):
        irkit.load_model(str(tmp_path / "missing.model"))
    with pytest.raises(IrkitError, match=r"no frontend can load 42 \(int\); known frontends: "
                                         r".*onnx"):
        irkit.load_model(42)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        irkit.load_model(broken)


def test_evaluate_matches_numpy_and_ort(mlp_path: Path) -> None:
    import onnxruntime as ort

    graph = irkit.load_model(mlp_path)
    x = np.random.default_rng(8).standard_normal((5, 4)).astype(np.float32)
    expected = numpy_mlp(x)
    session = ort.InferenceSession(str(mlp_path), providers=["CPUExecutionProvider"])
    (from_ort,) = session.run(["y"], {"x": x})
    for engine in ("ort", "reference", ("reference", "ort")):
        out = irkit.evaluate(graph, {"x": x}, engine=engine)
        assert list(out) == ["y"] and out["y"].shape == (5, 3)
        np.testing.assert_allclose(out["y"], expected, atol=ATOL, rtol=1e-5)
        np.testing.assert_allclose(out["y"], from_ort, atol=ATOL, rtol=1e-5)


def test_evaluate_input_errors(mlp_path: Path) -> None:
    graph = irkit.load_model(mlp_path)
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match=r"graph 'mlp' takes inputs \['x'\]; missing \['x'\]"):
        irkit.evaluate(graph, {})
    with pytest.raises(ValueError, match=r"unknown \['z'\]"):
        irkit.evaluate(graph, {"x": x, "z": x})
    with pytest.raises(ValueError, match="unknown engine 'tvm'; known: ort, reference"):
        irkit.evaluate(graph, {"x": x}, engine="tvm")
    with pytest.raises(EvaluationError, match=r"no engine could evaluate graph 'mlp':\n  ort: "):
        irkit.evaluate(graph, {"x": np.zeros((1, 5), np.float32)}, engine="ort")


def test_to_onnx_round_trips_and_checks(mlp_path: Path) -> None:
    graph = irkit.load_model(mlp_path)
    model = irkit.to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu"]
    assert [n.name for n in model.graph.node] == ["fc", "relu"]
    assert model.opset_import[0].version == 17
    again = irkit.load_model(model)
    assert again.to_text() == graph.to_text()


def test_to_onnx_rejects_invalid_graphs() -> None:
    bad = parse_graph(
        "graph bad(%x: f32[2,3]) -> (%y: f32[2,3]) {\n"
        "  %y = Gemm(%x) {transB=1} : f32[2,3]\n"
        "}\n"
    )
    with pytest.raises(ExportError, match="graph 'bad' exports to an invalid ONNX model"):
        irkit.to_onnx(bad)
    assert isinstance(ExportError("x"), IrkitError)
    model = irkit.to_onnx(bad, check=False)
    assert model.graph.node[0].op_type == "Gemm"


def test_text_weights_and_evaluate_agree(mlp_path: Path) -> None:
    graph = irkit.load_model(mlp_path)
    parsed = parse_graph(graph.to_text(), graph.weights())
    x = np.random.default_rng(9).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(irkit.evaluate(parsed, {"x": x})["y"],
                                  irkit.evaluate(graph, {"x": x})["y"])


def test_compile_ort_artifact_runs(mlp_path: Path, tmp_path: Path) -> None:
    graph = irkit.load_model(mlp_path)
    with pytest.raises(IrkitError, match="backend 'ort' has no option"):
        irkit.compile(graph, target="ort", no_such_option=1)
    artifact = irkit.compile(graph, target="ort")
    out_dir = tmp_path / "artifact"
    artifact.save(out_dir)
    model = irkit.runtime.load(out_dir)
    x = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model(x=x)["y"], numpy_mlp(x), atol=ATOL, rtol=1e-5)
