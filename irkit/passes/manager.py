"""The pass manager: run a pipeline, verify after every pass, record a report per pass.

Each report compares against the *unoptimized* model, so errors accumulate visibly down
the pipeline instead of being measured only against the previous step.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph
from irkit.passes.base import (
    Pass,
    PassContext,
    PassResult,
    nonzero_count,
    parameter_count,
    weight_bytes,
)
from irkit.passes.pipeline import PassTable, resolve_passes


class PassError(IrkitError):
    """A pass failed or produced an invalid graph; the message names the pass."""


@dataclass
class PassReport:
    """What one pass did to the graph, measured against the unoptimized model."""

    name: str
    pipeline: str
    modified: bool
    seconds: float
    ops_before: int
    ops_after: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    rel_error: float | None = None
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    nonzero_after: int | None = None  # parameters that are not zero after the pass

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


@dataclass(frozen=True)
class OutputError:
    max_abs: float
    mean_abs: float
    rel: float


def compare_outputs(got: Mapping[str, Any], want: Mapping[str, Any]) -> OutputError:
    """Max/mean absolute and relative (L2) error over every output."""
    max_abs = mean_acc = 0.0
    count = 0
    num = den = 0.0
    for name, ref in want.items():
        ref_arr = np.asarray(ref, dtype=np.float64)
        diff = np.abs(np.asarray(got[name], dtype=np.float64) - ref_arr)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
        mean_acc += float(diff.sum())
        count += diff.size
        num += float((diff**2).sum())
        den += float((ref_arr**2).sum())
    rel = float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))
    return OutputError(max_abs, mean_acc / max(count, 1), rel)


def accuracy(outputs: Mapping[str, Any], graph: Graph, labels: Any) -> float:
    """Top-1 accuracy of the first output (argmax over the last axis)."""
    logits = np.asarray(outputs[graph.outputs[0].name])
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels).reshape(-1)))


def evaluate_graph(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """``irkit.evaluate`` that also works when an irkit-domain op produces a graph output.

    The exporter's decomposition renames such outputs (so ORT is asked for a name the model
    lacks); routing them through an Identity that carries the original name avoids that.
    """
    from irkit.interop.reference import evaluate

    if not any(v.producer is not None and v.producer.domain == "irkit" for v in graph.outputs):
        return evaluate(graph, feeds)
    work = graph.clone()
    outputs = []
    for value in work.outputs:
        producer = value.producer
        if producer is None or producer.domain != "irkit":
            outputs.append(value)
            continue
        ident = work.add_node("Identity", [value], types=[value.type])
        outputs.append(ident.output)
    work.set_outputs(outputs)
    results = evaluate(work, feeds)  # outputs are matched by position
    return {old.name: results[new.name] for old, new in zip(graph.outputs, outputs)}


def _call_pass(p: Any, graph: Graph, context: PassContext) -> PassResult:
    try:
        count = len(inspect.signature(p.run).parameters)
    except (TypeError, ValueError):
        count = 1
    result = p.run(graph, context) if count >= 2 else p.run(graph)
    if isinstance(result, Graph):  # a third-party pass returning only the graph
        return PassResult(result, result is not graph, {})
    return result


def _pass_name(p: Any) -> str:
    return getattr(p, "name", "") or type(p).__name__


def run_pipeline(
    graph: Graph,
    passes: str | Sequence[Any] | Pass,
    *,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    eval_data: Mapping[str, Any] | None = None,
    labels: Any = None,
    verify: bool = True,
    table: PassTable | None = None,
    targets: Sequence[Any] = (),
    cost: Any = None,
    train_data: Mapping[str, Any] | None = None,
    train_labels: Any = None,
) -> Graph:
    """Run ``passes`` over ``graph`` (which is left untouched); the result carries one
    :class:`PassReport` per pass appended to ``graph.history``. Pipeline text is resolved
    through ``table`` (pass name -> class or registry entry). ``train_data`` /
    ``train_labels`` are what training passes (``distill``) learn from."""
    evaluate = evaluate_graph
    pipeline = resolve_passes(passes, table)
    context = PassContext(calibration=list(calibration) if calibration is not None else None,
                          targets=tuple(targets), cost=cost, train_data=train_data,
                          train_labels=train_labels, eval_data=eval_data, eval_labels=labels)
    reference = evaluate(graph, eval_data) if eval_data is not None else None
    baseline_acc = None
    if reference is not None and labels is not None:
        baseline_acc = accuracy(reference, graph, labels)
    current = graph
    history = list(graph.history)
    for p in pipeline:
        name = _pass_name(p)
        if getattr(p, "needs_calibration", False) and context.calibration is None:
            raise PassError(f"pass {p.describe()!r} needs calibration data (calibration=[...])")
        started = time.perf_counter()
        try:
            result = _call_pass(p, current, context)
        except IrkitError:
            raise
        except Exception as exc:
            raise PassError(f"pass {name!r} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        before_names = [v.name for v in current.outputs]
        after_names = [v.name for v in result.graph.outputs]
        if before_names != after_names:
            raise PassError(f"pass {name!r} renamed the graph outputs {before_names} to "
                            f"{after_names}")
        if verify:
            try:
                result.graph.verify()
            except IrkitError as exc:
                raise PassError(f"pass {name!r} produced an invalid graph: {exc}") from exc
        report = PassReport(
            name=name,
            pipeline=p.describe() if hasattr(p, "describe") else name,
            modified=result.modified,
            seconds=seconds,
            ops_before=len(current.nodes),
            ops_after=len(result.graph.nodes),
            params_before=parameter_count(current),
            params_after=parameter_count(result.graph),
            bytes_before=weight_bytes(current),
            bytes_after=weight_bytes(result.graph),
            nonzero_after=nonzero_count(result.graph),
            baseline_accuracy=baseline_acc,
            details=dict(result.report),
        )
        if reference is not None and eval_data is not None:
            outputs = evaluate(result.graph, eval_data)
            err = compare_outputs(outputs, reference)
            report.max_abs_error = err.max_abs
            report.mean_abs_error = err.mean_abs
            report.rel_error = err.rel
            if labels is not None:
                report.accuracy = accuracy(outputs, result.graph, labels)
        current = result.graph if result.graph is not graph else graph.clone()
        history.append(report)
        current.history = list(history)
    if current is graph:  # an empty pipeline: still hand back a copy
        current = graph.clone()
        current.history = history
    return current


def _fmt_num(n: float | None, spec: str) -> str:
    return "-" if n is None else format(n, spec)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_report_table(history: Sequence[Any]) -> str:
    """A plain-text table of pass reports (PassReport objects or their dicts)."""
    rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in history]
    header = ["pass", "ops", "params", "bytes", "max|err|", "mean|err|", "rel err", "acc", "ms"]
    table = [header]
    for r in rows:
        acc = r.get("accuracy")
        base = r.get("baseline_accuracy")
        acc_text = "-" if acc is None else f"{acc:.4f}"
        if acc is not None and base is not None:
            acc_text += f" ({acc - base:+.4f})"
        table.append([
            str(r.get("pipeline") or r.get("name")),
            f"{r['ops_before']}->{r['ops_after']}",
            f"{r['params_before']}->{r['params_after']}" + (
                f" ({r['nonzero_after']} nonzero)"
                if r.get("nonzero_after") is not None and r["nonzero_after"] < r["params_after"]
                else ""),
            f"{_fmt_bytes(r['bytes_before'])}->{_fmt_bytes(r['bytes_after'])}",
            _fmt_num(r.get("max_abs_error"), ".3g"),
            _fmt_num(r.get("mean_abs_error"), ".3g"),
            _fmt_num(r.get("rel_error"), ".3g"),
            acc_text,
            f"{1000 * r.get('seconds', 0.0):.1f}",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_eval_npz(path: str | Path, graph: Graph) -> tuple[dict[str, np.ndarray], Any]:
    """Read ``--eval data.npz``: arrays named like graph inputs feed them; ``y`` or
    ``labels`` are labels. With one graph input and no name match, the first array whose
    rank matches the input is used (digits_eval.npz has both ``x`` and ``x_img``)."""
    data = dict(np.load(path, allow_pickle=False))
    labels = data.pop("y", data.pop("labels", None))
    feeds: dict[str, np.ndarray] = {}

    def fits(value: Any, array: np.ndarray) -> bool:
        return value.shape is None or array.ndim == len(value.shape)

    for value in graph.inputs:
        if value.name in data and fits(value, data[value.name]):
            feeds[value.name] = data[value.name]
    missing = [v for v in graph.inputs if v.name not in feeds]
    if len(missing) == 1 and len(graph.inputs) == 1:
        for array in data.values():
            if fits(missing[0], array):
                feeds[missing[0].name] = array
                break
    still = [v.name for v in graph.inputs if v.name not in feeds]
    if still:
        raise IrkitError(f"{path}: no array for graph input(s) {still}; has {sorted(data)}")
    return feeds, labels
