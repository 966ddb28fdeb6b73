"""Hand-made ONNX models and ort artifacts for the runtime tests (no compiler involved)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irkit.runtime import Artifact, CompiledModel, TensorSpec, load
from irkit.runtime.artifact import npz_bytes
from irkit.testing.onnx_models import pair_model

RNG_SEED = 1234


def _mlp_proto() -> onnx.ModelProto:
    """x: f32[N,4], s: f32[N,3] -> y = relu(x @ W + s), label = argmax(y)."""
    return pair_model(RNG_SEED)


def _sum_proto() -> onnx.ModelProto:
    """x: f32[N,3] -> total = sum over the batch : f32[3] (an output that is never empty)."""
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        "batch_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [3])],
        [axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


MLP_INPUTS = (TensorSpec("x", np.dtype("float32"), ("N", 4)), TensorSpec("s", np.dtype("float32"), ("N", 3)))
MLP_OUTPUTS = (TensorSpec("y", np.dtype("float32"), ("N", 3)), TensorSpec("label", np.dtype("int64"), ("N",)))


@pytest.fixture(scope="session")
def mlp_proto() -> onnx.ModelProto:
    return _mlp_proto()


@pytest.fixture(scope="session")
def sum_proto() -> onnx.ModelProto:
    return _sum_proto()


@pytest.fixture
def mlp_artifact(mlp_proto: onnx.ModelProto) -> Artifact:
    """The MLP as an ort artifact, with two extra (unused) files so every file kind is covered."""
    return Artifact(
        name="mlp",
        backend="ort",
        target="cpu",
        inputs=MLP_INPUTS,
        outputs=MLP_OUTPUTS,
        files={
            "model.onnx": mlp_proto.SerializeToString(),
            "weights/extra.npz": npz_bytes({"scale": np.linspace(0, 1, 5, dtype=np.float32)}),
            "meta/blob.bin": bytes(range(256)),
        },
        entry={"model": "model.onnx"},
        options={"threads": 1},
        report=[{"pass": "fuse", "nodes_before": 4, "nodes_after": 4}],
    )


@pytest.fixture
def saved_mlp(mlp_artifact: Artifact, tmp_path: Path) -> Path:
    return mlp_artifact.save(tmp_path / "mlp")


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> CompiledModel:
    proto = _mlp_proto()
    artifact = Artifact(
        "mlp", "ort", "cpu", MLP_INPUTS, MLP_OUTPUTS,
        files={"model.onnx": proto.SerializeToString()}, entry={"model": "model.onnx"},
    )
    return load(artifact.save(tmp_path_factory.mktemp("mlp") / "art"))


@pytest.fixture(scope="module")
def mlp_reference() -> Callable[..., dict[str, np.ndarray]]:
    """The same MLP run by onnxruntime directly: the numerical oracle."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        _mlp_proto().SerializeToString(), providers=["CPUExecutionProvider"]
    )

    def run(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    return run
