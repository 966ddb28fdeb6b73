"""``irkit.ConvBiasActPool`` (Conv + epilogue + MaxPool/AveragePool, formed by ``fuse``)
on the llvm backend: pooled in the conv GEMM's tile epilogue where the geometry allows,
else conv then a pooling loop. Checked against the unfused graph through llvm, against
``irkit.evaluate`` and against ONNX Runtime running the exported (decomposed) graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llvmlite")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
# AVX2-sized tiles as well as the host's: the conv panel width (conv_nr) decides whether
# the pool runs in the tile epilogue.
TILES = [{}, {"vec": 8, "mr": 6, "nr": 16, "conv_mr": 3, "conv_nr": 32}]


def _conv_pool_model(tmp_path: Path, cin: int, hw: tuple[int, int], cout: int,
                     conv: dict[str, Any], act: str | None, pool: str,
                     pool_attrs: dict[str, Any], bn: bool = True, bias: bool = True,
                     seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    group = conv.get("group", 1)
    k = conv.get("kernel_shape", [3, 3])
    inits = {"w": rng.standard_normal((cout, cin // group, *k)).astype(np.float32) * 0.3}
    conv_inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.standard_normal(cout).astype(np.float32)
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], **conv)]
    y = "c"
    if bn:
        inits.update(gamma=rng.uniform(0.5, 1.5, cout).astype(np.float32),
                     beta=rng.standard_normal(cout).astype(np.float32),
                     mean=rng.standard_normal(cout).astype(np.float32),
                     var=rng.uniform(0.5, 2.0, cout).astype(np.float32))
        nodes.append(helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean",
                                                             "var"], ["n"]))
        y = "n"
    if act is not None:
        nodes.append(helper.make_node(act, [y], ["a"]))
        y = "a"
    nodes.append(helper.make_node(pool, [y], ["p"], **pool_attrs))
    nodes.append(helper.make_node("Flatten", ["p"], ["out"], axis=1))
    graph = helper.make_graph(
        nodes, "conv_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["N", cin, *hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, name) for name, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "conv_pool.onnx"
    onnx.save(model, path)
    return irkit.load_model(str(path))


CASES = [
    # (name, cin, (h, w), cout, conv attrs, act, pool, pool attrs, pooled in the tile)
    ("digits_conv2", 16, (8, 8), 32, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
     "Relu", "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
    ("avg_sigmoid_16", 2, (16, 16), 8, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
     "Sigmoid", "AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
    # 6 output rows: the last panel holds rows past the output (pooled rows guarded).
    ("partial_panel_grouped", 4, (6, 8), 6,
     {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 2}, None, "MaxPool",
     {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
    ("tanh_no_bn", 3, (8, 8), 5, {"kernel_shape": [1, 1]}, "Tanh", "MaxPool",
     {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
    # Windows not covering their row (8 = 2 * 3 + 2): pooled per pooled row.
    ("window_2x3", 2, (8, 8), 4, {"kernel_shape": [1, 1]}, "Relu", "MaxPool",
     {"kernel_shape": [2, 3], "strides": [2, 3]}, True),
    # One-row windows, contiguous (stride 1 down) or skipping rows (stride 2 down).
    ("window_1x2", 2, (8, 8), 4, {"kernel_shape": [1, 1]}, None, "MaxPool",
     {"kernel_shape": [1, 2], "strides": [1, 2]}, True),
    ("window_1x2_skip_rows", 2, (8, 8), 4, {"kernel_shape": [1, 1]}, "Relu", "MaxPool",
     {"kernel_shape": [1, 2], "strides": [2, 2]}, True),
    # Rows of 7 do not tile the panel: conv, then a pooling loop.
    ("odd_width", 3, (7, 7), 4, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "Relu",
     "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, False),
    # Overlapping windows (ONNX's default stride 1) cross panels.
    ("overlapping", 2, (8, 8), 4, {"kernel_shape": [1, 1]}, "Relu", "MaxPool",
     {"kernel_shape": [2, 2]}, False),
    ("strided_conv_pool3", 3, (12, 12), 4,
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, None,
     "AveragePool", {"kernel_shape": [3, 3], "strides": [3, 3]}, False),
]


def _run_llvm(graph: Any, feeds: dict[str, np.ndarray], tmp_path: Path, name: str,
              **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    artifact = irkit.compile(graph, target="llvm", threads=1, **options)
    model = irkit.runtime.load(artifact.save(tmp_path / name), threads=1)
    return next(iter(model(**feeds).values())), artifact.entry


def _kernels(entry: dict[str, Any]) -> list[str]:
    return [k for program in programs(entry) for k in program.kernels]


@pytest.mark.parametrize("tiles", TILES, ids=["host", "avx2"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_fused_conv_pool_matches_unfused(case: tuple, tiles: dict[str, int],
                                         tmp_path: Path) -> None:
    name, cin, hw, cout, conv, act, pool, pool_attrs, in_tile = case
    graph = _conv_pool_model(tmp_path, cin, hw, cout, conv, act, pool, pool_attrs,
                             bn=name != "tanh_no_bn", bias=name != "strided_conv_pool3")
    fused = irkit.optimize(graph, "fuse{force_conv_avg_pool=true}")
    assert fused.nodes[0].op == "ConvBiasActPool"
    for batch in (1, 5):
        feeds = {"x": np.random.default_rng(batch).standard_normal(
            (batch, cin, *hw)).astype(np.float32)}
        want = next(iter(irkit.evaluate(graph, feeds).values()))
        got, entry = _run_llvm(fused, feeds, tmp_path, f"fused{batch}", **tiles)
        base, _ = _run_llvm(graph, feeds, tmp_path, f"base{batch}", **tiles)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, base, rtol=RTOL, atol=ATOL)
        pool_kernels = [k for k in _kernels(entry) if "pool" in k.lower()]
        if not tiles:  # the host's tiles: is the pool in the conv's tile epilogue?
            assert (not pool_kernels) == in_tile, _kernels(entry)


def test_gelu_pooled_per_element(tmp_path: Path) -> None:
    """GELU is not monotone: each value gets bias and activation before the max."""
    from irkit.ir import parse_graph

    graph = parse_graph("""opset(ai.onnx=17, irkit=1)
