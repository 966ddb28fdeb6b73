"""The JavaScript loader written into wasm artifacts (model.mjs), run by node: outputs
against ONNX Runtime (rtol 1e-4, atol 1e-5) for the SIMD and the scalar build, loading
from a URL and from bytes, checksums, and input errors that name the input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

from wasm_helpers import builtin_artifact, matmul_onnx, node, run_in_node, tensor  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.bench import mlp_onnx  # noqa: E402

pytestmark = pytest.mark.skipif(node() is None, reason="node is not installed")
RTOL, ATOL = 1e-4, 1e-5


def compile_wasm(model: Any, path: Path, **options: Any) -> Path:
    return irkit.compile(irkit.load_model(model), target="wasm", **options).save(path)


def ort_outputs(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    proto = model if hasattr(model, "graph") else onnx.load(str(model))
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def test_node_matches_onnxruntime(digits_models: Path, tmp_path: Path) -> None:
    models = {"digits_mlp": digits_models / "digits_mlp.onnx",
              "digits_cnn": digits_models / "digits_cnn.onnx",
              "mlp": mlp_onnx(), "gemm": matmul_onnx(96, 40)}
    requests, expected = [], []
    for name, model in models.items():
        artifact = compile_wasm(model, tmp_path / name)
        compiled = irkit.runtime.load(artifact)
        spec = compiled.inputs[0]
        for batch in (1, 5):
            shape = [batch if isinstance(d, str) else d for d in spec.shape]
            x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
            want = ort_outputs(model, {spec.name: x})
            in_python = compiled.run({spec.name: x})  # wasmtime
            for variant in ("wasm32-simd", "wasm32"):
                requests.append({"artifact": str(artifact), "options": {"variant": variant},
                                 "inputs": {spec.name: tensor(x)}})
                expected.append((name, batch, variant, want, in_python))
    answers = run_in_node(requests)
    for answer, (name, batch, variant, want, in_python) in zip(answers, expected):
        assert "error" not in answer, (name, answer)
        assert answer["variant"] == variant
        for out, value in want.items():
            got = answer["outputs"][out]
            where = f"{name} {out} batch {batch} {variant}"
            assert got.shape == value.shape and got.dtype == value.dtype, where
            np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=where)
            np.testing.assert_allclose(got, in_python[out], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{where}: node vs wasmtime")
    assert len(answers) == 16


@pytest.mark.slow
def test_node_runs_the_builtin_models() -> None:
    """The benchmark's models (mlp, gemm512, ResNet-style CNN, transformer) in node."""
    from irkit.interop.onnx_export import to_onnx

    requests, expected = [], []
    for name in ("mlp", "gemm512", "resnet", "transformer"):
        graph, artifact = builtin_artifact(name)
        spec = graph.inputs[0]
        for batch in (1, 3):
            shape = [batch if isinstance(d, str) else int(d) for d in spec.type.shape]
            x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
            requests.append({"artifact": str(artifact), "inputs": {spec.name: tensor(x)}})
            expected.append((name, batch, ort_outputs(to_onnx(graph), {spec.name: x})))
    for answer, (name, batch, want) in zip(run_in_node(requests), expected):
        assert answer.get("variant") == "wasm32-simd", (name, answer)
        for out, value in want.items():
            np.testing.assert_allclose(answer["outputs"][out], value, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} {out} batch {batch}")


def test_node_default_variant_and_bytes(tmp_path: Path) -> None:
    artifact = compile_wasm(mlp_onnx(), tmp_path / "mlp")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    want = ort_outputs(mlp_onnx(), {"x": x})["y"]
    weights = "wasm32-simd/weights.bin"
    answers = run_in_node([
        {"artifact": str(artifact), "inputs": {"x": tensor(x)}},
        {"artifact": str(artifact), "inputs": {"x": tensor(x, bare=True)}},
        {"artifact": str(artifact), "source": "bytes", "weights": weights, "options": {},
         "inputs": {"x": tensor(x)}},
        {"artifact": str(artifact), "source": "bytes", "weights": weights,
         "options": {"variant": "wasm32"}, "inputs": {"x": tensor(x)}},
    ])
    assert [a.get("variant") for a in answers] == ["wasm32-simd"] * 3 + ["wasm32"]
    for answer in answers:
        np.testing.assert_allclose(answer["outputs"]["y"], want, rtol=RTOL, atol=ATOL)
    # The module alone, for a model whose weights it needs: the error says what to pass.
    missing, = run_in_node([{"artifact": str(artifact), "source": "bytes", "weights": None,
                             "options": {}, "inputs": {"x": tensor(x)}}])
    assert "pass { wasm, weights: <wasm32-simd/weights.bin> }" in missing["error"]
    # A model without weights loads from the module's bytes alone.
    from onnx import TensorProto, helper

    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])]),
        opset_imports=[helper.make_opsetid("", 17)])
    plain = compile_wasm(relu, tmp_path / "relu")
    z = np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5)
    answer, = run_in_node([{"artifact": str(plain), "source": "bytes", "weights": None,
                            "options": {}, "inputs": {"x": tensor(z)}}])
    np.testing.assert_array_equal(answer["outputs"]["y"], np.maximum(z, 0))


