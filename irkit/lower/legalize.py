"""The ``legalize`` pipeline: rewrites that bring a graph to the ops a kernel backend
lowers, run by every kernel-program backend before :func:`irkit.lower.lower_graph`.

Each step is a registered pass (so ``irkit optimize --passes legalize-fused,...`` shows
what it does to a model) and runs under the pass manager, which verifies the graph after
each one:

- ``legalize-onnx-ml``: ONNX-ML ops (``ai.onnx.ml``: scikit-learn, XGBoost, LightGBM
  exports: Scaler, Normalizer, Linear*, TreeEnsemble*, …) rewritten into standard ops
  (:mod:`.onnx_ml`, :mod:`.onnx_ml_trees`);
- ``legalize-fused``: irkit's fused ops back to the standard ops whose kernels the
  lowering fuses again, unless a kernel takes the fused op directly (:mod:`.fused`);
- ``expand-functions``: ops without a kernel of their own but with an ONNX function body
  (Attention, GroupNormalization, Selu, …) inlined (:mod:`.expand`);
- ``unroll-control-flow``: If/Loop/Scan with compile-time conditions and trip counts, and
  RNN/GRU/LSTM, rewritten into straight-line ops (:mod:`.unroll`).

Which ops "have a kernel" is the backend's :class:`~irkit.lower.driver.Capabilities` for
the target; as standalone passes they use the kernel-IR lowering's whole table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from irkit.ir import Graph
from irkit.lower.driver import Capabilities
from irkit.passes.base import Pass, PassContext, PassResult


@dataclass(frozen=True)
class _LegalizePass(Pass):
    """A rewrite to the ops ``_capabilities`` lowers (not a user option)."""

    _capabilities: Capabilities | None = field(default=None, compare=False, repr=False)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities or Capabilities()

    def rewrite(self, graph: Graph) -> Graph:
        raise NotImplementedError

    def run(self, graph: Graph, context: PassContext | None = None) -> PassResult:
        out = self.rewrite(graph)
        before = len(graph.nodes)
        return PassResult(out, out is not graph, {"nodes_before": before,
                                                   "nodes_after": len(out.nodes)})


@dataclass(frozen=True)
class LegalizeOnnxML(_LegalizePass):
    """ONNX-ML ops (ai.onnx.ml) -> standard ops: linear models, scalers, tree ensembles
    (``trees``: "walk", one gather step per tree level, or "gemm", Hummingbird's two
    GEMMs; walk measured faster from depth 2 on and as fast on stumps)."""

    name: ClassVar[str] = "legalize-onnx-ml"
    trees: str = "walk"

    def __post_init__(self) -> None:
        from irkit.errors import IrkitError
        from irkit.lower.onnx_ml_trees import TREE_LOWERINGS

        if self.trees not in TREE_LOWERINGS:
            raise IrkitError(f"legalize-onnx-ml: trees={self.trees!r}; one of "
                             f"{', '.join(TREE_LOWERINGS)}")

    def rewrite(self, graph: Graph) -> Graph:
        from irkit.lower.onnx_ml import legalize_onnx_ml

        return legalize_onnx_ml(graph, self.capabilities.lowers, self.trees)


@dataclass(frozen=True)
class LegalizeFused(_LegalizePass):
    """irkit fused ops -> the ops the GEMM/conv epilogues fuse (unless lowered directly)."""

    name: ClassVar[str] = "legalize-fused"

    def rewrite(self, graph: Graph) -> Graph:
        from irkit.lower.fused import decompose_fused_ops

        return decompose_fused_ops(graph, self.capabilities.lowers)


@dataclass(frozen=True)
class ExpandFunctions(_LegalizePass):
    """Inline the ONNX function body of every op the backend has no kernel for."""

    name: ClassVar[str] = "expand-functions"

    def rewrite(self, graph: Graph) -> Graph:
        from irkit.lower.expand import expand_functions

        return expand_functions(graph, self.capabilities.lowers)


@dataclass(frozen=True)
class UnrollControlFlow(_LegalizePass):
    """Unroll If/Loop/Scan with static conditions and trip counts, and RNN/GRU/LSTM."""

    name: ClassVar[str] = "unroll-control-flow"

    def rewrite(self, graph: Graph) -> Graph:
        from irkit.lower.unroll import unroll_control_flow

        return unroll_control_flow(graph, self.capabilities.lowers)


LEGALIZE_PASSES: dict[str, str] = {
    "legalize-onnx-ml": "irkit.lower.legalize:LegalizeOnnxML",
    "legalize-fused": "irkit.lower.legalize:LegalizeFused",
    "expand-functions": "irkit.lower.legalize:ExpandFunctions",
    "unroll-control-flow": "irkit.lower.legalize:UnrollControlFlow",
}


def legalize(graph: Graph, capabilities: Capabilities | None = None) -> Graph:
    """``graph`` rewritten by the legalize pipeline for ``capabilities``; the graph's
    optimization history is kept as it was (legalizing is not an optimization)."""
    from irkit.passes.manager import run_pipeline

    steps: list[Any] = [cls(_capabilities=capabilities)
                        for cls in (LegalizeOnnxML, LegalizeFused, ExpandFunctions,
                                UnrollControlFlow)]
    history = list(graph.history)
    out = run_pipeline(graph, steps)
    out.history = history
    return out
