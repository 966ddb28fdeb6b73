"""The non-finite input contract: every backend refuses NaN/inf inputs the same way, before
its code runs, unless the model is loaded with ``reject_nonfinite=False``; then float
kernels propagate NaN (IEEE).

The adapters' side (HTTP 400, gRPC INVALID_ARGUMENT, Kafka and postgres dead letters,
``irkit run`` exit 2) is a row in each adapter's own table of bad requests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import irkit
import irkit.runtime
from irkit.cli import main
from irkit.runtime import InputError, TensorSpec
from irkit.runtime.signature import FiniteCheck

RNG = np.random.default_rng(7)
W = RNG.standard_normal((8, 3)).astype(np.float32)
B = np.linspace(-1, 1, 3, dtype=np.float32)
HINT = "irkit refuses NaN and inf inputs by default; let them through with reject_nonfinite=False"


def _linear() -> Any:
    """y = x @ W + B, x: f32[N, 8]: NaN in a row of x makes that row of y NaN (IEEE)."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _needs(*modules: str) -> list[Any]:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return [pytest.mark.skip(reason=f"needs {', '.join(missing)}")] if missing else []


# backend, runtime.load options, marks
BACKENDS = [
    pytest.param("llvm", {}, id="llvm"),
    pytest.param("ort", {}, id="ort"),
    pytest.param("numba", {}, id="numba", marks=_needs("numba")),
    pytest.param("wasm", {}, id="wasm", marks=_needs("wasmtime", "ziglang")),
    pytest.param("cuda", {"device": "simulator"}, id="cuda-simulator",
                 marks=_needs("numba", "numba.cuda")),
]


@pytest.fixture(scope="module")
def linear_graph() -> Any:
    return irkit.load_model(_linear())


@pytest.mark.parametrize(("backend", "options"), BACKENDS)
def test_every_backend_refuses_nan_alike_and_propagates_when_allowed(
    backend: str, options: dict[str, Any], linear_graph: Any, tmp_path: Path,
) -> None:
    path = irkit.compile(linear_graph, target=backend).save(tmp_path / backend)
    model = irkit.runtime.load(path, **options)
    assert model.reject_nonfinite
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    want = x @ W + B
    for _ in range(2):  # the second call takes llvm's exact (native) path
        np.testing.assert_allclose(model(x=x)["y"], want, rtol=1e-5, atol=1e-5)
    bad = x.copy()
    bad[1, 2], bad[2, 0] = np.nan, -np.inf
    expected = f"input 'x': NaN at index [1, 2] (2 non-finite values in all); {HINT}"
    for call in (lambda: model(x=bad), lambda: model.run({"x": bad.tolist()}),
                 lambda: model.validate({"x": bad})):
        with pytest.raises(InputError) as info:
            call()
        assert str(info.value).startswith(expected), (backend, str(info.value))
    model.reject_nonfinite = False  # the same as load(path, reject_nonfinite=False)
    got = model(x=bad)["y"]
    assert np.isnan(got[1]).all() and not np.isfinite(got[2]).any(), (backend, got)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered in dot")  # as outside pytest
def test_the_check_is_exact_where_its_fast_path_overflows() -> None:
    """x . x overflows for finite values past ~1e19 (float32): those pass, and every kind
    of non-finite value in every floating dtype is found at its index."""
    specs = [TensorSpec(n, np.dtype(t), ("N", 4)) for n, t in
             (("a", "float32"), ("b", "float16"), ("c", "float64"), ("k", "int32"))]
    check = FiniteCheck(specs)
    arrays = {spec.name: np.full((2, 4), 3e4, spec.dtype) for spec in specs}
    arrays["a"][:] = 3e38
    check.check(arrays)  # huge but finite: accepted
    for name, value, word in (("a", np.inf, "+inf"), ("b", -np.inf, "-inf"),
                              ("c", np.nan, "NaN")):
        bad = dict(arrays)
        bad[name] = arrays[name].copy()
        bad[name][1, 3] = value
        assert not check.fast(bad)
        with pytest.raises(InputError) as info:
            check.check(bad)
        assert str(info.value).startswith(f"input '{name}': {word} at index [1, 3]; ")


def test_irkit_run_allow_nonfinite_passes_nan_through(
    tmp_path: Path, linear_graph: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """The refusal itself is a row of tests/test_cli_errors.py (exit 2, one line)."""
    path = irkit.compile(linear_graph, target="llvm").save(tmp_path / "art")
    x = np.ones((2, 8), np.float32)
    x[0, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "-i", f"x={tmp_path / 'x.npy'}", "--allow-nonfinite",
                 "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as out:
        y = out["y"]
    assert np.isnan(y[0]).all()
    np.testing.assert_allclose(y[1], x[1] @ W + B, rtol=1e-5)
    capsys.readouterr()
