"""Differential tests of the llvm backend's extra elementwise, normalization and
quantization lowerings: small ONNX graphs with a symbolic batch, compiled and run at
batch 1 and 3, against ONNX Runtime or, where ORT lacks the op or its ONNX semantics
(BitShift by the width or more, BatchNormalization training outputs, f64 math), against
numpy written from the ONNX spec. Floats: rtol 1e-4, atol 1e-5; integers exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper

import irkit
from irkit.errors import UnsupportedOpsError
from irkit.testing.op_cases import (
    KERNEL_TARGETS,
    Draw,
    KernelTarget,
    build_model,
    check_batches,
    compile_and_load,
    integers,
    node,
    normal,
    reference_for,
    uniform,
)
from irkit.testing.op_cases import OpCase as Case

BATCHES = (1, 3)
RTOL, ATOL = 1e-4, 1e-5
F, D = np.float32, np.float64


def between(low: int, high: int) -> Draw:
    """Integers in [low, high], both ends included."""
    return integers(low, high, endpoint=True)


def halves(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Multiples of 0.5 (rounding ties) and a few other values."""
    return (rng.integers(-12, 12, shape) * 0.5).astype(dtype)


def fixed(values: Any) -> Draw:
    """``values`` broadcast to the input's shape."""
    return lambda rng, shape, dtype: np.broadcast_to(np.asarray(values, dtype), shape).copy()


def _shift(x: np.ndarray, y: np.ndarray, left: bool) -> np.ndarray:
    bits = 8 * x.dtype.itemsize
    ok = (y >= 0) & (y < bits)
    safe = np.where(ok, y, 0).astype(x.dtype)
    shifted = np.left_shift(x, safe) if left else np.right_shift(x, safe)
    fill = np.where(x < 0, -1, 0).astype(x.dtype) if not left else np.zeros_like(x)
    return np.where(ok, shifted, fill).astype(x.dtype)


def _batchnorm_training(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    x, s, b, m, v = (feeds[k] for k in ("x", "s", "bb", "m", "v"))
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    shape = (1, -1, 1, 1)
    y = s.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5)
    y = y + b.reshape(shape)
    return [y.astype(F), (m * 0.8 + mean * 0.2).astype(F), (v * 0.8 + var * 0.2).astype(F)]


