"""Several symbolic dims: sizes as polynomials, planning, and a two-symbol attention
model compiled for llvm against ONNX Runtime at several (N, S) bindings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import irkit
import irkit.runtime
from irkit.kir import Buffer, Const, For, Kernel, Load, N, Store, Var
from irkit.lower import LoweringError, lower_graph
from irkit.lower import symbolic as sym
from irkit.lower.planner import plan_workspace
from irkit.lower.tensor import parse_dim

S = Var("N1")


def test_polynomials_of_several_symbols() -> None:
    assert parse_dim("S", {"N": "N", "S": "N1"}) == S
    assert sym.to_poly(N * S * 384 + S * 2 - 2 * S + 64) == {("N", "N1"): 384, (): 64}
    assert sym.exact_div({("N", "N1"): 384}, {("N1",): 12}) == {("N",): 32}
    assert sym.exact_div({("N", "N1"): 384}, {(): 5}) is None
    assert sym.evaluate(sym.from_json(sym.to_json({("N", "N1"): 3, (): 1})),
                        {"N": 2, "N1": 5}) == 31
    assert sym.from_json([4, 8]) == {("N",): 4, (): 8}  # the older a*N + b form
    # Coefficient-wise max bounds both sizes for any non-negative binding.
    bound = sym.upper_bound({("N", "N1"): 4, (): 64}, {("N",): 16, (): 8})
    assert bound == {("N", "N1"): 4, ("N",): 16, (): 64}
    with pytest.raises(LoweringError, match="polynomial"):
        sym.to_poly(Var("i_3") * 2)


def test_planner_reuses_slots_with_polynomial_sizes() -> None:
    i = Var("i_1")
    sizes = [N * S * 16, N * 16, N * S * 16, N * 16]
    bufs = [Buffer(f"t{k}", "f32", size) for k, size in enumerate(sizes)]
    kernels = [Kernel(f"k{k}", (bufs[k], bufs[k + 1]),
                      For(i, Const(1), Store(bufs[k + 1], i, Load(bufs[k], i))))
               for k in range(3)]
    plan = plan_workspace(kernels, bufs)
    place = plan.placements
    assert (place["t0"], place["t1"]) == (place["t2"], place["t3"])  # dead buffers reused
    assert place["t1"].offset_terms == ((("N", "N1"), 64),)  # after t0's N*S*64 bytes
    assert plan.workspace_terms == ((("N", "N1"), 64),) and plan.workspace_n == 64
    assert plan.peak_bytes(8) == 64 * 64 + 64 * 8


def _attention_model(d: int = 64) -> object:
    rng = np.random.default_rng(0)
    wq = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "xt"], ["scores"]),  # [N, S, S]: S columns
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["ctx"]),  # depth S
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one_scalar"], ["s_scalar"]),
        helper.make_node("Unsqueeze", ["s_scalar", "zero"], ["shape_s"]),
        helper.make_node("Slice", ["pos", "zero", "shape_s", "zero"], ["pos_s"]),  # pos[:S]
        helper.make_node("Add", ["ctx", "pos_s"], ["y"]),
    ]
    inits = [numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array(rng.standard_normal((32, d)).astype(np.float32), "pos"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one_scalar")]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_two_symbol_attention_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _attention_model()
    lowered = lower_graph(irkit.load_model(model))
    assert lowered.program.symbols == ("N", "N1")
    assert lowered.output_shapes == {"y": [{"N": 1}, {"N1": 1}, {"": 64}]}
    artifact = irkit.compile(irkit.load_model(model), target="llvm", threads=1)
    compiled = irkit.runtime.load(artifact.save(tmp_path / "attn"))
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    checked = 0
    for n, s in [(1, 1), (3, 5), (2, 32), (5, 17)]:
        x = np.random.default_rng(n * 100 + s).standard_normal((n, s, 64)).astype(np.float32)
        expected = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(compiled(x=x)["y"], expected, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked == 4


def test_two_symbols_bind_per_call_split_over_threads_and_check_consistency(
        tmp_path: Path) -> None:
    model = _attention_model()
    graph = irkit.load_model(model)
    serial = irkit.runtime.load(irkit.compile(graph, target="llvm", threads=1)
                                .save(tmp_path / "one"))
    split = irkit.runtime.load(irkit.compile(graph, target="llvm", threads=2)
                               .save(tmp_path / "two"), parallel_min_us=0)
    for n, s in [(4, 9), (2, 31), (4, 9)]:  # the repeat runs the cached split plan
        x = np.random.default_rng(s).standard_normal((n, s, 64)).astype(np.float32)
        np.testing.assert_allclose(split(x=x)["y"], serial(x=x)["y"], rtol=1e-5, atol=1e-6)
    assert (4, 9) in split._runner._split_plan  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="x"):
        serial(x=np.zeros((2, 3, 63), np.float32))


def test_symbolic_slice_past_its_table_is_refused_at_run_time(tmp_path: Path) -> None:
    model = _attention_model()  # slices 32 position rows to the sequence length S
    lowered = lower_graph(irkit.load_model(model))
    assert [c["size"] for c in lowered.constraints] == [{"": 32, "N1": -1}]
    compiled = irkit.runtime.load(irkit.compile(irkit.load_model(model), target="llvm",
                                                threads=1).save(tmp_path / "a"))
    assert compiled(x=np.ones((1, 32, 64), np.float32))["y"].shape == (1, 32, 64)
    with pytest.raises(ValueError, match="past the size"):
        compiled(x=np.ones((1, 33, 64), np.float32))


def _baked_reshape_model() -> object:
    """x [N, S, 4] reshaped to [N, 3, 4] through a shape whose 3 an exporter baked in
    (a legacy torch export of a transformer bakes the traced sequence length so): valid
    only at S = 3, where ONNX Runtime runs it and refuses every other S."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="baked"),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([3, 4], np.int64), "rest")]
    graph = helper.make_graph(
        nodes, "baked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reshape_to_a_baked_shape_refuses_other_sizes_at_run_time(tmp_path: Path) -> None:
    """The kernels once read S*N*4 elements as N*12 for any S: out of bounds for S < 3,
    a wrong answer without an error for every S but 3."""
    model = _baked_reshape_model()
    lowered = lower_graph(irkit.load_model(model))
    assert [c["size"] for c in lowered.constraints] == [  # N*S*4 == N*12, both ways
        {"N": -12, "N*N1": 4}, {"N": 12, "N*N1": -4}]
    assert "its input [N, S, 4]" in str(lowered.constraints[0]["why"])
    compiled = irkit.runtime.load(irkit.compile(irkit.load_model(model), target="llvm",
                                                threads=1).save(tmp_path / "a"))
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) - 10
    np.testing.assert_array_equal(compiled(x=x)["y"], np.maximum(x, 0))
    for s in (2, 5):
        with pytest.raises(ValueError, match=r"Reshape 'baked' into \[N, 3, 4\].*N1=" f"{s}\\)"):
            compiled(x=np.ones((2, s, 4), np.float32))
