"""ONNX backend node conformance: regenerate the 1,884 node cases and run them through
irkit (the IR round trip, or any registered backend)."""

from irkit.conformance.cases import Case, default_cache_dir, ensure_cases, load_cases
from irkit.conformance.runner import CaseResult, Outcome, run_conformance

__all__ = [
    "Case",
    "CaseResult",
    "Outcome",
    "default_cache_dir",
    "ensure_cases",
    "load_cases",
    "run_conformance",
]