def _lrn(x: np.ndarray, size: int, alpha: float = 1e-4, beta: float = 0.75,
         bias: float = 1.0) -> np.ndarray:
    """ONNX LRN: the channel window is [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    squares = np.zeros_like(x)
    for c in range(x.shape[1]):
        squares[:, c] = (x[:, max(0, c - lo) : c + hi + 1] ** 2).sum(axis=1)
    return (x / (bias + alpha / size * squares) ** beta).astype(x.dtype)


def _standardized(m: np.ndarray) -> np.ndarray:
    return ((m - m.mean(axis=0)) / np.sqrt(m.var(axis=0) + 1e-5)).astype(F)


R = np.random.default_rng(3)
U8, I8, I32 = np.uint8, np.int8, np.int32
W53 = R.standard_normal((5, 3)).astype(F)
CASES = [
    # unary math (libm / LLVM intrinsics)
    *[Case(op.lower(), [node(op, ["x"])], {"x": (("N", 3, 5), F, feed)}) for op, feed in (
        ("Tan", uniform(-1.4, 1.4)), ("Asin", uniform(-0.99, 0.99)),
        ("Acos", uniform(-0.99, 0.99)), ("Atan", normal(3.0)), ("Sinh", normal(2.0)),
        ("Cosh", normal(2.0)), ("Asinh", normal(4.0)), ("Acosh", uniform(1.0, 9.0)),
        ("Atanh", uniform(-0.99, 0.99)))],
    Case("asinh_wide", [node("Asinh", ["x"])], {"x": (("N", 21), F, normal(5.0))}),  # vectors
    Case("sign", [node("Sign", ["x"])], {"x": (("N", 8), F, halves)}),
    Case("sign_int32", [node("Sign", ["x"])], {"x": (("N", 8), I32, between(-3, 3))}),
    Case("atanh_acosh_f64", [node("Atanh", ["x"], ["t"]), node("Acosh", ["z"], ["y"])],
         {"x": (("N", 6), D, uniform(-0.9, 0.9)), "z": (("N", 6), D, uniform(1.0, 4.0))},
         outputs=("t", "y"),
         reference=lambda f: [np.arctanh(f["x"]), np.arccosh(f["z"])]),
    Case("sinh_tan_after_add", [node("Add", ["x", "x"], ["a"]), node("Sinh", ["a"], ["s"]),
                                node("Tan", ["s"])], {"x": (("N", 16), F, uniform(-0.4, 0.4))}),
    # bitwise
    Case("bitwise_and_or", [node("BitwiseAnd", ["x", "z"], ["a"]),
                            node("BitwiseOr", ["a", "c"])],
         {"x": (("N", 4, 5), I32, between(-1000, 1000)),
          "z": (("N", 4, 5), I32, between(-1000, 1000))},
         {"c": np.array([1, 2, 4, 8, 16], I32)}),
    Case("bitwise_xor_not_u8", [node("BitwiseXor", ["x", "z"], ["a"]),
                                node("BitwiseNot", ["a"])],
         {"x": (("N", 3, 4), U8, between(0, 255)), "z": ((4,), U8, between(0, 255))}),
    Case("xor_bool", [node("Greater", ["x", "z"], ["a"]), node("Less", ["z", "c"], ["b"]),
                      node("Xor", ["a", "b"])],
         {"x": (("N", 6), F, normal()), "z": (("N", 6), F, normal())}, {"c": np.array(0.1, F)}),
    Case("bitshift_u8_left", [node("BitShift", ["x", "s"], direction="LEFT")],
         {"x": (("N", 5), U8, between(0, 255)), "s": (("N", 5), U8, between(0, 7))}),
    Case("bitshift_u8_right", [node("BitShift", ["x", "s"], direction="RIGHT")],
         {"x": (("N", 5), U8, between(0, 255)), "s": ((1,), U8, between(0, 7))}),
    Case("bitshift_i32_out_of_range",
         [node("BitShift", ["x", "s"], ["l"], direction="LEFT"),
          node("BitShift", ["x", "s"], ["r"], direction="RIGHT")],
         {"x": (("N", 8), I32, between(-5000, 5000)), "s": (("N", 8), I32, between(-3, 40))},
         outputs=("l", "r"), opset=28,
         reference=lambda f: [_shift(f["x"], f["s"], True), _shift(f["x"], f["s"], False)]),
    # dropout at inference
    Case("dropout_mask", [node("Dropout", ["x", "r"], ["y", "m"])], {"x": (("N", 4), F, normal())},
         {"r": np.array(0.3, F)}, outputs=("y", "m"), opset=13),
    Case("dropout_training_false", [node("Dropout", ["x", "r", "t"], ["d"]),
                                    node("Relu", ["d"])], {"x": (("N", 4), F, normal())},
         {"r": np.array(0.3, F), "t": np.array(False)}, opset=13),
    # normalizations
    Case("layernorm_stats", [node("LayerNormalization", ["x", "s", "b"], ["y", "m", "r"],
                                  axis=1, epsilon=1e-3)],
         {"x": (("N", 3, 4), F, normal(2.0))}, {"s": R.standard_normal((3, 4)).astype(F),
                                            "b": R.standard_normal((4,)).astype(F)},
         outputs=("y", "m", "r"), opset=17),
    Case("layernorm_mean_only", [node("LayerNormalization", ["x", "s"], ["y", "m"])],
         {"x": (("N", 2, 6), F, normal())}, {"s": R.standard_normal((6,)).astype(F)},
         outputs=("y", "m"), opset=17),
    Case("instancenorm", [node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-3)],
         {"x": (("N", 3, 4, 5), F, normal(3.0))},
         {"s": R.standard_normal(3).astype(F), "b": R.standard_normal(3).astype(F)}),
    Case("batchnorm_runtime_params",
         [node("BatchNormalization", ["x", "s", "bb", "m", "v"], epsilon=1e-3)],
         {"x": (("N", 3, 2, 2), F, normal()), "s": ((3,), F, normal()), "bb": ((3,), F, normal()),
          "m": ((3,), F, normal()), "v": ((3,), F, uniform(0.5, 2.0))}),
    Case("batchnorm_training",
         [node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y", "rm", "rv"],
               training_mode=1, momentum=0.8)],
         {"x": ((2, 3, 4, 5), F, normal(2.0)), "s": ((3,), F, normal()), "bb": ((3,), F, normal()),
          "m": ((3,), F, normal()), "v": ((3,), F, uniform(0.5, 2.0))},
         outputs=("y", "rm", "rv"), opset=15, reference=_batchnorm_training),
    Case("matmul_batchnorm_training",  # batch statistics of a GEMM result
         [node("MatMul", ["x", "w"], ["m"]),
          node("BatchNormalization", ["m", "s", "bb", "mu", "v"], ["y", "rm", "rv"],
               training_mode=1)],
         {"x": ((4, 5), F, normal())},
         {"w": W53, "s": np.array([1.0, 2.0, 0.5], F), "bb": np.array([0.0, 1.0, -1.0], F),
          "mu": np.zeros(3, F), "v": np.ones(3, F)}, outputs=("y", "rm", "rv"), opset=15,
         reference=lambda f: [
             _standardized(f["x"] @ W53) * np.array([1.0, 2.0, 0.5], F) +
             np.array([0.0, 1.0, -1.0], F), ((f["x"] @ W53).mean(axis=0) * 0.1).astype(F),
             ((f["x"] @ W53).var(axis=0) * 0.1 + 0.9).astype(F)]),
    Case("hardmax_axis1_ties", [node("Hardmax", ["x"], axis=1)],
         {"x": (("N", 5, 3), F, between(0, 2))}, opset=13),
    Case("hardmax_last", [node("Hardmax", ["x"])], {"x": (("N", 7), F, normal())}, opset=13),
    Case("lpnorm_l2", [node("LpNormalization", ["x"], axis=1)], {"x": (("N", 4, 3), F, normal())}),
    Case("lpnorm_l1_last", [node("LpNormalization", ["x"], p=1)], {"x": (("N", 5), F, normal())}),
    Case("lrn", [node("LRN", ["x"], size=3, alpha=1e-2, beta=0.6, bias=1.5)],
         {"x": (("N", 5, 3, 2), F, normal(2.0))}),
    Case("lrn_even_size", [node("LRN", ["x"], size=4)], {"x": (("N", 6, 2, 2), F, normal(2.0))},
         reference=lambda f: [_lrn(f["x"], 4)]),  # ORT refuses even sizes
    # quantization
    Case("quantize_u8_ties", [node("QuantizeLinear", ["x", "s", "z"])],
         {"x": (("N", 24), F, halves)}, {"s": np.array(0.5, F), "z": np.array(3, U8)}),
    Case("quantize_runtime_scale_ties", [node("QuantizeLinear", ["x", "s", "z"])],
         # 6500 / 1000 is 6.5 exactly; 6500 * f32(1 / 1000) is above it.
         {"x": (("N", 6), F, fixed([500.0, 1500.0, 6500.0, -6500.0, 7500.0, 499.99997])),
          "s": ((), F, fixed(1000.0)), "z": ((), U8, fixed(128))}, opset=21,
         reference=lambda f: [np.array([[128, 130, 134, 122, 136, 128]] * len(f["x"]), U8)]),
    Case("quantize_const_scale_ties", [node("QuantizeLinear", ["x", "s", "z"])],
         {"x": (("N", 6), F, fixed([500.0, 1500.0, 6500.0, -6500.0, 7500.0, 499.99997]))},
         {"s": np.array(1000.0, F), "z": np.array(128, U8)}),
    Case("quantize_f16", [node("QuantizeLinear", ["x", "s", "z"])],  # ORT divides in f32
         {"x": (("N", 12), np.float16, normal(40.0))},
         {"s": np.array(0.3, np.float16), "z": np.array(-7, I8)}, opset=21,
         reference=lambda f: [np.clip(np.rint(f["x"] / np.float16(0.3)) - 7, -128,
                                      127).astype(I8)]),
    Case("quantize_i8_axis", [node("QuantizeLinear", ["x", "s", "z"], axis=1)],
         {"x": (("N", 3, 4), F, normal(200.0))},
         {"s": np.array([0.5, 1.0, 3.0], F), "z": np.array([-2, 0, 5], I8)}),
    Case("quantize_blocked", [node("QuantizeLinear", ["x", "s", "z"], axis=1, block_size=2)],
         {"x": ((2, 5), F, normal(20.0))},
         {"s": np.array([[0.5, 1.0, 2.0], [0.25, 3.0, 1.5]], F),
          "z": np.array([[1, 2, 3], [4, 5, 6]], U8)}, opset=21),
    Case("dequantize_u8", [node("DequantizeLinear", ["x", "s", "z"])],
         {"x": (("N", 6), U8, between(0, 255))}, {"s": np.array(0.02, F),
                                                   "z": np.array(128, U8)}),
    Case("dequantize_i8_axis", [node("DequantizeLinear", ["x", "s", "z"], axis=1)],
         {"x": (("N", 3, 2), I8, between(-128, 127))},
         {"s": np.array([0.5, 0.1, 2.0], F), "z": np.array([1, -3, 0], I8)}),
    Case("dequantize_i32", [node("DequantizeLinear", ["x", "s"])],
         {"x": (("N", 4), I32, between(-100000, 100000))}, {"s": np.array(0.001, F)}),
    Case("dequantize_blocked", [node("DequantizeLinear", ["x", "s", "z"], axis=0, block_size=3)],
         {"x": ((4, 2), U8, between(0, 255))},
         {"s": np.array([[0.5, 1.0], [2.0, 0.25]], F), "z": np.array([[1, 2], [3, 4]], U8)},
         opset=21),
    Case("quantize_dequantize_roundtrip",
         [node("QuantizeLinear", ["x", "s", "z"], ["q"]),
          node("DequantizeLinear", ["q", "s", "z"])],
         {"x": (("N", 16), F, normal(3.0))}, {"s": np.array(0.05, F), "z": np.array(-4, I8)}),
    Case("matmul_integer", [node("MatMulInteger", ["a", "b", "az", "bz"])],
         {"a": (("N", 3, 5), U8, between(0, 255))},
         {"b": R.integers(0, 255, (5, 4)).astype(U8), "az": np.array(7, U8),
          "bz": np.array([1, 2, 3, 200], U8)}),
    Case("matmul_integer_per_row_i8", [node("MatMulInteger", ["a", "b", "az"])],
         {"a": ((4, 6), I8, between(-128, 127)), "b": ((6, 3), I8, between(-128, 127))},
         {"az": np.array([[1], [-2], [3], [0]], I8)},  # ORT: per-tensor zero points only
         reference=lambda f: [(f["a"].astype(I32) - np.array([[1], [-2], [3], [0]], I32)) @
                              f["b"].astype(I32)]),
    Case("qlinear_matmul_u8",
         [node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])],
         {"a": (("N", 2, 4), U8, between(0, 255)), "b": ((4, 3), U8, between(0, 255))},
         {"as": np.array(0.02, F), "az": np.array(113, U8), "bs": np.array(0.01, F),
          "bz": np.array(98, U8), "ys": np.array(0.05, F), "yz": np.array(120, U8)},
         oracle="onnx.reference"),
    Case("qlinear_matmul_i8",
         [node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])],
         {"a": (("N", 3), I8, between(-128, 127))},
         {"b": R.integers(-128, 127, (3, 5)).astype(I8), "as": np.array(0.1, F),
          "az": np.array(-3, I8), "bs": np.array(0.03, F), "bz": np.array(0, I8),
          "ys": np.array(0.2, F), "yz": np.array(-10, I8)},
         oracle="onnx.reference"),
    Case("conv_integer_pads", [node("ConvInteger", ["x", "w", "xz", "wz"], pads=[1, 1, 1, 1])],
         {"x": (("N", 2, 4, 4), U8, between(0, 255))},
         {"w": R.integers(0, 255, (3, 2, 3, 3)).astype(U8), "xz": np.array(120, U8),
          "wz": np.array(128, U8)}),
    Case("conv_integer_groups_strides",
         [node("ConvInteger", ["x", "w", "xz"], group=2, strides=[2, 1], pads=[0, 1, 1, 0],
               dilations=[1, 2])],
         {"x": (("N", 4, 5, 6), U8, between(0, 255))},
         {"w": R.integers(0, 255, (4, 2, 2, 2)).astype(U8), "xz": np.array(3, U8)}),
    Case("qlinear_conv_per_channel",
         [node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
               pads=[1, 1, 1, 1])],
         {"x": (("N", 2, 5, 5), U8, between(0, 255))},
         {"xs": np.array(0.02, F), "xz": np.array(100, U8),
          "w": R.integers(-100, 100, (3, 2, 3, 3)).astype(I8),
          "ws": np.array([0.01, 0.02, 0.005], F), "wz": np.array([0, 0, 0], I8),
          "ys": np.array(0.1, F), "yz": np.array(90, U8),
          "b": R.integers(-500, 500, 3).astype(I32)}, opset=13,
         oracle="onnx.reference"),
]


@pytest.mark.parametrize("target", KERNEL_TARGETS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_reference(case: Case, target: KernelTarget, tmp_path: Path) -> None:
    """Integer outputs must be equal. That holds on every x86-64-v3 CPU and up: irkit's
    int8 kernels accumulate exactly in int32 on every target (``vpdpbusd``, or bytes
    widened to i32; never a saturating int16 pair sum), and the cases whose ONNX Runtime
    results depend on the CPU take ONNX's reference implementation as the oracle."""
    model = build_model(case)
    compiled = compile_and_load(model, tmp_path, threads=1, target=target)
    checked = check_batches(case, compiled, reference_for(case, model), BATCHES, rtol=RTOL,
                            atol=ATOL, exact_integers=True)
    assert checked == len(BATCHES) * len(case.outputs)


