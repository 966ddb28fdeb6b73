"""Triton's model configuration and statistics extensions, read with tritonclient over
HTTP and gRPC (irkit's own transport) from one repository served on both."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from irkit.runtime import TensorSpec
from irkit.runtime.adapters.extensions import model_config
from irkit.runtime.adapters.oip import inference_pb2 as pb
from irkit.runtime.adapters.repository import (
    Batching,
    ModelEntry,
    ModelVersion,
    VersionPolicy,
)
from irkit.testing.serving import Served, repo_of

pytest.importorskip("tritonclient")
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.service


def clients(served: Served) -> tuple[Any, Any]:
    return (tgrpc.InferenceServerClient(served.grpc.address),
            thttp.InferenceServerClient(f"127.0.0.1:{served.http.port}"))  # fmt: skip


def status_of(call: Callable[[], Any]) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status())


def as_ints(doc: Any) -> Any:
    """gRPC's JSON writes 64-bit integers as strings: make them ints again."""
    if isinstance(doc, dict):
        return {k: v if k in ("name", "version") else as_ints(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [as_ints(v) for v in doc]
    return int(doc) if isinstance(doc, str) and doc.isdigit() else doc


def test_model_config_with_both_clients(serve: Callable[..., Served], digits_model: Any,
                                        pair_model: Any) -> None:
    served = serve(repo_of(digits_model, pair_model, max_batch=64, max_delay_ms=1.5))
    g, h = clients(served)
    assert {"model_configuration", "statistics"} <= set(h.get_server_metadata()["extensions"])
    assert {"model_configuration", "statistics"} <= set(
        g.get_server_metadata(as_json=True)["extensions"])
    for config in (h.get_model_config("digits"),
                   as_ints(g.get_model_config("digits", as_json=True)["config"]),
                   h.get_model_config("digits", "1")):  # fmt: skip
        assert config["name"] == "digits" and config["max_batch_size"] == 64
        assert config["platform"] == "irkit_ort" and config["backend"] == "irkit"
        assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]
        assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1500
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
        assert config["version_policy"] == {"all": {}}
    # a [N] output is dims [1] reshaped to [] (Triton's form); the message decodes as
    # tritonclient's own ModelConfig
    pair = g.get_model_config("pair").config
    assert isinstance(pair, model_config_pb2.ModelConfig)
    label = pair.output[1]
    assert (label.name, label.data_type, list(label.dims)) == (
        "label", model_config_pb2.TYPE_INT64, [1])
    assert label.HasField("reshape") and list(label.reshape.shape) == []
    assert [list(t.dims) for t in pair.input] == [[4], [3]]
    for call in (lambda: g.get_model_config("nope"), lambda: g.get_model_config("digits", "9")):
        assert status_of(call) == "StatusCode.NOT_FOUND"
    for call in (lambda: h.get_model_config("nope"), lambda: h.get_model_config("digits", "9")):
        assert status_of(call) == "404"


class _Fixed:
    """A model whose first dim is fixed (an image model exported for batch 1)."""

    name = "fixed"
    inputs = (TensorSpec("img", np.dtype(np.uint8), (1, 3, "H", "W")),)
    outputs = (TensorSpec("scores", np.dtype(np.float16), (1, 5)),)


def test_model_config_without_a_shared_batch_dim() -> None:
    entry = ModelEntry("fixed", dict, VersionPolicy.parse("latest:2"), Batching(max_batch=8),
                       required=True)  # fmt: skip
    version = ModelVersion("fixed", "3")
    version.model = _Fixed()  # type: ignore[assignment]
    config = model_config(entry, version)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"] == [{"name": "img", "data_type": "TYPE_UINT8", "dims": [1, 3, -1, -1]}]
    assert config["output"][0]["data_type"] == "TYPE_FP16"
    assert config["version_policy"] == {"latest": {"num_versions": 2}}
    assert config["platform"] == "irkit"  # a model without a signature(): no artifact backend
    wire = json_format.ParseDict(config, pb.ModelConfig()).SerializeToString()
    theirs = model_config_pb2.ModelConfig.FromString(wire)
    assert list(theirs.input[0].dims) == [1, 3, -1, -1]
    assert theirs.version_policy.latest.num_versions == 2


def test_statistics_count_exactly(serve: Callable[..., Served], digits_model: Any,
                                  pair_model: Any, gated: Any) -> None:
    """1 request runs alone; 7 (4 gRPC of 1 row, 3 HTTP of 2 rows) queue behind it and run
    as one batch of 10 rows; then 4 fail: 2 gRPC and 1 HTTP of the wrong shape, 1 asking
    for a version not served. A request for an unknown model counts for no model.

    So: inference_count 11 rows, execution_count 2 model calls (batch sizes 1 and 10),
    success 8 requests, fail 4, queue 8 (the requests that reached a model call), and
    compute_infer 8 (each request counts its call's duration, 1 x the first call's and
    7 x the second's)."""
    slow = gated(digits_model, gate_run=True)
    served = serve(repo_of(slow, pair_model, max_batch=64, max_delay_ms=1.0))
    g, h = clients(served)
    batcher = served.repository.entries["digits"].current.batcher  # type: ignore[union-attr]
    rng = np.random.default_rng(7)

    def grpc_infer(rows: int, width: int = 64, version: str = "") -> Any:
        x = tgrpc.InferInput("x", [rows, width], "FP32")
        x.set_data_from_numpy(rng.standard_normal((rows, width)).astype(np.float32))
        return g.infer("digits", [x], model_version=version)

    def http_infer(rows: int, width: int = 64) -> httpx.Response:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, width],
                            "data": [0.5] * (rows * width)}]}  # fmt: skip
        return httpx.post(f"{served.http.url}/v2/models/digits/infer", json=body, timeout=30)

    started_ms = time.time() * 1000
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(grpc_infer, 1)
        assert slow.running.wait(10)
        queued = [pool.submit(grpc_infer, 1) for _ in range(4)]
        queued += [pool.submit(http_infer, 2) for _ in range(3)]
        deadline = time.monotonic() + 10
        while batcher.queue_depth < 7 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert batcher.queue_depth == 7
        slow.run_gate.set()
        first.result(10)
        for future in queued:
            result = future.result(10)
            assert getattr(result, "status_code", 200) == 200
    assert slow.batch_sizes == [1, 10]
    assert status_of(lambda: grpc_infer(1, width=63)) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: grpc_infer(2, width=65)) == "StatusCode.INVALID_ARGUMENT"
    assert http_infer(1, width=3).status_code == 400
    assert status_of(lambda: grpc_infer(1, version="9")) == "StatusCode.NOT_FOUND"
    assert httpx.post(f"{served.http.url}/v2/models/nope/infer", json={}).status_code == 404
    ended_ms = time.time() * 1000

    message = g.get_inference_statistics("digits")  # zeros included, as HTTP has them:
    from_grpc = as_ints(json_format.MessageToDict(
        message, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True))["model_stats"]  # fmt: skip
    for entry in from_grpc:  # empty here, and not in irkit's JSON
        assert entry.pop("memory_usage") == [] and entry.pop("response_stats") == {}
    from_http = h.get_inference_statistics("digits")["model_stats"]
    assert from_http == from_grpc  # one set of counts, whichever protocol asks
    (stats,) = from_http
    assert (stats["name"], stats["version"]) == ("digits", "1")
    assert (stats["inference_count"], stats["execution_count"]) == (11, 2)
    assert started_ms - 1 <= stats["last_inference"] <= ended_ms + 1
    infer = stats["inference_stats"]
    counts = {key: infer[key]["count"] for key in infer}
    assert counts == {"success": 8, "fail": 4, "queue": 8, "compute_infer": 8,
                      "compute_input": 0, "compute_output": 0, "cache_hit": 0,
                      "cache_miss": 0}  # fmt: skip
    batches = {b["batch_size"]: b["compute_infer"] for b in stats["batch_stats"]}
    assert sorted(batches) == [1, 10] and all(b["count"] == 1 for b in batches.values())
    weighted = batches[1]["ns"] + 7 * batches[10]["ns"]
    assert abs(infer["compute_infer"]["ns"] - weighted) <= 8  # rounding to ns, 8 terms
    assert batches[1]["ns"] > 0 and infer["fail"]["ns"] > 0
    # every request's latency holds its wait in the queue and its model call
    assert infer["queue"]["ns"] < infer["success"]["ns"]
    assert infer["compute_infer"]["ns"] < infer["success"]["ns"]

    everything = h.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == ["digits", "pair"]
    assert everything[1]["inference_count"] == 0 and everything[1]["last_inference"] == 0
    assert h.get_inference_statistics("digits", "1")["model_stats"] == from_http
    assert len(g.get_inference_statistics(as_json=True)["model_stats"]) == 2
    for call in (lambda: g.get_inference_statistics("nope"),
                 lambda: g.get_inference_statistics("digits", "9")):  # fmt: skip
        assert status_of(call) == "StatusCode.NOT_FOUND"
    for call in (lambda: h.get_inference_statistics("nope"),
                 lambda: h.get_inference_statistics("digits", "9")):  # fmt: skip
        assert status_of(call) == "404"
