"""The numba and cuda backends against the kernel IR interpreter on the hand-built
kernels of ``test_interpret_vs_llvm`` (one per rule of irkit/kir/interpret.py: C division,
wrapping, shifts, the int8 dot, NaN in min/max, compares, 16-bit rounding, fma, calls,
casts, strided loads): numba's generated module compiled, the cuda backend's kernels in
numba-cuda's simulator. The prange variants render expressions the same way as the
serial ones; they run the loop-nest test (top-level parallel loop with a start). Results must be bit-identical, except
exp/tanh/erf, which each backend computes with its own math library (within 1e-6
relative)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("ml_dtypes")

from test_interpret_vs_llvm import (  # the sibling module's kernels, one per rule
    IDX,
    RULES,
    elementwise,
)

from irkit.kir import Buffer, Call, Const, Kernel, Load, Placement, Program, Store, Var
from irkit.kir.interpret import run_program
from irkit.kir.nodes import For
from irkit.testing.kir_backends import run_on_cuda_simulator, run_on_numba


def _cuda(program: Program, io: dict[str, np.ndarray]) -> None:
    pytest.importorskip("numba.cuda.simulator")
    run_on_cuda_simulator(program, io)


BACKENDS: dict[str, Callable[[Program, dict[str, np.ndarray]], None]] = {
    "numba": run_on_numba,
    "numba-prange": lambda p, io: run_on_numba(p, io, parallel=True),
    "cuda-simulator": _cuda,
}


@pytest.mark.parametrize("backend", ["numba", "cuda-simulator"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_backend_matches_the_interpreter(name: str, backend: str) -> None:
    rule = RULES[name]
    program = rule.program()
    results = []
    for run in ("interpreter", backend):
        arrays = {f"in{k}": a.copy() for k, a in enumerate(rule.inputs)}
        size = rule.inputs[0].size if rule.extent is None else rule.extent
        arrays["out"] = np.zeros(size, rule.out)
        if run == "interpreter":
            run_program(program, arrays, {"N": 1})
        else:
            BACKENDS[backend](program, arrays)
        results.append(arrays["out"])
    want, got = results
    if rule.approximate:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
    else:
        bits = np.dtype(f"u{want.dtype.itemsize}")
        assert got.view(bits).tolist() == want.view(bits).tolist(), name


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_independent_nest_with_a_start(backend: str) -> None:
    """A top-level parallel loop with a start around an independent inner loop: numba's
    prange and the grid mapping both run exactly its iterations."""
    out = Buffer("out", "i64", Const(40))
    i, j = Var("i"), Var("j")
    inner = For(j, Const(4), Store(out, i * 4 + j, i * 10 + j), "serial", independent=True)
    kernel = Kernel("k", (out,), For(i, Const(3), inner, "parallel", start=Const(2)))
    program = Program("p", (kernel,), {"out": Placement("io", index=0)}, ("out",))
    results = []
    for run in ("interpreter", backend):
        io = {"out": np.zeros(40, np.int64)}
        run_program(program, io, {"N": 1}) if run == "interpreter" else BACKENDS[backend](
            program, io)
        results.append(io["out"].tolist())
    assert results[0] == results[1]
    assert results[0][8:20] == [20, 21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43]


@pytest.mark.parametrize("backend", ["numba", "cuda-simulator"])
def test_dot4_u8s7(backend: str) -> None:
    """The int8 dot of targets without VNNI (weight bytes within [-64, 64]): the exact
    sum, like dot4_u8s8."""
    acc, a, b = RULES["dot4_u8s8"].inputs
    b = (b.view(np.int8).astype(np.int16) // 2).astype(np.int8).view(b.dtype)
    program = elementwise(lambda c, x, y: Call("dot4_u8s7", (Load(c, IDX), Load(x, IDX),
                                                             Load(y, IDX))), np.int32, acc, a, b)
    results = []
    for run in ("interpreter", backend):
        arrays = {"in0": acc.copy(), "in1": a.copy(), "in2": b.copy(),
                  "out": np.zeros(acc.size, np.int32)}
        run_program(program, arrays, {"N": 1}) if run == "interpreter" else BACKENDS[backend](
            program, arrays)
        results.append(arrays["out"].tolist())
    assert results[0] == results[1]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_buffer_typed_differently_by_two_kernels(backend: str) -> None:
    """One workspace buffer written as u8 bytes by one kernel and read as i32 words by
    the next (an int8 conv's epilogue words over a padded u8 tensor): each kernel indexes
    its own typed view of the same bytes, little-endian, as the interpreter does. The
    backends once gave every kernel the first kernel's u8 view."""
    src, out = Buffer("src", "u8", Const(8)), Buffer("out", "i32", Const(2))
    as_bytes, as_words = Buffer("t", "u8", Const(8)), Buffer("t", "i32", Const(2))
    i = Var("i")
    write = Kernel("bytes", (src, as_bytes), For(i, Const(8), Store(
        as_bytes, i, Load(src, i) + Const(1, "u8")), "parallel", independent=True))
    read = Kernel("words", (as_words, out), For(i, Const(2), Store(
        out, i, Load(as_words, i) + Const(1, "i32")), "parallel", independent=True))
    program = Program("p", (write, read), {
        "src": Placement("io", index=0), "out": Placement("io", index=1),
        "t": Placement("workspace", offset_c=8)}, ("src", "out"), workspace_c=16)
    results = []
    for run in ("interpreter", backend):
        io = {"src": np.array([0, 1, 2, 3, 4, 5, 6, 249], np.uint8),
              "out": np.zeros(2, np.int32)}
        run_program(program, io, {"N": 1}) if run == "interpreter" else BACKENDS[backend](
            program, io)
        results.append(io["out"].tolist())
    assert results[0] == results[1] == [0x04030201 + 1, -(1 << 32) + 0xFA070605 + 1]


def test_dot8_u8s6_on_numba() -> None:
    """The paired int8 dot (weight bytes within [-32, 32]): two exact dot4 steps."""
    acc, a, b = RULES["dot4_u8s8"].inputs
    b = (b.view(np.int8).astype(np.int16) // 4).astype(np.int8).view(b.dtype)
    a2, b2 = a[::-1].copy(), b[::-1].copy()
    program = elementwise(lambda c, x, y, z, w: Call("dot8_u8s6", tuple(
        Load(buf, IDX) for buf in (c, x, y, z, w))), np.int32, acc, a, b, a2, b2)
    results = []
    for run in ("interpreter", "numba"):
        arrays = {"in0": acc.copy(), "in1": a.copy(), "in2": b.copy(), "in3": a2.copy(),
                  "in4": b2.copy(), "out": np.zeros(acc.size, np.int32)}
        run_program(program, arrays, {"N": 1}) if run == "interpreter" else BACKENDS["numba"](
            program, arrays)
        results.append(arrays["out"].tolist())
    assert results[0] == results[1]
