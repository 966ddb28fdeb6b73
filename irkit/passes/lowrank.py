"""``lowrank``: SVD factorization ``W ~= A @ B`` of MatMul/Gemm/MatMulBiasAct weights and of
Conv weights (flattened to [Cout, Cin*k*k]: a k x k Conv to ``rank`` channels followed by a
1x1 Conv). The rank is the smallest that keeps ``energy`` of the squared singular values,
or the smallest whose relative Frobenius error fits ``error_budget``, or a fixed ``rank``.
Layers where the factorization would not cut multiply-adds by ``min_saving`` are skipped.

With calibration data (and ``whiten``), MatMul/Gemm weights are factorized to preserve the
layer's *outputs* on that data: with ``E[x^T x] = L L^T`` the SVD is taken of ``L^T W``,
so ``energy``/``error_budget`` bound the relative output error ``||x W - x A B||`` on the
calibration inputs instead of the weight error (activations are far from isotropic, so
this needs much lower ranks for the same accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ir.types import TensorType
from irkit.passes.base import (
    CALIBRATE_DOC,
    IRKIT_DOMAIN,
    Pass,
    PassContext,
    drop_unused_constants,
)
from irkit.passes.fuse_conv_pool import split_conv_pool


def choose_rank(singular: np.ndarray, *, energy: float | None, error_budget: float | None,
                rank: int) -> int:
    """The rank a criterion picks from singular values (largest first)."""
    full = len(singular)
    if rank > 0:
        return min(rank, full)
    power = singular.astype(np.float64) ** 2
    total = power.sum()
    if total == 0:
        return 1
    if error_budget is not None:
        tail = np.concatenate([np.cumsum(power[::-1])[::-1][1:], [0.0]])  # sum beyond r
        ok = np.nonzero(np.sqrt(tail / total) <= error_budget)[0]
        return int(ok[0]) + 1 if len(ok) else full
    kept = np.cumsum(power) / total
    return min(full, int(np.searchsorted(kept, energy if energy is not None else 1.0)) + 1)


def factorize(matrix: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``matrix [K, N] ~= A [K, r] @ B [r, N]``; also returns the relative error."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:r])
    a = u[:, :r] * root
    b = root[:, None] * vt[:r]
    norm = max(float(np.linalg.norm(matrix)), 1e-30)
    err = float(np.linalg.norm(matrix - a @ b)) / norm
    return a.astype(matrix.dtype), b.astype(matrix.dtype), err


def factorize_whitened(matrix: np.ndarray, gram: np.ndarray, *, energy: float | None,
                       error_budget: float | None, rank: int
                       ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Factorize ``matrix [K, N]`` minimizing ``||X (W - A B)||`` where ``gram = X^T X``.
    Returns (A, B, relative output error on X, rank); :func:`choose_rank` picks the rank
    from the whitened spectrum."""
    k = gram.shape[0]
    gram = gram.astype(np.float64)
    damp = 1e-6 * max(float(np.trace(gram)) / k, 1e-30)
    lower = np.linalg.cholesky(gram + damp * np.eye(k))
    whitened = lower.T @ matrix.astype(np.float64)
    u, s, vt = np.linalg.svd(whitened, full_matrices=False)
    r = choose_rank(s, energy=energy, error_budget=error_budget, rank=rank)
    root = np.sqrt(s[:r])
    a = np.linalg.solve(lower.T, u[:, :r] * root)
    b = root[:, None] * vt[:r]
    total = float((s**2).sum())
    err = float(np.sqrt((s[r:] ** 2).sum() / total)) if total > 0 else 0.0
    return a.astype(matrix.dtype), b.astype(matrix.dtype), err, r


def input_grams(graph: Graph, names: list[str], batches: Any) -> dict[str, np.ndarray]:
    """``X^T X`` of each named value, X its rows over the last axis, over all batches."""
    from irkit.passes.manager import evaluate_graph

    work = graph.clone()
    by_name = {v.name: v for v in work.values()}
    work.set_outputs([*work.outputs, *(by_name[n] for n in names
                                       if by_name[n] not in work.outputs)])
    grams: dict[str, np.ndarray] = {}
    for batch in batches:
        outputs = evaluate_graph(work, batch)
        for name in names:
            array = np.asarray(outputs[name], np.float64)
            rows = array.reshape(-1, array.shape[-1])
            grams[name] = grams.get(name, 0) + rows.T @ rows
    return grams


def _shape_with_last(value: Value, last: int) -> TensorType | None:
    t = value.type
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    return TensorType(t.dtype, (*t.shape[:-1], last))


