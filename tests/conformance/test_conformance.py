"""The ONNX node cases through the IR round trip (import → print → parse → export → evaluate)."""

from __future__ import annotations

import json

import pytest

from irkit.conformance import Outcome, load_cases, run_conformance
from irkit.conformance.runner import compare, run_case


def test_cases_are_regenerated_in_standard_layout() -> None:
    cases = load_cases()
    assert len(cases) == 1884
    case = next(c for c in cases if c.name == "test_add_bcast")
    assert case.model_path.is_file()
    assert (case.directory / "test_data_set_0" / "input_0.pb").is_file()
    model = case.load_model()
    (inputs, outputs), = case.data_sets(model)
    assert [x.shape for x in inputs] == [(3, 4, 5), (5,)]
    assert outputs[0].shape == (3, 4, 5)


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("test_add_bcast", Outcome.PASSED),
        ("test_if_seq", Outcome.PASSED),  # a subgraph and sequence types
        ("test_loop11", Outcome.PASSED),
        ("test_optional_get_element_sequence", Outcome.PASSED),
        ("test_bernoulli", Outcome.RANDOM),
        ("test_flexattention", None),  # preview domain: must not be "unsupported"
    ],
)
def test_single_cases(name: str, outcome: Outcome | None) -> None:
    (case,) = load_cases(pattern=f"^{name}$")
    result = run_case(case, "roundtrip")
    if outcome is None:
        assert result.outcome is not Outcome.UNSUPPORTED, result.reason
    else:
        assert result.outcome is outcome, result.reason


def test_compare_catches_wrong_values_shapes_and_dtypes() -> None:
    import numpy as np

    a = np.ones((2, 3), np.float32)
    compare(a, a + 1e-8, rtol=1e-6, atol=1e-7)
    with pytest.raises(AssertionError):
        compare(a, a + 1e-3, rtol=1e-6, atol=1e-7)
    with pytest.raises(AssertionError, match="shape"):
        compare(a, a.reshape(3, 2), 1e-3, 1e-3)
    with pytest.raises(AssertionError, match="dtype"):
        compare(a, a.astype(np.float64), 1e-3, 1e-3)
    with pytest.raises(AssertionError, match="sequence"):
        compare([a], a, 1e-3, 1e-3)


@pytest.mark.slow
@pytest.mark.conformance
def test_full_roundtrip_conformance(tmp_path) -> None:
    """>= 95% of all 1,884 node cases pass; every non-pass has a reason."""
    report = run_conformance("roundtrip", progress=False)
    data = report.to_dict()
    (tmp_path / "conformance.json").write_text(json.dumps(data))
    assert data["total"] == 1884
    passed = data["counts"].get("passed", 0)
    assert passed / data["total"] >= 0.95, report.format(show_ops=False)
    for case in data["cases"]:
        if case["outcome"] != "passed":
            assert case["reason"], case["name"]
