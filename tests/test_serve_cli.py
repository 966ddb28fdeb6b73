"""``irkit serve`` end to end: a spec's serve blocks run the real adapters."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec(tmp_path: Path, digits_models: Path, port: int = 8080) -> Path:
    spec = tmp_path / "serve.irk"
    data = digits_models.parent / "data" / "digits_eval.npz"
    spec.write_text(textwrap.dedent(f"""
        pipeline digits {{
          model = onnx("{digits_models / 'digits_mlp.onnx'}")
          inputs {{ x: f32[N, 64] }}
          target ort
          output = "{tmp_path / 'build'}"
          serve http  {{ port = {port}, max_batch = 16, max_delay_ms = 2 }}
          serve batch {{ input = "{data}", input_name = "x", output = "{tmp_path / 'preds'}" }}
        }}
    """))
    return spec


@pytest.mark.service
def test_serve_http_from_spec_and_sigterm_exits_0(digits_models: Path, tmp_path: Path) -> None:
    port = _free_port()
    spec = _spec(tmp_path, digits_models, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "irkit", "serve", str(spec), "--adapter", "http"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        x = np.load(digits_models.parent / "data" / "digits_eval.npz")["x"][:3]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}
        meta = httpx.get(f"{base}/v2/models/digits").json()
        assert meta["name"] == "digits"
        assert [i["name"] for i in meta["inputs"]] == ["x"]
        res = httpx.post(f"{base}/v2/models/digits/infer", json=body, timeout=10)
        assert res.status_code == 200, res.text
        out = res.json()["outputs"][0]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        expected = ort.InferenceSession(str(digits_models / "digits_mlp.onnx")).run(
            None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.communicate()[1]


def test_serve_batch_from_spec(digits_models: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, digits_models)
    res = subprocess.run(
        [sys.executable, "-m", "irkit", "serve", str(spec), "--adapter", "batch"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    shards = sorted((tmp_path / "preds").glob("part-*"))
    assert shards, list((tmp_path / "preds").iterdir())
    assert (tmp_path / "preds" / "manifest.json").is_file()


def _wait_ready(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.2)


def _sigterm(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.service
def test_serve_two_pipelines_over_http_and_grpc(digits_models: Path, tmp_path: Path) -> None:
    """One spec, two pipelines, each with serve http and serve grpc blocks: one process
    serves both models on both protocols; SIGTERM drains and exits 0."""
    tgrpc = pytest.importorskip("tritonclient.grpc")
    port, grpc_port = _free_port(), _free_port()
    blocks = (f"serve http {{ port = {port}, max_batch = 16 }}\n"
              f"  serve grpc {{ port = {grpc_port}, max_batch = 16 }}")  # fmt: skip
    spec = tmp_path / "two.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline mlp {{
          model = onnx("{digits_models / 'digits_mlp.onnx'}")
          target ort
          output = "{tmp_path / 'build' / 'mlp'}"
          {blocks}
        }}
        pipeline cnn {{
          model = onnx("{digits_models / 'digits_cnn.onnx'}")
          target ort
          output = "{tmp_path / 'build' / 'cnn'}"
          {blocks}
        }}
    """))
    proc = subprocess.Popen([sys.executable, "-m", "irkit", "serve", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready")
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready()
        data = np.load(digits_models.parent / "data" / "digits_eval.npz")["x"][:3]
        for name, onnx_file in (("mlp", "digits_mlp.onnx"), ("cnn", "digits_cnn.onnx")):
            spec_input = client.get_model_metadata(name).inputs[0]
            x = data.reshape([3, *[int(d) for d in spec_input.shape[1:]]]).astype(np.float32)
            tensor = tgrpc.InferInput(spec_input.name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            output = client.get_model_metadata(name).outputs[0].name
            got = client.infer(name, [tensor]).as_numpy(output)
            session = ort.InferenceSession(str(digits_models / onnx_file))
            expected = session.run(None, {session.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        index = httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").json()
        assert sorted(m["name"] for m in index) == ["cnn", "mlp"]
    finally:
        rc = _sigterm(proc)
    assert rc == 0, proc.communicate()[1]


@pytest.mark.service
def test_serve_model_repository_directory(tmp_path: Path) -> None:
    """``irkit serve DIR``: every <model>/<version>/ artifact, HTTP and gRPC, control on."""
    tgrpc = pytest.importorskip("tritonclient.grpc")
    from irkit.runtime import Artifact, TensorSpec
    from irkit.testing.onnx_models import gemm_model

    for name, version in (("a", 1), ("a", 2), ("b", 1)):
        Artifact(name=name, backend="ort", target="cpu",
                 inputs=(TensorSpec("x", np.dtype(np.float32), ("N", 8)),),
                 outputs=(TensorSpec("y", np.dtype(np.float32), ("N", 8)),),
                 files={"model.onnx": gemm_model(8, version).SerializeToString()},
                 entry={"model": "model.onnx"}).save(tmp_path / "repo" / name / str(version))
    port, grpc_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "irkit", "serve", str(tmp_path / "repo"), "--port", str(port),
         "--grpc-port", str(grpc_port), "--allow-model-control", "--version-policy", "all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready")
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert [(m.name, m.version) for m in client.get_model_repository_index().models] == [
            ("a", "1"), ("a", "2"), ("b", "1")]
        x = np.ones((2, 8), np.float32)
        tensor = tgrpc.InferInput("x", [2, 8], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer("a", [tensor]).get_response().model_version == "2"
        client.unload_model("b")
        assert not client.is_model_ready("b") and client.is_server_ready()
    finally:
        rc = _sigterm(proc)
    assert rc == 0, proc.communicate()[1]


def test_serve_errors_are_one_line(tmp_path: Path, digits_models: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "irkit", "serve", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no such spec file or model repository" in res.stderr
    assert "Traceback" not in res.stderr
    spec = tmp_path / "clash.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline a {{ model = onnx("{digits_models / 'digits_mlp.onnx'}")  target ort
                      serve http {{ port = 9001 }} }}
        pipeline b {{ model = onnx("{digits_models / 'digits_mlp.onnx'}")  target ort
                      serve http {{ port = 9002 }} }}
    """))
    res = subprocess.run([sys.executable, "-m", "irkit", "serve", str(spec)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'port' is 9001" in res.stderr and "9002" in res.stderr
    assert "Traceback" not in res.stderr
