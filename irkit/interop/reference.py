"""Reference evaluation: run a graph by exporting it to ONNX and executing it with
ONNX Runtime or ``onnx.reference`` (no hand-written op kernels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from irkit.errors import EvaluationError
from irkit.interop.onnx_export import to_onnx
from irkit.ir import Graph

ENGINES = ("ort", "reference")


def _run_ort(model: onnx.ModelProto, feeds: dict[str, Any], names: list[str]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(names, feeds)


def _run_reference(model: onnx.ModelProto, feeds: dict[str, Any], names: list[str]) -> list[Any]:
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(names, feeds))


_RUNNERS = {"ort": _run_ort, "reference": _run_reference}


def _name_omitted_outputs(model: onnx.ModelProto) -> None:
    """Drop trailing omitted node outputs and name the other omitted ones, in place.

    ONNX Runtime 1.32 segfaults on e.g. ``Split`` with an omitted output, which the
    ONNX checker accepts; a named output that nothing reads has the same meaning.
    """
    graphs = [model.graph]
    names: set[str] = set()
    omitted: list[tuple[onnx.NodeProto, int]] = []
    while graphs:
        g = graphs.pop()
        names.update(v.name for v in g.input)
        names.update(t.name for t in g.initializer)
        for node in g.node:
            while node.output and not node.output[-1]:
                node.output.pop()
            for i, out in enumerate(node.output):
                if out:
                    names.add(out)
                else:
                    omitted.append((node, i))
            for a in node.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)
    counter = 0
    for node, i in omitted:
        while f"__omitted_{counter}" in names:
            counter += 1
        node.output[i] = f"__omitted_{counter}"
        counter += 1


def evaluate(
    graph: Graph,
    inputs: Mapping[str, Any],
    *,
    engine: str | Sequence[str] = ("ort", "reference"),
    check: bool = False,
) -> dict[str, Any]:
    """Run ``graph`` on ``inputs`` (name -> array) and return its outputs by name.

    ``engine`` is ``"ort"``, ``"reference"`` or an ordered list tried in turn: the next
    engine runs only when the previous one could not load or execute the model.
    """
    order = [engine] if isinstance(engine, str) else list(engine)
    for name in order:
        if name not in _RUNNERS:
            raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    expected = [v.name for v in graph.inputs]
    missing = [n for n in expected if n not in inputs]
    unknown = [n for n in inputs if n not in expected]
    if missing or unknown:
        raise ValueError(
            f"graph {graph.name!r} takes inputs {expected}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {unknown}" if unknown else "")
        )
    model = to_onnx(graph, check=check)
    _name_omitted_outputs(model)
    feeds = {n: (np.asarray(v) if isinstance(v, np.ndarray | np.generic) else v)
             for n, v in inputs.items()}
    names = [v.name for v in graph.outputs]
    failures = []
    for name in order:
        try:
            results = _RUNNERS[name](model, feeds, names)
        except Exception as exc:  # each engine raises its own family of errors
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:500]}")
            continue
        return dict(zip(names, results))
    raise EvaluationError(
        f"no engine could evaluate graph {graph.name!r}:\n  " + "\n  ".join(failures)
    )
