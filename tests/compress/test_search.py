"""search: the fastest candidate within the accuracy budget, measured on this machine;
its passes block pasted into the spec rebuilds the same model; trials are cached; the
CLI draws the Pareto plot."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from irkit.builder import load_pipeline_model, optimize_pipeline
from irkit.cli import main
from irkit.passes.manager import evaluate_graph
from irkit.spec import parse_spec

pytest.importorskip("torch")
pytest.importorskip("llvmlite")

SPACE = '["distill{width=0.5,epochs=8}","prune{sparsity=0.5,structured=true},fuse"]'


def _spec(tmp: Path, models: Path, passes: str) -> Path:
    data = models.parent / "data"
    path = tmp / "search.irk"
    path.write_text(f"""
pipeline digits_cnn {{
  model = onnx("{models / 'digits_cnn.onnx'}")
  inputs {{ x: f32[N, 1, 8, 8] }}
  eval  = npz("{data / 'digits_eval.npz'}", input = "x_img", labels = "y")
  train = npz("{data / 'digits_train.npz'}", input = "x_img", labels = "y")
  {passes}
  target ort
}}
""")
    return path


def _build(spec: Path) -> tuple[object, dict[str, np.ndarray]]:
    pipeline = parse_spec(spec).pipeline()
    graph = optimize_pipeline(pipeline, load_pipeline_model(pipeline))
    x = np.load(spec.parent / "x.npy") if (spec.parent / "x.npy").exists() else None
    assert x is not None
    return graph, evaluate_graph(graph, {"x": x})


def test_search_picks_the_fastest_within_budget_and_its_block_rebuilds_it(
        digits_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.load(digits_models.parent / "data" / "digits_eval.npz")
            ["x_img"][:64])
    cache = tmp_path / "cache"
    search = f'passes {{ search {{ budget = 1.0, space = {SPACE}, cache = "{cache}" }} }}'
    graph, outputs = _build(_spec(tmp_path, digits_models, search))
    report = graph.history[-1].details  # type: ignore[attr-defined]
    trials = {t["pipeline"]: t for t in report["trials"]}
    assert len(trials) == 3 and all(t["status"] == "ok" for t in trials.values())
    pruned = trials["prune{sparsity=0.5,structured=true},fuse"]
    assert pruned["loss"] > 10 and not pruned["within_budget"]  # ~35 points lost
    assert report["chosen"] == "distill{width=0.5,epochs=8}"
    chosen = trials[report["chosen"]]
    assert chosen["loss"] <= 1.0 and chosen["speedup"] >= 1.6  # ~3x measured here
    assert "distill { width = 0.5, epochs = 8 }" in report["passes_block"]
    assert "search on native" in capsys.readouterr().err  # the live table

    # The printed block, pasted into the spec, rebuilds the same model without searching.
    _, again = _build(_spec(tmp_path, digits_models, report["passes_block"]))
    np.testing.assert_array_equal(again["logits"], outputs["logits"])

    # The CLI's search over the same model, data and target reads every trial from the
    # cache, and draws the Pareto plot and the trials JSON.
    data = digits_models.parent / "data"
    plot, trials_json = tmp_path / "pareto.svg", tmp_path / "trials.json"
    started = time.perf_counter()
    code = main(["optimize", str(digits_models / "digits_cnn.onnx"), "--passes",
                 f"search{{budget=1.0,space={SPACE},cache={cache}}}",
                 "--eval", str(data / "digits_eval.npz"),
                 "--train", str(data / "digits_train.npz"),
                 "--plot", str(plot), "--trials-json", str(trials_json)])
    assert code == 0 and time.perf_counter() - started < 60
    saved = json.loads(trials_json.read_text())
    assert all(t["cached"] for t in saved["trials"][1:]), saved["trials"]
    assert saved["chosen"] == report["chosen"] and len(saved["trials"]) == 3
    if importlib.util.find_spec("matplotlib") is not None:
        assert "<svg" in plot.read_text()


def test_search_without_labels_asks_for_max_error(digits_models: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", str(digits_models / "digits_cnn.onnx"), "--passes",
                 "search", "--eval", str(digits_models.parent / "data" / "digits_calib.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "give max_error" in err and "Traceback" not in err


def test_budget_front_and_passes_block_rules() -> None:
    from irkit.compress.pareto import pareto_front
    from irkit.compress.search import Search, spec_passes_block
    from irkit.plugins import get_registry

    by_points, by_error = Search(budget=1.0), Search(max_error=1e-3)
    assert by_points._within({"status": "ok", "loss": 1.0, "rel_error": 0.5})
    assert not by_points._within({"status": "ok", "loss": 1.01, "rel_error": 0.0})
    assert by_error._within({"status": "ok", "loss": 50.0, "rel_error": 1e-3})
    assert not by_error._within({"status": "failed: x", "loss": 0.0, "rel_error": 0.0})
    # (speedup, accuracy): (2, 90) is beaten by (3, 95); the others trade one for the other.
    assert pareto_front([(1.0, 99.0), (2.0, 90.0), (3.0, 95.0), (9.0, 80.0)]) == [0, 2, 3]
    block = spec_passes_block("distill{width=0.25},fuse,quantize{mode=static,per_channel=true}",
                              get_registry().passes)
    assert block == ('passes {\n  distill { width = 0.25 }\n  fuse\n'
                     '  quantize { mode = "static", per_channel = true }\n}')
