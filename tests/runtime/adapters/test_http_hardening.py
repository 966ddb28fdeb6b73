"""Hostile and careless clients against a real HTTP server on 127.0.0.1: every malformed
request gets a 4xx with a JSON error body (never a 5xx, never a dead server), and a
request larger than ``max_batch`` runs in pieces so its memory is given back."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import irkit.runtime
from irkit.runtime.adapters.batcher import DynamicBatcher
from irkit.runtime.adapters.common import MAX_DIMS
from irkit.runtime.adapters.http import MAX_JSON_DEPTH, HttpAdapter
from irkit.testing.fuzz_http import malformed_requests, valid_request

pytestmark = pytest.mark.service


@pytest.fixture
def client(digits_model: irkit.runtime.CompiledModel, start_server: Any) -> Iterator[httpx.Client]:
    server = start_server(HttpAdapter(digits_model, port=0, max_delay_ms=1.0))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def tensor(**fields: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", **fields}]}).encode()


# (id, body, fragment of the error): the smallest input of each class that used to be a
# 500 (or a silent 200 with NaN in it, or a dead server)
MINIMAL: list[tuple[str, bytes, str]] = [
    ("objects-nested-100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
     f"nested more than {MAX_JSON_DEPTH} levels"),  # orjson 3.8 segfaulted the server
    ("arrays-nested-2k", b"[" * 2000 + b"]" * 2000, "nested more than"),
    ("65-dims", tensor(shape=[1] * 65, datatype="FP32", data=[1.0]),
     f"at most {MAX_DIMS} are allowed"),
    ("shape-too-big", tensor(shape=[0, 2**62, 2**62], datatype="FP32", data=[]), "too large"),
    ("null-data", tensor(shape=[1, 64], datatype="FP32", data=[None] * 64), "null"),
    ("string-data", tensor(shape=[1, 64], datatype="FP32", data=["0.5"] * 64), "strings"),
    ("fp32-overflow", tensor(shape=[1, 64], datatype="FP32", data=[1e39] + [0.0] * 63),
     "1e+39 is out of range for FP32"),
    ("bool-as-fp32", tensor(shape=[1, 64], datatype="FP32", data=[True] * 64), "booleans"),
]


@pytest.mark.parametrize(("body", "fragment"), [c[1:] for c in MINIMAL],
                         ids=[c[0] for c in MINIMAL])
def test_minimal_hostile_bodies_are_400_with_a_json_error(
        client: httpx.Client, body: bytes, fragment: str) -> None:
    response = client.post("/v2/models/digits/infer", content=body)
    assert response.status_code == 400, response.text[:300]
    assert fragment in response.json()["error"]
    ok = client.post("/v2/models/digits/infer", content=tensor(
        shape=[1, 64], datatype="FP32", data=[0.5] * 64))
    assert ok.status_code == 200  # the server is still serving


def test_seeded_malformed_requests_get_4xx_json_and_valid_ones_stay_right(
        client: httpx.Client, digits_model: irkit.runtime.CompiledModel) -> None:
    """400 malformed requests (about 2 s here); ``scripts/fuzz.py http`` runs any number."""
    rng = random.Random(20261207)
    statuses: dict[int, int] = {}
    for index, (body, headers) in zip(range(400), malformed_requests(rng, "x", 64)):
        response = client.post("/v2/models/digits/infer", content=body, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:200], body[:200])
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str), response.text[:200]
        if index % 20 == 0:  # a valid request in between is answered exactly
            doc = valid_request(rng, "x", 64)
            got = client.post("/v2/models/digits/infer", json=doc)
            assert got.status_code == 200, got.text[:200]
            x = np.asarray(doc["inputs"][0]["data"], np.float32).reshape(
                doc["inputs"][0]["shape"])
            want = digits_model.run({"x": x})["logits"]
            out = got.json()["outputs"][0]
            np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]),
                                       want, rtol=1e-6, atol=1e-6)
    assert statuses.get(400, 0) >= 300, statuses  # most of them really were malformed


class Recording:
    """A real model that records the rows of each call it gets."""

    def __init__(self, model: irkit.runtime.CompiledModel) -> None:
        self.model = model
        self.calls: list[int] = []

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(next(iter(inputs.values()))))
        return self.model.run(inputs)

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Any:
        return self.model.validate(inputs)

    def warmup(self) -> Any:
        return self.model.warmup()


def test_a_request_larger_than_max_batch_runs_as_max_batch_pieces(
        digits_model: irkit.runtime.CompiledModel) -> None:
    model = Recording(digits_model)
    batcher = DynamicBatcher(model, max_batch=16, max_delay_ms=0)  # type: ignore[arg-type]
    batcher.start()
    try:
        x = np.random.default_rng(3).standard_normal((100, 64)).astype(np.float32)
        got = batcher.submit({"x": x}).result(30)["logits"]
    finally:
        batcher.stop()
    assert model.calls == [16] * 6 + [4]
    np.testing.assert_allclose(got, digits_model.run({"x": x})["logits"], rtol=1e-6, atol=1e-6)


def _rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB: now and the peak since it started."""
    text = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_rss_returns_after_a_250k_row_request_and_peaks_under_the_documented_bound(
        tmp_path: Path) -> None:
    """A real ``irkit serve`` process with the llvm backend, measured from /proc: a 61 MiB
    binary request (250,000 rows, under the 64 MiB default ``max_payload_bytes``) leaves
    RSS within 50 MiB of its level before it, and the peak stays under the README's
    bound for binary bodies: RSS before + 3 x max_payload_bytes."""
    import irkit
    from irkit.testing.onnx_models import mlp_model

    artifact = irkit.compile(irkit.load_model(mlp_model()), "llvm")
    artifact.save(tmp_path / "repo" / "mlp" / "1")
    (tmp_path / "repo" / "mlp" / "config.json").write_text(json.dumps({"max_batch": 64}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "irkit", "serve", str(tmp_path / "repo"), "--adapter", "http",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if http.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)

            def infer(x: np.ndarray) -> np.ndarray:
                head = json.dumps({"inputs": [{
                    "name": "x", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}], "outputs": [
                    {"name": "logits", "parameters": {"binary_data": True}}]}).encode()
                response = http.post("/v2/models/mlp/infer", content=head + x.tobytes(),
                                     headers={"Inference-Header-Content-Length": str(len(head))})
                assert response.status_code == 200, response.text[:200]
                split = int(response.headers["inference-header-content-length"])
                return np.frombuffer(response.content[split:], np.float32).reshape(-1, 10)

            rng = np.random.default_rng(5)
            small = rng.standard_normal((8, 64)).astype(np.float32)
            for _ in range(5):
                infer(small)
            before, _ = _rss_mib(server.pid)
            big = rng.standard_normal((250_000, 64)).astype(np.float32)
            out = infer(big)
            assert out.shape == (250_000, 10)
            np.testing.assert_allclose(out[:8], infer(big[:8]), rtol=1e-5, atol=1e-5)
            time.sleep(0.3)
            after, peak = _rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    payload_mib = big.nbytes / 2**20
    assert after - before < 50, (before, after, peak)
    assert peak < before + 3 * 64, (before, after, peak, payload_mib)


RAW_BAD = {
    "bad-request-line": b"GARBAGE\r\n\r\n",
    "content-length-abc": b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: abc\r\n\r\n{}",
    "bad-chunk-size": b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    # httptools refuses both framings at once; h11 reads the body as chunked (RFC 9112
    # 6.3), so the app answers: a JSON 400 either way
    "content-length-and-chunked": b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2\r\n{}\r\n0\r\n\r\n",
    "space-in-header-name": b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
}


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_protocol_errors_are_json_400_and_the_server_keeps_serving(
        digits_model: irkit.runtime.CompiledModel, start_server: Any, http: str) -> None:
    """Requests uvicorn's parser refuses before irkit sees them get the same JSON error
    body as every other error (irkit.runtime.adapters.http_protocol), with either parser;
    the connection is closed and the server keeps serving."""
    server = start_server(HttpAdapter(digits_model, port=0, max_delay_ms=1.0, http=http))
    for name, raw in RAW_BAD.items():
        with socket.create_connection((server.host, server.port), timeout=10) as conn:
            conn.sendall(raw)
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (name, reply[:200])
        assert b"content-type: application/json" in head.lower(), (name, head)
        assert isinstance(json.loads(body)["error"], str), (name, body)
        with httpx.Client(base_url=server.url, timeout=30) as http_client:
            ok = http_client.post("/v2/models/digits/infer", content=tensor(
                shape=[1, 64], datatype="FP32", data=[0.5] * 64))
        assert ok.status_code == 200, name
