"""Random shapes, dtypes, empty batches and odd layouts thrown at an llvm-compiled model:
only ValueError/TypeError come out (CompiledModel validates before native code runs), and
every accepted call equals ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402


def two_input_model() -> Any:
    """y = softmax(relu(x @ W + b) + s @ V) with x: f32[N,4], s: f32[N,3] -> y: f32[N,3]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w", (4, 3)), ("b", (3,)), ("v", (3, 3)))]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"]),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("MatMul", ["s", "v"], ["m"]),
        helper.make_node("Add", ["r", "m"], ["a"]),
        helper.make_node("Softmax", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    model = two_input_model()
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    path = artifact.save(tmp_path_factory.mktemp("fuzz") / "llvm")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return irkit.runtime.load(path, threads=1), session


DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
NEAR_VALID = st.tuples(st.integers(0, 9), st.sampled_from([3, 4, 5]))


@st.composite
def tensor(draw: st.DrawFn) -> Any:
    shape = draw(st.one_of(SHAPES, NEAR_VALID))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    elements = (hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False, min_value=-50,
                               max_value=50) if dtype.kind == "f" else None)
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "list", "scalar", "readonly"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return np.repeat(array, 2, axis=0)[::2]
    if layout == "list":
        return array.tolist()
    if layout == "scalar":
        return draw(st.one_of(st.floats(allow_nan=False), st.integers(-5, 5), st.none()))
    if layout == "readonly":
        array.flags.writeable = False
    return array


FEEDS = st.dictionaries(st.sampled_from(["x", "s", "extra"]), tensor(), min_size=0, max_size=3)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(feeds=FEEDS)
def test_random_inputs_only_raise_value_or_type_errors(compiled: tuple[Any, Any],
                                                        feeds: dict[str, Any]) -> None:
    model, session = compiled
    try:
        out = model.run(feeds)
    except (ValueError, TypeError) as exc:
        assert str(exc), "errors must say something"
        return
    x = np.asarray(feeds["x"], dtype=np.float32)
    s = np.asarray(feeds["s"], dtype=np.float32)
    assert x.shape[1:] == (4,) and s.shape[1:] == (3,) and x.shape[0] == s.shape[0]
    if x.shape[0] == 0:
        assert out["y"].shape == (0, 3)
        return
    want = session.run(["y"], {"x": x, "s": s})[0]
    np.testing.assert_allclose(out["y"], want, rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 70), layout=st.sampled_from(["c", "fortran", "strided", "readonly"]))
def test_every_batch_size_and_layout_matches_ort(compiled: tuple[Any, Any], n: int,
                                                 layout: str) -> None:
    model, session = compiled
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    s = rng.standard_normal((n, 3)).astype(np.float32)

    def arrange(a: np.ndarray) -> np.ndarray:
        if layout == "fortran":
            return np.asfortranarray(a)
        if layout == "strided":
            return np.repeat(a, 2, axis=0)[::2]
        if layout == "readonly":
            a = a.copy()
            a.flags.writeable = False
        return a

    out = model(x=arrange(x), s=arrange(s))
    assert out["y"].shape == (n, 3)
    if n:
        want = session.run(["y"], {"x": x, "s": s})[0]
        np.testing.assert_allclose(out["y"], want, rtol=1e-4, atol=1e-5)


def test_loader_goes_through_validation(compiled: tuple[Any, Any]) -> None:
    model, _ = compiled
    with pytest.raises(ValueError, match="'x'"):
        model(x=np.zeros((2, 5), np.float32), s=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError):
        model(x=np.zeros((2, 4), np.complex64), s=np.zeros((2, 3), np.float32))
    assert Path(model.path, "model.o").is_file()
