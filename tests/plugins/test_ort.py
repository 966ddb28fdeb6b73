"""The ort backend: Graph -> artifact -> irkit.runtime.load, against onnxruntime directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import irkit
import irkit.runtime
from irkit.plugins import get_registry
from irkit.plugins.ort import OrtBackend, OrtBackendError
from irkit.runtime import TensorSpec
from irkit.testing.onnx_models import pair_model


def mlp_proto() -> onnx.ModelProto:
    """x: f32[N,4], s: f32[N,3] -> y = relu(x @ W + s) : f32[N,3], label = argmax(y) : i64[N]."""
    return pair_model(3)


def run_onnxruntime(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


class PassReport:
    """What the pass manager puts in ``graph.history``: anything with ``to_dict()``."""

    def __init__(self, name: str, before: int, after: int) -> None:
        self.name, self.before, self.after = name, before, after

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "nodes_before": self.before, "nodes_after": self.after}


def test_registered_as_the_ort_backend() -> None:
    assert get_registry().get("backends", "ort").obj is OrtBackend
    assert set(OrtBackend.options) == {"threads", "optimization_level"}
    assert OrtBackend.options["optimization_level"].choices == ("disable", "basic", "extended", "all")


def test_compile_save_load_run_matches_onnxruntime(tmp_path: Path) -> None:
    proto = mlp_proto()
    graph = irkit.load_model(proto)
    graph.history.append(PassReport("fuse", 4, 4))
    artifact = irkit.compile(graph, target="ort", threads=1, optimization_level="extended")
    path = artifact.save(tmp_path / "mlp")

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["backend"] == "ort" and manifest["name"] == "mlp"
    assert manifest["options"] == {"threads": 1, "optimization_level": "extended"}
    assert manifest["entry"]["model"] == "model.onnx"
    assert manifest["report"] == [{"pass": "fuse", "nodes_before": 4, "nodes_after": 4}]
    assert manifest["signature"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["N", 4]},
        {"name": "s", "dtype": "float32", "shape": ["N", 3]},
    ]
    assert sorted(manifest["files"]) == ["model.onnx"]

    model = irkit.runtime.load(path)
    assert model.outputs == [
        TensorSpec("y", np.dtype("float32"), ("N", 3)),
        TensorSpec("label", np.dtype("int64"), ("N",)),
    ]
    session_options = model._runner.session.get_session_options()  # type: ignore[attr-defined]
    assert session_options.intra_op_num_threads == 1
    assert session_options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    rng = np.random.default_rng(11)
    for n in (1, 5, 32):
        feeds = {
            "x": rng.standard_normal((n, 4)).astype(np.float32),
            "s": rng.standard_normal((n, 3)).astype(np.float32),
        }
        got = model(**feeds)
        want = run_onnxruntime(proto, feeds)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(got["label"], want["label"])


def test_digits_cnn_end_to_end(digits_models: Path, tmp_path: Path) -> None:
    source = digits_models / "digits_cnn.onnx"
    data = np.load(digits_models.parent / "data" / "digits_eval.npz", allow_pickle=False)
    x, labels = data["x_img"], data["y"]
    artifact = irkit.compile(irkit.load_model(source), target="ort")
    model = irkit.runtime.load(artifact.save(tmp_path / "cnn"))
    assert model.inputs[0].shape == ("N", 1, 8, 8)
    got = model(x=x)["logits"]
    want = run_onnxruntime(source, {"x": x})["logits"]
    # Same ops, same runtime: the IR round trip must not change the numbers.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    accuracy = float((got.argmax(axis=1) == labels).mean())
    assert accuracy == float((want.argmax(axis=1) == labels).mean())
    assert accuracy > 0.9


def test_option_errors_name_the_option() -> None:
    graph = irkit.load_model(mlp_proto())
    backend = OrtBackend()
    with pytest.raises(OrtBackendError, match=r"no option\(s\) 'thread'"):
        backend.compile(graph, thread=2)
    with pytest.raises(OrtBackendError, match="threads='2' must be of type int"):
        backend.compile(graph, threads="2")
    with pytest.raises(OrtBackendError, match="threads=-1 must be >= 0"):
        backend.compile(graph, threads=-1)
    with pytest.raises(OrtBackendError, match="optimization_level='max' must be one of disable, basic, extended, all"):
        backend.compile(graph, optimization_level="max")
    with pytest.raises(irkit.IrkitError, match=r"no option\(s\) 'bogus'"):
        irkit.compile(graph, target="ort", bogus=1)


def test_defaults_are_recorded(tmp_path: Path) -> None:
    artifact = OrtBackend().compile(irkit.load_model(mlp_proto()))
    assert artifact.options == {"threads": 0, "optimization_level": "all"}
    assert artifact.report == []
    assert artifact.target == "cpu"
    assert artifact.entry["opsets"] == {"ai.onnx": 17}


def test_transformer_encoder_matches_onnxruntime(transformer_onnx: Path, tmp_path: Path) -> None:
    artifact = irkit.compile(irkit.load_model(transformer_onnx), target="ort")
    model = irkit.runtime.load(artifact.save(tmp_path / "encoder"))
    x = np.random.default_rng(5).standard_normal((3, 64, 128)).astype(np.float32)
    got = model(x=x)["y"]
    want = run_onnxruntime(transformer_onnx, {"x": x})["y"]
    assert got.shape == (3, 64, 128)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
