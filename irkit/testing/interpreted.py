"""Op cases on the kernel IR interpreter instead of a native backend.

``interpret_and_load`` takes the arguments of :func:`irkit.testing.op_cases.compile_and_load`
and returns a callable model with the same call convention (``model(**inputs)`` -> dict of
outputs), so an op-case test runs unchanged on the interpreter, the oracle that every KIR
backend is compared with. The graph goes through the llvm backend's legalizing rewrites
(fused-op decomposition, ONNX function expansion, control-flow unrolling) and
``lower_graph`` with fixed tiles, so the kernels do not depend on the host CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from irkit.lower import Tiles
from irkit.lower.driver import LoweredModel

# The llvm backend's defaults on an AVX2 (x86-64-v3) host: 8 f32 lanes.
INTERPRETER_TILES = Tiles(mr=6, nr=16, vec=8, conv_mr=3, conv_nr=32)


def lower_model(model: Any, tiles: Tiles = INTERPRETER_TILES) -> LoweredModel:
    """``model`` (an ONNX ModelProto, a path or an irkit Graph) legalized and lowered as
    the llvm backend does before code generation."""
    from irkit import api
    from irkit.ir import Graph
    from irkit.lower import lower_graph
    from irkit.lower.driver import lowers
    from irkit.lower.expand import expand_functions
    from irkit.lower.fused import decompose_fused_ops
    from irkit.lower.unroll import unroll_control_flow

    graph = model if isinstance(model, Graph) else api.load_model(model)
    graph = decompose_fused_ops(graph)
    graph = expand_functions(graph, lowers)
    graph = unroll_control_flow(graph, lowers)
    return lower_graph(graph, tiles)


class InterpretedModel:
    """A lowered model run by :func:`irkit.lower.interpret.interpret_lowered`; checks the
    lowering's run-time guards first, as the artifact runtime does. ``lanes`` runs the
    kernels in vectorized (``prepare_kernel``) form. ``calls`` counts the runs."""

    def __init__(self, lowered: LoweredModel, lanes: int | None = None) -> None:
        self.lowered = lowered
        self.lanes = lanes
        self.calls = 0
        # What op-case tests read from a loaded llvm model's manifest: the kernel names.
        self.manifest = SimpleNamespace(entry={
            "kernels": [k.name for k in lowered.program.kernels],
            "io": list(lowered.program.io_order), "symbols": list(lowered.program.symbols)})

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        from irkit.lower.interpret import interpret_lowered
        from irkit.runtime.guards import check_guards

        arrays: Mapping[str, np.ndarray] = {k: np.asarray(v) for k, v in inputs.items()}
        check_guards(self.lowered.guards, arrays)
        outputs = interpret_lowered(self.lowered, arrays, lanes=self.lanes)
        self.calls += 1
        return outputs

    def close(self) -> None:
        """Nothing to release (the call convention of a loaded model)."""


def interpret_and_load(model: Any, tmp_path: Path | None = None, threads: int = 1, *,
                       lanes: int | None = None, **options: Any) -> InterpretedModel:
    """The interpreter's counterpart of ``compile_and_load``: ``tmp_path``, ``threads``
    and backend ``options`` are accepted and ignored (nothing is written, one thread)."""
    return InterpretedModel(lower_model(model), lanes=lanes)
