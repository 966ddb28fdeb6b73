"""Calibrators and weight quantization."""

from __future__ import annotations

import numpy as np
import pytest

from irkit.passes.calibrate import (
    TensorStats,
    activation_qparams,
    choose_range,
    entropy_threshold,
    quantize_weight,
)


def _stats(values: np.ndarray) -> TensorStats:
    stats = TensorStats()
    stats.update(values, np.random.default_rng(0))
    return stats


def test_minmax_is_exact_and_percentile_clips_outliers() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(100_000), [50.0, -40.0]]).astype(np.float32)
    stats = _stats(values)
    assert choose_range(stats, "minmax") == (pytest.approx(-40.0), pytest.approx(50.0))
    lo, hi = choose_range(stats, "percentile", percentile=99.9)
    assert 2.5 < hi < 4.0 and -4.0 < lo < -2.5


def test_entropy_clips_a_long_tail_but_keeps_a_uniform_range() -> None:
    rng = np.random.default_rng(1)
    tail = np.concatenate([rng.standard_normal(200_000), rng.uniform(20, 30, 20)])
    threshold = entropy_threshold(tail)
    assert 2.0 < threshold < 15.0
    uniform = rng.uniform(-1, 1, 100_000)
    assert entropy_threshold(uniform) > 0.95
    # a sparse histogram (few distinct values, like pixel intensities) is not clipped
    pixels = rng.integers(0, 17, 50_000) / 16.0
    assert entropy_threshold(pixels) == pytest.approx(1.0)


def test_activation_qparams() -> None:
    scale, zero = activation_qparams(-1.0, 3.0, symmetric=False)
    assert zero.dtype == np.uint8 and int(zero) == 64
    assert float(scale) == pytest.approx(4.0 / 255)
    scale, zero = activation_qparams(-1.0, 3.0, symmetric=True)
    assert zero.dtype == np.int8 and int(zero) == 0 and float(scale) == pytest.approx(3 / 127)
    scale, zero = activation_qparams(0.5, 2.0, symmetric=False)  # the range includes zero
    assert int(zero) == 0 and float(scale) == pytest.approx(2.0 / 255)


def test_per_channel_weights_use_each_channels_range() -> None:
    w = np.array([[1.0, 100.0], [-0.5, 50.0], [0.25, -25.0]], np.float32)  # [K=3, N=2]
    q, scale, zero = quantize_weight(w, axis=1)
    assert scale.shape == (2,) and zero.shape == (2,) and q.dtype == np.int8
    np.testing.assert_allclose(scale, [1 / 127, 100 / 127], rtol=1e-6)
    np.testing.assert_array_equal(q[:, 0], [127, -64, 32])
    q_tensor, scale_tensor, _ = quantize_weight(w, axis=None)
    assert scale_tensor.shape == () and q_tensor[0, 0] == 1  # 1.0 at a scale for 100
    assert np.abs(q * scale - w).max() <= scale.max() / 2 * (1 + 1e-5)
