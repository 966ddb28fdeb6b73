"""The numba backend: kernel-IR semantics kept exactly (C integer division and remainder,
NaN in min/max, 16-bit float rounding, wrapping integers), Numba's cache in the artifact
(the second load >= 10x faster than the first), prange on several threads, the generated
source shown by ``irkit inspect`` and checked before it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("onnx")

import irkit
import irkit.runtime
from irkit.kir import (
    Binary,
    Block,
    Buffer,
    Cast,
    Const,
    For,
    Kernel,
    Load,
    Placement,
    Program,
    Store,
)
from irkit.kir import Var as KVar
from irkit.plugins.numba.codegen import render_module
from irkit.runtime import ArtifactError

PYTHON = sys.executable


def _run_kir(program: Program, arrays: list[np.ndarray]) -> None:
    """Execute ``program``'s generated module on ``arrays`` (its io, in order)."""
    source = render_module(program)
    module = types.ModuleType("irkit_test_kir")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "<kir test>", "exec"), module.__dict__)
        module.run.compile(module.RUN_SIGNATURE)
        flat = [a.reshape(-1).view(d) for a, d in zip(arrays, module.IO_DTYPES)]
        module.run(*flat, np.zeros(64, np.uint8), np.zeros(64, np.uint8),
                   np.ones(1, np.int64))
    finally:
        del sys.modules[module.__name__]


