"""``fuse`` forms ``irkit.ScaledDotProductAttention`` from exported attention: outputs
unchanged (reference evaluation and the llvm backend), the right number of matches, and
no match where the rewrite would be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.ir import parse_graph  # noqa: E402
from irkit.passes.layout_views import Mono, regroup, source_view, trace_view  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

RTOL, ATOL = 1e-4, 1e-4  # transformer outputs: fp32 tolerance of the issue


@pytest.fixture(scope="module")
def encoder_graph(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from irkit.testing.models import export_onnx, make_transformer_encoder

    path = tmp_path_factory.mktemp("encoder") / "encoder.onnx"
    example = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    export_onnx(make_transformer_encoder(d_model=32, nhead=4, layers=2, seq=16), (example,),
                path, input_names=["x"], output_names=["y"])
    return irkit.load_model(str(path))


def _ops(graph: Any) -> list[str]:
    return [n.qualified_op for n in graph.nodes]


def test_encoder_attention_is_fused(encoder_graph: Any) -> None:
    fused = irkit.optimize(encoder_graph, "simplify,fuse")
    assert _ops(fused).count("irkit.ScaledDotProductAttention") == 2
    assert "Softmax" not in _ops(fused)
    assert fused.history[-1].details["fused"]["attention"] == 2
    node = next(n for n in fused.nodes if n.op == "ScaledDotProductAttention")
    assert list(node.attr("perm")) == [2, 0, 1, 3]  # written seq-first, heads merged, as read
    np.testing.assert_allclose(node.attr("scale"), 1 / np.sqrt(8), rtol=1e-6)


def test_encoder_outputs_unchanged(encoder_graph: Any, tmp_path: Path) -> None:
    fused = irkit.optimize(encoder_graph, "simplify,fuse")
    rng = np.random.default_rng(1)
    checked = 0
    models = []
    for name, graph in (("base", encoder_graph), ("fused", fused)):
        artifact = irkit.compile(graph, target="llvm", threads=1)
        models.append(irkit.runtime.load(artifact.save(tmp_path / name), threads=1))
        kernels = programs(artifact.entry)[0].kernels
        assert any(k.startswith("attention") for k in kernels) == (name == "fused")
    for batch in (1, 5):
        x = rng.standard_normal((batch, 16, 32)).astype(np.float32)
        want = irkit.evaluate(encoder_graph, {"x": x})["y"]
        np.testing.assert_allclose(irkit.evaluate(fused, {"x": x})["y"], want,
                                   rtol=RTOL, atol=ATOL)
        base, fast = (m(x=x)["y"] for m in models)
        np.testing.assert_allclose(fast, want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(fast, base, rtol=RTOL, atol=ATOL)
        checked += 1
    assert checked == 2


def test_fuse_attention_can_be_turned_off(encoder_graph: Any) -> None:
    fused = irkit.optimize(encoder_graph, "simplify,fuse{attention=false}")
    assert "irkit.ScaledDotProductAttention" not in _ops(fused)


NOT_FUSED = {
    # The scores are a graph output: the chain must stay.
    "scores_output": """graph g(%q: f32[N,2,4,3], %k: f32[N,2,3,5], %v: f32[N,2,5,3])
        -> (%o: f32[N,2,4,3], %s: f32[N,2,4,5]) {
  %s = MatMul(%q, %k) : f32[N,2,4,5]
  %p = Softmax(%s) {axis=-1} : f32[N,2,4,5]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""",
    # An additive mask between the scores and the softmax is not attention's semantics.
    "masked": """graph g(%q: f32[N,2,4,3], %k: f32[N,2,3,5], %v: f32[N,2,5,3],
        %m: f32[N,1,1,5]) -> (%o: f32[N,2,4,3]) {
  %s = MatMul(%q, %k) : f32[N,2,4,5]
  %sm = Add(%s, %m) : f32[N,2,4,5]
  %p = Softmax(%sm) {axis=-1} : f32[N,2,4,5]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""",
    # Softmax over another axis.
    "softmax_axis": """graph g(%q: f32[N,2,4,3], %k: f32[N,2,3,4], %v: f32[N,2,4,3])
        -> (%o: f32[N,2,4,3]) {
  %s = MatMul(%q, %k) : f32[N,2,4,4]
  %p = Softmax(%s) {axis=2} : f32[N,2,4,4]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""",
    # K broadcast over the heads: MatMul broadcasting, not one K per head.
    "broadcast_k": """graph g(%q: f32[N,2,4,3], %k: f32[N,1,3,5], %v: f32[N,2,5,3])
        -> (%o: f32[N,2,4,3]) {
  %s = MatMul(%q, %k) : f32[N,2,4,5]
  %p = Softmax(%s) {axis=-1} : f32[N,2,4,5]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""",
}


@pytest.mark.parametrize("name", sorted(NOT_FUSED))
def test_not_fused(name: str) -> None:
    graph = parse_graph(NOT_FUSED[name])
    fused = irkit.optimize(graph, "fuse")
    assert "irkit.ScaledDotProductAttention" not in _ops(fused)


def test_plain_attention_fused_with_kt_input() -> None:
    """No view chains at all: k^T is transposed back for the op, outputs unchanged."""
    graph = parse_graph("""graph g(%q: f32[N,2,4,3], %kt: f32[N,2,3,5], %v: f32[N,2,5,3])
        -> (%o: f32[N,2,4,3]) {
  %s = MatMul(%q, %kt) : f32[N,2,4,5]
  %p = Softmax(%s) {axis=-1} : f32[N,2,4,5]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""")
    fused = irkit.optimize(graph, "fuse")
    assert _ops(fused) == ["Transpose", "irkit.ScaledDotProductAttention"]
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal([3 if isinstance(d, str) else d for d in v.shape])
             .astype(np.float32) for v in graph.inputs}
    np.testing.assert_allclose(irkit.evaluate(fused, feeds)["o"],
                               irkit.evaluate(graph, feeds)["o"], rtol=1e-5, atol=1e-6)


def test_regroup_splits_and_merges_atoms() -> None:
    """[S, N, 128] -> [S, 4N, 32] is not a strided view, but its atoms still line up."""
    graph = parse_graph("""graph g(%x: f32[64,N,128]) -> (%y: f32[N,4,64,32]) {
  const @a: i64[3] = [64, -1, 32]
  const @b: i64[4] = [-1, 4, 64, 32]
  %r = Reshape(%x, @a) : f32[64,"4*N",32]
  %t = Transpose(%r) {perm=[1, 0, 2]} : f32["4*N",64,32]
  %y = Reshape(%t, @b) : f32[N,4,64,32]
}""")
    view = trace_view(graph.outputs[0])
    assert view is not None and view.source is graph.inputs[0]
    strides = [[(a.size.dim(), a.stride.dim()) for a in g] for g in view.groups]
    assert strides == [[("N", 128)], [(4, 32)], [(64, "128*N")], [(32, 1)]]
    start = source_view(graph.inputs[0])
    assert start is not None
    atoms = [a for g in start.groups for a in g]
    assert regroup(atoms, [Mono(64), Mono(3, ("N",)), Mono(32)]) is None  # 3N does not fit
