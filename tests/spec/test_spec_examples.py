"""The example specs in specs/ parse, and validate against the registry they target."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_registry import make_registry

from irkit.spec import parse_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
EXAMPLES = sorted(SPECS.glob("*.irk"))
ENV: dict[str, str] = {}  # examples must parse with no environment variables set


def test_the_expected_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"digits.irk", "digits_cnn.irk", "digits_llvm.irk"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_against_a_registry_of_the_planned_parts(path: Path) -> None:
    spec = parse_spec(path, registry=make_registry(), check_files=False, env=ENV)
    for pipeline in spec.pipelines:
        assert pipeline.model.path is not None and pipeline.model.path.parent == SPECS / "models"
        assert pipeline.targets, f"{pipeline.name} compiles for no target"
        assert pipeline.output.is_relative_to(SPECS / "build")


def test_digits_example_declares_every_serving_mode() -> None:
    pipeline = parse_spec(
        SPECS / "digits.irk", registry=make_registry(), check_files=False, env=ENV
    ).pipeline()
    assert [s.adapter for s in pipeline.serves] == ["batch", "http", "kafka", "postgres"]
    assert pipeline.serve("kafka").options["brokers"] == "embedded"
    assert pipeline.serve("postgres").options["dsn"] == ""  # the embedded server
    assert pipeline.target().backend == "ort"
    assert pipeline.pass_pipeline_text() == "fuse,quantize{mode=static,per_channel=true}"


def test_digits_llvm_example_targets_llvm() -> None:
    spec = parse_spec(
        SPECS / "digits_llvm.irk", registry=make_registry(), check_files=False, env=ENV
    )
    assert {p.target().backend for p in spec.pipelines} == {"llvm"}
    assert spec.pipeline("digits_llvm_fused").output == SPECS / "build/digits_llvm/fused"


@pytest.mark.skipif(
    not (SPECS / "models" / "digits_cnn.onnx").exists()
    or not (SPECS / "data" / "digits_eval.npz").exists(),
    reason="run scripts/make_models.py to create the example models and data",
)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_files_exist(path: Path) -> None:
    # File checks only: the registry is the in-memory one, so this does not depend on
    # which passes/backends other parts of irkit have implemented yet.
    parse_spec(path, registry=make_registry(), env=ENV)
