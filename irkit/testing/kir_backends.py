"""Run a hand-built kernel-IR :class:`~irkit.kir.Program` through the Python-generating
backends, the way the KIR interpreter runs it (``irkit.kir.interpret.run_program``), so
tests compare them kernel by kernel: numba (the generated ``@njit`` module, compiled) and
cuda (the generated numba-cuda kernels in numba-cuda's simulator)."""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from irkit.kir import Program

_COUNTER = itertools.count()


def _module(source: str, names: Mapping[str, Any]) -> types.ModuleType:
    module = types.ModuleType(f"irkit_kir_test_{next(_COUNTER)}")
    module.__dict__.update(names)
    sys.modules[module.__name__] = module  # Numba resolves globals through the module
    exec(compile(source, f"<{module.__name__}>", "exec"), module.__dict__)
    return module


def _blobs(program: Program, dims: Mapping[str, int] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The weights and a zeroed workspace as large as ``dims`` need (each symbol 1
    unless given)."""
    values = {s: int((dims or {}).get(s, 1)) for s in program.symbols}
    terms = sum(c * int(np.prod([values[m] for m in names]))
                for names, c in program.workspace_terms)
    nbytes = program.workspace_n * values.get("N", 1) + program.workspace_c + terms
    weights = np.frombuffer(program.weights + b"\0" * 64, np.uint8).copy()
    return weights, np.zeros(nbytes + 64, np.uint8)


def run_on_numba(program: Program, io: Mapping[str, np.ndarray],
                 dims: Mapping[str, int] | None = None, parallel: bool = False) -> None:
    """``program`` as the numba backend's module, compiled and run once (outputs in
    place); ``parallel`` runs the prange variants."""
    from irkit.plugins.numba.codegen import render_module
    from irkit.runtime.backends.numba import flat_view

    module = _module(render_module(program, fast_math=False), {"IRKIT_PURE_PYTHON": False})
    run = module.run_parallel if parallel else module.run
    run.compile(module.RUN_SIGNATURE)
    arrays = [flat_view(io[name], dtype) for name, dtype in zip(program.io_order,
                                                               module.IO_DTYPES)]
    weights, workspace = _blobs(program, dims)
    values = np.array([(dims or {}).get(s, 1) for s in program.symbols], np.int64)
    run(*arrays, weights, workspace, values)
    for name, array in zip(program.io_order, arrays):  # copies of read-only inputs
        target = io[name].reshape(-1)
        if not np.shares_memory(target, array):
            target.view(array.dtype)[:] = array


def run_on_cuda_simulator(program: Program, io: Mapping[str, np.ndarray],
                          dims: Mapping[str, int] | None = None) -> None:
    """``program`` as the cuda backend's kernels, launched in numba-cuda's simulator."""
    from numba.cuda import simulator

    from irkit.plugins.cuda.codegen import render_module
    from irkit.runtime.backends.numba import flat_view

    module = _module(render_module(program).source, {
        "IRKIT_PURE_PYTHON": True, "IRKIT_KERNEL": simulator.jit,
        "IRKIT_DEVICE": simulator.jit(device=True)})
    weights, workspace = _blobs(program, dims)
    values = [int((dims or {}).get(s, 1)) for s in program.symbols]
    views = []
    for _, place, where, nbytes, dtype in module.buffers(values):
        if place == "io":
            views.append(flat_view(io[program.io_order[where]], dtype))
        else:
            base = weights if place == "weights" else workspace
            views.append(base[where : where + nbytes].view(dtype))
    for (name, shape, positions, _), (grid, block, extras) in zip(
            module.KERNELS, module.launches(values, 32, 2)):
        if shape == "grid" and extras[0] == 0:
            continue
        getattr(module, name)[grid, block](*[views[p] for p in positions], *values, *extras)


__all__ = ["run_on_cuda_simulator", "run_on_numba"]
