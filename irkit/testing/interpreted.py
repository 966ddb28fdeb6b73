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
    from irkit.lower import Capabilities, lower_graph
    from irkit.lower.legalize import legalize
    from irkit.target import get_target

    graph = model if isinstance(model, Graph) else api.load_model(model)
    capabilities = Capabilities("llvm")
    graph = legalize(graph, capabilities)
    # The tiles are fixed; the target only names what the int8 kernels may assume.
    return lower_graph(graph, get_target("x86-64-v3"), tiles=tiles,
                       capabilities=capabilities)


class InterpretedModel:
    """A lowered model run by :func:`irkit.lower.interpret.interpret_lowered`; checks the
    lowering's run-time guards first, as the artifact runtime does. ``lanes`` runs the
    kernels in vectorized (``prepare_kernel``) form. ``calls`` counts the runs."""

    def __init__(self, lowered: LoweredModel, lanes: int | None = None) -> None:
        self.lowered = lowered
        self.lanes = lanes
        self.calls = 0
        # What op-case tests read from a loaded kernel model's manifest: its entry (kernel
        # names, io order, symbols), in the form irkit.runtime.program reads.
        self.manifest = SimpleNamespace(entry=_entry(lowered))

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


def _entry(lowered: LoweredModel) -> dict[str, Any]:
    from irkit.backend import program_entry
    from irkit.runtime.program import ProgramEntry, Segment, Variant
    from irkit.target import get_target

    kernels = lowered.program
    program = program_entry(lowered, code="(interpreted)", weights="(interpreted)",
                            run=f"{kernels.name}_run", kernels=[k.name for k in kernels.kernels])
    segment = Segment("kernels", tuple(program.input_shapes), tuple(program.output_shapes),
                      program=program)
    target = get_target("x86-64-v3")
    return ProgramEntry((Variant(target.to_json(), target.requirements(), (segment,)),)).to_json()


def interpret_and_load(model: Any, tmp_path: Path | None = None, threads: int = 1, *,
                       lanes: int | None = None, **options: Any) -> InterpretedModel:
    """The interpreter's counterpart of ``compile_and_load``: ``tmp_path``, ``threads``
    and backend ``options`` are accepted and ignored (nothing is written, one thread)."""
    return InterpretedModel(lower_model(model), lanes=lanes)
