"""The cuda backend end to end without a GPU: a spec with ``target gpu { backend = "cuda" }``
builds; loading it where there is no GPU is a clear ArtifactError; the digits CNN (and,
with ``IRKIT_FULL_SWEEPS=1``, the digits MLP and the ResNet CNN) runs in numba-cuda's
simulator against ONNX Runtime, and ``ptxas -arch=sm_90`` accepts every kernel it
compiled to; the artifact holds source and PTX, its loader refuses source it cannot
recognize. The last test needs a GPU and says why it is skipped when there is none."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from irkit.testing.gpu import (
    SWEEP_VARIABLE,
    full_sweeps,
    gpu_missing,
    ptx_toolchain_missing,
    ptxas,
    ptxas_refusals,
)

if ptx_toolchain_missing():
    pytest.skip(str(ptx_toolchain_missing()), allow_module_level=True)

import irkit
import irkit.runtime
from irkit.runtime import ArtifactError

SPEC = Path(__file__).resolve().parents[2] / "specs" / "digits_gpu.irk"
RTOL, ATOL = 1e-4, 1e-5


def _ort(graph: object, tmp_path: Path) -> irkit.runtime.CompiledModel:
    return irkit.runtime.load(irkit.compile(graph, target="ort").save(tmp_path / "ort"))


def _assert_ptxas_accepts(files: dict[str, bytes], tmp_path: Path) -> None:
    if ptxas() is None:
        print("ptxas not found: the PTX was not assembled")  # the PTX compile still ran
        return
    assert ptxas_refusals(files, "sm_90", tmp_path) == []


def test_spec_with_a_gpu_target_builds_here_and_refuses_to_load_without_a_gpu(
        digits_models: Path, tmp_path: Path) -> None:
    from irkit.builder import build_pipeline
    from irkit.spec import parse_spec

    pipeline = dataclasses.replace(parse_spec(SPEC).pipeline(), output=tmp_path / "build")
    built = build_pipeline(pipeline, target="gpu", log=io.StringIO())
    path = built["gpu"]
    manifest = irkit.runtime.verify(path)
    assert manifest.backend == "cuda" and manifest.target == "sm_90"
    ptx = [f for f in manifest.files if f.endswith(".ptx")]
    assert ptx and "kernels.py" in manifest.files
    _assert_ptxas_accepts({f: (path / f).read_bytes() for f in ptx}, tmp_path)
    variant = manifest.entry["variants"][0]
    assert variant["requires"] == {"arch": "nvptx64", "features": ["sm_90"]}
    why = gpu_missing()
    if why is not None:
        with pytest.raises(ArtifactError) as info:
            irkit.runtime.load(path)
        message = str(info.value)
        assert "NVIDIA GPU" in message and "device='simulator'" in message
    data = np.load(digits_models.parent / "data" / "digits_eval.npz")
    x = np.ascontiguousarray(data["x_img"][:3], dtype=np.float32)
    simulated = irkit.runtime.load(path, device="simulator")
    reference = _ort(irkit.load_model(digits_models / "digits_cnn.onnx"), tmp_path)
    (name,) = [spec.name for spec in simulated.outputs]
    got = simulated(x=x)[name]
    want = reference(x=x)[name]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.skipif(not full_sweeps(),
                    reason=f"{SWEEP_VARIABLE}=1 runs it (20 s; the CNN's GEMM runs in CI)")
def test_digits_mlp_on_the_simulator(digits_models: Path, tmp_path: Path) -> None:
    """(The CNN runs in the spec test above.)"""
    model = "digits_mlp"
    graph = irkit.optimize(irkit.load_model(digits_models / f"{model}.onnx"), "fuse")
    artifact = irkit.compile(graph, target="cuda")
    _assert_ptxas_accepts(artifact.files, tmp_path)
    compiled = irkit.runtime.load(artifact.save(tmp_path / "a"), device="simulator")
    reference = _ort(graph, tmp_path)
    rng = np.random.default_rng(3)
    for batch in (1, 2):
        feeds = {spec.name: rng.random((batch, *spec.shape[1:])).astype(np.float32)
                 for spec in compiled.inputs}
        for name, want in reference.run(feeds).items():
            np.testing.assert_allclose(compiled.run(feeds)[name], want, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{model} batch {batch}")


@pytest.mark.slow
def test_resnet_on_the_simulator(tmp_path: Path) -> None:
    if not full_sweeps():
        pytest.skip(f"{SWEEP_VARIABLE}=1 runs it (2.5 minutes of CPU: more than CI's budget)")
    pytest.importorskip("torch")
    from irkit.bench import builtin_model

    graph = builtin_model("resnet")
    artifact = irkit.compile(graph, target="cuda")
    _assert_ptxas_accepts(artifact.files, tmp_path)
    compiled = irkit.runtime.load(artifact.save(tmp_path / "a"), device="simulator")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (name,) = [spec.name for spec in compiled.outputs]
    want = _ort(graph, tmp_path)(**{compiled.inputs[0].name: x})[name]
    got = compiled(**{compiled.inputs[0].name: x})[name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_loader_refuses_source_it_does_not_recognize(tmp_path: Path) -> None:
    from irkit.bench import mlp_onnx

    artifact = irkit.compile(irkit.load_model(mlp_onnx((8, 4))), target="cuda")
    source = artifact.files["kernels.py"].decode()
    artifact.files["kernels.py"] = ("# some other code\n" + source).encode()
    path = artifact.save(tmp_path / "a")  # checksums match the changed file
    with pytest.raises(ArtifactError, match="not cuda source generated by irkit"):
        irkit.runtime.load(path, device="simulator")
    with pytest.raises(ArtifactError, match="device='tpu' must be one of gpu, simulator"):
        irkit.runtime.load(path, device="tpu")


def test_gpu_templates_replace_the_cpu_register_tiles() -> None:
    from irkit.bench import mlp_onnx
    from irkit.kir import print_program
    from irkit.lower import lower_graph

    graph = irkit.load_model(mlp_onnx((64, 32, 10)))
    gpu = print_program(lower_graph(graph, "sm_90").program)
    cpu = print_program(lower_graph(graph, "x86-64-v3").program)
    assert "for t_" in gpu and " thread:" in gpu and "barrier" in gpu and "shared " in gpu
    assert "barrier" not in cpu and " thread:" not in cpu


@pytest.mark.gpu
def test_on_a_gpu_against_onnxruntime(tmp_path: Path) -> None:
    why = gpu_missing()
    if why is not None:
        pytest.skip(f"needs an sm_90 GPU: {why}")
    from irkit.bench import mlp_onnx

    graph = irkit.load_model(mlp_onnx())
    compiled = irkit.runtime.load(irkit.compile(graph, target="cuda").save(tmp_path / "a"))
    reference = _ort(graph, tmp_path)
    for batch in (1, 64):
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        np.testing.assert_allclose(compiled(x=x)["y"], reference(x=x)["y"], rtol=1e-4,
                                   atol=1e-4)


def test_attention_on_the_simulator(tmp_path: Path) -> None:
    """The streaming-attention template (running-max softmax) in the simulator against
    ONNX Runtime on the unfused graph; ptxas accepts its kernels."""
    from irkit.ir import parse_graph

    graph = parse_graph("""graph g(%q: f32[N,2,4,3], %kt: f32[N,2,3,5], %v: f32[N,2,5,3])
        -> (%o: f32[N,2,4,3]) {
  %s = MatMul(%q, %kt) : f32[N,2,4,5]
  %p = Softmax(%s) {axis=-1} : f32[N,2,4,5]
  %o = MatMul(%p, %v) : f32[N,2,4,3]
}""")
    fused = irkit.optimize(graph, "fuse")
    assert "ScaledDotProductAttention" in [node.op for node in fused.nodes]
    artifact = irkit.compile(fused, target="cuda")
    assert any("attention" in name for name in artifact.files if name.endswith(".ptx"))
    _assert_ptxas_accepts(artifact.files, tmp_path)
    compiled = irkit.runtime.load(artifact.save(tmp_path / "a"), device="simulator")
    reference = _ort(graph, tmp_path)
    rng = np.random.default_rng(5)
    feeds = {v.name: rng.standard_normal([2 if isinstance(d, str) else d for d in v.shape])
             .astype(np.float32) for v in graph.inputs}
    np.testing.assert_allclose(compiled.run(feeds)["o"], reference.run(feeds)["o"],
                               rtol=RTOL, atol=ATOL)
