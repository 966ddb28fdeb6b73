"""Targets: presets, resolution, and artifacts that refuse a host they cannot run on.

Hosts without a feature are simulated with ``irkit.runtime.load(..., host=host_with(...))``
(the loader's check is the same one it runs against the real CPU), so these tests hold
on any x86-64 machine; the one that runs AVX-512 code skips, saying why, where the CPU
has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import irkit
import irkit.runtime
from irkit.backend import BackendError
from irkit.bench import mlp_onnx
from irkit.cli import main
from irkit.runtime import ArtifactError
from irkit.runtime.hostcpu import X86_LEVELS, host, host_level, host_with
from irkit.runtime.program import ProgramEntry
from irkit.target import PRESET_NAMES, TargetError, get_target, resolve_targets

X86 = host().arch == "x86_64"
V3_HOST = host_with(X86_LEVELS["x86-64-v3"], "x86_64")
V2_HOST = host_with(X86_LEVELS["x86-64-v2"], "x86_64")


def test_presets_describe_the_psabi_levels() -> None:
    v2, v3, v4 = (get_target(f"x86-64-v{k}") for k in (2, 3, 4))
    assert v2.features < v3.features < v4.features
    assert {"avx2", "fma", "f16c", "bmi2"} <= v3.features - v2.features
    assert {"avx512f", "avx512bw", "avx512vl"} <= v4.features - v3.features
    assert (v2.vector_bits, v3.vector_bits, v4.vector_bits) == (128, 256, 512)
    assert (v3.vector_registers, v4.vector_registers) == (16, 32)
    assert (v3.f32_lanes, v4.f32_lanes) == (8, 16)
    assert not v4.has_int8_dot and get_target("x86-64-v4-vnni").has_int8_dot
    assert get_target("x86-64-v3-vnni").int8_dot() == "vpdpbusd"
    assert get_target("sm_90").warp_size == 32 and get_target("sm_90").shared_memory > 0
    assert get_target("wasm32-simd").features == {"simd128"}
    assert {"native", "x86-64-v3", "aarch64", "wasm32", "sm_90"} <= set(PRESET_NAMES)
    for name in PRESET_NAMES:
        target = get_target(name)
        assert get_target(target) is target
        assert type(target).from_json(json.loads(json.dumps(target.to_json()))) == target


def test_native_is_the_build_host() -> None:
    native = get_target("native")
    assert native.cpu == host().cpu and native.features == host().features
    assert not host().missing(native.requirements())


def test_resolution_orders_most_capable_first_and_names_mistakes() -> None:
    names = [t.name for t in resolve_targets("x86-64-v3, x86-64-v4-vnni,x86-64-v4")]
    assert names == ["x86-64-v4-vnni", "x86-64-v4", "x86-64-v3"]
    assert [t.name for t in resolve_targets(["x86-64-v3", "x86-64-v3"])] == ["x86-64-v3"]
    assert [t.name for t in resolve_targets(None, default="x86-64-v2")] == ["x86-64-v2"]
    with pytest.raises(TargetError, match="did you mean 'x86-64-v4'"):
        get_target("x86-64-v5")
    with pytest.raises(TargetError, match="wasm target"):
        resolve_targets("wasm32", families=("cpu",))


def test_host_levels() -> None:
    assert host_level(V3_HOST) == "x86-64-v3" and host_level(V2_HOST) == "x86-64-v2"
    assert host_level(host_with([], "aarch64")) == "aarch64"
    assert V2_HOST.missing(get_target("x86-64-v3").requirements()) == sorted(
        X86_LEVELS["x86-64-v3"] - X86_LEVELS["x86-64-v2"])


@pytest.fixture(scope="module")
def mlp() -> tuple[irkit.ir.Graph, np.ndarray, np.ndarray]:
    graph = irkit.load_model(mlp_onnx((24, 48, 10)))
    x = np.random.default_rng(0).standard_normal((7, 24)).astype(np.float32)
    return graph, x, irkit.evaluate(graph, {"x": x})["y"]


@pytest.mark.skipif(not X86, reason="x86-64 targets run only on x86-64")
def test_v4_artifact_refuses_a_host_without_avx512(mlp: tuple, tmp_path: Path) -> None:
    graph, _, _ = mlp
    path = irkit.compile(graph, target="llvm", arch="x86-64-v4").save(tmp_path / "v4")
    with pytest.raises(ArtifactError) as info:
        irkit.runtime.load(path, host=V3_HOST)
    message = str(info.value)
    assert "x86-64-v4 needs avx512bw, avx512cd, avx512dq, avx512f, avx512vl" in message
    assert 'rebuild with arch = "x86-64-v3"' in message
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"] == "x86-64-v4"
    (variant,) = manifest["entry"]["variants"]
    assert "avx512f" in variant["requires"]["features"] and variant["requires"]["arch"] == "x86_64"


@pytest.mark.skipif(not X86, reason="x86-64 targets run only on x86-64")
def test_a_native_artifact_from_another_machine_is_refused(mlp: tuple, tmp_path: Path) -> None:
    graph, _, _ = mlp
    path = irkit.compile(graph, target="llvm").save(tmp_path / "native")
    with pytest.raises(ArtifactError, match=r"native needs .*avx"):
        irkit.runtime.load(path, host=V2_HOST)


@pytest.mark.skipif(not X86, reason="x86-64 targets run only on x86-64")
def test_two_arch_artifact_runs_the_best_each_host_supports(mlp: tuple, tmp_path: Path
                                                            ) -> None:
    graph, x, want = mlp
    artifact = irkit.compile(graph, target="llvm", arch=["x86-64-v3", "x86-64-v4"])
    assert artifact.target == "x86-64-v4,x86-64-v3"
    assert {"x86-64-v3/model.o", "x86-64-v4/model.o"} <= set(artifact.files)
    path = artifact.save(tmp_path / "fat")
    older = irkit.runtime.load(path, threads=1, host=V3_HOST)
    assert older.variant == "x86-64-v3"
    np.testing.assert_allclose(older(x=x)["y"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ArtifactError, match=r"x86-64-v4 needs .*; x86-64-v3 needs .*avx2"):
        irkit.runtime.load(path, host=V2_HOST)
    if host().missing(get_target("x86-64-v4").requirements()):
        pytest.skip("this CPU has no AVX-512: the x86-64-v4 half ran above only as a refusal")
    newer = irkit.runtime.load(path, threads=1)
    assert newer.variant == "x86-64-v4"
    np.testing.assert_allclose(newer(x=x)["y"], want, rtol=1e-5, atol=1e-5)


def test_inspect_lists_the_arches_of_an_artifact(mlp: tuple, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    graph, _, _ = mlp
    path = irkit.compile(graph, target="llvm", arch="x86-64-v3,x86-64-v4").save(tmp_path / "a")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "arches (2)" in out and "backend llvm" in out
    v3_line = next(line for line in out.splitlines() if line.strip().startswith("x86-64-v3"))
    v4_line = next(line for line in out.splitlines() if line.strip().startswith("x86-64-v4"))
    assert "256-bit" in v3_line and "512-bit" in v4_line
    runs_v4 = not host().missing(get_target("x86-64-v4").requirements())
    assert ("runs here" in v4_line) == runs_v4
    assert "x86-64-v3/model.o" in out


def test_cli_compile_arch_and_targets(mlp: tuple, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "mlp.onnx"
    import onnx

    onnx.save(mlp_onnx((24, 48, 10)), model)
    out = tmp_path / "v3"
    assert main(["compile", str(model), "--arch", "x86-64-v3", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "with llvm for x86-64-v3" in captured.err
    assert main(["compile", str(model), "--arch", "x86-64-v9", "-o", str(out)]) == 2
    assert "unknown target 'x86-64-v9'" in capsys.readouterr().err
    assert main(["targets"]) == 0
    listing = capsys.readouterr().out
    assert "x86-64-v3" in listing and "sm_90" in listing and "this machine" in listing


def test_aarch64_cross_compiles_to_an_object_that_disassembles(mlp: tuple,
                                                               tmp_path: Path) -> None:
    import llvmlite.binding as llvm

    from irkit.lower import lower_graph
    from irkit.plugins.llvm.codegen import translate_program
    from irkit.plugins.llvm.emit import emit_object, target_machine

    graph, _, _ = mlp
    artifact = irkit.compile(graph, target="llvm", arch="aarch64")
    obj = artifact.files["model.o"]
    assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == 183  # EM_AARCH64
    target = get_target("aarch64")
    module = translate_program(lower_graph(graph, target).program, target)
    asm = target_machine(target).emit_assembly(
        llvm.parse_assembly(emit_object(module, target).optimized_ir))
    assert "fmla" in asm and ".4s" in asm  # NEON fused multiply-adds on 4 f32 lanes
    if X86:
        with pytest.raises(ArtifactError, match="aarch64 needs an aarch64 CPU"):
            irkit.runtime.load(artifact.save(tmp_path / "arm"))


def test_backends_reject_targets_of_other_families(mlp: tuple) -> None:
    graph, _, _ = mlp
    with pytest.raises(BackendError, match="'sm_90' is a gpu target"):
        irkit.compile(graph, target="llvm", arch="sm_90")
    with pytest.raises(BackendError, match="arch="):
        irkit.compile(graph, target="llvm", arch=3)


def test_every_backend_keeps_the_pass_reports(mlp: tuple) -> None:
    graph, _, _ = mlp
    optimized = irkit.optimize(graph, "fuse,quantize{mode=dynamic}")
    assert len(optimized.history) == 2
    for backend in ("ort", "llvm"):
        artifact = irkit.compile(optimized, target=backend)
        assert [r["name"] for r in artifact.report] == ["fuse", "quantize"], backend


def test_manifest_entry_round_trips(mlp: tuple) -> None:
    graph, _, _ = mlp
    artifact = irkit.compile(graph, target="llvm", arch="x86-64-v3,x86-64-v4")
    entry = ProgramEntry.from_json(artifact.entry)
    again = entry.to_json()
    assert ProgramEntry.from_json(again) == entry
    assert [v.name for v in entry.variants] == ["x86-64-v4", "x86-64-v3"]


@pytest.mark.skipif(not X86 or not __import__("shutil").which("qemu-x86_64"),
                    reason="needs qemu-user to emulate an AVX2-only CPU (apt-get install "
                    "qemu-user); the host_with() tests above cover the same check")
def test_on_an_emulated_avx2_cpu_v4_code_is_refused_and_v3_runs(mlp: tuple,
                                                                 tmp_path: Path) -> None:
    """Under ``scripts/on_avx2.sh`` (QEMU presenting an AMD Zen 3: AVX2, no AVX-512) the
    real CPU check refuses x86-64-v4 code with an error instead of SIGILL, and a two-arch
    artifact runs its x86-64-v3 half."""
    import subprocess
    import sys

    graph, x, want = mlp
    v4 = irkit.compile(graph, target="llvm", arch="x86-64-v4").save(tmp_path / "v4")
    fat = irkit.compile(graph, target="llvm", arch="x86-64-v3,x86-64-v4").save(tmp_path / "fat")
    np.save(tmp_path / "x.npy", x)
    script = f"""
import numpy as np, irkit.runtime
try:
    irkit.runtime.load({str(v4)!r})
except irkit.runtime.ArtifactError as exc:
    print("refused:", exc)
model = irkit.runtime.load({str(fat)!r}, threads=1)
np.save({str(tmp_path / "y.npy")!r}, model(x=np.load({str(tmp_path / "x.npy")!r}))["y"])
print("variant:", model.variant)
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([str(root / "scripts" / "on_avx2.sh"), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "x86-64-v4 needs avx512" in done.stdout
    assert "variant: x86-64-v3" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-5, atol=1e-5)
