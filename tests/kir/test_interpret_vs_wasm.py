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

from test_interpret_vs_llvm import IDX, RULES, elementwise  # noqa: E402  (tests/kir)

from irkit.kir import Cast, Load, Program  # noqa: E402
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


@pytest.mark.parametrize("arch", ["wasm32-simd", "wasm32"])
def test_half_conversions_without_half_instructions(arch: str) -> None:
    """WebAssembly code converts f16 in integer arithmetic (codegen's ``soft_half``): every
    f16 bit pattern to f32 exactly, and f32 values (ties, subnormals, overflow, NaN, both
    signs) to f16 rounded to nearest even, against numpy; NaN only as NaN."""
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    wide = np.zeros(every.size, np.float32)
    io = {"in0": every.copy(), "out": wide}
    run_on_wasm(elementwise(lambda x: Cast("f32", Load(x, IDX)), np.float32, every), io, arch)
    want = every.astype(np.float32)
    finite = ~np.isnan(want)
    assert wide[finite].view(np.uint32).tolist() == want[finite].view(np.uint32).tolist()
    assert np.isnan(wide[~finite]).all()

    rng = np.random.default_rng(3)
    steps = np.float32(2.0) ** np.arange(-30, 17, dtype=np.float32)
    values = np.concatenate([
        rng.standard_normal(4000).astype(np.float32) * 1000,
        rng.standard_normal(4000).astype(np.float32) * 1e-5,
        every[finite].astype(np.float32) + np.float32(2.0 ** -25),  # near ties
        (every[finite].astype(np.float64) * (1 + 2.0 ** -11)).astype(np.float32),
        steps, -steps, [65504, 65519.99, 65520, 65536, 1e9, np.inf, -np.inf, np.nan, -0.0],
    ]).astype(np.float32)
    narrow = np.zeros(values.size, np.float16)
    io = {"in0": values.copy(), "out": narrow}
    run_on_wasm(elementwise(lambda x: Cast("f16", Load(x, IDX)), np.float16, values), io, arch)
    with np.errstate(over="ignore"):
        want16 = values.astype(np.float16)
    finite = ~np.isnan(want16)
    assert narrow[finite].view(np.uint16).tolist() == want16[finite].view(np.uint16).tolist()
    assert np.isnan(narrow[~finite]).all()

