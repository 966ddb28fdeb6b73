"""The public compiler API (re-exported by ``irkit``): load, evaluate, export, optimize,
compile and build."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irkit.errors import IrkitError
from irkit.interop.onnx_export import to_onnx
from irkit.interop.reference import evaluate
from irkit.ir import Graph
from irkit.runtime.artifact import Artifact

__all__ = ["Artifact", "build", "compile", "evaluate", "load_model", "optimize", "to_onnx"]


def load_model(source: Any, *, frontend: str | None = None, **options: Any) -> Graph:
    """Import a model: an ONNX path or ModelProto, a torch.nn.Module (with
    ``example_inputs=``), a ``"pkg.module:factory"`` string, or an existing Graph."""
    from irkit.plugins import get_registry

    if isinstance(source, Graph):
        return source
    registry = get_registry()
    if frontend is not None:
        return registry.get("frontends", frontend).instance().load(source, **options)
    for entry in registry.frontends.values():
        try:
            loader = entry.instance()
        except IrkitError:
            continue  # a frontend whose optional dependency is missing
        if loader.can_load(source):
            return loader.load(source, **options)
    if isinstance(source, str | os.PathLike) and not Path(source).exists():
        raise IrkitError(f"{source}: no such model file")
    kind = type(source).__name__
    raise IrkitError(
        f"no frontend can load {source!r} ({kind}); known frontends: "
        f"{', '.join(registry.frontends)}"
    )


def optimize(
    graph: Graph,
    passes: str | Sequence[Any] = "",
    *,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    eval_data: Mapping[str, Any] | None = None,
    labels: Any = None,
    target: Any = "native",
    measure: bool = False,
    train_data: Mapping[str, Any] | None = None,
    train_labels: Any = None,
) -> Graph:
    """Run a pass pipeline (text like ``"fuse,quantize{mode=static}"`` or pass objects);
    the returned graph carries one report per pass in ``graph.history``.

    ``target`` names what the graph will be compiled for (a preset such as
    ``"x86-64-v3"``, several, or ``Target`` objects; the build host by default): passes
    that depend on the CPU read it (quantize picks its weight range for the target's int8
    instruction). With ``measure=True``, passes that can keep the faster form of a node
    time both forms on those targets (``irkit.cost``) and step aside where theirs is
    slower, saying so in the report.

    ``train_data`` (input name -> array) and ``train_labels`` are the data ``distill``
    trains its student on; ``search{budget=...}`` measures each candidate pipeline's
    accuracy on ``eval_data``/``labels`` and its latency on ``target``."""
    from irkit.passes.manager import run_pipeline
    from irkit.plugins import get_registry
    from irkit.target import resolve_targets

    families = ("cpu", "wasm", "gpu")
    targets = resolve_targets(target, families=families) if target is not None else []
    cost = None
    if measure:
        from irkit.cost import MeasuredCost

        cost = MeasuredCost(targets)
    return run_pipeline(graph, passes, calibration=calibration, eval_data=eval_data,
                        labels=labels, table=get_registry().passes, targets=targets,
                        cost=cost, train_data=train_data, train_labels=train_labels)


def compile(graph: Graph, target: str = "ort", **options: Any) -> Artifact:
    """Compile ``graph`` with the backend named ``target`` into an Artifact."""
    from irkit.plugins import get_registry

    backend = get_registry().get("backends", target).instance()
    known = getattr(backend, "options", {}) or {}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise IrkitError(
            f"backend {target!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(known) or 'none'}"
        )
    return backend.compile(graph, **options)


def build(spec_path: str | os.PathLike, pipeline: str | None = None) -> dict[str, Path]:
    """Build everything a spec declares: load, optimize, compile each target and save the
    artifacts. Returns target name -> artifact directory."""
    from irkit.builder import build_spec

    return build_spec(Path(spec_path), pipeline)