def test_node_input_errors_name_the_input(tmp_path: Path) -> None:
    artifact = compile_wasm(matmul_onnx(8, 4), tmp_path / "mm")
    good = np.ones((2, 8), np.float32)
    cases = {
        "unknown": ({"x": tensor(good), "z": tensor(good)}, "input 'z' is not an input"),
        "missing": ({}, "input 'x' is missing"),
        "dtype": ({"x": tensor(good.astype(np.float64))},
                  "input 'x': expected float32 data (Float32Array), got Float64Array"),
        "int": ({"x": tensor(good.astype(np.int32))}, "input 'x': expected float32"),
        "rank": ({"x": tensor(good.reshape(2, 2, 4))}, "input 'x': expected rank 2"),
        "dim": ({"x": tensor(np.ones((2, 7), np.float32))}, "input 'x': dim 1 is 7, expected 8"),
        "bare": ({"x": tensor(np.ones(12, np.float32), bare=True)},
                 "input 'x': 12 values do not fill shape [N,8]"),
        "count": ({"x": {"raw": {"data": [1.0, 2.0], "shape": [1, 8]}}},
                  "input 'x': 2 values for shape [1,8]"),
    }
    answers = run_in_node([{"artifact": str(artifact), "inputs": inputs}
                           for inputs, _ in cases.values()])
    for (name, (_, message)), answer in zip(cases.items(), answers):
        assert message in answer.get("error", ""), (name, answer)


def test_node_refuses_nan_as_the_python_runtime_does_unless_told(tmp_path: Path) -> None:
    """The same refusal text up to the hint (which names each side's own option), and
    ``rejectNonfinite: false`` passes NaN through: IEEE, as wasmtime computes it."""
    artifact = compile_wasm(matmul_onnx(8, 4), tmp_path / "mm")
    x = np.ones((2, 8), np.float32)
    x[1, 2], x[1, 5] = np.nan, -np.inf
    refused, passed = run_in_node([
        {"artifact": str(artifact), "inputs": {"x": tensor(x)}},
        {"artifact": str(artifact), "options": {"rejectNonfinite": False},
         "inputs": {"x": tensor(x)}}])
    model = irkit.runtime.load(artifact)
    with pytest.raises(irkit.runtime.InputError) as info:
        model(x=x)
    prefix = "input 'x': NaN at index [1, 2] (2 non-finite values in all); irkit refuses NaN " \
        "and inf inputs by default; let them through with "
    assert str(info.value).startswith(prefix)
    assert refused["error"] == prefix + "load(source, { rejectNonfinite: false })"
    got = passed["outputs"]["y"]  # decoded by run_in_node
    model.reject_nonfinite = False
    np.testing.assert_allclose(got, model(x=x)["y"], rtol=RTOL, atol=ATOL, equal_nan=True)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()


def test_node_refuses_a_changed_file(tmp_path: Path) -> None:
    artifact = compile_wasm(matmul_onnx(8, 4), tmp_path / "mm")
    copy = tmp_path / "changed"
    shutil.copytree(artifact, copy)
    code = copy / "wasm32-simd" / "model.wasm"
    code.write_bytes(code.read_bytes() + b"\0")
    answer, = run_in_node([{"artifact": str(copy), "inputs": {"x": tensor(np.ones((1, 8),
                                                                                   np.float32))}}])
    assert "wasm32-simd/model.wasm does not match the artifact's checksum" in answer["error"]


def test_types_declare_the_model(tmp_path: Path) -> None:
    artifact = compile_wasm(matmul_onnx(8, 4), tmp_path / "mm")
    text = (artifact / "model.d.ts").read_text()
    assert "x: Float32Array | Tensor<Float32Array | number[]>;" in text
    assert "y: Output<Float32Array>;" in text
    assert "export function load(" in text
    assert "/** float32[N, 8] */" in text  # the signature's dims


def test_unseeded_random_ops_draw_per_run_keys_in_node(tmp_path: Path) -> None:
    """A fresh key per run; options.randomSeed gives the Python runtime's values."""
    from onnx import TensorProto, helper

    node_ = helper.make_node("RandomUniform", [], ["u"], shape=[64], dtype=TensorProto.DOUBLE)
    graph = helper.make_graph([node_], "fresh", [],
                              [helper.make_tensor_value_info("u", TensorProto.DOUBLE, [64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    artifact = compile_wasm(model, tmp_path / "fresh")
    want = irkit.runtime.load(artifact, random_seed=5).run({})["u"]
    requests = [{"artifact": str(artifact), "options": options, "inputs": {}}
                for options in ({"randomSeed": 5}, {}, {})]
    seeded, plain, other = (a["outputs"]["u"] for a in run_in_node(requests))
    assert np.array_equal(seeded, want)
    assert not np.array_equal(plain, other) and not np.array_equal(plain, want)
    assert plain.min() >= 0.0 and plain.max() < 1.0
