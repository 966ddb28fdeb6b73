"""The accuracy-vs-speed picture of a search: every trial a point, the Pareto front
(no other trial is both faster and more accurate) joined by a line, the chosen trial
marked and the budget drawn. Needs matplotlib (``pip install 'irkit[plot]'``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irkit.errors import IrkitError


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (x: speedup,
    higher is better; y: quality, higher is better), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the search ``report``'s trials as an SVG/PNG (by the file's suffix)."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise IrkitError("--plot needs matplotlib: pip install 'irkit[plot]'") from None
    trials = [t for t in report["trials"] if t.get("status") == "ok"]
    by_accuracy = report.get("max_error") is None
    ys = [100.0 * t["accuracy"] if by_accuracy else -t["rel_error"] for t in trials]
    xs = [float(t["speedup"]) for t in trials]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [t.get("within_budget", False) for t in trials]
    ax.scatter([x for x, k in zip(xs, ok) if k], [y for y, k in zip(ys, ok) if k],
               c="tab:blue", label="within budget", zorder=3)
    ax.scatter([x for x, k in zip(xs, ok) if not k], [y for y, k in zip(ys, ok) if not k],
               c="tab:gray", marker="x", label="over budget", zorder=3)
    front = pareto_front(list(zip(xs, ys)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], c="tab:blue", alpha=0.5,
            label="Pareto front")
    if by_accuracy:
        base = 100.0 * float(report["baseline_accuracy"])
        ax.axhline(base - float(report["budget"]), c="tab:red", ls="--",
                   label=f"budget: {report['budget']} points lost")
        ax.set_ylabel("accuracy on the eval data (%)")
    else:
        ax.axhline(-float(report["max_error"]), c="tab:red", ls="--", label="max_error")
        ax.set_ylabel("- relative output error")
    for t, x, y in zip(trials, xs, ys):
        if t["pipeline"] == report["chosen"]:
            ax.scatter([x], [y], s=260, marker="*", c="tab:orange", zorder=4,
                       label=f"chosen: {t['pipeline']}")
    ax.set_xlabel(f"speedup over the original model on {report['target']} (llvm, batch 64)")
    ax.set_title("search: every trial")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