REFUSED = [
    ("dropout_runtime_training", [node("Dropout", ["x", "r", "t"])],
     {"x": ((2, 3), TensorProto.FLOAT), "t": ((), TensorProto.BOOL)},
     {"r": np.array(0.5, F)}, "run-time training_mode"),
    ("dropout_training_ratio", [node("Dropout", ["x", "r", "t"])],
     {"x": ((2, 3), TensorProto.FLOAT)}, {"r": np.array(0.5, F), "t": np.array(True)},
     "nonzero ratio"),
    ("lpnorm_p3", [node("LpNormalization", ["x"], p=3)], {"x": ((2, 3), TensorProto.FLOAT)},
     {}, "p=3"),
    ("matmul_integer_a_zero_vector", [node("MatMulInteger", ["a", "b", "az"])],
     {"a": ((2, 4), TensorProto.UINT8), "b": ((4, 3), TensorProto.UINT8)},
     {"az": np.array([1, 2], U8)}, "K dim of 1"),
    ("qlinear_matmul_per_row",
     [node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])],
     {"a": ((2, 4), TensorProto.UINT8), "b": ((4, 3), TensorProto.UINT8)},
     {"as": np.array([0.1, 0.2], F), "az": np.array([1, 2], U8), "bs": np.array(0.1, F),
      "bz": np.array(0, U8), "ys": np.array(0.1, F), "yz": np.array(0, U8)}, "per-tensor"),
]


@pytest.mark.parametrize("name,nodes,inputs,consts,message", REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refused_as_unsupported(name: str, nodes: list[Any],
                                       inputs: dict[str, tuple[tuple[int, ...], int]],
                                       consts: dict[str, np.ndarray], message: str) -> None:
    values = [helper.make_tensor_value_info(n, t, list(s)) for n, (s, t) in inputs.items()]
    out = helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()]
    model = helper.make_model(helper.make_graph(nodes, name, values, [out], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedOpsError, match=message):
        irkit.compile(irkit.load_model(model), target="llvm")
