"""Golden pairs: every ``golden/*.irk`` parses (and validates) to its ``.json`` twin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spec_registry import GOLDEN, make_registry

from irkit.plugins import Registry
from irkit.spec import parse_spec, to_data

# Interpolation golden's environment; nothing is read from os.environ.
GOLDEN_ENV = {"GOLDEN_MODEL_DIR": "models", "GOLDEN_EMPTY": ""}
GOLDEN_SPECS = sorted(GOLDEN.glob("*.irk"))


def golden_data(spec_path: Path, registry: Registry) -> dict[str, Any]:
    """What a golden ``.json`` holds: the parsed spec (paths relative to tests/spec)."""
    spec = parse_spec(spec_path, registry=registry, check_files=False, env=GOLDEN_ENV)
    return {
        "spec": to_data(spec, base=GOLDEN.parent),
        "pass_pipeline_text": {p.name: p.pass_pipeline_text() for p in spec.pipelines},
    }


def test_every_golden_spec_matches_its_expected_form() -> None:
    registry = make_registry()
    checked = []
    for spec_path in GOLDEN_SPECS:
        expected = json.loads(spec_path.with_suffix(".json").read_text())
        assert golden_data(spec_path, registry) == expected, spec_path.name
        checked.append(spec_path.name)
    assert len(checked) == len(GOLDEN_SPECS) >= 10
    assert len(list(GOLDEN.glob("*.json"))) == len(checked)  # no orphan expectations


@pytest.mark.parametrize("spec_path", GOLDEN_SPECS, ids=lambda p: p.stem)
def test_golden_specs_reparse_identically_from_text(spec_path: Path) -> None:
    # Parsing from a file and from text (with the same name) gives equal dataclasses.
    registry = make_registry()
    from_file = parse_spec(spec_path, registry=registry, check_files=False, env=GOLDEN_ENV)
    from_text = parse_spec(
        spec_path, text=spec_path.read_text(), registry=registry, check_files=False, env=GOLDEN_ENV
    )
    assert from_file == from_text
    assert hash(from_file) == hash(from_text)
