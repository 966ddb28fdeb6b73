"""Whole models through the wasm backend, run by wasmtime from Python, against ONNX
Runtime (rtol 1e-4, atol 1e-5): the digits models and the built-in benchmark models, on
the SIMD and the scalar build; the module's imports and exports, variant choice by what
the engine supports, the ORT fallback and option errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
wasmtime = pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

from wasm_helpers import builtin_artifact, matmul_onnx  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.backend import BackendError  # noqa: E402
from irkit.bench import mlp_onnx  # noqa: E402
from irkit.interop.onnx_export import to_onnx  # noqa: E402
from irkit.runtime.artifact import ArtifactError  # noqa: E402
from irkit.runtime.hostcpu import host_with  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
SCALAR_ENGINE = host_with([], arch="wasm32")  # an engine without SIMD


def check(graph: Any, artifact: Path, batches: tuple[int, ...], **load: Any) -> str:
    """Outputs of the artifact vs ORT on the same graph; returns the variant that ran."""
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    compiled = irkit.runtime.load(artifact, **load)
    spec = compiled.inputs[0]
    names = [o.name for o in session.get_outputs()]
    for batch in batches:
        shape = [batch if isinstance(d, str) else d for d in spec.shape]
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        got = compiled.run({spec.name: x})
        for name, want in zip(names, session.run(names, {spec.name: x})):
            np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} at batch {batch} ({compiled.variant})")
    return str(compiled.variant)


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_digits_models(name: str, digits_models: Path, tmp_path: Path) -> None:
    graph = irkit.load_model(digits_models / f"{name}.onnx")
    artifact = irkit.compile(graph, target="wasm").save(tmp_path / name)
    assert check(graph, artifact, (1, 7, 64)) == "wasm32-simd"
    assert check(graph, artifact, (1, 7), host=SCALAR_ENGINE) == "wasm32"
    # The bound is 1 MB without weights (onnxruntime-web's wasm file alone is over
    # 10 MB); measured: the digits CNN's modules are 6.9 KB (SIMD) and 12.3 KB (scalar).
    sizes = {v: (artifact / v / "model.wasm").stat().st_size for v in ("wasm32-simd", "wasm32")}
    assert max(sizes.values()) < 64 * 1024, sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "gemm512", "resnet", "transformer"])
def test_builtin_models(name: str) -> None:
    graph, artifact = builtin_artifact(name)
    assert check(graph, artifact, (1, 5)) == "wasm32-simd"
    assert check(graph, artifact, (3,), host=SCALAR_ENGINE) == "wasm32"


def test_module_imports_nothing_and_exports_its_entry(tmp_path: Path) -> None:
    artifact = irkit.compile(irkit.load_model(mlp_onnx()), target="wasm").save(tmp_path / "a")
    manifest = irkit.runtime.load(artifact).manifest
    variants = manifest.entry["variants"]
    assert [v["target"]["name"] for v in variants] == ["wasm32-simd", "wasm32"]
    assert [v["requires"] for v in variants] == [
        {"arch": "wasm32", "features": ["simd128"]}, {"arch": "wasm32", "features": []}]
    engine = wasmtime.Engine()
    for variant in ("wasm32-simd", "wasm32"):
        program, = programs(manifest.entry, variant)
        module = wasmtime.Module.from_file(engine, str(artifact / program.code))
        assert list(module.imports) == []
        exports = {e.name for e in module.exports}
        assert {"memory", "irkit_alloc", "irkit_release", program.run} <= exports
        assert set(program.kernels) <= exports
        # Same weights file for both builds: their GEMM packing agrees (4 lanes).
        assert program.weights == "wasm32-simd/weights.bin"
    sizes = {v: (artifact / v / "model.wasm").stat().st_size for v in ("wasm32-simd", "wasm32")}
    assert sizes["wasm32-simd"] < 64 * 1024, sizes


def _run_in_child(artifact: Path, x: np.ndarray, want: np.ndarray) -> None:
    got = irkit.runtime.load(artifact).run({"x": x})["y"]
    raise SystemExit(0 if np.allclose(got, want, rtol=RTOL, atol=ATOL) else 3)


def test_a_forked_process_loads_wasm_artifacts(tmp_path: Path) -> None:
    """Kafka/postgres workers and the conformance pool fork: a child compiling a module
    after its parent did once waited forever for wasmtime's parallel-compilation threads
    (which fork does not copy); engines compile on the calling thread."""
    import multiprocessing

    graph = irkit.load_model(matmul_onnx(16, 8))
    artifact = irkit.compile(graph, target="wasm").save(tmp_path / "a")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    want = irkit.runtime.load(artifact).run({"x": x})["y"]  # the parent compiles first
    wasmtime.Module(wasmtime.Engine(), b"\0asm\1\0\0\0")  # and a default engine too
    child = multiprocessing.get_context("fork").Process(
        target=_run_in_child, args=(artifact, x, want))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("a forked process hung compiling a wasm module")
    assert child.exitcode == 0


def test_simd_only_artifact_on_an_engine_without_simd(tmp_path: Path) -> None:
    graph = irkit.load_model(matmul_onnx(8, 4))
    artifact = irkit.compile(graph, target="wasm", arch="wasm32-simd").save(tmp_path / "a")
    with pytest.raises(ArtifactError, match='wasm32-simd needs simd128; rebuild with arch = "wasm32"'):
        irkit.runtime.load(artifact, host=SCALAR_ENGINE)
    with pytest.raises(ArtifactError, match="runs on a wasm32 engine"):
        irkit.runtime.load(artifact, host=host_with(["avx2"], arch="x86_64"))
    assert check(graph, artifact, (2,)) == "wasm32-simd"


def test_options_and_targets_are_checked() -> None:
    graph = irkit.load_model(matmul_onnx(8, 4))
    with pytest.raises(BackendError, match=r"x86-64-v3.* is a cpu target"):
        irkit.compile(graph, target="wasm", arch="x86-64-v3")
    with pytest.raises(BackendError, match="one thread"):
        irkit.compile(graph, target="wasm", threads=4)
    with pytest.raises(BackendError, match="unknown target 'wasm64'"):
        irkit.compile(graph, target="wasm", arch="wasm64")
    with pytest.raises(BackendError, match="simd = true and arch = 'wasm32' disagree"):
        irkit.compile(graph, target="wasm", simd=True, arch="wasm32")


def test_spec_form_simd_false_builds_the_scalar_module_alone(tmp_path: Path) -> None:
    """``target wasm { simd = false }`` (DESIGN.md's spec form ``simd = true``) was an
    unknown option; false builds wasm32 alone, true keeps the default pair."""
    from irkit.builder import build_pipeline
    from irkit.spec import parse_spec

    onnx.save(matmul_onnx(8, 4), tmp_path / "m.onnx")
    spec = tmp_path / "web.irk"
    spec.write_text(f"""pipeline web {{
  model = onnx("{tmp_path / 'm.onnx'}")
  target wasm {{ simd = true }}
  target scalar {{ backend = "wasm", simd = false }}
  output = "{tmp_path / 'build'}"
}}
""")
    built = build_pipeline(parse_spec(spec).pipeline("web"), log=io.StringIO())
    targets = {name: irkit.runtime.verify(path).target for name, path in built.items()}
    assert targets == {"wasm": "wasm32-simd,wasm32", "scalar": "wasm32"}
    assert check(irkit.load_model(tmp_path / "m.onnx"), built["scalar"], (3,)) == "wasm32"


def test_a_spec_with_a_wasm_target_optimizes_for_both_builds(tmp_path: Path) -> None:
    """A spec build times its passes on the pipeline's targets: the wasm backend's default
    arch names two (``"wasm32-simd,wasm32"``), which once reached the target table as one
    unknown name and failed ``irkit serve specs/digits_web.irk``."""
    from irkit.builder import optimize_pipeline, pipeline_arches
    from irkit.spec import parse_spec

    spec = tmp_path / "web.irk"
    spec.write_text(f"""pipeline web {{
  model = onnx("{tmp_path / 'm.onnx'}")
  passes {{ fuse }}
  target cpu {{ backend = "llvm", arch = "x86-64-v3" }}
  target web {{ backend = "wasm" }}
}}
""")
    onnx.save(matmul_onnx(8, 4), tmp_path / "m.onnx")
    pipeline = parse_spec(spec).pipeline("web")
    assert pipeline_arches(pipeline) == ["x86-64-v3", "wasm32-simd", "wasm32"]
    optimized = optimize_pipeline(pipeline, irkit.load_model(tmp_path / "m.onnx"))
    assert [report.name for report in optimized.history] == ["fuse"]


NUMPY_MATH = {"Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin,
              "Acos": np.arccos, "Atan": np.arctan, "Sinh": np.sinh, "Cosh": np.cosh,
              "Asinh": np.arcsinh, "Atanh": np.arctanh, "Log": np.log, "Exp": np.exp,
              "Tanh": np.tanh}


def test_math_functions_resolve_inside_the_module(tmp_path: Path) -> None:
    """Ops whose math LLVM leaves as calls (pow, sin, atanh, fmod...) in f32 and f64,
    against numpy (ONNX Runtime lacks several in f64): rtol 1e-5, atol 1e-6."""
    from onnx import TensorProto, helper

    nodes, outputs, expected = [], [], {}
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, (5, 6))
    y = rng.uniform(0.5, 2.0, (5, 6))
    feeds = {"xf": x.astype(np.float32), "yf": y.astype(np.float32), "xd": x, "yd": y}
    for dtype, suffix in ((TensorProto.FLOAT, "f"), (TensorProto.DOUBLE, "d")):
        a, b = feeds[f"x{suffix}"], feeds[f"y{suffix}"]
        for op, fn in NUMPY_MATH.items():
            nodes.append(helper.make_node(op, [f"x{suffix}"], [f"{op}_{suffix}"]))
            expected[f"{op}_{suffix}"] = fn(a)
        nodes.append(helper.make_node("Pow", [f"x{suffix}", f"y{suffix}"], [f"pow_{suffix}"]))
        nodes.append(helper.make_node("Mod", [f"y{suffix}", f"x{suffix}"], [f"mod_{suffix}"],
                                      fmod=1))
        expected[f"pow_{suffix}"] = np.power(a, b)
        expected[f"mod_{suffix}"] = np.fmod(b, a)
        outputs += [helper.make_tensor_value_info(name, dtype, ["N", 6])
                    for name in expected if name.endswith(f"_{suffix}")]
    graph = helper.make_graph(
        nodes, "math", [helper.make_tensor_value_info(name, TensorProto.FLOAT if name[-1] == "f"
                                                      else TensorProto.DOUBLE, ["N", 6])
                        for name in feeds], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    artifact = irkit.compile(irkit.load_model(model), target="wasm").save(tmp_path / "m")
    for host in (None, SCALAR_ENGINE):
        got = irkit.runtime.load(artifact, **({"host": host} if host else {})).run(feeds)
        for name, want in expected.items():
            assert got[name].dtype == want.dtype, name
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert len(expected) == 30


def test_ort_fallback_runs_in_python_and_the_js_loader_says_why(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Det", ["r"], ["d"]),
         helper.make_node("Neg", ["d"], ["y"])], "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = irkit.load_model(model)
    art = irkit.compile(graph, target="wasm", fallback="ort")
    assert art.backend == "wasm", art.report
    kinds = [s["kind"] for s in art.entry["variants"][0]["segments"]]
    assert "ort" in kinds and "kernels" in kinds
    path = art.save(tmp_path / "a")
    check(graph, path, (1, 4))
    assert b"fallback = \\\"ort\\\"" in (path / "model.mjs").read_bytes()


@pytest.mark.service
def test_http_adapter_serves_a_wasm_artifact(digits_models: Path, tmp_path: Path) -> None:
    """A wasm artifact is a CompiledModel like any other: the HTTP adapter batches requests
    into it (wasmtime) and answers what ONNX Runtime answers."""
    import json
    import urllib.request

    pytest.importorskip("starlette")
    from irkit.runtime.adapters.repository import ModelRepository
    from irkit.testing.serving import Served

    graph = irkit.load_model(digits_models / "digits_cnn.onnx")
    artifact = irkit.compile(graph, target="wasm").save(tmp_path / "cnn")
    repository = ModelRepository(label="wasm")
    repository.add_artifact("cnn", artifact)
    served = Served(repository).start()
    try:
        x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape),
                                       "datatype": "FP32", "data": x.ravel().tolist()}]})
        request = urllib.request.Request(f"{served.http.url}/v2/models/cnn/infer",
                                         body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        served.stop()
    logits = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(3, 10)
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, session.run(None, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_batch_adapter_runs_a_wasm_artifact(digits_models: Path, tmp_path: Path) -> None:
    """The batch adapter over a wasm artifact (wasmtime): every row's result is what ONNX
    Runtime computes, sharded and manifested as for any other artifact."""
    pytest.importorskip("pyarrow")
    from irkit.runtime.adapters.batch import BatchAdapter

    graph = irkit.load_model(digits_models / "digits_cnn.onnx")
    model = irkit.runtime.load(irkit.compile(graph, target="wasm").save(tmp_path / "cnn"))
    x = np.random.default_rng(1).uniform(0, 1, (300, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    summary = BatchAdapter(model, input=str(tmp_path / "in.npy"), output=str(tmp_path / "out.npz"),
                           chunk_rows=64, shard_rows=128, progress=False).serve()
    assert summary.complete and summary.shards == 3
    parts = [np.load(tmp_path / "out.npz" / f"part-{i:05d}.npz") for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["row"] for p in parts]), np.arange(300))
    session = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.concatenate([p["logits"] for p in parts]),
                               session.run(None, {"x": x})[0], rtol=RTOL, atol=ATOL)
