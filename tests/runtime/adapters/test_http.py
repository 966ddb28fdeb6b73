"""The HTTP adapter against a real uvicorn server on 127.0.0.1, driven by httpx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import irkit.runtime
from irkit.runtime.adapters.http import HttpAdapter

pytestmark = pytest.mark.service

RNG = np.random.default_rng(42)


def infer_json(x: np.ndarray, name: str = "x", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        **extra,
    }


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


@pytest.fixture
def server(digits_model: irkit.runtime.CompiledModel, start_server: Any) -> HttpAdapter:
    adapter = HttpAdapter(digits_model, port=0, max_delay_ms=1.0)
    return start_server(adapter)


@pytest.fixture
def client(server: HttpAdapter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_metadata_and_health_endpoints(client: httpx.Client, server: HttpAdapter) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "irkit" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        model = client.get(path).json()
        assert model["name"] == "digits"
        assert model["versions"] == ["1"]
        assert model["platform"] == "irkit_ort"
        assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
        assert client.get(path).status_code == 200
    text = client.get("/metrics").text
    assert "irkit_batch_size" in text and "irkit_queue_depth" in text


@pytest.mark.parametrize("nested", [False, True])
def test_json_infer_equals_direct_call(
    client: httpx.Client, digits_model: irkit.runtime.CompiledModel, nested: bool
) -> None:
    x = RNG.standard_normal((5, 64)).astype(np.float32)
    body = infer_json(x, id="req-7")
    if nested:
        body["inputs"][0]["data"] = x.tolist()
    for path in ("/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"):
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["id"] == "req-7" and doc["model_name"] == "digits"
        [out] = doc["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [5, 10]
        got = np.asarray(out["data"], dtype=np.float32).reshape(5, 10)
        np.testing.assert_allclose(got, digits_model(x=x)["logits"], rtol=1e-6)


def test_binary_tensor_extension_round_trip(
    client: httpx.Client, digits_model: irkit.runtime.CompiledModel
) -> None:
    x = RNG.standard_normal((7, 64)).astype(np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [7, 64], "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    response = client.post(
        "/v2/models/digits/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    split = int(response.headers["Inference-Header-Content-Length"])
    doc = json.loads(response.content[:split])
    [out] = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == 7 * 10 * 4
    got = np.frombuffer(response.content[split:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_array_equal(got, digits_model(x=x)["logits"])

    # JSON input, binary output requested for every output at the request level.
    response = client.post(
        "/v2/models/digits/infer", json=infer_json(x, parameters={"binary_data_output": True})
    )
    split = int(response.headers["Inference-Header-Content-Length"])
    got = np.frombuffer(response.content[split:], dtype="<f4").reshape(7, 10)
    np.testing.assert_allclose(got, digits_model(x=x)["logits"], rtol=1e-6)


def test_gemm512_binary_round_trip(gemm_dir: Path, start_server: Any) -> None:
    model = irkit.runtime.load(gemm_dir)
    x = RNG.standard_normal((3, 512)).astype(np.float32)
    raw = x.tobytes()
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [3, 512], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw)}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    adapter = start_server(HttpAdapter(model, port=0))
    response = httpx.post(
        f"{adapter.url}/v2/models/gemm512/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    split = int(response.headers["Inference-Header-Content-Length"])
    got = np.frombuffer(response.content[split:], dtype="<f4").reshape(3, 512)
    np.testing.assert_allclose(got, model(x=x)["y"], rtol=1e-6)


BAD_INPUTS = {
    "wrong dtype": (
        {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT64", "data": [1] * 64}]},
        ["'x'", "float32", "int64"],
    ),
    "wrong shape": (infer_json(np.zeros((2, 63), np.float32)), ["'x'", "63"]),
    "wrong name": (infer_json(np.zeros((1, 64), np.float32), name="y"), ["'y'"]),
    "data/shape mismatch": (
        {"inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 64}]},
        ["'x'", "128"],
    ),
    "unknown datatype": (
        {"inputs": [{"name": "x", "shape": [1], "datatype": "COMPLEX", "data": [0]}]},
        ["'x'", "COMPLEX"],
    ),
    "no inputs list": ({"input": []}, ["inputs"]),
    "NaN value": (json.dumps(infer_json(np.where(np.arange(128) == 69, np.nan, 0.5)
                                        .astype(np.float32).reshape(2, 64))).encode(),
                  ["input 'x': NaN at index [1, 5]", "reject_nonfinite"]),  # JSON NaN
    "unknown output": (
        infer_json(np.zeros((1, 64), np.float32), outputs=[{"name": "probs"}]),
        ["'probs'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_400_naming_the_input(client: httpx.Client, case: str) -> None:
    body, expected = BAD_INPUTS[case]
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = client.post("/v2/models/digits/infer", **sent)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for fragment in expected:
        assert fragment in message, (case, message)


def test_reject_nonfinite_false_serves_nan_as_the_model_computes_it(
    digits_dir: Path, start_server: Any
) -> None:
    model = irkit.runtime.load(digits_dir)  # its own: the option changes the model it serves
    server = start_server(HttpAdapter(model, port=0, max_delay_ms=1.0, reject_nonfinite=False))
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    x[1, 5] = np.nan
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/v2/models/digits/infer", content=json.dumps(infer_json(x)))
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert not model.reject_nonfinite
    np.testing.assert_allclose(got, model(x=x)["logits"], rtol=1e-6, equal_nan=True)


def test_malformed_json_and_binary_errors_are_400(client: httpx.Client) -> None:
    response = client.post("/v2/models/digits/infer", content=b'{"inputs": [')
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 256}}]}
    ).encode()  # fmt: skip
    response = client.post(
        "/v2/models/digits/infer",
        content=header + b"\0" * 100,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "'x'" in response.json()["error"]
    outcomes = metric_samples(client)
    assert sample(outcomes, "irkit_requests_total", outcome="bad_input") == 2


def test_unknown_model_or_version_is_404(client: httpx.Client) -> None:
    x = np.zeros((1, 64), np.float32)
    for method, path in [
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/digits/versions/9/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/digits/versions/2"),
    ]:
        response = client.request(method, path, json=infer_json(x))
        assert response.status_code == 404, path
        assert "error" in response.json()
    assert client.get("/v2/no/such/route").json() == {"error": "Not Found"}


def test_payload_limit_is_413_declared_and_streamed(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    adapter = HttpAdapter(digits_model, port=0, max_payload_bytes=2000)
    small = json.dumps(infer_json(np.zeros((1, 64), np.float32))).encode()
    big = json.dumps(infer_json(np.ones((4, 64), np.float32) / 3)).encode()
    assert len(small) < 2000 < len(big)
    start_server(adapter)
    with httpx.Client(base_url=adapter.url) as client:
        assert client.post("/v2/models/digits/infer", content=small).status_code == 200
        declared = client.post("/v2/models/digits/infer", content=big)
        assert declared.status_code == 413
        assert "max_payload_bytes=2000" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            for start in range(0, len(big), 500):
                yield big[start : start + 500]

        streamed = client.post("/v2/models/digits/infer", content=chunks())
        assert streamed.status_code == 413
        assert "streamed" in streamed.json()["error"]


def test_not_ready_until_warmup_is_503(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    slow = gated(digits_model, gate_warmup=True)
    adapter = HttpAdapter(slow, port=0)
    start_server(adapter, wait_ready=False)
    with httpx.Client(base_url=adapter.url) as client:
        assert client.get("/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", "/v2/models/digits/ready"):
            response = client.get(path)
            assert response.status_code == 503 and "warming up" in response.json()["error"]
        x = np.zeros((1, 64), np.float32)
        assert client.post("/v2/models/digits/infer", json=infer_json(x)).status_code == 503
        slow.warmup_gate.set()
        assert adapter.ready.wait(10)
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/models/digits/infer", json=infer_json(x)).status_code == 200


def test_full_queue_is_429_with_retry_after(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    slow = gated(digits_model, gate_run=True)
    adapter = HttpAdapter(slow, port=0, max_queue=1, max_batch=1)
    x = np.zeros((1, 64), np.float32)
    start_server(adapter)
    with httpx.Client(base_url=adapter.url, timeout=30) as client:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v2/models/digits/infer", json=infer_json(x))
            assert slow.running.wait(10)  # the worker holds request 1 at the gate
            second = pool.submit(client.post, "/v2/models/digits/infer", json=infer_json(x))
            deadline = time.monotonic() + 10
            while adapter.batcher.queue_depth < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/v2/models/digits/infer", json=infer_json(x))
            slow.run_gate.set()
            assert first.result().status_code == 200
            assert second.result().status_code == 200
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue full" in refused.json()["error"]
        samples = metric_samples(client)
    assert sample(samples, "irkit_requests_total", outcome="queue_full") == 1
    assert sample(samples, "irkit_requests_total", outcome="ok") == 2


def test_slow_model_is_504_after_timeout(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    slow = gated(digits_model, gate_run=True)
    adapter = HttpAdapter(slow, port=0, timeout_ms=300)
    x = np.zeros((1, 64), np.float32)
    start_server(adapter)
    with httpx.Client(base_url=adapter.url, timeout=30) as client:
        started = time.monotonic()
        response = client.post("/v2/models/digits/infer", json=infer_json(x))
        assert response.status_code == 504
        assert 0.25 < time.monotonic() - started < 5
        assert "timeout_ms=300" in response.json()["error"]
        slow.run_gate.set()
        assert client.post("/v2/models/digits/infer", json=infer_json(x)).status_code == 200


def test_concurrent_requests_are_batched_and_split_correctly(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    slow = gated(digits_model, gate_run=True)
    adapter = HttpAdapter(slow, port=0, max_batch=32, max_delay_ms=5)
    xs = [RNG.standard_normal((1 + i % 2, 64)).astype(np.float32) for i in range(21)]
    start_server(adapter)
    with httpx.Client(base_url=adapter.url, timeout=30) as client:
        with ThreadPoolExecutor(21) as pool:
            post = lambda x: client.post("/v2/models/digits/infer", json=infer_json(x))  # noqa: E731
            first = pool.submit(post, xs[0])
            assert slow.running.wait(10)
            rest = [pool.submit(post, x) for x in xs[1:]]
            deadline = time.monotonic() + 20
            while adapter.batcher.queue_depth < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert adapter.batcher.queue_depth == 20
            slow.run_gate.set()
            responses = [first.result()] + [f.result() for f in rest]
        for x, response in zip(xs, responses):
            assert response.status_code == 200, response.text
            [out] = response.json()["outputs"]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, digits_model(x=x)["logits"], rtol=1e-6)
        samples = metric_samples(client)
    rows = sum(len(x) for x in xs)
    assert slow.batch_sizes == [len(xs[0]), rows - len(xs[0])]
    assert sample(samples, "irkit_batch_size_count") == 2
    assert sample(samples, "irkit_batch_size_sum") == rows
    assert sample(samples, "irkit_requests_total", outcome="ok") == 21
    assert sample(samples, "irkit_request_latency_seconds_count") == 21
    assert sample(samples, "irkit_queue_time_seconds_count") == 21


def test_batching_under_free_running_load(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    adapter = HttpAdapter(digits_model, port=0, max_batch=32, max_delay_ms=20)
    x = np.ones((1, 64), np.float32)
    start_server(adapter)
    with httpx.Client(base_url=adapter.url, timeout=30) as client:
        with ThreadPoolExecutor(16) as pool:
            post = lambda _: client.post("/v2/models/digits/infer", json=infer_json(x))  # noqa: E731
            statuses = [r.status_code for r in pool.map(post, range(64))]
        samples = metric_samples(client)
    assert statuses == [200] * 64
    calls = sample(samples, "irkit_batch_size_count")
    assert sample(samples, "irkit_batch_size_sum") == 64
    assert calls < 64, "no request was batched with another"


def test_stop_drains_in_flight_requests(
    digits_model: irkit.runtime.CompiledModel, gated: Any, start_server: Any
) -> None:
    slow = gated(digits_model, gate_run=True)
    adapter = HttpAdapter(slow, port=0)
    x = np.zeros((2, 64), np.float32)
    start_server(adapter)
    with httpx.Client(base_url=adapter.url, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v2/models/digits/infer", json=infer_json(x))
        assert slow.running.wait(10)
        adapter.stop()  # graceful: the in-flight request still completes
        time.sleep(0.2)
        slow.run_gate.set()
        assert pending.result().status_code == 200


def test_sequential_requests_are_not_delayed(client: httpx.Client) -> None:
    """Without TCP_NODELAY each response waits ~40 ms for the client's delayed ACK."""
    body = infer_json(np.zeros((1, 64), np.float32))
    elapsed = []
    for _ in range(10):
        started = time.perf_counter()
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        elapsed.append(time.perf_counter() - started)
    assert sorted(elapsed)[5] < 0.03, elapsed


