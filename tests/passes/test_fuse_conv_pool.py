"""The fuse pass's Conv + pooling fusion (irkit/passes/fuse_conv_pool.py) and the
``irkit.ConvBiasActPool`` op's decomposition (irkit/ops/conv_pool.py)."""

from __future__ import annotations

import numpy as np
import pytest

import irkit
from irkit.ir import parse_graph
from irkit.passes.fuse_conv_pool import split_conv_pool

RTOL, ATOL = 1e-4, 1e-5

HEAD = "opset(ai.onnx=17, irkit=1)\n"
CONV = """  const @w: f32[2,1,3,3] = [0.5, -0.25, 1.0, 0.75, -1.0, 0.5, 0.25, 0.125, -0.5, 1.0, 0.5, -0.75, 0.25, 0.5, -0.5, 1.5, -1.0, 0.25]
  const @b: f32[2] = [0.1, -0.2]
"""


def _graph(body: str, out: str = "%y: f32[N,2,3,3]", inputs: str = "%x: f32[N,1,6,6]") -> str:
    return f"{HEAD}graph g({inputs}) -> ({out}) {{\n{CONV}{body}}}"


def _ops(graph) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op for n in graph.nodes]


def _feeds(batch: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((batch, 1, 6, 6)).astype(np.float32)}


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh", None])
@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_fused_matches_unfused(act: str | None, pool: str) -> None:
    a = f"  %a = {act}(%c) : f32[N,2,6,6]\n" if act else ""
    src = _graph(f"""  %c = Conv(%x, @w, @b) {{kernel_shape=[3, 3], pads=[1, 1, 1, 1]}} : f32[N,2,6,6]
{a}  %y = {pool}(%{"a" if act else "c"}) {{kernel_shape=[2, 2], strides=[2, 2]}} : f32[N,2,3,3]
""")
    graph = parse_graph(src)
    fused = irkit.optimize(graph, "fuse{force_conv_avg_pool=true}")
    assert _ops(fused) == ["ConvBiasActPool"]
    node = fused.nodes[0]
    assert node.attr("pool") == ("max" if pool == "MaxPool" else "average")
    assert node.attr("act") == {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
                                None: "none"}[act]
    feeds = _feeds()
    want, got = irkit.evaluate(graph, feeds)["y"], irkit.evaluate(fused, feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # Splitting it back gives the ops quantize/prune/lowrank know, same results.
    split = fused.clone()
    assert split_conv_pool(split) == 1
    assert _ops(split) == (["Conv", pool] if act is None else ["ConvBiasAct", pool])
    assert split.nodes[0].outputs[0].shape == ("N", 2, 6, 6)
    np.testing.assert_allclose(irkit.evaluate(split, feeds)["y"], want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("body,outs", [
    # padded pool, ceil mode, dilated pool, Indices output used
    ("  %y = MaxPool(%c) {kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]} : "
     "f32[N,2,4,4]\n", "%y: f32[N,2,4,4]"),
    ("  %y = MaxPool(%c) {kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1} : f32[N,2,3,3]\n",
     "%y: f32[N,2,3,3]"),
    ("  %y = MaxPool(%c) {kernel_shape=[2, 2], dilations=[2, 2]} : f32[N,2,4,4]\n",
     "%y: f32[N,2,4,4]"),
    ("  %y, %i = MaxPool(%c) {kernel_shape=[2, 2], strides=[2, 2]} : f32[N,2,3,3], "
     "i64[N,2,3,3]\n", "%y: f32[N,2,3,3], %i: i64[N,2,3,3]"),
    # the conv's output is read twice
    ("  %p = MaxPool(%c) {kernel_shape=[2, 2], strides=[2, 2]} : f32[N,2,3,3]\n"
     "  %s = AveragePool(%c) {kernel_shape=[2, 2], strides=[2, 2]} : f32[N,2,3,3]\n"
     "  %y = Add(%p, %s) : f32[N,2,3,3]\n", "%y: f32[N,2,3,3]"),
])
def test_not_fused(body: str, outs: str) -> None:
    src = _graph("  %c = Conv(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} : "
                 "f32[N,2,6,6]\n" + body, out=outs)
    fused = irkit.optimize(parse_graph(src), "fuse")
    assert "ConvBiasActPool" not in _ops(fused)


def test_residual_conv_not_fused() -> None:
    src = f"""{HEAD}graph g(%x: f32[N,2,4,4]) -> (%y: f32[N,2,2,2]) {{
  const @w: f32[2,2,1,1] = [1.0, 0.5, -0.5, 1.0]
  %c = Conv(%x, @w) {{kernel_shape=[1, 1]}} : f32[N,2,4,4]
  %s = Add(%c, %x) : f32[N,2,4,4]
  %r = Relu(%s) : f32[N,2,4,4]
  %y = MaxPool(%r) {{kernel_shape=[2, 2], strides=[2, 2]}} : f32[N,2,2,2]
}}"""
    assert _ops(irkit.optimize(parse_graph(src), "fuse")) == ["ConvBiasAct", "MaxPool"]


def test_average_pool_unfused_without_a_trial() -> None:
    """Nothing to time it with: a conv + average pool (slower fused on AVX2) stays two
    nodes, and the report says why; a max pool still fuses."""
    body = """  %c = Conv(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} : f32[N,2,6,6]
  %a = Relu(%c) : f32[N,2,6,6]
  %y = POOL(%a) {kernel_shape=[2, 2], strides=[2, 2]} : f32[N,2,3,3]
"""
    graph = irkit.optimize(parse_graph(_graph(body.replace("POOL", "AveragePool"))), "fuse")
    assert _ops(graph) == ["ConvBiasAct", "AveragePool"]
    notes = str(graph.history)
    assert "kept unfused" in notes and "measure=True" in notes, notes
    assert _ops(irkit.optimize(parse_graph(_graph(body.replace("POOL", "MaxPool"))),
                               "fuse")) == ["ConvBiasActPool"]


def test_fuse_switch() -> None:
    src = _graph("""  %c = Conv(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} : f32[N,2,6,6]
  %a = Relu(%c) : f32[N,2,6,6]
  %y = MaxPool(%a) {kernel_shape=[2, 2], strides=[2, 2]} : f32[N,2,3,3]
""")
    assert _ops(irkit.optimize(parse_graph(src), "fuse{conv_pool=false}")) == \
        ["ConvBiasAct", "MaxPool"]


def test_gelu_decomposition_types() -> None:
    graph = parse_graph(_graph("""  %y = irkit.ConvBiasActPool(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], act="gelu", pool="max", pool_kernel_shape=[2, 2], pool_strides=[2, 2]} : f32[N,2,3,3]
"""))
    from irkit.lower.fused import decompose_fused_ops
    from irkit.ops import get_irkit_op

    clone = graph.clone()
    node = clone.nodes[0]
    out = get_irkit_op(node).decompose(clone, node)[0]
    pool = out.producer
    assert pool is not None and pool.op == "MaxPool"
    assert pool.inputs[0] is not None and pool.inputs[0].shape == ("N", 2, 6, 6)
    assert out.shape == ("N", 2, 3, 3)
    x = _feeds()["x"]
    got = irkit.evaluate(graph, {"x": x})["y"]
    conv = irkit.evaluate(parse_graph(_graph(
        "  %y = Conv(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} : f32[N,2,6,6]\n",
        out="%y: f32[N,2,6,6]")), {"x": x})["y"].astype(np.float64)
    from math import erf

    gelu = 0.5 * conv * (1 + np.vectorize(erf)(conv / np.sqrt(2)))
    want = gelu.reshape(3, 2, 3, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert decompose_fused_ops(graph) is graph  # lowered directly by llvm


def _digits_like() -> str:
    rng = np.random.default_rng(1)

    def arr(*shape: int) -> str:
        return "[" + ", ".join(f"{v:.3f}" for v in rng.standard_normal(shape).ravel()) + "]"

    return f"""graph d(%x: f32[N,1,6,6]) -> (%y: f32[N,3]) {{
  const @w1: f32[4,1,3,3] = {arr(4, 1, 3, 3)}
  const @b1: f32[4] = {arr(4)}
  const @w2: f32[4,4,3,3] = {arr(4, 4, 3, 3)}
  const @b2: f32[4] = {arr(4)}
  const @fc: f32[36,3] = {arr(36, 3)}
  %c1 = Conv(%x, @w1, @b1) {{kernel_shape=[3, 3], pads=[1, 1, 1, 1]}} : f32[N,4,6,6]
  %r1 = Relu(%c1) : f32[N,4,6,6]
  %c2 = Conv(%r1, @w2, @b2) {{kernel_shape=[3, 3], pads=[1, 1, 1, 1]}} : f32[N,4,6,6]
  %r2 = Relu(%c2) : f32[N,4,6,6]
  %p = MaxPool(%r2) {{kernel_shape=[2, 2], strides=[2, 2]}} : f32[N,4,3,3]
  %f = Flatten(%p) {{axis=1}} : f32[N,36]
  %y = MatMul(%f, @fc) : f32[N,3]
}}"""


@pytest.mark.parametrize("pipeline,conv_ops", [
    ("fuse,quantize{mode=static,per_channel=true}", ["QLinearConvInt8", "QLinearConvInt8"]),
    ("fuse,quantize{mode=static,per_channel=true,format=qdq}", ["Conv", "Conv"]),
    ("fuse,prune{sparsity=0.5,structured=true}", ["ConvBiasAct", "ConvBiasActPool"]),
    ("fuse,prune{sparsity=0.5}", ["ConvBiasAct", "ConvBiasActPool"]),
])
def test_later_passes_see_conv_bias_act(pipeline: str, conv_ops: list[str]) -> None:
    """quantize and prune split irkit.ConvBiasActPool first: they rewrite both convs
    (prune fuses the pooling back into its float conv)."""
    graph = parse_graph(_digits_like())
    assert "ConvBiasActPool" in _ops(irkit.optimize(graph, "fuse"))
    calibration = [{"x": np.random.default_rng(s).random((8, 1, 6, 6), np.float32)}
                   for s in range(2)]
    result = irkit.optimize(graph, pipeline, calibration=calibration)
    ops = _ops(result)
    assert [op for op in ops if "Conv" in op] == conv_ops
    assert ("MaxPool" in ops) == ("prune" not in pipeline)
    if "prune" in pipeline:
        assert result.history[-1].details  # it pruned
        feeds = {"x": np.random.default_rng(9).random((2, 1, 6, 6), np.float32)}
        split = result.clone()
        split_conv_pool(split)
        np.testing.assert_allclose(irkit.evaluate(result, feeds)["y"],
                                   irkit.evaluate(split, feeds)["y"], rtol=RTOL, atol=ATOL)
