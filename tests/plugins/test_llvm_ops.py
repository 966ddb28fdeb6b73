"""Differential tests of every lowered op: small ONNX graphs, compiled by the llvm
backend, run through ``irkit.runtime.load`` at batch 1, 7 and 64, against ONNX Runtime
(fp32: rtol 1e-4, atol 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto

from irkit.testing.op_cases import (
    KERNEL_TARGETS,
    KernelTarget,
    build_model,
    check_batches,
    compile_and_load,
    integers,
    node,
    onnxruntime_reference,
    uniform,
)
from irkit.testing.op_cases import OpCase as Case

BATCHES = (1, 7, 64)
RTOL, ATOL = 1e-4, 1e-5


R = np.random.default_rng(7)


def w(*shape: int, positive: bool = False) -> np.ndarray:
    a = R.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


F = np.float32
CASES = [
    # elementwise (unary)
    *[Case(op.lower(), [node(op, ["x"])], {"x": (("N", 3, 5), F)}) for op in
      ("Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Neg", "Abs", "Softplus", "Identity",
       "Floor", "Ceil")],
    Case("sqrt", [node("Sqrt", ["x"])], {"x": (("N", 3, 5), F, uniform(0.0, 4.0))}),
    Case("reciprocal", [node("Reciprocal", ["x"])], {"x": (("N", 8), F, uniform(0.5, 3.0))}),
    Case("log", [node("Log", ["x"])], {"x": (("N", 8), F, uniform(0.1, 5.0))}),
    Case("gelu", [node("Gelu", ["x"])], {"x": (("N", 16), F)}, opset=20),
    Case("gelu_tanh", [node("Gelu", ["x"], approximate="tanh")], {"x": (("N", 16), F)},
         opset=20),
    Case("isnan_where", [node("Div", ["x", "x"], ["q"]), node("IsNaN", ["q"], ["c"]),
                         node("Where", ["c", "x", "q"])], {"x": (("N", 6), F)}),
    Case("leaky_relu", [node("LeakyRelu", ["x"], alpha=0.2)], {"x": (("N", 6), F)}),
    Case("hard_sigmoid", [node("HardSigmoid", ["x"])], {"x": (("N", 6), F)}),
    Case("clip", [node("Clip", ["x", "lo", "hi"])], {"x": (("N", 6), F)},
         {"lo": np.array(-0.5, F), "hi": np.array(0.7, F)}),
    # elementwise (binary, broadcasting)
    Case("add_bcast", [node("Add", ["x", "b"])], {"x": (("N", 3, 4), F)}, {"b": w(4)}),
    Case("sub_two_inputs", [node("Sub", ["x", "z"])],
         {"x": (("N", 3, 4), F), "z": (("N", 1, 4), F)}),
    Case("mul_col", [node("Mul", ["x", "b"])], {"x": (("N", 3, 4), F)}, {"b": w(3, 1)}),
    Case("div_const", [node("Div", ["x", "b"])], {"x": (("N", 3, 4), F)},
         {"b": w(3, 4, positive=True)}),
    Case("pow_square", [node("Pow", ["x", "e"])], {"x": (("N", 5), F)}, {"e": np.array(2.0, F)}),
    Case("pow_general", [node("Pow", ["x", "e"])], {"x": (("N", 5), F, uniform(0.1, 3.0))},
         {"e": np.array(1.7, F)}),
    Case("max_min", [node("Max", ["x", "z"], ["m"]), node("Min", ["m", "b"])],
         {"x": (("N", 4), F), "z": (("N", 4), F)}, {"b": w(4)}),
    Case("where_greater", [node("Greater", ["x", "z"], ["c"]), node("Where", ["c", "x", "z"])],
         {"x": (("N", 6), F), "z": (("N", 6), F)}),
    Case("equal_bool_out", [node("Equal", ["x", "x"])], {"x": (("N", 4), F)}),
    Case("cast_int64", [node("Floor", ["x"], ["f"]), node("Cast", ["f"], to=TensorProto.INT64)],
         {"x": (("N", 4), F, uniform(-5.0, 5.0))}),
    Case("chain_fused", [node("Mul", ["x", "a"], ["m"]), node("Add", ["m", "b"], ["s"]),
                         node("Tanh", ["s"], ["t"]), node("Mul", ["t", "x"])],
         {"x": (("N", 32), F)}, {"a": w(32), "b": w(32)}),
    # heavy ops
    Case("matmul_const", [node("MatMul", ["x", "w"])], {"x": (("N", 24), F)}, {"w": w(24, 40)}),
    Case("matmul_3d_const", [node("MatMul", ["x", "w"])], {"x": (("N", 5, 12), F)},
         {"w": w(12, 7)}),
    Case("matmul_batched_runtime", [node("MatMul", ["x", "z"])],
         {"x": (("N", 2, 5, 7), F), "z": (("N", 2, 7, 3), F)}),
    Case("matmul_vector_left", [node("MatMul", ["v", "x"])], {"x": (("N", 7, 3), F)},
         {"v": w(7)}),
    Case("matmul_vector_right", [node("MatMul", ["x", "v"])], {"x": (("N", 5, 7), F)},
         {"v": w(7)}),
    Case("matmul_broadcast_a", [node("MatMul", ["a", "x"])], {"x": (("N", 2, 7, 3), F)},
         {"a": w(2, 5, 7)}),
    Case("matmul_runtime_b_static", [node("MatMul", ["x", "z"])],
         {"x": (("N", 9), F), "z": ((9, 35), F)}),
    Case("gemm_full", [node("Gemm", ["x", "w", "c"], transB=1, alpha=0.5, beta=2.0)],
         {"x": (("N", 10), F)}, {"w": w(6, 10), "c": w(6)}),
    Case("gemm_transA", [node("Transpose", ["x"], ["xt"], perm=[1, 0]),
                         node("Gemm", ["xt", "w"], transA=1)],
         {"x": (("N", 10), F)}, {"w": w(10, 4)}),
    Case("gemm_bias_relu_residual",
         [node("Gemm", ["x", "w", "b"], ["g"]), node("Relu", ["g"], ["r"]),
          node("Add", ["r", "x"])], {"x": (("N", 16), F)}, {"w": w(16, 16), "b": w(16)}),
    Case("conv_basic", [node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])],
         {"x": (("N", 3, 8, 8), F)}, {"w": w(4, 3, 3, 3), "b": w(4)}),
    Case("conv_groups_strides", [node("Conv", ["x", "w"], group=2, strides=[2, 2],
                                      pads=[0, 1, 1, 0])],
         {"x": (("N", 4, 9, 7), F)}, {"w": w(6, 2, 3, 3)}),
    Case("conv_dilated", [node("Conv", ["x", "w"], dilations=[2, 2], pads=[2, 1, 2, 1])],
         {"x": (("N", 2, 10, 10), F)}, {"w": w(3, 2, 3, 3)}),
    Case("conv_same_upper", [node("Conv", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER")],
         {"x": (("N", 2, 9, 9), F)}, {"w": w(3, 2, 4, 4)}),
    Case("conv_depthwise_1x1", [node("Conv", ["x", "w"], ["d"], group=4, pads=[1, 1, 1, 1]),
                                node("Conv", ["d", "w2"])],
         {"x": (("N", 4, 6, 6), F)}, {"w": w(4, 1, 3, 3), "w2": w(5, 4, 1, 1)}),
    Case("conv_bn_relu_residual",
         [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
          node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
          node("Relu", ["n"], ["r"]), node("Add", ["r", "x"])],
         {"x": (("N", 4, 6, 6), F)},
         {"w": w(4, 4, 3, 3), "s": w(4), "bb": w(4), "m": w(4), "v": w(4, positive=True)}),
    Case("batchnorm", [node("BatchNormalization", ["x", "s", "bb", "m", "v"], epsilon=1e-3)],
         {"x": (("N", 3, 4, 4), F)},
         {"s": w(3), "bb": w(3), "m": w(3), "v": w(3, positive=True)}),
    # windows and reductions
    Case("maxpool", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1])], {"x": (("N", 2, 7, 7), F)}),
    Case("avgpool_excl_pad", [node("AveragePool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])],
         {"x": (("N", 2, 5, 5), F)}),
    Case("avgpool_incl_pad", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   count_include_pad=1)], {"x": (("N", 2, 5, 5), F)}),
    Case("global_avgpool", [node("GlobalAveragePool", ["x"])], {"x": (("N", 3, 4, 5), F)}),
    Case("softmax_last", [node("Softmax", ["x"])], {"x": (("N", 3, 10), F)}),
    Case("softmax_axis1", [node("Softmax", ["x"], axis=1)], {"x": (("N", 6, 3), F)}),
    Case("layernorm", [node("LayerNormalization", ["x", "s", "b"], epsilon=1e-5)],
         {"x": (("N", 5, 16), F)}, {"s": w(16), "b": w(16)}),
    Case("reduce_mean_keep", [node("ReduceMean", ["x", "ax"])], {"x": (("N", 3, 4), F)},
         {"ax": np.array([2], np.int64)}),
    Case("reduce_sum_nokeep", [node("ReduceSum", ["x", "ax"], keepdims=0)],
         {"x": (("N", 3, 4), F)}, {"ax": np.array([1], np.int64)}),
    Case("reduce_max_multi", [node("ReduceMax", ["x", "ax"])], {"x": (("N", 3, 4), F)},
         {"ax": np.array([1, 2], np.int64)}),
    # layout and shape ops
    Case("transpose", [node("Transpose", ["x"], perm=[0, 2, 1])], {"x": (("N", 3, 5), F)}),
    Case("reshape_infer", [node("Reshape", ["x", "s"])], {"x": (("N", 3, 4), F)},
         {"s": np.array([0, -1], np.int64)}),
    Case("reshape_of_transpose", [node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                                  node("Reshape", ["t", "s"])], {"x": (("N", 3, 4), F)},
         {"s": np.array([0, 2, 6], np.int64)}),
    Case("flatten", [node("Flatten", ["x"])], {"x": (("N", 2, 3, 2), F)}),
    Case("squeeze_unsqueeze", [node("Unsqueeze", ["x", "a"], ["u"]),
                               node("Squeeze", ["u", "a"])],
         {"x": (("N", 3), F)}, {"a": np.array([1], np.int64)}),
    Case("concat", [node("Transpose", ["z"], ["zt"], perm=[0, 2, 1]),
                    node("Concat", ["x", "zt", "x"], axis=1)],
         {"x": (("N", 2, 2), F), "z": (("N", 2, 3), F)}),
    Case("slice_steps", [node("Slice", ["x", "st", "en", "ax", "sp"])],
         {"x": (("N", 10, 6), F)},
         {"st": np.array([1, -1], np.int64), "en": np.array([9, -7], np.int64),
          "ax": np.array([1, 2], np.int64), "sp": np.array([3, -2], np.int64)}),
    Case("split", [node("Split", ["x", "sp"], ["a", "b"], axis=1), node("Sub", ["b", "a"])],
         {"x": (("N", 6), F)}, {"sp": np.array([3, 3], np.int64)}),
    Case("gather_embedding", [node("Gather", ["e", "i"])],
         {"i": (("N", 5), np.int64, integers(-11, 11))}, {"e": w(11, 4)}),
    Case("gather_axis1_const", [node("Gather", ["x", "i"], axis=1)], {"x": (("N", 5, 3), F)},
         {"i": np.array([4, 0, -1], np.int64)}),
    Case("expand", [node("Expand", ["x", "s"])], {"x": (("N", 1, 4), F)},
         {"s": np.array([1, 3, 4], np.int64)}),
    Case("shape_driven_reshape",
         [node("Shape", ["x"], ["sh"]), node("Gather", ["sh", "zero"], ["n0"]),
          node("Unsqueeze", ["n0", "ax"], ["n1"]), node("Concat", ["n1", "m1"], ["s"], axis=0),
          node("Reshape", ["x", "s"])],
         {"x": (("N", 3, 4), F)},
         {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64),
          "m1": np.array([-1], np.int64)}),
]


@pytest.mark.parametrize("target", KERNEL_TARGETS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_onnxruntime(case: Case, target: KernelTarget, tmp_path: Path) -> None:
    model = build_model(case)
    compiled = compile_and_load(model, tmp_path, threads=1, target=target)
    reference = onnxruntime_reference(model, case.outputs)
    checked = check_batches(case, compiled, reference, BATCHES, rtol=RTOL, atol=ATOL)
    assert checked == len(BATCHES) * len(case.outputs)


def test_case_count() -> None:
    assert len(CASES) == 70
