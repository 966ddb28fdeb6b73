"""Golden before/after IR text cases for the passes (tests/passes/golden/*.txt).

A case file holds header lines (``# pipeline: ...``, optional ``# tolerance: 1e-5|none``),
the input graph text, a ``# expect`` line and the expected output text. Regenerate the
expected halves (then review the diff!) with ``python tests/passes/golden_cases.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irkit.ir import Graph, parse_graph
from irkit.ir.types import TensorType

GOLDEN_DIR = Path(__file__).parent / "golden"
EXPECT = "# expect\n"
DIM_SIZES = {"N": 3, "S": 2}


@dataclass
class GoldenCase:
    path: Path
    pipeline: str
    tolerance: float | None
    source: str
    expected: str | None

    @property
    def name(self) -> str:
        return self.path.stem


def load_case(path: Path) -> GoldenCase:
    text = path.read_text()
    body, _, expected = text.partition(EXPECT)
    pipeline, tolerance = "", 1e-5
    lines = body.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        key, _, value = lines.pop(0)[1:].partition(":")
        if key.strip() == "pipeline":
            pipeline = value.strip()
        elif key.strip() == "tolerance":
            tolerance = None if value.strip() == "none" else float(value)  # type: ignore[assignment]
    return GoldenCase(path, pipeline, tolerance, "".join(lines), expected or None)


def all_cases() -> list[GoldenCase]:
    return [load_case(p) for p in sorted(GOLDEN_DIR.glob("*.txt"))]


def random_feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        assert isinstance(value.type, TensorType) and value.type.shape is not None
        shape = [d if isinstance(d, int) else DIM_SIZES.get(str(d), 3) for d in value.type.shape]
        feeds[value.name] = rng.standard_normal(shape).astype(value.type.dtype.numpy)
    return feeds


def run_case(case: GoldenCase) -> Graph:
    import irkit

    graph = parse_graph(case.source)
    calibration = [random_feeds(graph, seed) for seed in range(1, 5)]
    return irkit.optimize(graph, case.pipeline, calibration=calibration)


def update_all() -> int:
    for case in all_cases():
        out = run_case(case).to_text()
        header = f"# pipeline: {case.pipeline}\n"
        if case.tolerance != 1e-5:
            header += f"# tolerance: {'none' if case.tolerance is None else case.tolerance}\n"
        case.path.write_text(header + case.source + EXPECT + out)
        print(f"wrote {case.path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(update_all())
