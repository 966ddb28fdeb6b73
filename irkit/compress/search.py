"""``search``: the fastest pass pipeline whose accuracy loss stays within a budget.

``search { budget = 1.0 }`` tries candidate pipelines (quantize modes, structured prune
ratios, lowrank energies, distill widths, each followed by fuse) on the graph it is given.
For each it measures the accuracy on the eval data (points lost against the graph it
started from; with ``max_error`` instead, the relative output error for models without
labels) and the latency of the llvm build on the first compile target this machine runs,
interleaved with the unoptimized graph's (the ``irkit.cost`` timing harness), then keeps
the fastest candidate within budget. Effort is bounded by ``max_trials`` and
``max_minutes`` (no trial starts after it; the one running finishes); each trial's result is cached under ``cache`` (keyed by the model, the
data, the target and the pipeline), so an interrupted or repeated search resumes without
redoing finished trials. A table row is printed as each trial ends, and the report holds
every trial, the chosen pipeline and the same choice as a spec ``passes`` block, which
rebuilds the model without searching (training and calibration are seeded).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph
from irkit.passes.base import Pass, PassContext, PassResult

STATIC_INT8 = "quantize{mode=static,per_channel=true}"
DEFAULT_SPACE: tuple[str, ...] = (
    "fuse",
    f"fuse,{STATIC_INT8}",
    "prune{sparsity=0.25,structured=true},fuse",
    "lowrank{energy=0.95},fuse",
    "distill{width=0.5},fuse",
    f"distill{{width=0.5}},fuse,{STATIC_INT8}",
    "distill{width=0.25},fuse",
    f"distill{{width=0.25}},fuse,{STATIC_INT8}",
    "prune{sparsity=0.5,structured=true},fuse",
    f"prune{{sparsity=0.25,structured=true}},fuse,{STATIC_INT8}",
    "quantize{mode=dynamic}",
    "lowrank{energy=0.9},fuse",
)
CALIBRATION_BATCH = 32
CALIBRATION_COUNT = 256


class SearchError(IrkitError):
    """The search cannot run (no eval data, no timable target, a bad candidate list)."""


def default_calibration(feeds: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Calibration batches cut from ``feeds``: the first 256 examples in batches of 32
    (what a spec build uses when no pass names its calibration data)."""
    count = min(len(next(iter(feeds.values()))), CALIBRATION_COUNT)
    return [{k: np.asarray(v)[i:i + CALIBRATION_BATCH] for k, v in feeds.items()}
            for i in range(0, count, CALIBRATION_BATCH)]


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Mapping):
            for key in sorted(part):
                h.update(str(key).encode())
                h.update(np.ascontiguousarray(part[key]).tobytes())
        elif isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(str(part).encode())
    return h.hexdigest()[:20]


def graph_digest(graph: Graph) -> str:
    """A fingerprint of ``graph``: its text and every weight."""
    return _digest(graph.to_text(), {k: v.const for k, v in graph.constants.items()})


def spec_passes_block(pipeline_text: str, table: Any) -> str:
    """``passes { ... }`` in spec syntax for pipeline text, with the options it spells
    out (typed as the passes read them)."""
    from irkit.passes.pipeline import parse_pipeline, split_top_level

    items = split_top_level(pipeline_text) if pipeline_text.strip() else []
    lines = ["passes {"]
    for item, p in zip(items, parse_pipeline(pipeline_text, table)):
        _, _, rest = item.partition("{")
        keys = [part.partition("=")[0].strip()
                for part in split_top_level(rest.rstrip("}")) if part.strip()]
        options = [f"{key} = {_spec_value(getattr(p, key))}" for key in keys]
        lines.append(f"  {p.name} {{ {', '.join(options)} }}" if options else f"  {p.name}")
    lines.append("}")
    return "\n".join(lines)


def _spec_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_spec_value(v) for v in value) + "]"
    return json.dumps(str(value))


