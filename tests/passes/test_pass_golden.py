"""Golden before/after IR text for every pass, plus a differential check of each case."""

from __future__ import annotations

import numpy as np
import pytest
from golden_cases import all_cases, random_feeds, run_case

import irkit
from irkit.ir import parse_graph

CASES = all_cases()
EXPECTED_CASES = 32


def test_golden_case_count() -> None:
    assert len(CASES) == EXPECTED_CASES
    assert all(case.expected for case in CASES), "a golden file lacks its '# expect' half"
    covered = {step.split("{")[0] for case in CASES for step in case.pipeline.split(",")}
    assert {"fold", "dce", "cse", "shapes", "fuse", "quantize", "prune", "lowrank"} <= covered


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden(case) -> None:  # type: ignore[no-untyped-def]
    source = parse_graph(case.source)
    assert parse_graph(source.to_text()).to_text() == source.to_text()
    expected = parse_graph(case.expected)
    assert parse_graph(expected.to_text()).to_text() == case.expected
    before = source.to_text()
    result = run_case(case)
    assert result.to_text() == case.expected
    assert source.to_text() == before  # passes work on a copy


@pytest.mark.parametrize("case", [c for c in CASES if c.tolerance is not None],
                         ids=lambda c: c.name)
def test_golden_outputs_match(case) -> None:  # type: ignore[no-untyped-def]
    source = parse_graph(case.source)
    result = run_case(case)
    feeds = random_feeds(source, seed=0)
    want = irkit.evaluate(source, feeds)
    from irkit.passes.manager import evaluate_graph

    got = evaluate_graph(result, feeds)
    for name, ref in want.items():
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got[name], ref, atol=case.tolerance * scale, rtol=0)
