"""Kernels that are the same up to names share one LLVM body (a transformer's layers
compile once, not once per layer), and the shared code computes what separate code would:
checked against ONNX Runtime (fp32 rtol 1e-4, atol 1e-5)."""

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
from irkit.lower import lower_graph  # noqa: E402
from irkit.plugins.llvm.codegen import kernel_key, translate_program  # noqa: E402


def _layers(count: int, width: int = 48) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((width, width)).astype(np.float32) * 0.2, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i}"])]
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_identical_layers_share_one_body() -> None:
    program = lower_graph(irkit.load_model(_layers(4))).program
    keys = [kernel_key(k) for k in program.kernels]
    assert len(program.kernels) >= 4 and len(set(keys)) < len(keys)
    module = str(translate_program(program, "x86-64-v3"))
    assert module.count('define internal void @"layers_shared0"(') == 1
    assert "noinline" in module


def test_different_sizes_do_not_share() -> None:
    a = lower_graph(irkit.load_model(_layers(1, 48))).program.kernels
    b = lower_graph(irkit.load_model(_layers(1, 64))).program.kernels
    assert {kernel_key(k) for k in a}.isdisjoint({kernel_key(k) for k in b})


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_shared_bodies_match_ort(batch: int, tmp_path: Path) -> None:
    model = _layers(4)
    compiled = irkit.runtime.load(
        irkit.compile(irkit.load_model(model), target="llvm").save(tmp_path / "m"), threads=1)
    x = np.random.default_rng(batch).standard_normal((batch, 48)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-4, atol=1e-5)
    compiled.close()
