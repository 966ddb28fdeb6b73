"""Lowering: fusion into GEMM epilogues, inline views, shape folding, memory planning."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import irkit
from irkit.bench import mlp_onnx
from irkit.kir import Buffer, Const, For, Kernel, Load, N, Store, Var, print_kernel
from irkit.lower import LoweringError, Tiles, lower_graph
from irkit.lower.planner import plan_workspace
from irkit.lower.tensor import affine, parse_dim


def test_mlp_lowers_to_one_kernel_per_gemm_with_fused_epilogues() -> None:
    lowered = lower_graph(irkit.load_model(mlp_onnx()), tiles=Tiles(mr=4, nr=16, vec=8))
    assert [k.name.split("_")[0] for k in lowered.program.kernels] == ["gemm"] * 3
    assert lowered.fused == ["Gemm+Relu", "Gemm+Relu"]
    text = print_kernel(lowered.program.kernels[0])
    assert "parallel" in text and "fma(" in text and "max(" in text
    # One artifact for every batch size: sizes are expressions in N.
    assert lowered.program.workspace_n > 0 and lowered.output_shapes == {"y": [{"N": 1}, {"": 10}]}


def test_elementwise_chain_is_one_kernel() -> None:
    nodes = [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Add", ["m", "a"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(np.arange(8, dtype=np.float32), "a")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered = lower_graph(irkit.load_model(model))
    assert len(lowered.program.kernels) == 1
    assert lowered.plan.workspace_n == 0 and lowered.plan.workspace_c == 0


def test_transpose_reshape_are_views_and_shapes_fold() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n0"]),
        helper.make_node("Unsqueeze", ["n0", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["s"], axis=0),
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered = lower_graph(irkit.load_model(model))
    # Only the final copy into the output runs; the shape arithmetic folded away.
    assert len(lowered.program.kernels) == 1
    assert lowered.output_shapes["y"] == [{"N": 1}, {"": 12}]


def test_planner_reuses_dead_buffers() -> None:
    i = Var("i")
    bufs = [Buffer(f"t{k}", "f32", N * 16) for k in range(4)]
    kernels = []
    for k in range(3):  # t0 -> t1 -> t2 -> t3: at most two live at once
        src, dst = bufs[k], bufs[k + 1]
        kernels.append(Kernel(f"k{k}", (src, dst), For(i, N * 16, Store(dst, i, Load(src, i)))))
    plan = plan_workspace(kernels, bufs)
    offsets = {name: (p.offset_n, p.offset_c) for name, p in plan.placements.items()}
    assert offsets["t0"] == offsets["t2"] and offsets["t1"] == offsets["t3"]
    assert offsets["t0"] != offsets["t1"]
    assert plan.peak_bytes(64) == 2 * 64 * 64 and plan.report()["without_reuse_at_N64"] == 4 * 64 * 64


def test_dims_and_affine_sizes() -> None:
    assert parse_dim("N", "N") == N and parse_dim(7, "N") == Const(7)
    assert affine(parse_dim("4*N", "N")) == (4, 0)
    assert parse_dim("unk__3", "N") is None
    assert affine(N * 3 + 5) == (3, 5)
    with pytest.raises(LoweringError, match="affine"):
        affine(N * N)


def test_unsupported_ops_listed_together() -> None:
    nodes = [helper.make_node("NonZero", ["x"], ["z"]), helper.make_node("Det", ["x"], ["d"]),
             helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(LoweringError, match="Det, NonZero"):
        lower_graph(irkit.load_model(model))
