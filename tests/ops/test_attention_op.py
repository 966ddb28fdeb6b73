"""``irkit.ScaledDotProductAttention``: its decomposition (the reference semantics)
against torch's ``scaled_dot_product_attention``."""

from __future__ import annotations

import numpy as np
import pytest

from irkit.ir import Graph
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType
from irkit.ops.registry import is_irkit_op
from irkit.passes.manager import evaluate_graph

torch = pytest.importorskip("torch")

F32 = DType.FLOAT32


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, attrs: dict,
               out_shape: tuple) -> np.ndarray:
    graph = Graph("t")
    values = [graph.add_input(name, TensorType(F32, a.shape))
              for name, a in (("q", q), ("k", k), ("v", v))]
    graph.opset_imports["irkit"] = 1
    node = graph.add_node("ScaledDotProductAttention", values, attrs, domain="irkit",
                          types=[TensorType(F32, out_shape)])
    graph.set_outputs([node.output])
    (out,) = evaluate_graph(graph, {"q": q, "k": k, "v": v}).values()
    return np.asarray(out)


@pytest.mark.parametrize("perm", [None, [0, 2, 1, 3], [2, 0, 1, 3]])
def test_attention_matches_torch(perm: list[int] | None) -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    k = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    v = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    want = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), scale=0.3).numpy()
    attrs: dict = {"scale": 0.3}
    if perm is not None:
        attrs["perm"] = perm
        want = want.transpose(perm)
    got = _attention(q, k, v, attrs, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_rank3_matches_torch() -> None:
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6, 8), (4, 9, 8),
                                                                   (4, 9, 3)))
    want = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)).numpy()
    got = _attention(q, k, v, {"scale": 1 / np.sqrt(8)}, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_is_registered() -> None:
    assert is_irkit_op("ScaledDotProductAttention")
