"""The pass protocol, pipeline text and the pass manager's reports."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import irkit
from irkit.ir import Graph, parse_graph
from irkit.passes import BUILTIN_PASSES, Pass, PassContext
from irkit.passes.manager import (
    PassError,
    PassReport,
    compare_outputs,
    format_report_table,
    load_eval_npz,
    run_pipeline,
)
from irkit.passes.pipeline import PipelineError, parse_pipeline, split_top_level
from irkit.plugins import get_registry


def _parse(text: str) -> list[Pass]:
    return parse_pipeline(text, get_registry().passes)

MLP = """graph mlp(%x: f32[N,4]) -> (%y: f32[N,2]) {
  const @w: f32[4,3] = [0.1, 0.2, 0.3, -0.1, -0.2, -0.3, 0.5, 0.5, 0.5, 1.0, 0.0, -1.0]
  const @b: f32[3] = [0.1, -0.1, 0.0]
  const @w2: f32[3,2] = [1.0, -1.0, 0.5, 0.5, 2.0, 0.0]
  %m = MatMul(%x, @w) : f32[N,3]
  %a = Add(%m, @b) : f32[N,3]
  %r = Relu(%a) : f32[N,3]
  %y = MatMul(%r, @w2) : f32[N,2]
}
"""


def test_every_builtin_pass_is_a_frozen_dataclass_registered_by_name() -> None:
    from irkit.plugins import get_registry

    registry = get_registry().passes
    for name in BUILTIN_PASSES:
        cls = registry[name].obj
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert cls.name == name
    assert len(BUILTIN_PASSES) == 9


def test_pipeline_text_is_typed() -> None:
    passes = _parse(
        "fuse,quantize{mode=static,per_channel=true,exclude=[fc1,Conv]},prune{sparsity=0.5}")
    assert [p.name for p in passes] == ["fuse", "quantize", "prune"]
    quantize, prune = passes[1], passes[2]
    assert quantize.mode == "static" and quantize.per_channel is True  # type: ignore[attr-defined]
    assert quantize.exclude == ("fc1", "Conv")  # type: ignore[attr-defined]
    assert prune.sparsity == 0.5 and isinstance(prune.sparsity, float)  # type: ignore[attr-defined]
    assert _parse("lowrank{error_budget=0.1}")[0].error_budget == 0.1  # type: ignore[attr-defined]
    assert _parse("lowrank{error_budget=none}")[0].error_budget is None  # type: ignore[attr-defined]
    assert _parse("") == []


def test_describe_round_trips() -> None:
    text = "quantize{mode=static,per_channel=true,exclude=[a,b]}"
    (p,) = _parse(text)
    assert p.describe() == text
    assert _parse(p.describe()) == [p]


@pytest.mark.parametrize(("text", "message"), [
    ("fsue", "unknown pass 'fsue'; did you mean 'fuse'?"),
    ("prune{sparsty=0.5}", "pass 'prune' has no option 'sparsty'; did you mean 'sparsity'?"),
    ("prune{sparsity=lots}", "pass 'prune', option 'sparsity': expected a number"),
    ("quantize{mode=statc}", "'statc' is not one of 'dynamic', 'static'; did you mean 'static'?"),
    ("quantize{per_channel=maybe}", "expected true or false"),
    ("prune{sparsity=0.5", "unbalanced"),
    ("fuse,,dce", "empty pass name"),
    ("prune{0.5}", "is not key=value"),
])
def test_pipeline_errors_name_the_culprit(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        _parse(text)
    assert message in str(info.value)


def test_invalid_option_value_in_dataclass_is_reported() -> None:
    with pytest.raises(ValueError, match="sparsity must be in"):
        _parse("prune{sparsity=1.5}")


def test_split_top_level_respects_brackets_and_quotes() -> None:
    assert split_top_level('a{x=[1,2],y="p,q"},b') == ['a{x=[1,2],y="p,q"}', "b"]


@dataclass(frozen=True)
class NegateOutputs(Pass):
    """A third-party pass: appends Neg before every graph output."""

    name = "negate"
    times: int = 1

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        outputs = []
        for value in graph.outputs:
            for _ in range(self.times):
                value = graph.add_node("Neg", [value], types=[value.type]).output
            outputs.append(value)
        graph.set_outputs(outputs)
        return True, {"negated": len(outputs)}


def test_third_party_pass_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from irkit.plugins import Entry, get_registry

    passes = get_registry().passes
    monkeypatch.setitem(passes, "negate", Entry("passes", "negate", NegateOutputs, "test", "t"))
    (p,) = _parse("negate{times=3}")
    assert p == NegateOutputs(times=3)
    with pytest.raises(PipelineError, match="did you mean 'times'"):
        _parse("negate{tims=3}")


def test_manager_rejects_renamed_outputs() -> None:
    graph = parse_graph(MLP)
    with pytest.raises(PassError, match="renamed the graph outputs"):
        run_pipeline(graph, [NegateOutputs()])


@dataclass(frozen=True)
class BreakGraph(Pass):
    name = "break"

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        relu = next(n for n in graph.nodes if n.op == "Relu")
        graph.reorder([relu, *[n for n in graph.nodes if n is not relu]])
        return True, {}


def test_manager_verifies_after_each_pass() -> None:
    with pytest.raises(PassError, match="pass 'break' produced an invalid graph"):
        run_pipeline(parse_graph(MLP), [BreakGraph()])


def test_reports_measure_against_the_unoptimized_model() -> None:
    graph = parse_graph(MLP)
    before = graph.to_text()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    reference = irkit.evaluate(graph, {"x": x})["y"]
    labels = np.argmax(reference, axis=1)
    labels[:8] = (labels[:8] + 1) % 2  # baseline accuracy is then 56/64
    out = irkit.optimize(graph, "fuse,prune{sparsity=0.5},quantize", eval_data={"x": x},
                         labels=labels)
    assert graph.to_text() == before and graph.history == []
    assert [r.name for r in out.history] == ["fuse", "prune", "quantize"]
    fuse, prune, quantize = out.history
    assert (fuse.ops_before, fuse.ops_after) == (4, 2)
    assert fuse.max_abs_error is not None and fuse.max_abs_error < 1e-6
    assert fuse.baseline_accuracy == pytest.approx(56 / 64)
    assert quantize.bytes_after < quantize.bytes_before
    assert prune.modified and prune.rel_error > 0.05  # type: ignore[operator]
    assert quantize.rel_error != prune.rel_error  # measured against the original, not prune
    manual = compare_outputs(irkit.passes.manager.evaluate_graph(out, {"x": x}), {"y": reference})
    assert quantize.max_abs_error == pytest.approx(manual.max_abs)
    assert quantize.rel_error == pytest.approx(manual.rel)
    record = prune.to_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["details"]["layers"]


def test_a_pass_that_changes_nothing_leaves_the_input_alone() -> None:
    graph = parse_graph(MLP)
    out = irkit.optimize(graph, "dce,cse")
    assert graph.history == [] and out is not graph
    assert [r.modified for r in out.history] == [False, False]


def test_history_accumulates_across_optimize_calls() -> None:
    once = irkit.optimize(parse_graph(MLP), "fuse")
    twice = irkit.optimize(once, "dce")
    assert [r.name for r in twice.history] == ["fuse", "dce"]
    assert twice.history[1].modified is False


def test_static_quantize_without_calibration_is_an_error() -> None:
    with pytest.raises(PassError, match="needs calibration data"):
        irkit.optimize(parse_graph(MLP), "quantize{mode=static}")


def test_format_report_table() -> None:
    report = PassReport("fuse", "fuse", True, 0.0012, 4, 2, 20, 20, 80, 80, 1e-7, 1e-8, 2e-8,
                        0.9, 0.9)
    table = format_report_table([report, report.to_dict()])
    lines = table.splitlines()
    assert lines[0].split() == ["pass", "ops", "params", "bytes", "max|err|", "mean|err|",
                                "rel", "err", "acc", "ms"]
    assert len(lines) == 4
    assert "4->2" in lines[2] and "0.9000 (+0.0000)" in lines[2] and "1.2" in lines[2]


def test_load_eval_npz_matches_inputs_by_rank(tmp_path: Any) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((5, 4), np.float32), x_img=np.zeros((5, 1, 2, 2), np.float32),
             y=np.arange(5))
    feeds, labels = load_eval_npz(path, parse_graph(MLP))
    assert feeds["x"].shape == (5, 4) and list(labels) == [0, 1, 2, 3, 4]
    image = parse_graph(MLP.replace("%x: f32[N,4]", "%img: f32[N,1,2,2]")
                        .replace("MatMul(%x,", "MatMul(%img,"))
    feeds, _ = load_eval_npz(path, image)
    assert feeds["img"].shape == (5, 1, 2, 2)
