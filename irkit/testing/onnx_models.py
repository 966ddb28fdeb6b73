"""Tiny ONNX models built with onnx.helper, shared by tests and benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def gemm_model(size: int = 512, seed: int = 1) -> onnx.ModelProto:
    """``y = x @ W + b`` with W f32[size,size]: x f32[N,size] -> y f32[N,size]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    b = rng.standard_normal(size).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        f"gemm{size}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _model(graph)


def pair_model(seed: int, name: str = "mlp") -> onnx.ModelProto:
    """Two inputs and two outputs of different dtypes: x f32[N,4], s f32[N,3] ->
    y = relu(x @ W + s) f32[N,3], label = argmax(y) i64[N]."""
    weight = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "s"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        ],
        name,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(weight, "W")],
    )
    return _model(graph)


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """A seeded 64-32-10 ReLU MLP with the digits model's signature: x f32[N,64] ->
    logits f32[N,10]."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal(shape) * scale).astype(np.float32)
               for shape, scale in (((64, 32), 0.2), ((32,), 0.1), ((32, 10), 0.2), ((10,), 0.1))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"]),
         helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("Gemm", ["hr", "w1", "b1"], ["logits"])],
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, n) for a, n in zip(weights, ("w0", "b0", "w1", "b1"))],
    )
    return _model(graph)
