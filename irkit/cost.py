"""A measured cost model: passes ask which form of a node is faster on the targets.

``MeasuredCost(targets).compare({"fp32": g1, "int8": g2})`` compiles each candidate graph
with the llvm backend for each target this machine can run, times them in alternating
rounds (the fastest run of each; the same input for every candidate) and returns seconds per target and
candidate. Targets this machine cannot run (AVX-512 code on an AVX2 host, aarch64 on
x86) are listed in ``unmeasured`` and the pass keeps its default there. Symbolic dims are
bound to ``batch`` (the first) and 32 (the others, sequence lengths).

The passes see this object through :class:`irkit.passes.PassContext` (``context.cost``),
so they never import a backend themselves.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph
from irkit.target import Target

SEQUENCE = 32


@dataclass
class Timing:
    """Seconds per target name and candidate; targets that could not be timed here."""

    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)  # target -> why

    def speedup(self, baseline: str, candidate: str) -> dict[str, float]:
        """``baseline`` time over ``candidate`` time per measured target."""
        return {target: times[baseline] / times[candidate]
                for target, times in self.seconds.items() if times.get(candidate)}


class MeasuredCost:
    """Times candidate graphs on ``targets`` (compiled with the llvm backend)."""

    def __init__(self, targets: Sequence[Target], batch: int = 64, rounds: int = 9,
                 budget_s: float = 0.4) -> None:
        self.targets = list(targets)
        self.batch = batch
        self.rounds = rounds
        self.budget_s = budget_s

    def runnable(self) -> tuple[list[Target], dict[str, str]]:
        from irkit.runtime.hostcpu import host

        machine = host()
        ok, skipped = [], {}
        for target in self.targets:
            if target.family != "cpu":
                skipped[target.name] = f"{target.family} targets are not timed here"
                continue
            missing = machine.missing(target.requirements())
            if missing:
                skipped[target.name] = f"this machine lacks {', '.join(missing[:4])}"
            else:
                ok.append(target)
        return ok, skipped

    def compare(self, candidates: Mapping[str, Graph]) -> Timing:
        timing = Timing()
        targets, timing.unmeasured = self.runnable()
        if not targets:
            return timing
        try:
            import llvmlite  # noqa: F401
        except ImportError:
            for target in targets:
                timing.unmeasured[target.name] = "llvmlite is not installed"
            return timing
        feeds = _feeds(next(iter(candidates.values())), self.batch)
        for target in targets:
            try:
                calls = {name: _compiled(graph, target) for name, graph in candidates.items()}
            except IrkitError as exc:
                timing.unmeasured[target.name] = f"a candidate does not compile: {exc}"
                continue
            timing.seconds[target.name] = _interleaved(calls, feeds, self.rounds,
                                                       self.budget_s)
        return timing


_DIM = re.compile(r"^\s*(?:(\d+)\s*\*\s*)?([A-Za-z_]\w*)\s*(?:\*\s*(\d+))?\s*$")


def _feeds(graph: Graph, batch: int) -> dict[str, np.ndarray]:
    """Seeded inputs for ``graph``: the first symbolic dim is ``batch``, the others
    ``SEQUENCE``; ``48*N`` style dims scale them."""
    rng = np.random.default_rng(0)
    values: dict[str, int] = {}
    feeds = {}
    for value in graph.inputs:
        dims = []
        for dim in value.type.shape or ():  # type: ignore[union-attr]
            if isinstance(dim, int):
                dims.append(dim)
                continue
            match = _DIM.match(str(dim))
            if match is None:
                raise IrkitError(f"cannot time a graph whose input {value.name!r} has dim "
                                 f"{dim!r}")
            symbol = match.group(2)
            size = values.setdefault(symbol, batch if not values else SEQUENCE)
            dims.append(size * int(match.group(1) or 1) * int(match.group(3) or 1))
        dtype = np.dtype(value.type.dtype.numpy)  # type: ignore[union-attr]
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = np.zeros(dims, dtype)
    return feeds


def compiled(graph: Graph, target: Target) -> Any:
    """``graph`` compiled with the llvm backend for ``target`` and loaded (one thread)."""
    return _compiled(graph, target)


def feeds_for(graph: Graph, batch: int) -> dict[str, np.ndarray]:
    """The seeded inputs candidates are timed on (see :func:`_feeds`)."""
    return _feeds(graph, batch)


def interleaved(calls: Mapping[str, Any], feeds: Mapping[str, np.ndarray], rounds: int = 9,
                budget_s: float = 0.4) -> dict[str, float]:
    """Seconds per call of each loaded model in ``calls`` (the fastest of alternating
    rounds); the models stay open."""
    return _interleaved(calls, feeds, rounds, budget_s, close=False)


def _compiled(graph: Graph, target: Target) -> Any:
    import irkit.runtime
    from irkit.api import compile as compile_graph

    with tempfile.TemporaryDirectory() as tmp:
        artifact = compile_graph(graph, target="llvm", arch=target.name, threads=1)
        return irkit.runtime.load(artifact.save(Path(tmp) / "candidate"), threads=1)


def _interleaved(calls: Mapping[str, Any], feeds: Mapping[str, np.ndarray], rounds: int,
                 budget_s: float, close: bool = True) -> dict[str, float]:
    """Seconds per call of each candidate (the fastest of its runs), candidates
    alternating every round."""
    for call in calls.values():
        call.run(feeds)  # first calls plan threads and grow workspaces
    samples: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s * len(calls)
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call.run(feeds)
            samples[name].append(time.perf_counter() - start)
        if time.perf_counter() > deadline and all(len(s) >= 3 for s in samples.values()):
            break
    for call in calls.values() if close else ():
        call.close()
    # The fastest run: other work on the machine only ever adds time, so the minimum is
    # the steadiest estimate of what each candidate costs.
    return {name: float(np.min(times)) for name, times in samples.items()}
