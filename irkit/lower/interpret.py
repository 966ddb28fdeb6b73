"""Run a :class:`~irkit.lower.driver.LoweredModel` with the kernel IR interpreter.

The graph-level half of :mod:`irkit.kir.interpret`: binds the symbolic dims from the
input shapes, checks the lowering's constraints, allocates the outputs and runs the
program. This is the oracle every KIR backend's op cases are compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from irkit.ir import Value
from irkit.kir.interpret import GARBAGE, run_program
from irkit.lower.driver import LoweredModel
from irkit.lower.symbolic import Poly, evaluate, from_json

__all__ = ["bind_symbols", "interpret_lowered"]


def _dims(shapes: Mapping[str, Sequence[object]]) -> dict[str, list[Poly]]:
    return {name: [from_json(d) for d in dims] for name, dims in shapes.items()}


def _numpy_dtype(value: Value) -> np.dtype:
    if value.dtype is None:
        raise ValueError(f"{value.name!r} is not a tensor")
    return np.dtype(value.dtype.numpy)


def bind_symbols(lowered: LoweredModel, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The value of each symbolic dim, from the first input dim ``a * symbol + b``
    (``a != 0``) that carries it (1 where no input dim does), as the runtime binds them;
    raises ValueError when an input's shape does not fit its declared dims or a
    constraint of the lowering fails."""
    declared = _dims(lowered.input_shapes)
    values: dict[str, int] = {}
    for symbol in lowered.program.symbols:
        values[symbol] = 1
        for name, dims in declared.items():
            found = [(axis, d) for axis, d in enumerate(dims)
                     if d.get((symbol,)) and set(d) <= {(symbol,), ()}]
            if found and len(shapes[name]) == len(dims):
                axis, dim = found[0]
                a, b = dim[(symbol,)], dim.get((), 0)
                values[symbol] = (shapes[name][axis] - b) // a
                break
    for name, dims in declared.items():
        want = tuple(evaluate(d, values) for d in dims)
        if tuple(shapes[name]) != want or min(want, default=0) < 0:
            raise ValueError(f"input {name!r} has shape {tuple(shapes[name])}; the model "
                             f"takes {want} for dims {values}")
    for constraint in lowered.constraints:
        if evaluate(from_json(constraint["size"]), values) < 0:
            raise ValueError(f"inputs outside the shapes this model supports: "
                             f"{constraint['why']} (dims {values})")
    return values


def interpret_lowered(lowered: LoweredModel, inputs: Mapping[str, np.ndarray], *,
                      lanes: int | None = None) -> dict[str, np.ndarray]:
    """Bind the symbolic dims from the input shapes (``lowered.input_shapes``), allocate
    the outputs (``lowered.output_shapes``, dtypes from ``lowered.outputs``), run the
    program with :func:`irkit.kir.interpret.run_program` and return the outputs by name.
    ``lanes`` interprets the vectorized (``prepare_kernel``) form instead.

    Inputs must have the graph's dtypes; ValueError names the input when one is
    missing, has another dtype or a shape the model does not take."""
    arrays: dict[str, np.ndarray] = {}
    for value in lowered.inputs:
        if value.name not in inputs:
            raise ValueError(f"missing input {value.name!r}")
        array = np.asarray(inputs[value.name])
        want = _numpy_dtype(value)
        if array.dtype != want:
            raise ValueError(f"input {value.name!r} is {array.dtype}, the model takes {want}")
        array = (array if array.flags.c_contiguous else array.copy(order="C")).view()
        array.flags.writeable = False  # kernels only read their inputs
        arrays[value.name] = array
    values = bind_symbols(lowered, {name: a.shape for name, a in arrays.items()})
    declared = _dims(lowered.output_shapes)
    outputs: dict[str, np.ndarray] = {}
    for value in lowered.outputs:
        shape = tuple(evaluate(d, values) for d in declared[value.name])
        out = np.empty(shape, _numpy_dtype(value))
        out.reshape(-1).view(np.uint8).fill(GARBAGE)  # unwritten elements show
        outputs[value.name] = arrays[value.name] = out
    run_program(lowered.program, arrays, values, lanes=lanes)
    return outputs

