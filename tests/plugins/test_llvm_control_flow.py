"""Run-time control flow compiled to llvm (irkit/backend_control.py, irkit/runtime/control.py):
a Loop whose trip count is a model input and whose condition is computed (greedy decoding
of a tiny GRU), an If on a run-time condition, sequences and optionals as lists of tensors
between compiled segments, a loop-carried tensor that grows each iteration. Checked
against ONNX Runtime: tokens exactly, fp32 values with rtol 1e-4, atol 1e-5."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.errors import UnsupportedOpsError  # noqa: E402
from irkit.runtime.artifact import ArtifactError  # noqa: E402
from irkit.runtime.program import ProgramEntry  # noqa: E402
from irkit.runtime.signature import InputError  # noqa: E402
from irkit.testing.control_models import branch_and_sequences, gru_decoder  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
HIDDEN = 16


def _session(model: Any) -> Any:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def gru(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    model = gru_decoder()
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    compiled = irkit.runtime.load(artifact.save(tmp_path_factory.mktemp("gru") / "a"))
    return artifact, compiled, _session(model)


def _feed(steps: int, eos: int = -1, start: int = 3) -> dict[str, np.ndarray]:
    h0 = np.linspace(-1, 1, HIDDEN, dtype=np.float32).reshape(1, 1, HIDDEN)
    return {"steps": np.array(steps, np.int64), "go": np.array(True),
            "start": np.array([start], np.int64), "h0": h0, "eos": np.array(eos, np.int64)}


@pytest.mark.parametrize("steps,eos", [(0, -1), (1, -1), (2, -1), (9, -1), (9, 6)])
def test_gru_greedy_decoding_matches_ort(gru: tuple[Any, Any, Any], steps: int,
                                         eos: int) -> None:
    _, compiled, session = gru
    feed = _feed(steps, eos)
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    got = compiled.run(feed)
    assert got["tokens"].shape == want["tokens"].shape
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["tok_last"], want["tok_last"])
    for name in ("h_last", "logits"):
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL)
    if eos == 6:  # the condition stopped it before the trip count
        assert 0 < len(got["tokens"]) < steps and got["tokens"][-1, 0] == 6


def test_gru_loop_is_compiled_not_unrolled(gru: tuple[Any, Any, Any]) -> None:
    """One loop segment; its body is one kernel program (the GRU cell, linear, argmax);
    nothing runs on ONNX Runtime."""
    artifact, _, _ = gru
    segments = ProgramEntry.from_json(artifact.entry).variants[0].segments
    assert [s.kind for s in segments] == ["loop"]
    body = segments[0].control.body
    assert [s.kind for s in body.segments] == ["kernels"]
    assert segments[0].control.trip == "steps"
    assert "fallback_ops" not in artifact.entry
    assert {"control_flow": "runtime", "ops": ["Loop"]} in artifact.report


def test_bad_trip_count_is_a_clear_error(gru: tuple[Any, Any, Any]) -> None:
    _, compiled, _ = gru
    with pytest.raises(InputError, match="trip count 'steps' is -2; it must be >= 0"):
        compiled.run(_feed(-2))
    bad = _feed(3)
    bad["steps"] = np.array([1, 2], np.int64)
    with pytest.raises(InputError, match=r"'steps'.*rank 0"):
        compiled.run(bad)


def test_manifest_control_segments_are_validated(gru: tuple[Any, Any, Any]) -> None:
    artifact, _, _ = gru
    entry = copy.deepcopy(artifact.entry)
    loop = entry["variants"][0]["segments"][0]
    loop["carried"] = loop["carried"][:1]
    with pytest.raises(ArtifactError, match=r"segments\[0\].*carried"):
        ProgramEntry.from_json(entry)
    entry = copy.deepcopy(artifact.entry)
    entry["variants"][0]["segments"][0]["body"]["segments"][0]["kind"] = "python"
    with pytest.raises(ArtifactError, match="'python' is not one of"):
        ProgramEntry.from_json(entry)
    entry = copy.deepcopy(artifact.entry)
    entry["variants"][0]["segments"][0]["body"]["outputs"][1] = "nowhere"
    with pytest.raises(ArtifactError, match="outputs nowhere are never defined"):
        ProgramEntry.from_json(entry)


def test_if_sequences_optionals_and_a_growing_carried_value(tmp_path: Path) -> None:
    model = branch_and_sequences()
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    kinds = [s.kind for s in ProgramEntry.from_json(artifact.entry).variants[0].segments]
    assert "ort" not in kinds and {"if", "seq", "loop"} <= set(kinds)
    compiled = irkit.runtime.load(artifact.save(tmp_path / "a"))
    session = _session(model)
    x = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    for flag, n in ((True, 1), (False, 3), (True, 5)):
        feed = {"x": x, "flag": np.array(flag), "n": np.array(n, np.int64)}
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        got = compiled.run(feed)
        for name, value in want.items():
            assert got[name].shape == value.shape, name
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
        assert got["grown"].shape == (n + 1, 3)
    # ORT fails too: concatenating the loop's empty sequence of rows
    with pytest.raises(InputError, match="ConcatFromSequence: the sequence is empty"):
        compiled.run({"x": x, "flag": np.array(True), "n": np.array(0, np.int64)})


def test_other_backends_refuse_runtime_control_flow() -> None:
    pytest.importorskip("numba")
    with pytest.raises(UnsupportedOpsError, match=r"Loop needs run-time control flow.*numba"):
        irkit.compile(irkit.load_model(gru_decoder()), target="numba")


def test_data_dependent_op_inside_a_loop_body(tmp_path: Path) -> None:
    """NonZero in a loop body: a trimmed kernel segment (irkit/runtime/dynamic.py) run
    once per iteration, its per-step count a scan output."""
    from onnx import TensorProto, helper, numpy_helper

    f, i64, info = TensorProto.FLOAT, TensorProto.INT64, helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Greater", ["acc", "zero"], ["pos"]),
         helper.make_node("NonZero", ["pos"], ["nz"]),
         helper.make_node("Shape", ["nz"], ["shp"]),
         helper.make_node("Sub", ["acc", "one"], ["acc_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [info("i", i64, []), info("cond", TensorProto.BOOL, []), info("acc", f, [5])],
        [info("cond_out", TensorProto.BOOL, []), info("acc_out", f, [5]),
         info("shp", i64, [2])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y", "counts"], body=body)], "nz_loop",
        [info("n", i64, []), info("x", f, [5])], [info("y", f, [5]), info("counts", i64, ["T", 2])],
        initializer=[numpy_helper.from_array(np.array(v, np.float32), k)
                     for k, v in (("zero", 0.0), ("one", 1.0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    compiled = irkit.runtime.load(irkit.compile(irkit.load_model(model), target="llvm")
                                  .save(tmp_path / "a"))
    feed = {"n": np.array(4, np.int64), "x": np.array([0.5, 2.5, 1.5, -1, 3.5], np.float32)}
    want = _session(model).run(None, feed)
    got = compiled.run(feed)
    np.testing.assert_array_equal(got["counts"], want[1])  # 4, 3, 2, 1 positives
    np.testing.assert_allclose(got["y"], want[0], rtol=RTOL, atol=ATOL)
