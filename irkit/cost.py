"""A measured cost model: passes ask which form of a node is faster on the targets.

``MeasuredCost(targets).compare({"fp32": g1, "int8": g2})`` compiles each candidate graph
with the llvm backend for each target this machine can run, times them in alternating
rounds (candidate A, then B, every round, so a burst of other work hits both; the same
input for every candidate) and returns the fastest run of each, in seconds per target and
candidate, with the spread of the runs.

The clock: every trial here runs one thread (the candidates are loaded with
``threads=1`` and run on the calling thread), so it is timed by that thread's CPU time
(``time.thread_time_ns``): time the thread spends waiting for a core on a busy machine is
not counted, and the verdicts do not flip with the load. Multi-threaded trials
(``clock="wall"``) keep wall time, since their worker threads' time is not the caller's.
``quantize`` steps aside only when a candidate is slower by more than
:meth:`Timing.margin`: the larger of a 3% floor and the spread measured in that trial.
``fuse`` keeps a fusion only where it is not slower by more than 1%, and has a ratio
within the noise timed again on the same compiled code (``compare(..., again=...)``). Targets this machine cannot run (AVX-512 code on an AVX2 host, aarch64 on
x86) are listed in ``unmeasured`` and the pass keeps its default there. Symbolic dims are
bound to ``batch`` (the first) and 32 (the others, sequence lengths).

The passes see this object through :class:`irkit.passes.PassContext` (``context.cost``),
so they never import a backend themselves.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph
from irkit.target import Target

SEQUENCE = 32
# The least relative difference a pass acts on (below it, two forms count as a tie).
MARGIN = 0.03
# Clocks: "cpu" times the calling thread (one-thread trials), "wall" elapsed time.
CLOCKS = {"cpu": time.thread_time_ns, "wall": time.perf_counter_ns}


@dataclass
class Timing:
    """Seconds per target name and candidate; targets that could not be timed here."""

    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)  # target -> why
    clock: str = ""  # "cpu" (the calling thread's CPU time) or "wall"; "" when not measured
    # target -> relative spread of the runs: the largest (median - min) / min of a candidate
    spread: dict[str, float] = field(default_factory=dict)
    # target -> trials pooled into its figures (2 where ``compare(..., again=...)`` asked)
    trials: dict[str, int] = field(default_factory=dict)

    def speedup(self, baseline: str, candidate: str) -> dict[str, float]:
        """``baseline`` time over ``candidate`` time per measured target."""
        return {target: times[baseline] / times[candidate]
                for target, times in self.seconds.items() if times.get(candidate)}

    def margin(self, target: str, floor: float = MARGIN) -> float:
        """How much slower a candidate must time on ``target`` before a pass steps aside
        for it: ``floor`` or the spread measured there, whichever is larger."""
        return max(floor, self.spread.get(target, 0.0))

    def how(self, target: str) -> str:
        """The clock and spread behind a ratio, for a report: ``cpu time, spread 1.2%``."""
        if not self.clock:
            return ""
        twice = ", timed twice" if self.trials.get(target, 1) == 2 else ""
        if self.trials.get(target, 1) > 2:
            twice = f", timed {self.trials[target]} times"
        return f" ({self.clock} time, spread {100 * self.spread.get(target, 0.0):.1f}%{twice})"


class MeasuredCost:
    """Times candidate graphs on ``targets`` (compiled with the llvm backend)."""

    def __init__(self, targets: Sequence[Target], batch: int = 64, rounds: int = 15,
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

    def compare(self, candidates: Mapping[str, Graph],
                again: Callable[[Timing, str], bool] | None = None) -> Timing:
        """Time ``candidates`` on each runnable target. ``again(timing, target)``, when
        given, is asked after a target's trial: True times the same compiled candidates
        once more and pools both trials' runs (``timing.trials[target] == 2``)."""
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
            try:
                samples = _samples(calls, feeds, self.rounds, self.budget_s, "cpu")
                timing.seconds[target.name] = {n: min(t) for n, t in samples.items()}
                timing.spread[target.name] = _spread(samples)
                timing.clock = "cpu"
                if again is not None and again(timing, target.name):
                    more = _samples(calls, feeds, self.rounds, self.budget_s, "cpu")
                    samples = {n: [*t, *more[n]] for n, t in samples.items()}
                    timing.seconds[target.name] = {n: min(t) for n, t in samples.items()}
                    timing.spread[target.name] = _spread(samples)
                    timing.trials[target.name] = 2
            finally:
                for call in calls.values():
                    call.close()
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
                budget_s: float = 0.4, clock: str = "cpu") -> dict[str, float]:
    """Seconds per call of each loaded model in ``calls`` (the fastest of alternating
    rounds); the models stay open. ``clock="cpu"`` (the calling thread's CPU time) is for
    models loaded with one thread; pass ``"wall"`` for multi-threaded ones."""
    samples = _samples(calls, feeds, rounds, budget_s, clock)
    return {name: min(times) for name, times in samples.items()}


def _compiled(graph: Graph, target: Target) -> Any:
    import irkit.runtime
    from irkit.api import compile as compile_graph

    with tempfile.TemporaryDirectory() as tmp:
        artifact = compile_graph(graph, target="llvm", arch=target.name, threads=1)
        return irkit.runtime.load(artifact.save(Path(tmp) / "candidate"), threads=1)


def _samples(calls: Mapping[str, Any], feeds: Mapping[str, np.ndarray], rounds: int,
             budget_s: float, clock: str = "cpu") -> dict[str, list[float]]:
    """Seconds of every run of each candidate by ``clock`` (:data:`CLOCKS`), candidates
    alternating every round (at least 5 rounds, then until ``rounds`` or the budget)."""
    if clock not in CLOCKS:
        raise IrkitError(f"unknown clock {clock!r}: one of {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    for call in calls.values():
        call.run(feeds)  # first calls plan threads and grow workspaces
    samples: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s * len(calls)
    for _ in range(rounds):
        for name, call in calls.items():
            start = now()
            call.run(feeds)
            samples[name].append((now() - start) * 1e-9)
        if time.perf_counter() > deadline and all(len(s) >= 5 for s in samples.values()):
            break
    return samples


def _spread(samples: Mapping[str, Sequence[float]]) -> float:
    """The largest relative distance of a candidate's median run from its fastest."""
    out = 0.0
    for times in samples.values():
        fastest = min(times)
        if fastest > 0:
            out = max(out, float(np.median(times)) / fastest - 1.0)
    return out