# ------------------------------------------------------------ DynamicBatcher (no HTTP)


def test_batcher_results_errors_and_lifecycle(digits_model: irkit.runtime.CompiledModel) -> None:
    from irkit.runtime.adapters.batcher import DynamicBatcher
    from irkit.runtime.adapters.common import AdapterError, NotReady

    batcher = DynamicBatcher(digits_model, max_batch=8, max_delay_ms=50)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    with pytest.raises(NotReady):
        batcher.submit({"x": x})  # not started
    batcher.start()
    futures = [batcher.submit({"x": x[i : i + 1]}) for i in range(3)]
    got = np.concatenate([f.result(10)["logits"] for f in futures])
    np.testing.assert_allclose(got, digits_model(x=x)["logits"], rtol=1e-6)
    # A model failure fails the requests of that batch, naming the cause.
    bad = batcher.submit({"x": np.zeros((1, 64), np.float64)})
    with pytest.raises(AdapterError, match=r"inference: .*float32"):
        bad.result(10)
    batcher.stop()
    with pytest.raises(NotReady):
        batcher.submit({"x": x})


def test_batcher_does_not_wait_when_nothing_is_arriving(
    digits_model: irkit.runtime.CompiledModel,
) -> None:
    from irkit.runtime.adapters.batcher import DynamicBatcher

    x = np.zeros((1, 64), np.float32)
    waits = {}
    for name, arrivals in (("classic", None), ("idle", lambda: 0)):
        batcher = DynamicBatcher(digits_model, max_batch=8, max_delay_ms=300, arrivals=arrivals)
        batcher.start()
        started = time.perf_counter()
        batcher.submit({"x": x}).result(10)
        waits[name] = time.perf_counter() - started
        batcher.stop()
    assert waits["classic"] >= 0.29, waits  # waited out max_delay_ms for company
    assert waits["idle"] < 0.2, waits


