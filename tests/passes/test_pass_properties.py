"""Property tests: random MLPs and CNNs through every shape-changing pass must stay valid
graphs with the same interface, and the exact passes must not change outputs."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import irkit
from irkit.ir import Graph
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType
from irkit.passes.manager import evaluate_graph

F32 = DType.FLOAT32
ACTS = ["Relu", "Sigmoid", "Tanh", None]


def _mlp(widths: list[int], acts: list[str | None], gemm: list[bool], seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    graph = Graph("mlp")
    x = graph.add_input("x", TensorType(F32, ("N", widths[0])))
    for i, (k, n) in enumerate(itertools.pairwise(widths)):
        w = rng.standard_normal((k, n)).astype(np.float32) / float(np.sqrt(k))
        b = rng.standard_normal(n).astype(np.float32)
        out_t = TensorType(F32, ("N", n))
        if gemm[i]:
            wt = graph.add_constant(f"w{i}", np.ascontiguousarray(w.T))
            x = graph.add_node("Gemm", [x, wt, graph.add_constant(f"b{i}", b)],
                               {"transB": 1}, types=[out_t]).output
        else:
            h = graph.add_node("MatMul", [x, graph.add_constant(f"w{i}", w)], types=[out_t])
            x = graph.add_node("Add", [h.output, graph.add_constant(f"b{i}", b)],
                               types=[out_t]).output
        act = acts[i]
        if act is not None and i < len(widths) - 2:
            x = graph.add_node(act, [x], types=[out_t]).output
    graph.set_outputs([x])
    return graph


def _cnn(channels: list[int], seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    graph = Graph("cnn")
    x = graph.add_input("x", TensorType(F32, ("N", channels[0], 6, 6)))
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        t = TensorType(F32, ("N", cout, 6, 6))
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) / float(np.sqrt(9 * cin))
        x = graph.add_node("Conv", [x, graph.add_constant(f"w{i}", w)],
                           {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, types=[t]).output
        bn = [rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout), rng.standard_normal(cout),
              rng.uniform(0.5, 2.0, cout)]
        x = graph.add_node("BatchNormalization",
                           [x, *(graph.add_constant(f"bn{i}_{j}", p.astype(np.float32))
                                 for j, p in enumerate(bn))], types=[t]).output
        x = graph.add_node("Relu", [x], types=[t]).output
    flat = TensorType(F32, ("N", channels[-1] * 36))
    x = graph.add_node("Flatten", [x], {"axis": 1}, types=[flat]).output
    fc = rng.standard_normal((3, channels[-1] * 36)).astype(np.float32) / 10
    y = graph.add_node("Gemm", [x, graph.add_constant("fc", fc)], {"transB": 1},
                       types=[TensorType(F32, ("N", 3))])
    graph.set_outputs([y.output])
    return graph


def _check(graph: Graph, pipeline: str, feeds: dict[str, np.ndarray],
           exact: bool) -> None:
    out = irkit.optimize(graph, pipeline, calibration=[feeds])
    out.verify()
    assert [v.name for v in out.outputs] == [v.name for v in graph.outputs]
    want = irkit.evaluate(graph, feeds)
    got = evaluate_graph(out, feeds)
    for name, ref in want.items():
        assert got[name].shape == ref.shape
        if exact:
            np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(2, 24), min_size=2, max_size=5),
       acts=st.lists(st.sampled_from(ACTS), min_size=4, max_size=4),
       gemm=st.lists(st.booleans(), min_size=4, max_size=4),
       sparsity=st.sampled_from([0.25, 0.5, 0.75]), seed=st.integers(0, 1000))
def test_random_mlps(widths: list[int], acts: list[str | None], gemm: list[bool],
                     sparsity: float, seed: int) -> None:
    graph = _mlp(widths, acts, gemm, seed)
    feeds = {"x": np.random.default_rng(seed).standard_normal((5, widths[0])).astype(np.float32)}
    _check(graph, "simplify,fuse", feeds, exact=True)
    _check(graph, f"prune{{mode=structured,sparsity={sparsity}}}", feeds, exact=False)
    _check(graph, f"fuse,prune{{mode=structured,sparsity={sparsity},criterion=activation}}",
           feeds, exact=False)
    _check(graph, "lowrank{rank=1,min_saving=0.0},fuse", feeds, exact=False)
    _check(graph, "fuse,quantize{mode=static,per_channel=true}", feeds, exact=False)
    _check(graph, "quantize{mode=static,format=qdq}", feeds, exact=False)


@settings(max_examples=10, deadline=None)
@given(channels=st.lists(st.integers(1, 6), min_size=2, max_size=4),
       seed=st.integers(0, 1000))
def test_random_cnns(channels: list[int], seed: int) -> None:
    graph = _cnn(channels, seed)
    x = np.random.default_rng(seed).standard_normal((2, channels[0], 6, 6)).astype(np.float32)
    feeds = {"x": x}
    _check(graph, "fuse", feeds, exact=True)
    _check(graph, "fuse,prune{mode=structured,sparsity=0.5}", feeds, exact=False)
    _check(graph, "prune{mode=structured,sparsity=0.5,criterion=activation}", feeds, exact=False)
    _check(graph, "lowrank{rank=1,min_saving=0.0}", feeds, exact=False)
    _check(graph, "fuse,quantize{mode=static,per_channel=true,format=qdq}", feeds, exact=False)
