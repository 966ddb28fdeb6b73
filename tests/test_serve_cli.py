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
