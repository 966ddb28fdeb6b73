"""The gRPC adapter with the real tritonclient clients (grpc sync and aio, http), on one
repository served over HTTP and gRPC at once: health, metadata, raw and typed tensors,
streaming, error status codes, and one batcher shared by both protocols."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import irkit.runtime
from irkit.runtime.adapters.grpc import GrpcAdapter
from irkit.testing.serving import Served, repo_of

tritonclient = pytest.importorskip("tritonclient")
import tritonclient.grpc as tgrpc  # noqa: E402
import tritonclient.grpc.aio as tgrpc_aio  # noqa: E402
import tritonclient.http as thttp  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.service


@pytest.fixture
def both(serve: Callable[..., Served], digits_model: Any, pair_model: Any) -> Served:
    return serve(repo_of(digits_model, pair_model, max_delay_ms=1.0))


def grpc_input(name: str, array: np.ndarray) -> Any:
    tensor = tgrpc.InferInput(name, list(array.shape), _datatype(array))
    tensor.set_data_from_numpy(array)
    return tensor


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


# ------------------------------------------------------------------ health, metadata


def test_health_and_metadata_with_both_clients(both: Served) -> None:
    g = tgrpc.InferenceServerClient(both.grpc.address)
    h = thttp.InferenceServerClient(f"127.0.0.1:{both.http.port}")
    for client in (g, h):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits") and client.is_model_ready("pair", "1")
        assert not client.is_model_ready("digits", "7")
        assert not client.is_model_ready("nope")
    meta_g = g.get_model_metadata("pair", as_json=True)
    meta_h = h.get_model_metadata("pair")
    for meta in (meta_g, meta_h):
        assert meta["name"] == "pair" and meta["versions"] == ["1"]
        assert meta["platform"] == "irkit_ort"
        shapes = {t["name"]: [int(d) for d in t["shape"]] for t in meta["inputs"]}
        assert shapes == {"x": [-1, 4], "s": [-1, 3]}
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
            ("y", "FP32"), ("label", "INT64")]
    server = g.get_server_metadata(as_json=True)
    assert server["name"] == "irkit" and "binary_tensor_data" in server["extensions"]
    assert h.get_server_metadata()["name"] == "irkit"
    assert status_of(lambda: g.get_model_metadata("nope"))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: h.get_model_metadata("nope"))[0] == "404"
    index = g.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("digits", "1", "READY"), ("pair", "1", "READY")]
    assert h.get_model_repository_index() == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""},
        {"name": "pair", "version": "1", "state": "READY", "reason": ""}]


# ------------------------------------------------------------------------- infer


def test_raw_infer_equals_direct_call_sync_client(both: Served, pair_model: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    s = rng.standard_normal((5, 3)).astype(np.float32)
    expected = pair_model.run({"x": x, "s": s})
    client = tgrpc.InferenceServerClient(both.grpc.address)
    result = client.infer("pair", [grpc_input("x", x), grpc_input("s", s)], request_id="r-7")
    response = result.get_response()
    assert response.id == "r-7" and response.model_version == "1"
    np.testing.assert_allclose(result.as_numpy("y"), expected["y"], rtol=1e-6, atol=1e-6)
    assert result.as_numpy("label").dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    only = client.infer("pair", [grpc_input("x", x), grpc_input("s", s)],
                        outputs=[tgrpc.InferRequestedOutput("label")])  # fmt: skip
    assert [o.name for o in only.get_response().outputs] == ["label"]
    assert only.as_numpy("y") is None


def test_typed_contents_in_and_out(both: Served, pair_model: Any) -> None:
    """A request with typed ``contents`` (no raw bytes) gets typed contents back."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
    s = np.ones((2, 3), np.float32)
    request = service_pb2.ModelInferRequest(model_name="pair", id="typed")
    for name, array in (("x", x), ("s", s)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(both.grpc.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    expected = pair_model.run({"x": x, "s": s})
    assert not response.raw_output_contents and response.id == "typed"
    outputs = {o.name: o for o in response.outputs}
    y = np.asarray(outputs["y"].contents.fp32_contents, np.float32).reshape(outputs["y"].shape)
    np.testing.assert_allclose(y, expected["y"], rtol=1e-6, atol=1e-6)
    assert list(outputs["label"].contents.int64_contents) == expected["label"].tolist()


def test_aio_client_concurrent_requests_batch(serve: Callable[..., Served],
                                              digits_model: Any) -> None:
    served = serve(repo_of(digits_model, max_batch=64, max_delay_ms=20))
    xs = np.random.default_rng(1).standard_normal((48, 1, 64)).astype(np.float32)

    async def run() -> list[np.ndarray]:
        async with tgrpc_aio.InferenceServerClient(served.grpc.address) as client:
            assert await client.is_server_ready()
            results = await asyncio.gather(*(client.infer("digits", [grpc_input("x", x)])
                                             for x in xs))  # fmt: skip
            return [r.as_numpy("logits") for r in results]

    got = np.concatenate(asyncio.run(run()))
    np.testing.assert_allclose(got, digits_model.run({"x": xs[:, 0]})["logits"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    text = httpx.get(f"{served.http.url}/metrics").text
    calls = _sample(text, 'irkit_batch_size_count{adapter="http+grpc",model="digits"}')
    assert _sample(text, 'irkit_requests_total{adapter="grpc",model="digits",outcome="ok"}') == 48
    assert calls < 48, "concurrent gRPC requests were not batched"


def test_stream_infer_answers_each_request_with_its_id(both: Served, digits_model: Any) -> None:
    client = tgrpc.InferenceServerClient(both.grpc.address)
    answers: list[tuple[Any, Any]] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        answers.append((result, error))
        if len(answers) == 9:
            done.set()

    xs = np.random.default_rng(2).standard_normal((8, 2, 64)).astype(np.float32)
    client.start_stream(callback)
    try:
        for i, x in enumerate(xs):
            client.async_stream_infer("digits", [grpc_input("x", x)], request_id=f"s{i}")
        client.async_stream_infer("digits", [grpc_input("x", np.zeros((1, 3), np.float32))],
                                  request_id="bad")  # fmt: skip
        assert done.wait(20), f"{len(answers)} of 9 answers"
    finally:
        client.stop_stream()
    by_id = {}
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "expected shape" in str(errors[0])
    for result, error in answers:
        if error is None:
            by_id[result.get_response().id] = result.as_numpy("logits")
    assert sorted(by_id) == [f"s{i}" for i in range(8)]
    for i, x in enumerate(xs):
        np.testing.assert_allclose(by_id[f"s{i}"], digits_model.run({"x": x})["logits"],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_http_client_binary_and_json(both: Served, digits_model: Any) -> None:
    client = thttp.InferenceServerClient(f"127.0.0.1:{both.http.port}")
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    expected = digits_model.run({"x": x})["logits"]
    for binary in (True, False):
        tensor = thttp.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = thttp.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("digits", [tensor], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ errors


def test_bad_requests_are_invalid_argument(both: Served) -> None:
    client = tgrpc.InferenceServerClient(both.grpc.address)
    h = thttp.InferenceServerClient(f"127.0.0.1:{both.http.port}")
    wrong = np.zeros((2, 65), np.float32)
    code, message = status_of(lambda: client.infer("digits", [grpc_input("x", wrong)]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'x'" in message
    tensor = thttp.InferInput("x", [2, 65], "FP32")
    tensor.set_data_from_numpy(wrong)
    assert status_of(lambda: h.infer("digits", [tensor]))[0] == "400"
    nan = np.zeros((2, 64), np.float32)
    nan[1, 5] = np.nan
    code, message = status_of(lambda: client.infer("digits", [grpc_input("x", nan)]))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("input 'x': NaN at index [1, 5]; "), message
    as_int = grpc_input("x", np.zeros((2, 64), np.int32))
    assert status_of(lambda: client.infer("digits", [as_int]))[0] == "StatusCode.INVALID_ARGUMENT"
    code, message = status_of(lambda: client.infer(
        "digits", [grpc_input("x", np.zeros((1, 64), np.float32))],
        outputs=[tgrpc.InferRequestedOutput("nope")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'nope'" in message

    def raw_call(request: Any) -> tuple[str, str]:
        with grpc.insecure_channel(both.grpc.address) as channel, \
                pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        return str(info.value.code()), str(info.value.details())

    short = service_pb2.ModelInferRequest(model_name="digits")
    short.inputs.add(name="x", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(
        [0.0] * 10)
    code, message = raw_call(short)
    assert code == "StatusCode.INVALID_ARGUMENT" and "needs 64 values" in message
    mixed = service_pb2.ModelInferRequest(model_name="digits", raw_input_contents=[b"\0" * 256])
    mixed.inputs.add(name="x", datatype="FP32", shape=[1, 64]).contents.fp32_contents.append(1)
    assert "cannot be mixed" in raw_call(mixed)[1]
    overflow = service_pb2.ModelInferRequest(model_name="pair")
    overflow.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    code, message = raw_call(overflow)
    assert code == "StatusCode.INVALID_ARGUMENT" and "INT8" in message
    raw_short = service_pb2.ModelInferRequest(model_name="digits", raw_input_contents=[b"\0" * 8])
    raw_short.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    code, message = raw_call(raw_short)
    assert code == "StatusCode.INVALID_ARGUMENT" and "expected 256 bytes" in message


def test_unknown_model_or_version_is_not_found(both: Served) -> None:
    client = tgrpc.InferenceServerClient(both.grpc.address)
    x = grpc_input("x", np.zeros((1, 64), np.float32))
    code, message = status_of(lambda: client.infer("nope", [x]))
    assert code == "StatusCode.NOT_FOUND" and "'digits'" in message
    code, message = status_of(lambda: client.infer("digits", [x], model_version="9"))
    assert code == "StatusCode.NOT_FOUND" and "version '9'" in message


def test_model_control_disabled_is_permission_denied(both: Served) -> None:
    client = tgrpc.InferenceServerClient(both.grpc.address)
    code, message = status_of(lambda: client.unload_model("digits"))
    assert code == "StatusCode.PERMISSION_DENIED" and "allow_model_control" in message
    h = thttp.InferenceServerClient(f"127.0.0.1:{both.http.port}")
    assert status_of(lambda: h.load_model("digits"))[0] == "403"
    assert client.is_model_ready("digits")


def test_not_ready_is_unavailable(serve: Callable[..., Served], digits_model: Any,
                                  gated: Any) -> None:
    slow = gated(digits_model, gate_warmup=True)
    served = serve(repo_of(slow), wait_ready=False)
    client = tgrpc.InferenceServerClient(served.grpc.address)
    assert client.is_server_live() and not client.is_server_ready()
    code, message = status_of(lambda: client.infer(
        "digits", [grpc_input("x", np.zeros((1, 64), np.float32))]))
    assert code == "StatusCode.UNAVAILABLE" and "warming up" in message
    slow.warmup_gate.set()
    assert served.repository.ready.wait(10) and client.is_server_ready()


def test_timeouts_are_deadline_exceeded(serve: Callable[..., Served], digits_model: Any,
                                        gated: Any) -> None:
    slow = gated(digits_model, gate_run=True)
    served = serve(repo_of(slow, timeout_ms=300))
    client = tgrpc.InferenceServerClient(served.grpc.address)
    x = grpc_input("x", np.zeros((1, 64), np.float32))
    started = time.monotonic()
    code, message = status_of(lambda: client.infer("digits", [x]))
    assert code == "StatusCode.DEADLINE_EXCEEDED" and "timeout_ms=300" in message
    assert 0.25 < time.monotonic() - started < 5
    code, _ = status_of(lambda: client.infer("digits", [x], client_timeout=0.2))
    assert code == "StatusCode.DEADLINE_EXCEEDED"
    slow.run_gate.set()
    assert client.infer("digits", [x]).as_numpy("logits").shape == (1, 10)


def test_full_queue_is_resource_exhausted(serve: Callable[..., Served], digits_model: Any,
                                          gated: Any) -> None:
    slow = gated(digits_model, gate_run=True)
    served = serve(repo_of(slow, max_queue=1, max_batch=1))
    client = tgrpc.InferenceServerClient(served.grpc.address)
    x = grpc_input("x", np.zeros((1, 64), np.float32))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.infer, "digits", [x])  # runs, blocked at the gate
        assert slow.running.wait(10)
        second = pool.submit(client.infer, "digits", [x])  # waits in the queue
        deadline = time.monotonic() + 10
        while served.http.batcher.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        code, message = status_of(lambda: client.infer("digits", [x]))
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and "queue full" in message
        slow.run_gate.set()
        assert first.result(10).as_numpy("logits").shape == (1, 10)
        assert second.result(10).as_numpy("logits").shape == (1, 10)


def test_message_over_the_limit_is_resource_exhausted(serve: Callable[..., Served],
                                                      gemm_dir: Path) -> None:
    served = serve(repo_of(irkit.runtime.load(gemm_dir)), max_message_bytes=100_000)
    client = tgrpc.InferenceServerClient(served.grpc.address)
    big = grpc_input("x", np.zeros((64, 512), np.float32))  # 128 KiB
    assert status_of(lambda: client.infer("gemm512", [big]))[0] == "StatusCode.RESOURCE_EXHAUSTED"
    small = grpc_input("x", np.ones((2, 512), np.float32))
    assert client.infer("gemm512", [small]).as_numpy("y").shape == (2, 512)


# ------------------------------------------------------------------ one batcher


def test_http_and_grpc_requests_share_one_batch(serve: Callable[..., Served],
                                                digits_model: Any, gated: Any) -> None:
    slow = gated(digits_model, gate_run=True)
    served = serve(repo_of(slow, max_batch=64, max_delay_ms=1.0))
    g = tgrpc.InferenceServerClient(served.grpc.address)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((13, 1, 64)).astype(np.float32)
    with ThreadPoolExecutor(13) as pool, httpx.Client(base_url=served.http.url) as h:
        blocker = pool.submit(g.infer, "digits", [grpc_input("x", xs[0])])
        assert slow.running.wait(10)

        def over_http(x: np.ndarray) -> np.ndarray:
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                "data": x.ravel().tolist()}]}  # fmt: skip
            out = h.post("/v2/models/digits/infer", json=body, timeout=30).json()["outputs"][0]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])

        futures = [pool.submit(g.infer, "digits", [grpc_input("x", x)]) for x in xs[1:7]]
        futures += [pool.submit(over_http, x) for x in xs[7:]]
        deadline = time.monotonic() + 10
        while served.http.batcher.queue_depth < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.http.batcher.queue_depth == 12
        slow.run_gate.set()
        got = [blocker.result(10).as_numpy("logits")]
        got += [f.result(10).as_numpy("logits") for f in futures[:6]]
        got += [f.result(10) for f in futures[6:]]
    assert slow.batch_sizes == [1, 12], "gRPC and HTTP requests were not batched together"
    np.testing.assert_allclose(np.concatenate(got), digits_model.run({"x": xs[:, 0]})["logits"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    text = httpx.get(f"{served.http.url}/metrics").text
    assert _sample(text, 'irkit_requests_total{adapter="grpc",model="digits",outcome="ok"}') == 7
    assert _sample(text, 'irkit_requests_total{adapter="http",model="digits",outcome="ok"}') == 6


def test_single_model_grpc_adapter_serves_and_stops(digits_model: Any,
                                                    start_server: Any) -> None:
    adapter = start_server(GrpcAdapter(digits_model, port=0, max_batch=8))
    client = tgrpc.InferenceServerClient(adapter.address)
    x = np.ones((2, 64), np.float32)
    got = client.infer("digits", [grpc_input("x", x)]).as_numpy("logits")
    np.testing.assert_allclose(got, digits_model.run({"x": x})["logits"], rtol=1e-5, atol=1e-5)


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {series} in /metrics")


def test_arrivals_count_accepted_infers_until_received_or_stale() -> None:
    from irkit.runtime.adapters.grpc import MODEL_INFER, Arrivals, _Handlers

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method, self.invocation_metadata = method, ()

    arrivals = Arrivals(horizon_s=0.05)
    infer = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    handlers = _Handlers({"ModelInfer": infer, "ServerLive": infer}, arrivals)
    assert handlers.service(Details(MODEL_INFER)) is infer
    assert handlers.service(Details(MODEL_INFER)) is infer
    assert handlers.service(Details("/inference.GRPCInferenceService/ServerLive")) is infer
    assert handlers.service(Details("/inference.GRPCInferenceService/Nope")) is None
    assert arrivals() == 2  # only ModelInfer counts, from accept until its handler runs
    arrivals.received()
    assert arrivals() == 1
    time.sleep(0.06)  # an accepted RPC whose handler never ran stops counting
    assert arrivals() == 0
    arrivals.accepted()
    assert arrivals() == 1


def test_lone_client_pays_no_batching_delay(serve: Callable[..., Served],
                                            digits_model: Any) -> None:
    served = serve(repo_of(digits_model, max_batch=64, max_delay_ms=500))
    x = np.zeros((1, 64), np.float32)
    with tgrpc.InferenceServerClient(served.grpc.address) as client:
        client.infer("digits", [grpc_input("x", x)])  # connect, warm up
        started = time.perf_counter()
        for _ in range(3):
            client.infer("digits", [grpc_input("x", x)])
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"3 sequential requests took {elapsed:.3f} s (max_delay_ms=500)"
    assert served.grpc.arrivals() == 0


def test_grpcio_server_still_selectable(serve: Callable[..., Served], digits_model: Any) -> None:
    """``server = "grpcio"``: grpc.aio's server instead of irkit's own transport."""
    served = serve(repo_of(digits_model), server="grpcio")
    client = tgrpc.InferenceServerClient(served.grpc.address)
    x = np.ones((2, 64), np.float32)
    got = client.infer("digits", [grpc_input("x", x)]).as_numpy("logits")
    np.testing.assert_allclose(got, digits_model.run({"x": x})["logits"], rtol=1e-5, atol=1e-5)
    assert status_of(lambda: client.infer("nope", [grpc_input("x", x)]))[0] == \
        "StatusCode.NOT_FOUND"  # fmt: skip