def test_batcher_queue_bound_and_timeout(
    digits_model: irkit.runtime.CompiledModel, gated: Any
) -> None:
    from irkit.runtime.adapters.batcher import DynamicBatcher
    from irkit.runtime.adapters.common import QueueFull, RequestTimeout

    slow = gated(digits_model, gate_run=True)
    batcher = DynamicBatcher(slow, max_batch=1, max_queue=2, timeout_ms=100)
    batcher.start()
    x = np.zeros((1, 64), np.float32)
    running = batcher.submit({"x": x})
    assert slow.running.wait(10)
    queued = [batcher.submit({"x": x}), batcher.submit({"x": x})]
    with pytest.raises(QueueFull) as refused:
        batcher.submit({"x": x})
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    time.sleep(0.15)  # the queued requests pass their deadline while the model is stuck
    slow.run_gate.set()
    assert running.result(10)["logits"].shape == (1, 10)
    for future in queued:
        with pytest.raises(RequestTimeout):
            future.result(10)
    batcher.stop()


SERVE_SCRIPT = """
import sys, threading, time
from pathlib import Path
import irkit.runtime
from irkit.runtime.adapters.http import HttpAdapter

model = irkit.runtime.load(sys.argv[1])

class Slow:  # each model call takes 0.5 s, so a request is in flight when SIGTERM lands
    name, inputs, outputs = model.name, model.inputs, model.outputs
    def validate(self, inputs): return model.validate(inputs)
    def warmup(self): return model.warmup()
    def run(self, inputs):
        time.sleep(0.5)
        return model.run(inputs)

adapter = HttpAdapter(Slow(), port=0)
threading.Thread(target=lambda: adapter.ready.wait(30)
                 and Path(sys.argv[2]).write_text(str(adapter.port)), daemon=True).start()
adapter.serve()
print("served and returned", flush=True)
"""


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(
    tmp_path: Path, digits_dir: Path
) -> None:
    import signal
    import subprocess
    import sys

    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(digits_dir), str(port_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/v2/models/digits/infer"
        x = np.zeros((1, 64), np.float32)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url, json=infer_json(x), timeout=30)
            time.sleep(0.2)  # the request is now inside the model call
            process.send_signal(signal.SIGTERM)
            assert pending.result().status_code == 200
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "served and returned" in stdout


