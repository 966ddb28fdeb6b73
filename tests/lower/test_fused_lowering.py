"""Fused irkit ops the llvm backend lowers directly (irkit/lower/attention.py,
irkit/lower/fused.py) against their reference decompositions (``irkit.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llvmlite")
pytest.importorskip("onnxruntime")

import irkit
import irkit.runtime
from irkit.ir import parse_graph
from irkit.lower.fused import decompose_fused_ops, lowered_directly
from irkit.runtime.program import programs

RTOL, ATOL = 1e-4, 1e-5
# AVX2-sized tiles as well as the host's: the kernel's remainders differ with nr.
TILES = [{}, {"vec": 8, "mr": 6, "nr": 16}]


def _run_llvm(graph: Any, feeds: dict[str, np.ndarray], tmp_path: Path,
              **options: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    artifact = irkit.compile(graph, target="llvm", threads=1, **options)
    model = irkit.runtime.load(artifact.save(tmp_path / "model"), threads=1)
    return model(**feeds), {"kernels": programs(artifact.entry)[0].kernels}


def _feeds(graph: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([batch if isinstance(d, str) else d
                                         for d in v.shape]).astype(np.float32)
            for v in graph.inputs}


def _attention_graph(q: str, k: str, v: str, out: str, perm: list[int] | None,
                     scale: float = 0.3) -> Any:
    attrs = f"scale={scale}" + (f", perm={perm}" if perm is not None else "")
    return parse_graph(f"""opset(ai.onnx=17, irkit=1)
graph att(%q: f32[{q}], %k: f32[{k}], %v: f32[{v}]) -> (%y: f32[{out}]) {{
  %y = irkit.ScaledDotProductAttention(%q, %k, %v) {{{attrs}}} : f32[{out}]
}}""")


ATTENTION_CASES = [
    # (q, k, v, output, perm): shapes that hit every remainder of the kernel.
    ("N,2,64,32", "N,2,64,32", "N,2,64,32", "N,2,64,32", None),
    ("N,3,5,3", "N,3,7,3", "N,3,7,5", "N,5,3,5", [0, 2, 1, 3]),
    ("N,2,37,20", "N,2,70,20", "N,2,70,40", "37,N,2,40", [2, 0, 1, 3]),
    ("N,9,4", "N,11,4", "N,11,6", "N,9,6", None),
    ("N,4,16,8", "N,4,16,8", "N,4,16,8", "N,4,8,16", [0, 1, 3, 2]),
]


@pytest.mark.parametrize("tiles", TILES, ids=["host", "avx2"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c[0])
def test_attention_kernel_matches_decomposition(case: tuple, tiles: dict[str, int],
                                                tmp_path: Path) -> None:
    graph = _attention_graph(*case)
    assert lowered_directly(graph.nodes[0])
    checked = 0
    for batch in (1, 3):
        feeds = _feeds(graph, batch, seed=batch)
        got, entry = _run_llvm(graph, feeds, tmp_path / str(batch), **tiles)
        assert any(name.startswith("attention") for name in entry["kernels"])
        assert not any(name.startswith("softmax") for name in entry["kernels"])
        want = irkit.evaluate(graph, feeds)["y"]
        np.testing.assert_allclose(got["y"], want, rtol=RTOL, atol=ATOL)
        checked += 1
    assert checked == 2


def test_attention_large_logits_stay_finite(tmp_path: Path) -> None:
    graph = _attention_graph("N,2,8,4", "N,2,8,4", "N,2,8,4", "N,2,8,4", None, scale=40.0)
    feeds = _feeds(graph, 2)
    got, _ = _run_llvm(graph, feeds, tmp_path)
    want = irkit.evaluate(graph, feeds)["y"]
    assert np.isfinite(got["y"]).all()
    np.testing.assert_allclose(got["y"], want, rtol=RTOL, atol=1e-4)


def test_attention_with_symbolic_sequence_is_decomposed(tmp_path: Path) -> None:
    graph = _attention_graph("N,2,S,4", "N,2,S,4", "N,2,S,4", "N,2,S,4", None)
    assert not lowered_directly(graph.nodes[0])
    assert not any(n.domain == "irkit" for n in decompose_fused_ops(graph).nodes)


def _matmul_bias_act(act: str, residual: bool) -> Any:
    rng = np.random.default_rng(3)
    w = ", ".join(f"{x:.4f}" for x in rng.standard_normal(24 * 40))
    b = ", ".join(f"{x:.4f}" for x in rng.standard_normal(40))
    r_in = ", %r: f32[N,5,40]" if residual else ""
    r_arg = ", %r" if residual else ""
    return parse_graph(f"""opset(ai.onnx=17, irkit=1)
graph mba(%x: f32[N,5,24]{r_in}) -> (%y: f32[N,5,40]) {{
  const @w: f32[24,40] = [{w}]
  const @b: f32[40] = [{b}]
  %y = irkit.MatMulBiasAct(%x, @w, @b{r_arg}) {{act="{act}"}} : f32[N,5,40]
}}""")


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("residual", [False, True])
def test_matmul_bias_act_epilogue(act: str, residual: bool, tmp_path: Path) -> None:
    graph = _matmul_bias_act(act, residual)
    assert lowered_directly(graph.nodes[0]) == (act != "relu")  # relu: decomposed
    feeds = _feeds(graph, 4)
    got, entry = _run_llvm(graph, feeds, tmp_path)
    if act != "relu":
        assert len(entry["kernels"]) == 1, entry["kernels"]  # the GELU is in the epilogue
    want = irkit.evaluate(graph, feeds)["y"]
    np.testing.assert_allclose(got["y"], want, rtol=RTOL, atol=1e-4)
