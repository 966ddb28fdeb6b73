"""Op cases on the kernel IR interpreter instead of a native backend.

``interpret_and_load`` takes the arguments of :func:`irkit.testing.op_cases.compile_and_load`
and returns a callable model with the same call convention (``model(**inputs)`` -> dict of
outputs), so an op-case test runs unchanged on the interpreter, the oracle that every KIR
backend is compared with. The graph goes through the legalize pipeline every kernel
backend runs and ``lower_graph`` for a fixed target (x86-64-v3: 8 f32 lanes), so the
kernels do not depend on the host CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from irkit.lower import Tiles
from irkit.lower.driver import LoweredModel

INTERPRETER_ARCH = "x86-64-v3"


def lower_model(model: Any, tiles: Tiles | None = None, arch: str = INTERPRETER_ARCH
                ) -> LoweredModel:
    """``model`` (an ONNX ModelProto, a path or an irkit Graph) legalized and lowered for
    ``arch`` as a kernel backend does before code generation."""
    from irkit import api
    from irkit.ir import Graph
    from irkit.lower import lower_graph
    from irkit.lower.legalize import legalize
    from irkit.target import get_target

    graph = model if isinstance(model, Graph) else api.load_model(model)
    return lower_graph(legalize(graph), get_target(arch), tiles=tiles)


def _entry(lowered: LoweredModel) -> dict[str, Any]:
    """The manifest entry a kernel backend would write for ``lowered`` (no code files)."""
    from irkit.backend import program_entry
    from irkit.runtime.program import ProgramEntry, Segment, Variant
    from irkit.target import get_target

    program = lowered.program
    entry = program_entry(lowered, code="(interpreted)", weights="(interpreted)",
                          run=f"{program.name}_run", kernels=[k.name for k in program.kernels])
    target = get_target(INTERPRETER_ARCH)
    segment = Segment("kernels", tuple(v.name for v in lowered.inputs),
                      tuple(v.name for v in lowered.outputs), program=entry)
    return ProgramEntry((Variant(target.to_json(), target.requirements(), (segment,)),)
                        ).to_json()


class InterpretedModel:
    """A lowered model run by :func:`irkit.lower.interpret.interpret_lowered`; checks the
    lowering's run-time guards first, as the artifact runtime does. ``lanes`` runs the
    kernels in vectorized (``prepare_kernel``) form. ``calls`` counts the runs."""

    def __init__(self, lowered: LoweredModel, lanes: int | None = None) -> None:
        self.lowered = lowered
        self.lanes = lanes
        self.calls = 0
        # What op-case tests read from a loaded model's manifest: a kernel-program entry.
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


def interpret_and_load(model: Any, tmp_path: Path | None = None, threads: int = 1, *,
                       lanes: int | None = None, arch: str = INTERPRETER_ARCH,
                       **options: Any) -> InterpretedModel:
    """The interpreter's counterpart of ``compile_and_load``: ``tmp_path``, ``threads``
    and backend ``options`` are accepted and ignored (nothing is written, one thread)."""
    return InterpretedModel(lower_model(model, arch=arch), lanes=lanes)