def test_two_inputs_output_selection_and_int64(
    pair_model: irkit.runtime.CompiledModel, start_server: Any
) -> None:
    adapter = start_server(HttpAdapter(pair_model, port=0, max_delay_ms=20))
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    s = RNG.standard_normal((6, 3)).astype(np.float32)
    want = pair_model(x=x, s=s)
    inputs = [
        {"name": "x", "shape": [6, 4], "datatype": "FP32", "data": x.tolist()},
        {"name": "s", "shape": [6, 3], "datatype": "FP32", "data": s.ravel().tolist()},
    ]
    url = f"{adapter.url}/v2/models/pair/infer"
    only_label = httpx.post(url, json={"inputs": inputs, "outputs": [{"name": "label"}]}).json()
    [label] = only_label["outputs"]
    assert label == {"name": "label", "datatype": "INT64", "shape": [6],
                     "data": want["label"].tolist()}  # fmt: skip

    mixed = httpx.post(url, json={"inputs": inputs, "outputs": [
        {"name": "y", "parameters": {"binary_data": True}}, {"name": "label"}]})  # fmt: skip
    split = int(mixed.headers["Inference-Header-Content-Length"])
    y_meta, label_json = json.loads(mixed.content[:split])["outputs"]
    y = np.frombuffer(mixed.content[split:], "<f4").reshape(y_meta["shape"])
    np.testing.assert_allclose(y, want["y"], rtol=1e-6)
    assert label_json["data"] == want["label"].tolist()

    missing = httpx.post(url, json={"inputs": inputs[:1]})
    assert missing.status_code == 400 and "'s'" in missing.json()["error"]
    # Concurrent requests with both inputs are batched and split back correctly.
    rows = [RNG.standard_normal((1, 7)).astype(np.float32) for _ in range(12)]

    def post(row: np.ndarray) -> dict[str, Any]:
        body = {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row[0, :4].tolist()},
            {"name": "s", "shape": [1, 3], "datatype": "FP32", "data": row[0, 4:].tolist()}]}  # fmt: skip
        return httpx.post(url, json=body, timeout=30).json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, rows))
    for row, answer in zip(rows, answers):
        expected = pair_model(x=row[:, :4], s=row[:, 4:])
        got = {o["name"]: o["data"] for o in answer["outputs"]}
        np.testing.assert_allclose(got["y"], expected["y"].ravel(), rtol=1e-6)
        assert got["label"] == expected["label"].tolist()


