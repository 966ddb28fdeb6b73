"""Legalize rewrites that move convolutions onto faster kernels, on the llvm backend with
ONNX Runtime's results: conv1d-as-2d runs 1-D Convs with the 2-D conv kernels (a Conv1d
audio classifier ran 5-6x slower than ONNX Runtime through the direct loop nest), and
conv-transpose-as-matmul runs kernel == stride ConvTransposes as a GEMM (a U-Net's 2x2
upsampling took half the model's time as a gather over taps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.lower.legalize import legalize  # noqa: E402

# (name, out channels, group, kernel, stride, dilation, pads): a plain strided conv, a
# dilated grouped one with uneven pads, a depthwise one and a pointwise one.
CONVS = [("c0", 8, 1, 5, 2, 1, [2, 2]), ("c1", 8, 2, 3, 1, 2, [1, 3]),
         ("c2", 8, 8, 3, 1, 1, [1, 1]), ("c3", 6, 1, 1, 1, 1, [0, 0])]


def conv1d_model() -> onnx.ModelProto:
    rng = np.random.default_rng(9)
    nodes, inits, x, cin = [], [], "x", 3
    for name, cout, group, k, stride, dil, pads in CONVS:
        w = (rng.standard_normal((cout, cin // group, k)) / np.sqrt(k * cin)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}_w"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_b")]
        nodes += [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"],
                                   name=name, group=group, kernel_shape=[k], strides=[stride],
                                   dilations=[dil], pads=pads),
                  helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"])]
        x, cin = f"{name}_r", cout
        if name == "c1":
            nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2], strides=[2]))
            x = "pool"
    nodes[-1] = helper.make_node("Identity", ["c3_y"], ["y"])
    return helper.make_model(helper.make_graph(
        nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 41])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, None])], inits),
        opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("passes", ["", "fuse"])
def test_conv1d_runs_as_2d_and_matches_onnxruntime(tmp_path: Path, passes: str) -> None:
    model = conv1d_model()
    graph = irkit.load_model(model)
    if passes:
        graph = irkit.optimize(graph, passes)
    convs = [n for n in graph.nodes if n.op in ("Conv", "ConvBiasAct")]
    assert len(convs) == 4 and all(len(n.inputs[1].shape) == 3 for n in convs)
    legal = [n for n in legalize(graph).nodes if n.op in ("Conv", "ConvBiasAct")]
    assert len(legal) == 4 and all(len(n.inputs[1].shape) == 4 for n in legal)
    art = irkit.compile(graph, target="llvm", threads=1, arch="x86-64-v3")
    compiled = irkit.runtime.load(art.save(tmp_path / "m"), threads=1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 41)).astype(np.float32)
        (want,) = session.run(None, {"x": x})
        got = compiled(x=x)["y"]
        assert got.shape == want.shape == (batch, 6, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def conv_transpose_model() -> onnx.ModelProto:
    """ConvTranspose 5->4 k2 s2 + bias, Relu, ConvTranspose 4->3 k(1,3) s(1,3) without
    bias, and an overlapping one (k3 s2 pads 1, output_padding 1) that stays a gather."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w0", rng.standard_normal((5, 4, 2, 2))), ("b0", rng.standard_normal(4)),
        ("w1", rng.standard_normal((4, 3, 1, 3))), ("w2", rng.standard_normal((3, 2, 3, 3))))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w0", "b0"], ["t0"], strides=[2, 2]),
             helper.make_node("Relu", ["t0"], ["r0"]),
             helper.make_node("ConvTranspose", ["r0", "w1"], ["t1"], strides=[1, 3]),
             helper.make_node("ConvTranspose", ["t1", "w2"], ["y"], strides=[2, 2],
                              pads=[1, 1, 1, 1], output_padding=[1, 1])]
    return helper.make_model(helper.make_graph(
        nodes, "convt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 12, 24])], inits),
        opset_imports=[helper.make_opsetid("", 17)])


def test_upsampling_conv_transpose_runs_as_matmul(tmp_path: Path) -> None:
    model = conv_transpose_model()
    graph = irkit.load_model(model)
    ops = [n.op for n in legalize(graph).nodes]
    assert ops.count("ConvTranspose") == 1 and ops.count("MatMul") == 2
    art = irkit.compile(graph, target="llvm", threads=1, arch="x86-64-v3")
    compiled = irkit.runtime.load(art.save(tmp_path / "m"), threads=1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 3, 2)).astype(np.float32)
        (want,) = session.run(None, {"x": x})
        got = compiled(x=x)["y"]
        assert got.shape == want.shape == (batch, 2, 12, 24)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