graph g(%x: f32[N,1,4,8]) -> (%y: f32[N,2,2,4]) {
  const @w: f32[2,1,1,1] = [2.0, -3.0]
  const @b: f32[2] = [0.5, -0.25]
  %y = irkit.ConvBiasActPool(%x, @w, @b) {kernel_shape=[1, 1], act="gelu", pool="max", pool_kernel_shape=[2, 2], pool_strides=[2, 2]} : f32[N,2,2,4]
}""")
    feeds = {"x": np.linspace(-2, 2, 2 * 32, dtype=np.float32).reshape(2, 1, 4, 8)}
    want = next(iter(irkit.evaluate(graph, feeds).values()))
    for i, tiles in enumerate(TILES):
        got, _ = _run_llvm(graph, feeds, tmp_path, f"gelu{i}", **tiles)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_exported_fused_graph_runs_in_onnxruntime(tmp_path: Path) -> None:
    graph = _conv_pool_model(tmp_path, 16, (8, 8), 32, {"kernel_shape": [3, 3],
                             "pads": [1, 1, 1, 1]}, "Relu", "MaxPool",
                             {"kernel_shape": [2, 2], "strides": [2, 2]})
    fused = irkit.optimize(graph, "fuse")
    feeds = {"x": np.random.default_rng(3).standard_normal((4, 16, 8, 8)).astype(np.float32)}
    session = ort.InferenceSession(irkit.to_onnx(fused).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    want = next(iter(irkit.evaluate(graph, feeds).values()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    llvm, _ = _run_llvm(fused, feeds, tmp_path, "fused")
    np.testing.assert_allclose(llvm, got, rtol=RTOL, atol=ATOL)
