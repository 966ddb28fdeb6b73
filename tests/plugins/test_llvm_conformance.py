"""All 1,884 ONNX backend node cases through the llvm backend, with each case's own
tolerance (irkit.conformance): issue #4's targets — >= 60% of all cases pass and >= 95% of
the cases the backend claims (compiles) — plus no wrong answer beyond the known ones and a
floor on the passing count, so coverage cannot quietly shrink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

from irkit.conformance import Outcome, run_conformance

# Known wrong answers, each with the reason.
KNOWN_WRONG = {
    # The expected values carry float32 FFT rounding noise (1.9e-7 where the exact answer
    # is 0) above the case's atol of 1e-7; the kernel sums in f64 and gets 3e-15.
    "test_dft_inverse",
    "test_dft_inverse_opset19",
}
# measured: 1,520 of 1,884 (80.7%) on 2026-11-30; 1,666 (88.4%) on 2026-12-07 with the
# low-bit types (issue #22). The 24 Casts from float to int4/int2 whose stored expected
# values give 0 for out-of-range inputs (undefined in ONNX; onnx.reference and irkit wrap)
# are evaluator-error, not failures. 1,691 (89.8%) later that day with data-dependent shapes
# (NonZero, Compress, Unique, NonMaxSuppression: +18) and run-time Loop/If, sequences and
# optionals (+7).
MIN_PASSING = 1681


@pytest.mark.slow
@pytest.mark.conformance
def test_llvm_conformance_targets(tmp_path: Path) -> None:
    report = run_conformance("llvm", progress=False)
    data = report.to_dict()
    (tmp_path / "llvm_conformance.json").write_text(json.dumps(data))
    by_outcome: dict[str, list[str]] = {}
    for case in data["cases"]:
        by_outcome.setdefault(case["outcome"], []).append(case["name"])
        if case["outcome"] != Outcome.PASSED.value:
            assert case["reason"], case["name"]
    passed = len(by_outcome.get(Outcome.PASSED.value, []))
    wrong = set(by_outcome.get(Outcome.FAILED.value, []))
    assert data["total"] == 1884
    assert wrong <= KNOWN_WRONG, report.format(show_ops=False)
    assert not by_outcome.get(Outcome.TIMEOUT.value), by_outcome[Outcome.TIMEOUT.value]
    assert passed / data["total"] >= 0.60
    assert passed / (passed + len(wrong)) >= 0.95
    assert passed >= MIN_PASSING, (passed, report.format(show_ops=False, show_failures=False))
    # The six Bernoulli cases (the random ops' only node cases) compile: their values
    # cannot match ONNX's, so they are nondeterministic (shapes, dtypes, 0/1 values and,
    # for the two seeded ones, a repeated second run checked), never unsupported.
    assert len(by_outcome.get(Outcome.RANDOM.value, [])) == 6, by_outcome.get(
        Outcome.RANDOM.value)