@dataclass(frozen=True)
class Search(Pass):
    """Find the fastest candidate pipeline within an accuracy budget (module docstring)."""

    name = "search"
    budget: float = 1.0
    max_error: float | None = None
    max_trials: int = 12
    max_minutes: float = 5.0
    space: tuple[str, ...] = ()
    cache: str = ""
    plot: str = ""
    trials_json: str = ""
    batch: int = 64
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.budget < 0:
            raise ValueError(f"search: budget must be >= 0 accuracy points, got {self.budget}")
        if self.max_error is not None and self.max_error < 0:
            raise ValueError(f"search: max_error must be >= 0, got {self.max_error}")
        if self.max_trials < 1 or self.max_minutes <= 0:
            raise ValueError("search: max_trials and max_minutes must be positive")

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        raise NotImplementedError("search replaces the graph; call run()")

    def run(self, graph: Graph, context: PassContext | None = None) -> PassResult:
        context = context or PassContext()
        chosen, report = self._search(graph, context)
        return PassResult(chosen, chosen is not graph, report)

    # -- setup ------------------------------------------------------------------------------
    def _cache_dir(self) -> Path:
        if self.cache:
            return Path(self.cache).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "irkit" / "search"

    def _target(self, context: PassContext) -> Any:
        from irkit.cost import MeasuredCost
        from irkit.target import resolve_targets

        targets = list(context.targets) or resolve_targets("native", families=("cpu",))
        runnable, skipped = MeasuredCost(targets).runnable()
        if not runnable:
            raise SearchError(f"search: none of the targets can be timed on this machine "
                              f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
        return runnable[0]

    def _calibration(self, context: PassContext) -> list[Mapping[str, Any]] | None:
        if context.calibration is not None:
            return list(context.calibration)
        for feeds in (context.train_data, context.eval_data):
            if feeds is not None:
                return default_calibration(feeds)
        return None

    # -- the search -------------------------------------------------------------------------
    def _search(self, graph: Graph, context: PassContext) -> tuple[Graph, dict[str, Any]]:
        from irkit.cost import compiled, feeds_for
        from irkit.passes.manager import accuracy, compare_outputs, evaluate_graph
        from irkit.plugins import get_registry

        if context.eval_data is None:
            raise SearchError("search needs eval data (a spec's eval = npz(...), --eval, or "
                              "irkit.optimize(eval_data=...)) to measure accuracy")
        labels = context.eval_labels
        by_accuracy = self.max_error is None
        if by_accuracy and labels is None:
            raise SearchError("search: the eval data has no labels; give max_error = "
                              "<relative output error> to search on output error instead")
        table = get_registry().passes
        space = list(self.space or DEFAULT_SPACE)
        target = self._target(context)
        reference = evaluate_graph(graph, context.eval_data)
        base_acc = accuracy(reference, graph, labels) if labels is not None else None
        key = _digest(graph_digest(graph), context.eval_data, labels, context.train_data,
                      context.train_labels, target.name, self.batch)
        cache_dir = self._cache_dir()
        feeds = feeds_for(graph, self.batch)
        base_call = compiled(graph, target)
        calibration = self._calibration(context)
        started = time.perf_counter()
        trials: list[dict[str, Any]] = [{
            "pipeline": "(original)", "status": "ok", "accuracy": base_acc, "loss": 0.0,
            "rel_error": 0.0, "speedup": 1.0, "ms": None, "base_ms": None, "cached": False,
        }]
        graphs: dict[str, Graph] = {"(original)": graph}
        self._print_header(target.name)
        for text in space:
            if len(trials) - 1 >= self.max_trials:
                break
            if time.perf_counter() - started > 60.0 * self.max_minutes:
                trials.append({"pipeline": text, "status": "skipped: max_minutes reached"})
                self._print_row(trials[-1])
                continue
            trial = self._cached(cache_dir, key, text)
            if trial is None:
                trial = self._trial(text, graph, context, table, calibration, reference,
                                    labels, base_acc, base_call, feeds, target, graphs,
                                    accuracy, compare_outputs, evaluate_graph, compiled)
                self._store(cache_dir, key, text, trial)
            trials.append(trial)
            self._print_row(trial)
        base_call.close()
        for trial in trials:
            trial["within_budget"] = self._within(trial)
        ok = [t for t in trials if t.get("within_budget")]
        best = max(ok, key=lambda t: t["speedup"])
        chosen_text = best["pipeline"]
        if chosen_text == "(original)":
            chosen, block = graph, "passes { }"
        else:
            chosen = graphs.get(chosen_text) or self._run(chosen_text, graph, context, table,
                                                          calibration)
            block = spec_passes_block(chosen_text, table)
        report: dict[str, Any] = {
            "target": target.name, "budget": self.budget, "max_error": self.max_error,
            "baseline_accuracy": base_acc, "chosen": chosen_text,
            "chosen_speedup": best["speedup"], "passes_block": block,
            "seconds": round(time.perf_counter() - started, 1), "trials": trials,
            "cache": str(cache_dir),
        }
        if self.verbose:
            print(f"search: chose {chosen_text} ({best['speedup']:.2f}x on {target.name}); "
                  f"as a spec:\n{block}", file=sys.stderr, flush=True)
        if self.trials_json:
            write_trials_json(report, self.trials_json)
        if self.plot:
            from irkit.compress.pareto import plot_pareto

            plot_pareto(report, self.plot)
        return chosen, report

    def _within(self, trial: Mapping[str, Any]) -> bool:
        if trial.get("status") != "ok":
            return False
        if self.max_error is not None:
            return bool(trial["rel_error"] <= self.max_error)
        return bool(trial["loss"] <= self.budget + 1e-9)

    def _run(self, text: str, graph: Graph, context: PassContext, table: Any,
             calibration: Any) -> Graph:
        from irkit.passes.manager import run_pipeline

        # The same cost model as the surrounding build (timed step-aside in spec builds),
        # so the printed passes block, pasted into the spec, rebuilds this very graph.
        return run_pipeline(graph, text, calibration=calibration, table=table,
                            targets=context.targets, cost=context.cost,
                            train_data=context.train_data,
                            train_labels=context.train_labels, verify=True)

    def _trial(self, text: str, graph: Graph, context: PassContext, table: Any,
               calibration: Any, reference: Any, labels: Any, base_acc: float | None,
               base_call: Any, feeds: Any, target: Any, graphs: dict[str, Graph],
               accuracy: Any, compare_outputs: Any, evaluate_graph: Any, compiled: Any
               ) -> dict[str, Any]:
        from irkit.cost import interleaved

        trial: dict[str, Any] = {"pipeline": text, "cached": False}
        t0 = time.perf_counter()
        try:
            if "distill" in text and context.train_data is None and calibration is None:
                raise SearchError("no training data for distill")
            candidate = self._run(text, graph, context, table, calibration)
            outputs = evaluate_graph(candidate, context.eval_data)
            err = compare_outputs(outputs, reference)
            trial["rel_error"] = err.rel
            if labels is not None:
                acc = accuracy(outputs, candidate, labels)
                trial["accuracy"] = acc
                trial["loss"] = 100.0 * (float(base_acc or 0.0) - acc)
            else:
                trial["accuracy"], trial["loss"] = None, 0.0
            call = compiled(candidate, target)
            seconds = interleaved({"base": base_call, "trial": call}, feeds, rounds=25,
                                  budget_s=0.3)
            call.close()
            trial.update(status="ok", ms=1e3 * seconds["trial"], base_ms=1e3 * seconds["base"],
                         speedup=seconds["base"] / seconds["trial"])
            graphs[text] = candidate
        except IrkitError as exc:
            trial.update(status=f"failed: {str(exc).splitlines()[0][:160]}")
        trial["seconds"] = round(time.perf_counter() - t0, 2)
        return trial

    # -- cache ------------------------------------------------------------------------------
    def _cache_file(self, cache_dir: Path, key: str, text: str) -> Path:
        return cache_dir / key / f"{_digest(text)}.json"

    def _cached(self, cache_dir: Path, key: str, text: str) -> dict[str, Any] | None:
        path = self._cache_file(cache_dir, key, text)
        try:
            trial = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if trial.get("pipeline") != text or trial.get("status") != "ok":
            return None
        trial["cached"] = True
        return dict(trial)

    def _store(self, cache_dir: Path, key: str, text: str, trial: dict[str, Any]) -> None:
        if trial.get("status") != "ok":
            return
        path = self._cache_file(cache_dir, key, text)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(trial, indent=1))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only home: the search still works, uncached
            print(f"search: cannot cache trial results in {cache_dir}: {exc}",
                  file=sys.stderr)

    # -- the live table ---------------------------------------------------------------------
    def _print_header(self, target: str) -> None:
        if self.verbose:
            print(f"search on {target} (budget: "
                  f"{self.budget if self.max_error is None else self.max_error} "
                  f"{'points' if self.max_error is None else 'rel error'}):\n"
                  f"{'speedup':>8} {'ms':>8} {'acc':>7} {'loss':>6} {'rel err':>8} "
                  f"{'s':>5}  pipeline", file=sys.stderr, flush=True)

    def _print_row(self, trial: Mapping[str, Any]) -> None:
        if not self.verbose:
            return
        if trial.get("status") != "ok":
            print(f"{'-':>8} {'-':>8} {'-':>7} {'-':>6} {'-':>8} {'-':>5}  "
                  f"{trial['pipeline']}  [{trial.get('status')}]", file=sys.stderr, flush=True)
            return
        acc = "-" if trial.get("accuracy") is None else f"{trial['accuracy']:.4f}"
        cached = " (cached)" if trial.get("cached") else ""
        print(f"{trial['speedup']:>7.2f}x {trial['ms']:>8.4f} {acc:>7} {trial['loss']:>6.2f} "
              f"{trial['rel_error']:>8.2g} {trial.get('seconds', 0):>5.1f}  "
              f"{trial['pipeline']}{cached}", file=sys.stderr, flush=True)


def write_trials_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Every trial of a search report (and its choice) as JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    return out
