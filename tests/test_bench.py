"""``irkit bench`` and ``irkit.bench.run_bench``: ONNX Runtime and torch anchors, models
given as built-in names, ONNX files and specs, and clear errors. Only that the timings
exist is asserted (speed is the benchmarks' business, not the tests')."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import irkit
from irkit.bench import mlp_onnx, mobilenet_onnx, run_bench
from irkit.bench_torch import TorchUnavailable, torch_call, torch_module
from irkit.cli import main

torch = pytest.importorskip("torch")

QUICK = {"batches": (1,), "threads": (1,), "repeats": 3, "matmul": False, "verbose": False}


def test_both_anchors_on_a_builtin() -> None:
    result = run_bench("mlp", against=("onnxruntime", "torch"), **QUICK)  # type: ignore[arg-type]
    assert [(r.model, r.against) for r in result.rows] == [("mlp", "onnxruntime"),
                                                           ("mlp", "torch")]
    assert all(r.irkit_ms > 0 and r.other_ms > 0 and math.isfinite(r.ratio)
               for r in result.rows)
    assert "torch" in result.table() and "onnxruntime" in result.table()


def test_a_spec_and_an_onnx_file(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp_onnx(), model)
    spec = tmp_path / "mlp.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline tiny {{
          model = onnx("{model}")
          target llvm {{ }}
        }}
    """))
    by_spec = run_bench(str(spec), **QUICK)  # type: ignore[arg-type]
    by_file = run_bench(str(model), **QUICK)  # type: ignore[arg-type]
    assert by_spec.rows[0].model == "tiny" and by_file.rows[0].against == "onnxruntime"


@pytest.mark.parametrize("name", ["mobilenet", "mlp", "gemm512"])
def test_the_eager_replay_computes_the_graph(name: str) -> None:
    from irkit.bench import builtin_model

    graph = builtin_model(name)
    x = np.random.default_rng(0).standard_normal(
        (2, *graph.inputs[0].type.shape[1:])).astype(np.float32)
    want = irkit.evaluate(graph, {graph.inputs[0].name: x})
    got = torch_call(torch_module(name, graph), graph, {graph.inputs[0].name: x}, 1)()
    np.testing.assert_allclose(got[0].numpy(), next(iter(want.values())), rtol=1e-4,
                               atol=1e-5)


def test_graphs_the_replay_cannot_translate_have_no_torch_anchor(
        capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"])], "soft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    loaded = irkit.load_model(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]))
    with pytest.raises(TorchUnavailable, match="Softmax"):
        torch_module("soft", loaded)
    result = run_bench(loaded, against=("torch",), **{**QUICK, "verbose": True})  # type: ignore[arg-type]
    assert result.rows == []
    assert "no torch anchor" in capsys.readouterr().out


def test_unknown_anchors_are_refused() -> None:
    with pytest.raises(ValueError, match="supported: onnxruntime, torch"):
        run_bench("mlp", against=("tvm",), **QUICK)  # type: ignore[arg-type]


def test_cpu_clock_counts_the_work_of_every_thread() -> None:
    """``clock="cpu"``: process CPU time, so a call that sleeps costs (nearly) nothing and
    one that computes costs what it computes, however busy the machine is."""
    import time

    from irkit.bench import alternate

    def spin() -> None:
        end = time.process_time() + 0.002
        while time.process_time() < end:
            pass

    t_sleep, t_spin = alternate(lambda: time.sleep(0.002), spin, 3, budget_s=0.1, clock="cpu")
    assert t_sleep < 0.0005 and 0.0019 < t_spin < 0.004
    assert run_bench("mlp", clock="cpu", **QUICK).rows[0].irkit_ms > 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown clock 'tsc'"):
        run_bench("mlp", clock="tsc", **QUICK)  # type: ignore[arg-type]


def test_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "gemm512", "--batch", "1", "--repeats", "3",
                 "--against", "onnxruntime,torch"]) == 0
    out = capsys.readouterr().out
    assert "gemm512" in out and "torch" in out and "GFLOP/s" in out
    assert "differ by at most" in out


def test_mobilenet_builtin_is_a_depthwise_cnn() -> None:
    ops = [n.op_type for n in mobilenet_onnx().graph.node]
    assert ops.count("Conv") == 11 and ops[-1] == "Gemm"
