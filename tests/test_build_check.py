"""A build checks the artifact it saved against what its report measured."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

import irkit
from irkit.builder import check_artifact, load_pipeline_model
from irkit.errors import IrkitError
from irkit.spec import parse_spec


def test_an_artifact_that_disagrees_with_the_report_fails_the_build(
        digits_models: Path, tmp_path: Path) -> None:
    data = digits_models.parent / "data" / "digits_eval.npz"
    spec = tmp_path / "mlp.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline mlp {{
          model = onnx("{digits_models / 'digits_mlp.onnx'}")
          inputs {{ x: f32[N, 64] }}
          eval = npz("{data}", input = "x", labels = "y")
          target ort
        }}
    """))
    pipeline = parse_spec(spec).pipeline()
    source = load_pipeline_model(pipeline)
    path = irkit.compile(source, target="ort").save(tmp_path / "art")
    log = io.StringIO()
    check_artifact(pipeline, "ort", path, source, source, log)  # the same graph: agrees
    assert "max|err| 0 vs the source model" in log.getvalue()
    assert "accuracy 0.9" in log.getvalue()
    # A report measured on a different graph (90% of the weights pruned) than the one
    # compiled: the artifact computes something else, and the build says so.
    pruned = irkit.optimize(source, "prune{sparsity=0.9}")
    with pytest.raises(IrkitError, match="does not compute what the report measured"):
        check_artifact(pipeline, "ort", path, source, pruned, io.StringIO())
