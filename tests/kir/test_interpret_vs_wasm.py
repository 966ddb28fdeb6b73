"""The wasm backend against the kernel IR interpreter, on the same hand-built kernels as
the llvm check (one per rule of irkit/kir/interpret.py; tests/kir/test_interpret_vs_llvm.py).

Each program is translated for ``wasm32-simd`` (4 lanes, as the backend compiles) and
``wasm32`` (no SIMD; vectors split by LLVM), without fast-math, linked into a module by
the wasm backend's linker and run by wasmtime with N = 1; results must be bit-identical
to the interpreter's, except the inline ``exp``/``tanh``/``erf`` (within 3e-6 relative).
One known difference: LLVM's WebAssembly instruction selection turns f32 ``max``/``min``
(``select(x <= y, y, x)``) into ``f32x4.pmax``/``pmin``, which keep ``x`` where the rule
returns ``y`` on a tie of ``0.0`` and ``-0.0``; those rules compare values, with the sign
of zero ignored (NaN placement still exact)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("llvmlite")
wasmtime = pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

from test_interpret_vs_llvm import RULES  # noqa: E402  (tests/kir)

from irkit.kir import Program  # noqa: E402
from irkit.kir.interpret import run_program  # noqa: E402


def run_on_wasm(program: Program, io: dict[str, np.ndarray], arch: str) -> None:
    """``program`` compiled to a module for ``arch`` and run once in wasmtime, N = 1."""
    from irkit.plugins.llvm.codegen import entry_symbol, translate_program
    from irkit.plugins.llvm.emit import emit_object
    from irkit.plugins.wasm.link import link_module
    from irkit.target import get_target

    target = get_target(arch)
    module = translate_program(program, target, fast_math=False, lanes=4)
    code = link_module(emit_object(module, target).data, [entry_symbol(program)])
    store = wasmtime.Store(wasmtime.Engine())
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, code), [])
    exports = instance.exports(store)
    memory = exports["memory"]

    def alloc(data: bytes) -> int:
        address = exports["irkit_alloc"](store, max(len(data), 8))
        base = ctypes.addressof(memory.data_ptr(store).contents)
        ctypes.memmove(base + address, data, len(data))
        return int(address)

    table = [alloc(io[name].tobytes()) for name in program.io_order]
    io_block = alloc(np.asarray(table, np.uint32).tobytes())
    weights = alloc(program.weights + b"\0" * 64)
    workspace = alloc(bytes(program.workspace_n + program.workspace_c + 64))
    dims = alloc(np.ones(max(len(program.symbols), 1), np.int64).tobytes())
    exports[entry_symbol(program)](store, io_block, weights, workspace, dims)
    base = ctypes.addressof(memory.data_ptr(store).contents)
    for name, address in zip(program.io_order, table):
        array = io[name]
        ctypes.memmove(array.ctypes.data, base + address, array.nbytes)


@pytest.mark.parametrize("arch", ["wasm32-simd", "wasm32"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_wasm_matches_the_interpreter(name: str, arch: str) -> None:
    rule = RULES[name]
    program = rule.program()
    results = []
    for run in ("interpreter", "wasm"):
        arrays = {f"in{k}": a.copy() for k, a in enumerate(rule.inputs)}
        size = rule.inputs[0].size if rule.extent is None else rule.extent
        arrays["out"] = np.zeros(size, rule.out)
        if run == "wasm":
            run_on_wasm(program, arrays, arch)
        else:
            run_program(program, arrays, {"N": 1}, lanes=4)
        results.append(arrays["out"])
    mine, theirs = results
    if name in ("max_f32", "min_f32") and arch == "wasm32-simd":
        np.testing.assert_array_equal(theirs, mine, err_msg=name)  # NaN == NaN, 0.0 == -0.0
        assert (np.isnan(theirs) == np.isnan(mine)).all()
    elif rule.approximate:
        np.testing.assert_allclose(theirs, mine, rtol=3e-6, atol=1e-7, err_msg=name)
    else:
        bits = np.dtype(f"u{mine.dtype.itemsize}")
        assert theirs.view(bits).tolist() == mine.view(bits).tolist(), name
