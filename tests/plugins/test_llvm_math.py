"""The backend's inline f32 exp/tanh/erf/sigmoid against float64 numpy/math references,
including the extremes (large |x|, tiny |x|, ±inf, NaN)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from onnx import TensorProto, helper

import irkit
import irkit.runtime

X = np.concatenate([
    np.linspace(-12, 12, 4001), np.linspace(-1e-3, 1e-3, 101), [-100, -88, 88, 100, 0.0],
]).astype(np.float32)
REFERENCE = {
    "Exp": np.exp,
    "Tanh": np.tanh,
    "Erf": np.vectorize(math.erf),
    "Sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
}


def compiled_unary(op: str, tmp_path: Path):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    return irkit.runtime.load(artifact.save(tmp_path / op), threads=1, reject_nonfinite=False)


@pytest.mark.parametrize("op", sorted(REFERENCE))
def test_inline_math_accuracy(op: str, tmp_path: Path) -> None:
    model = compiled_unary(op, tmp_path)
    got = model(x=X)["y"].astype(np.float64)
    want = REFERENCE[op](X.astype(np.float64))
    with np.errstate(over="ignore"):
        finite = np.isfinite(want) & (np.abs(want) < 3e38)
    error = np.abs(got[finite] - want[finite])
    bound = 1e-6 + 3e-6 * np.abs(want[finite])  # well inside the tests' rtol 1e-4/atol 1e-5
    assert np.all(error <= bound), (op, float(error.max()), X[finite][np.argmax(error)])
    specials = model(x=np.array([np.inf, -np.inf, np.nan], np.float32))["y"]
    expected = REFERENCE[op](np.array([np.inf, -np.inf, np.nan]))
    np.testing.assert_allclose(specials[:2], expected[:2], atol=1e-6)
    assert np.isnan(specials[2])