@dataclass(frozen=True)
class LowRank(Pass):
    """Factorize weights where it saves at least ``min_saving`` of a layer's MACs."""

    name = "lowrank"
    energy: float = 0.95
    error_budget: float | None = None
    rank: int = 0
    min_saving: float = 0.1
    conv: bool = True
    whiten: bool = True
    exclude: tuple[str, ...] = ()
    calibrate: Any = field(default=None, compare=False, metadata={"doc": CALIBRATE_DOC})

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        split_conv_pool(graph)  # irkit.ConvBiasActPool -> ConvBiasAct + pool
        layers: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        # weights shared by several nodes (CSE merges identical layers) share their factors
        shared: dict[tuple[int, bool], tuple[Value, Value]] = {}
        targets = [n for n in graph.nodes if self._matrix(n) is not None
                   and not {n.name, n.op, n.outputs[0].name} & set(self.exclude)]
        grams: dict[Any, np.ndarray] = {}
        if self.whiten and context.calibration:
            names = {n.inputs[0].name: None for n in targets  # type: ignore[union-attr]
                     if n.op not in ("Conv", "ConvBiasAct")}
            by_input = input_grams(graph, list(names), context.calibration)
            # a weight shared by several nodes is fitted to all their inputs at once, so
            # the factors stay shared: sum_i ||X_i (W - AB)||^2 has the summed Gram matrix
            for node in targets:
                x_in = node.inputs[0]
                if x_in is not None and x_in.name in by_input:
                    key = self._weight_key(node)
                    grams[key] = grams.get(key, 0) + by_input[x_in.name]
        for node in targets:
            label = node.name or node.outputs[0].name
            matrix = self._matrix(node)
            assert matrix is not None
            k, n = matrix.shape
            x = node.inputs[0]
            assert x is not None
            gram = grams.get(self._weight_key(node))
            if gram is not None:
                a, b, err, r = factorize_whitened(matrix, gram, energy=self.energy,
                                                  error_budget=self.error_budget, rank=self.rank)
                criterion = "output"
            else:
                _, s, _ = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
                r = choose_rank(s, energy=self.energy, error_budget=self.error_budget,
                                rank=self.rank)
                a = b = np.empty(0)
                err, criterion = 0.0, "weight"
            if r * (k + n) > (1.0 - self.min_saving) * k * n:
                skipped[label] = f"rank {r}/{min(k, n)} would not save {self.min_saving:.0%}"
                continue
            if gram is None:
                a, b, err = factorize(matrix, r)
            weight_err = float(np.linalg.norm(matrix - a.astype(np.float64) @ b)
                               / max(float(np.linalg.norm(matrix)), 1e-30))
            is_conv = node.op in ("Conv", "ConvBiasAct")
            w = node.inputs[1]
            assert w is not None and w.const is not None
            key = self._weight_key(node)
            if key not in shared:
                if is_conv:
                    first_w = a.T.reshape(r, *w.const.shape[1:])  # k x k conv to r channels
                    second_w = b.T.reshape(w.const.shape[0], r, *([1] * (w.const.ndim - 2)))
                    a, b = first_w, second_w
                shared[key] = (graph.add_constant(f"{w.name}_u", a),
                               graph.add_constant(f"{w.name}_v", b))
            first, second = shared[key]
            if is_conv:
                self._split_conv(graph, node, first, second)
            else:
                self._split_matmul(graph, node, first, second)
            layers[label] = {"rank": r, "full_rank": min(k, n), "macs_before": k * n,
                             "macs_after": r * (k + n), "criterion": criterion,
                             "bounded_rel_error": round(err, 6),
                             "weight_rel_error": round(weight_err, 6)}
        drop_unused_constants(graph)
        return bool(layers), {"layers": layers, "skipped": skipped}

    @staticmethod
    def _weight_key(node: Node) -> tuple[int, bool]:
        """Identifies a weight as used: the constant and whether it is read transposed."""
        return (id(node.inputs[1]), node.op == "Gemm" and bool(node.attr("transB", 0)))

    def _matrix(self, node: Node) -> np.ndarray | None:
        """The weight as [K, N] (input features x outputs), or None if not factorable."""
        if node.domain not in ("", IRKIT_DOMAIN) or len(node.inputs) < 2:
            return None
        w = node.inputs[1]
        if w is None or w.const is None or not np.issubdtype(w.const.dtype, np.floating):
            return None
        weight = w.const
        if node.op in ("MatMul", "MatMulBiasAct") and weight.ndim == 2:
            if node.op == "MatMul" and node.domain:
                return None
            return weight
        if node.op == "Gemm" and not node.domain and weight.ndim == 2 \
                and not node.attr("transA", 0):
            return weight.T if node.attr("transB", 0) else weight
        if node.op in ("Conv", "ConvBiasAct") and self.conv and node.attr("group", 1) == 1 \
                and node.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"):
            return weight.reshape(weight.shape[0], -1).T  # [Cin*k*k, Cout]
        return None

    def _split_matmul(self, graph: Graph, node: Node, a: Value, b: Value) -> None:
        x = node.inputs[0]
        assert x is not None and a.shape is not None and b.const is not None
        first = graph.add_node("MatMul", [x, a], before=node,
                               types=[_shape_with_last(x, a.shape[1])])
        node.set_input(0, first.output)
        node.set_input(1, b)
        if node.op == "Gemm":
            node.set_attr("transB", 0)
            if node.attr("alpha", 1.0) != 1.0:
                alpha = np.asarray(node.attr("alpha"), b.const.dtype)
                node.set_input(1, graph.add_constant(f"{b.name}_alpha", b.const * alpha))
                node.set_attr("alpha", 1.0)

    def _split_conv(self, graph: Graph, node: Node, a: Value, b: Value) -> None:
        """A k x k Conv to r channels (weights ``a``), then this node as a 1x1 Conv (``b``)."""
        x = node.inputs[0]
        assert x is not None and a.shape is not None
        r = a.shape[0]
        attrs = {k: node.attrs[k] for k in ("dilations", "kernel_shape", "pads", "strides")
                 if k in node.attrs}
        out_t = node.outputs[0].type
        mid_t = None
        if isinstance(out_t, TensorType) and out_t.shape is not None:
            mid_t = TensorType(out_t.dtype, (out_t.shape[0], r, *out_t.shape[2:]))
        first = graph.add_node("Conv", [x, a], attrs, before=node, types=[mid_t])
        node.set_input(0, first.output)
        node.set_input(1, b)
        ones = [1] * (len(a.shape) - 2)
        node.set_attr("kernel_shape", ones)
        node.set_attr("strides", ones)
        node.set_attr("dilations", ones)
        node.set_attr("pads", [0] * (2 * len(ones)))
