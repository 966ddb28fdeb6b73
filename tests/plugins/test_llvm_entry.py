"""The llvm runner's exact path: one CPython builtin (``<run>_call``, built by
``irkit.plugins.llvm.entry``) that checks the arrays against a table in native code, then
runs the kernels with the GIL released.

Every call it serves must equal ONNX Runtime, and every call it refuses (wrong dtype,
layout, shape or type; new dims; empty arrays) must take the checked Python path with the
same result or error as before, with nothing written by native code.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.runtime import ArtifactError, InputError, InputTypeError  # noqa: E402
from irkit.runtime.backends.llvm import LlvmLibrary, LlvmRunner, _object_layout  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def affine_model(k: int = 24, n: int = 40) -> Any:
    """y = relu(x @ W + b): x f32[N, k] -> y f32[N, n]."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(
        nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def two_by_two_model() -> Any:
    """(x f32[N, 6], c i64[N, 2, 3]) -> (s = x * 2 + x, t = c + 1 as i64[N, 2, 3])."""
    nodes = [helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(
                 np.array(2.0, np.float32))),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(
                 np.array(1, np.int64))),
             helper.make_node("Mul", ["x", "two"], ["d"]),
             helper.make_node("Add", ["d", "x"], ["s"]),
             helper.make_node("Add", ["c", "one"], ["t"])]
    graph = helper.make_graph(
        nodes, "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("c", TensorProto.INT64, ["N", 2, 3])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("t", TensorProto.INT64, ["N", 2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compiled(model: Any, path: Path, **options: Any) -> tuple[Any, Any]:
    artifact = irkit.compile(irkit.load_model(model), target="llvm", **options)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return irkit.runtime.load(artifact.save(path), threads=1), session


@pytest.fixture()
def affine(tmp_path: Path) -> tuple[Any, Any]:
    return compiled(affine_model(), tmp_path / "affine")


class SlowPathCounter:
    """Counts calls of the runner's checked Python path (``LlvmRunner.run``)."""

    def __init__(self, runner: LlvmRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = runner.run

        def counted(inputs: Any) -> Any:
            self.calls += 1
            return original(inputs)

        monkeypatch.setattr(runner, "run", counted)


def expected(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})


def test_layout_is_verified_on_this_interpreter() -> None:
    assert _object_layout() is not None


def test_repeat_calls_are_served_natively_and_match_ort(
        affine: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    model, session = affine
    assert model._runner.exact
    slow = SlowPathCounter(model._runner, monkeypatch)
    rng = np.random.default_rng(0)
    for batch in (1, 7, 64):
        for _ in range(3):
            x = rng.standard_normal((batch, 24)).astype(np.float32)
            got = model.run({"x": x})
            np.testing.assert_allclose(got["y"], expected(session, {"x": x})[0], RTOL, ATOL)
    assert slow.calls == 3  # the first call at each batch size only


@pytest.mark.parametrize("variant", ["float64", "fortran", "strided", "unaligned",
                                     "big_endian", "subclass", "list", "wrong_width"])
def test_each_mismatch_takes_the_checked_path(affine: tuple[Any, Any], variant: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model, session = affine
    rng = np.random.default_rng(2)
    base = rng.standard_normal((5, 24)).astype(np.float32)
    model.run({"x": base})  # the batch size is known: only the variant can send it away
    slow = SlowPathCounter(model._runner, monkeypatch)
    if variant == "float64":
        x: Any = base.astype(np.float64)
    elif variant == "fortran":
        x = np.asfortranarray(base)
    elif variant == "strided":
        x = np.repeat(base, 2, axis=0)[::2]
    elif variant == "unaligned":
        raw = np.zeros(base.nbytes + 1, np.uint8)
        x = raw[1:].view(np.float32).reshape(base.shape)
        x[...] = base
        assert not x.flags.aligned
    elif variant == "big_endian":
        x = base.astype(">f4")
    elif variant == "subclass":
        x = base.view(type("Sub", (np.ndarray,), {}))
    elif variant == "list":
        x = base.tolist()
    else:
        x = rng.standard_normal((5, 23)).astype(np.float32)
    if variant in ("float64", "wrong_width"):
        with pytest.raises((InputError, InputTypeError)):
            model.run({"x": x})
        assert slow.calls == 0  # refused before the runner
        return
    got = model.run({"x": x})
    assert slow.calls == 1
    np.testing.assert_allclose(got["y"], expected(session, {"x": base})[0], RTOL, ATOL)


def test_readonly_inputs_stay_on_the_exact_path(affine: tuple[Any, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model, session = affine
    x = np.random.default_rng(3).standard_normal((4, 24)).astype(np.float32)
    model.run({"x": x})
    slow = SlowPathCounter(model._runner, monkeypatch)
    x.flags.writeable = False
    np.testing.assert_allclose(model.run({"x": x})["y"], expected(session, {"x": x})[0],
                               RTOL, ATOL)
    assert slow.calls == 0


def test_the_native_check_refuses_without_writing(affine: tuple[Any, Any]) -> None:
    model, session = affine
    runner = model._runner
    x = np.random.default_rng(4).standard_normal((3, 24)).astype(np.float32)
    model.run({"x": x})
    call = runner._call
    out = np.full((3, 40), np.nan, np.float32)
    runner.library.dims[0] = 3
    refused = [
        (x.astype(np.float64), out), (x[:, :23].copy(), out), (x.T.copy().T, out),
        (x, out[:, :39].copy()), (x, out.astype(np.float64)), (x, np.full((4, 40), 0.0,
                                                                      np.float32)),
        (x.tolist(), out), (None, out), (x,), (x, out, x), (x, out.reshape(3, 40, 1)),
        (x[:0], out[:0]),
    ]
    for args in refused:
        assert call(*args) is False, [getattr(a, "shape", a) for a in args]
    assert np.isnan(out).all()  # nothing ran
    readonly_out = np.empty((3, 40), np.float32)
    readonly_out.flags.writeable = False
    assert call(x, readonly_out) is False
    assert call(x, out) is True
    np.testing.assert_allclose(out, expected(session, {"x": x})[0], RTOL, ATOL)


def test_calls_keep_reference_counts(affine: tuple[Any, Any]) -> None:
    model, _ = affine
    x = np.ones((2, 24), np.float32)
    model.run({"x": x})
    out = np.empty((2, 40), np.float32)
    call = model._runner._call
    model._runner.library.dims[0] = 2
    before = sys.getrefcount(x), sys.getrefcount(out), sys.getrefcount(True)
    for _ in range(1000):
        call(x, out)
        call(x.astype(np.float64), out)
    assert (sys.getrefcount(x), sys.getrefcount(out), sys.getrefcount(True)) == before


def test_multiple_inputs_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, session = compiled(two_by_two_model(), tmp_path / "pair")
    assert model._runner.exact
    slow = SlowPathCounter(model._runner, monkeypatch)
    rng = np.random.default_rng(5)
    for batch in (1, 3, 3, 9, 1):
        feeds = {"x": rng.standard_normal((batch, 6)).astype(np.float32),
                 "c": rng.integers(-9, 9, (batch, 2, 3))}
        got = model.run(feeds)
        want = expected(session, feeds)
        np.testing.assert_allclose(got["s"], want[0], RTOL, ATOL)
        np.testing.assert_array_equal(got["t"], want[1])
        assert got["t"].dtype == np.int64
    assert slow.calls == 3
    with pytest.raises(InputError):  # batch sizes that disagree: the signature's error
        model.run({"x": np.ones((2, 6), np.float32), "c": np.ones((3, 2, 3), np.int64)})


def test_empty_batches_take_the_checked_path(affine: tuple[Any, Any]) -> None:
    model, _ = affine
    model.run({"x": np.ones((2, 24), np.float32)})
    assert model.run({"x": np.ones((0, 24), np.float32)})["y"].shape == (0, 40)


def test_concurrent_calls(affine: tuple[Any, Any]) -> None:
    model, _ = affine
    runner_w = np.asarray(irkit.load_model(affine_model()).constants["w"].const)
    bias = np.asarray(irkit.load_model(affine_model()).constants["b"].const)
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            x = rng.standard_normal((int(rng.integers(1, 6)), 24)).astype(np.float32)
            want = np.maximum(x @ runner_w + bias, 0)
            got = model.run({"x": x})["y"]
            if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                failures.append(f"batch {len(x)}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_the_gil_is_released_while_kernels_run(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A switch interval far above the call's 10 ms: the other thread runs during the
    # call only if the call releases the GIL.
    model, _ = compiled(affine_model(1024, 1024), tmp_path / "big")
    x = np.ones((1024, 1024), np.float32)
    model.run({"x": x})
    slow = SlowPathCounter(model._runner, monkeypatch)
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    thread = threading.Thread(target=spin)
    try:
        thread.start()
        progressed = 0
        for _ in range(3):
            before = counter[0]
            model.run({"x": x})
            progressed += counter[0] > before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        thread.join()
    assert slow.calls == 0
    assert progressed >= 1


def test_closed_models_refuse_calls(affine: tuple[Any, Any]) -> None:
    model, _ = affine
    x = np.ones((2, 24), np.float32)
    model.run({"x": x})
    runner = model._runner
    model.close()
    assert runner.run_exact({"x": x}) is None
    with pytest.raises(ArtifactError, match="closed"):
        model.run({"x": x})


def test_artifacts_without_the_fast_entry_still_run(tmp_path: Path) -> None:
    model, session = compiled(affine_model(), tmp_path / "old")
    program = dataclasses.replace(programs(model.manifest.entry)[0], native={})
    path = tmp_path / "old"
    library = LlvmLibrary(program, (path / program.code).read_bytes(),
                          (path / program.weights).read_bytes())
    runner = LlvmRunner(program, library, 1, {"y": np.dtype(np.float32)},
                        {"x": np.dtype(np.float32)})
    assert not runner.exact
    x = np.random.default_rng(6).standard_normal((3, 24)).astype(np.float32)
    for _ in range(2):
        assert runner.run_exact({"x": x}) is None
        np.testing.assert_allclose(runner.run({"x": x})["y"], expected(session, {"x": x})[0],
                                   RTOL, ATOL)
    runner.close()