def test_kernel_ir_semantics_are_kept_exactly() -> None:
    n = 12
    rng = np.random.default_rng(0)
    a = rng.integers(-40, 40, n).astype(np.int32)
    b = rng.integers(1, 7, n).astype(np.int32) * rng.choice([-1, 1], n).astype(np.int32)
    x = rng.standard_normal(n).astype(np.float32) * 300
    y = rng.standard_normal(n).astype(np.float32) * 300
    x[[1, 4]], y[[2, 4]] = np.nan, np.nan
    p = rng.integers(-128, 128, n).astype(np.int8)
    q = rng.integers(-128, 128, n).astype(np.int8)
    names = ["a", "b", "x", "y", "p", "q", "div", "mod", "max", "min", "half", "wrap"]
    dtypes = ["i32", "i32", "f32", "f32", "i8", "i8", "i32", "i32", "f32", "f32", "f16", "i8"]
    bufs = {nm: Buffer(nm, dt, Const(n)) for nm, dt in zip(names, dtypes)}
    i = KVar("i")

    def ld(name: str) -> Load:
        return Load(bufs[name], i)

    body = Block((
        Store(bufs["div"], i, Binary("div", ld("a"), ld("b"))),
        Store(bufs["mod"], i, Binary("mod", ld("a"), ld("b"))),
        Store(bufs["max"], i, Binary("max", ld("x"), ld("y"))),
        Store(bufs["min"], i, Binary("min", ld("x"), ld("y"))),
        Store(bufs["half"], i, Binary("mul", Cast("f16", ld("x")), Cast("f16", ld("y")))),
        Store(bufs["wrap"], i, Binary("add", ld("p"), ld("q"))),
    ))
    kernel = Kernel("semantics", tuple(bufs.values()), For(i, Const(n), body, "parallel"))
    program = Program("semantics", (kernel,),
                      {nm: Placement("io", index=k) for k, nm in enumerate(names)},
                      tuple(names))
    outs = {nm: np.zeros(n, {"i32": np.int32, "f32": np.float32, "f16": np.float16,
                             "i8": np.int8}[dt]) for nm, dt in zip(names[6:], dtypes[6:])}
    _run_kir(program, [a, b, x, y, p, q, *outs.values()])
    np.testing.assert_array_equal(outs["div"], np.fix(a / b).astype(np.int32))  # toward 0
    np.testing.assert_array_equal(outs["mod"], np.fmod(a, b))  # sign of the dividend
    keep_x_max = np.isnan(x) | np.isnan(y) | (x > y)
    keep_x_min = np.isnan(x) | np.isnan(y) | (x < y)
    np.testing.assert_array_equal(outs["max"], np.where(keep_x_max, x, y))
    np.testing.assert_array_equal(outs["min"], np.where(keep_x_min, x, y))
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    with np.errstate(over="ignore"):
        want_half = (x16.astype(np.float32) * y16.astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(outs["half"], want_half)  # one rounding, inf on overflow
    np.testing.assert_array_equal(outs["wrap"], (p.astype(np.int16) + q).astype(np.int8))


def _mlp_artifact(tmp_path: Path, dims: tuple[int, ...] = (64, 256, 256, 10)) -> Path:
    from irkit.bench import mlp_onnx

    graph = irkit.load_model(mlp_onnx(dims))
    return irkit.compile(graph, target="numba").save(tmp_path / "mlp")


def _timed_load(path: Path) -> float:
    script = (
        "import sys, time, numba\n"
        "numba.njit(lambda v: v + 1)(1)  # Numba's own start-up is not the artifact's\n"
        "import irkit.runtime\n"
        "t = time.perf_counter()\n"
        "irkit.runtime.load(sys.argv[1], threads=1)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([PYTHON, "-c", script, str(path)], capture_output=True, text=True,
                         check=True, env=env, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def test_second_load_is_at_least_ten_times_faster(tmp_path: Path) -> None:
    path = _mlp_artifact(tmp_path)
    first = _timed_load(path)
    assert (path / "__pycache__").is_dir()
    irkit.runtime.verify(path)  # the cache is not artifact content
    second = _timed_load(path)
    print(f"numba load: first {first:.2f} s, second {second:.3f} s ({first / second:.0f}x)")
    assert first / second >= 10


def test_parallel_variant_matches_serial(tmp_path: Path) -> None:
    path = _mlp_artifact(tmp_path, (16, 32, 8))  # Numba compiles prange kernels slowly
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    serial = irkit.runtime.load(path, threads=1)(x=x)["y"]
    parallel = irkit.runtime.load(path, threads=2)
    assert parallel._runner.library._run is parallel._runner.library.module.run_parallel
    np.testing.assert_allclose(parallel(x=x)["y"], serial, rtol=1e-6, atol=1e-6)


def test_inspect_prints_the_generated_source(tmp_path: Path) -> None:
    path = _mlp_artifact(tmp_path, (8, 4))
    out = subprocess.run([PYTHON, "-m", "irkit", "inspect", str(path)], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    assert "backend numba" in out
    assert "# irkit-generated numba kernels: abi=" in out
    assert "def run(io_0, io_1, weights, workspace, dims):" in out
    summary = subprocess.run([PYTHON, "-m", "irkit", "inspect", "--summary-only", str(path)],
                             capture_output=True, text=True, check=True, timeout=300).stdout
    assert "def run(" not in summary and "kernels.py" in summary


def test_source_runs_as_plain_python(tmp_path: Path) -> None:
    """NUMBA_DISABLE_JIT=1: the same module, uncompiled, under a debugger's control."""
    path = _mlp_artifact(tmp_path, (8, 4))
    script = ("import sys, numpy as np, irkit.runtime\n"
              "m = irkit.runtime.load(sys.argv[1], threads=1)\n"
              "x = np.arange(16, dtype=np.float32).reshape(2, 8) / 10\n"
              "np.save(sys.argv[2], m(x=x)['y'])\n")
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    subprocess.run([PYTHON, "-c", script, str(path), str(tmp_path / "y.npy")], check=True,
                   env=env, timeout=300)
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
    jitted = irkit.runtime.load(path, threads=1)(x=x)["y"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), jitted, rtol=1e-5, atol=1e-6)


def test_unrecognized_source_and_untrusted_cache(tmp_path: Path) -> None:
    from irkit.bench import mlp_onnx

    artifact = irkit.compile(irkit.load_model(mlp_onnx((8, 4))), target="numba")
    good = artifact.save(tmp_path / "good")
    os.makedirs(good / "__pycache__", mode=0o777, exist_ok=True)
    os.chmod(good / "__pycache__", 0o777)
    with pytest.warns(RuntimeWarning, match="not using Numba's cache .*writable by other"):
        irkit.runtime.load(good, threads=1)
    artifact.files["kernels.py"] = b"import os  # not irkit's\n" + artifact.files["kernels.py"]
    with pytest.raises(ArtifactError, match="not numba source generated by irkit"):
        irkit.runtime.load(artifact.save(tmp_path / "bad"), threads=1)


@pytest.mark.parametrize("model", ["mlp", "conv_chain"])
def test_static_int8_graphs_match_llvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       model: str) -> None:
    """Static per-channel int8 graphs give llvm's results: a Gemm+Relu MLP (a u8 kernel
    quantizes the input, the int8 GEMM reads it as i32 words) and a conv chain (the first
    conv writes the second's i32 words into a buffer a u8 kernel padded; then a global
    average pool). Kernels may type one buffer differently; the module once gave every
    kernel the first kernel's u8 view of it (errors larger than the output). The same
    kernel IR on llvm differs only in f32 rounding."""
    from irkit.bench import mlp_onnx

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "lower"))
    from test_quantized import CALIB, conv_chain_model  # type: ignore[import-not-found]

    rng = np.random.default_rng(5)
    if model == "mlp":
        graph, calib = irkit.load_model(mlp_onnx((70, 19))), CALIB
        x = np.clip(rng.standard_normal((9, 70)) * 1.5, -5.9, 5.9).astype(np.float32)
    else:
        size = 9
        graph = irkit.load_model(conv_chain_model(size, (7, 5), (0, 1), (3, 3), True))
        calib = [{"x": np.random.default_rng(3).standard_normal((16, 3, size, size))
                  .astype(np.float32) * 1.5}]
        x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    q = irkit.optimize(graph, "fuse,quantize{mode=static,per_channel=true,force=true}",
                       calibration=calib)
    ref = irkit.evaluate(q, {"x": x})["y"]
    got = {t: irkit.runtime.load(irkit.compile(q, target=t, threads=1).save(tmp_path / t),
                                 threads=1)(x=x)["y"] for t in ("llvm", "numba")}
    # The int32 sums are exact on every backend; only the f32 rescale may round
    # differently, which could move the conv chain's intermediate u8 by one step at a
    # tie: 2e-3 of the output's range covers that (this machine: within 1e-6). The
    # wrong views gave errors of 0.5 to 3 times the range.
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got["numba"], got["llvm"], rtol=0, atol=2e-3 * scale)
    np.testing.assert_allclose(got["numba"], ref, rtol=0, atol=2e-3 * scale)