def test_batcher_workers_run_batches_concurrently(
    digits_model: irkit.runtime.CompiledModel,
) -> None:
    import threading

    from irkit.runtime.adapters.batcher import DynamicBatcher

    meeting = threading.Barrier(2, timeout=10)

    class Meeting:  # each call waits for a second call to be inside the model too
        name, inputs, outputs = digits_model.name, digits_model.inputs, digits_model.outputs

        def validate(self, inputs: Any) -> Any:
            return digits_model.validate(inputs)

        def run(self, inputs: Any) -> dict[str, np.ndarray]:
            meeting.wait()
            return digits_model.run(inputs)

    batcher = DynamicBatcher(Meeting(), max_batch=1, workers=2)  # type: ignore[arg-type]
    batcher.start()
    x = np.zeros((1, 64), np.float32)
    futures = [batcher.submit({"x": x}) for _ in range(2)]
    assert [f.result(20)["logits"].shape for f in futures] == [(1, 10), (1, 10)]
    batcher.stop()


# ------------------------------------------------------------ codec and routing (no server)


def test_infer_route_matches_what_starlette_would() -> None:
    from irkit.runtime.adapters.http import infer_route

    assert infer_route("/v2/models/digits/infer") == ("digits", None)
    assert infer_route("/v2/models/digits/versions/3/infer") == ("digits", "3")
    for path in ("/v2/models//infer", "/v2/models/a/b/infer", "/v2/models/digits",
                 "/v2/models/a/versions//infer", "/v2/models/a/version/1/infer", "/v2/infer"):  # fmt: skip
        assert infer_route(path) is None, path


