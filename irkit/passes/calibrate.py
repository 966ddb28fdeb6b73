"""Activation calibration for static quantization: collect tensors on calibration batches
and pick a range per tensor (minmax, percentile or entropy/KL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.ir import Graph

SAMPLES_PER_TENSOR = 1 << 18


@dataclass
class TensorStats:
    """Exact min/max plus a bounded random sample of values (for percentile/entropy)."""

    lo: float = float("inf")
    hi: float = float("-inf")
    samples: list[np.ndarray] = field(default_factory=list)
    kept: int = 0

    def update(self, array: np.ndarray, rng: np.random.Generator) -> None:
        flat = np.asarray(array, np.float32).reshape(-1)
        if not flat.size:
            return
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        budget = SAMPLES_PER_TENSOR - self.kept
        if budget <= 0:
            return
        if flat.size > budget:
            flat = rng.choice(flat, size=budget, replace=False)
        self.samples.append(flat)
        self.kept += flat.size

    def values(self) -> np.ndarray:
        return np.concatenate(self.samples) if self.samples else np.zeros(1, np.float32)


def collect_stats(graph: Graph, names: Sequence[str],
                  batches: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, TensorStats]:
    """Run ``graph`` on each batch with the named values exposed as outputs."""
    from irkit.passes.manager import evaluate_graph

    work = graph.clone()
    by_name = {v.name: v for v in work.values()}
    extra = [by_name[n] for n in names if by_name[n] not in work.outputs]
    work.set_outputs([*work.outputs, *extra])
    rng = np.random.default_rng(seed)
    stats = {n: TensorStats() for n in names}
    for batch in batches:
        outputs = evaluate_graph(work, batch)
        for name in names:
            stats[name].update(outputs[name], rng)
    return stats


def entropy_threshold(values: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """TensorRT-style KL-divergence calibration on |x|: the clipping threshold whose
    ``levels``-bucket quantization loses the least information."""
    magnitudes = np.abs(values.astype(np.float64))
    amax = float(magnitudes.max()) if magnitudes.size else 0.0
    if amax == 0.0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best_kl, best_i = np.inf, bins
    stride = max(1, (bins - levels) // 256)  # ~256 candidate thresholds is plenty
    for i in [*range(levels, bins, stride), bins]:
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()
        if reference.sum() == 0:
            continue
        chunks = np.array_split(np.arange(i), levels)
        candidate = np.zeros(i)
        for chunk in chunks:
            part = hist[chunk]
            nonzero = part > 0
            if nonzero.any():
                candidate[chunk[nonzero]] = part.sum() / nonzero.sum()
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-12)
        mask = p > 0
        q_masked = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_masked)))
        if kl <= best_kl + 1e-9:  # ties (sparse histograms): prefer less clipping
            best_kl, best_i = kl, i
    return float(edges[best_i]) if best_i < len(edges) else amax


def choose_range(stats: TensorStats, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The (lo, hi) range a calibrator picks for one tensor."""
    if method == "minmax":
        return stats.lo, stats.hi
    values = stats.values()
    if method == "percentile":
        lo = float(np.percentile(values, 100.0 - percentile))
        hi = float(np.percentile(values, percentile))
        return max(lo, stats.lo), min(hi, stats.hi)
    if method == "entropy":
        threshold = entropy_threshold(values)
        return max(stats.lo, -threshold), min(stats.hi, threshold)
    raise ValueError(f"unknown calibrator {method!r}; known: minmax, percentile, entropy")


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale f32 scalar, zero point scalar): int8 with zp 0 when symmetric, else uint8."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        amax = max(abs(lo), abs(hi))
        scale = amax / 127.0 if amax > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int = 127
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 weights in [-qmax, qmax] (127, or 63 for 7-bit "reduced range"
    weights): (q, scale, zero point); per channel along ``axis`` or per tensor when
    ``axis`` is None."""
    w = weight.astype(np.float64)
    if axis is None:
        amax = np.array(np.abs(w).max())
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale.astype(np.float32), np.zeros(scale.shape, np.int8)