def test_codec_round_trips_what_orjson_cannot_write() -> None:
    from irkit.runtime.adapters.http import encode_infer_response, parse_infer_request

    # NaN/Infinity and integers over 64 bits are not JSON, but json.loads reads them:
    # orjson refuses the body, and the json fallback keeps accepting it.
    body = b'{"id": 123456789012345678901234567890, "inputs": [{"name": "x", "shape": [3],' \
           b' "datatype": "FP32", "data": [NaN, Infinity, 1.5]}]}'  # fmt: skip
    decoded = parse_infer_request(body, None, ["y"])
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([np.nan, np.inf, 1.5], "f4"))
    result: dict[str, np.ndarray] = {
        "y": np.array([[np.nan, -np.inf], [0.1, 2.0]], np.float32),
        "h": np.array([0.5, 1.0], np.float16),
        "i": np.array([-(2**62), 7], np.int64),
        "b": np.array([True, False]),
    }
    payload, split = encode_infer_response("m", "1", result, None, decoded.request_id)
    assert split is None
    doc = json.loads(payload)  # NaN/-Infinity written as json.dumps writes them
    assert doc["id"] == 123456789012345678901234567890
    out = {o["name"]: o for o in doc["outputs"]}
    np.testing.assert_array_equal(np.asarray(out["y"]["data"], np.float32), result["y"].ravel())
    assert out["y"]["shape"] == [2, 2] and out["y"]["datatype"] == "FP32"
    assert out["h"]["data"] == [0.5, 1.0] and out["h"]["datatype"] == "FP16"
    assert out["i"]["data"] == [-(2**62), 7] and out["b"]["data"] == [True, False]
    # float32 values come back exactly (orjson writes the shortest exact float32 form)
    x = RNG.standard_normal(1000).astype(np.float32)
    payload, _ = encode_infer_response("m", "1", {"y": x}, None, "r")
    assert json.loads(payload)["id"] == "r"
    np.testing.assert_array_equal(np.asarray(json.loads(payload)["outputs"][0]["data"], "f4"), x)


def test_infer_with_another_method_is_405(client: httpx.Client) -> None:
    response = client.get("/v2/models/digits/infer")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "Method Not Allowed"}


def test_batcher_hands_each_batch_to_its_sink_at_once(
    digits_model: irkit.runtime.CompiledModel, gated: Any
) -> None:
    import threading

    from irkit.runtime.adapters.batcher import DynamicBatcher, Job

    slow = gated(digits_model, gate_run=True)
    batcher = DynamicBatcher(slow, max_batch=8, max_delay_ms=1)
    delivered: list[list[Job]] = []
    done = threading.Event()

    def sink(jobs: list[Job]) -> None:
        delivered.append(jobs)
        if sum(map(len, delivered)) == 5:
            done.set()

    batcher.start()
    x = RNG.standard_normal((6, 64)).astype(np.float32)
    first = batcher.enqueue({"x": x[:1]}, sink, "first")
    assert slow.running.wait(10)  # the worker holds the first batch at the gate
    jobs = [batcher.enqueue({"x": x[i : i + 1]}, sink, i) for i in range(1, 6)]
    jobs[2].cancel()  # its batch has not started: it is skipped, never delivered
    slow.run_gate.set()
    assert done.wait(10)
    batcher.stop()
    assert [[job.waiter for job in batch] for batch in delivered] == [["first"], [1, 2, 4, 5]]
    for job in [first, *jobs[:2], *jobs[3:]]:
        assert job.error is None and job.outputs is not None
        row = x[job.waiter if job is not first else 0]
        np.testing.assert_allclose(job.outputs["logits"], digits_model(x=row[None])["logits"],
                                   rtol=1e-6)  # fmt: skip
    assert jobs[2].outputs is None and slow.batch_sizes == [1, 4]
