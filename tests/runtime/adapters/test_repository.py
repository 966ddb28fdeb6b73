"""The model repository behind HTTP and gRPC: three models (two versions of one), unload
and load, a live version swap under 64 concurrent requests, readiness and draining."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import irkit.runtime
from irkit.runtime import Artifact, TensorSpec
from irkit.runtime.adapters.repository import ModelRepository, VersionPolicy
from irkit.testing.onnx_models import gemm_model, pair_model
from irkit.testing.serving import Served

tritonclient = pytest.importorskip("tritonclient")
import tritonclient.grpc as tgrpc  # noqa: E402
import tritonclient.grpc.aio as tgrpc_aio  # noqa: E402
import tritonclient.http as thttp  # noqa: E402
import tritonclient.http.aio as thttp_aio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

F32 = np.dtype(np.float32)


def save_gemm(path: Path, name: str, size: int, seed: int) -> Path:
    return Artifact(
        name=name, backend="ort", target="cpu",
        inputs=(TensorSpec("x", F32, ("N", size)),), outputs=(TensorSpec("y", F32, ("N", size)),),
        files={"model.onnx": gemm_model(size, seed).SerializeToString()},
        entry={"model": "model.onnx"}, options={"threads": 1},
    ).save(path)  # fmt: skip


def save_pair(path: Path) -> Path:
    return Artifact(
        name="pair", backend="ort", target="cpu",
        inputs=(TensorSpec("x", F32, ("N", 4)), TensorSpec("s", F32, ("N", 3))),
        outputs=(TensorSpec("y", F32, ("N", 3)), TensorSpec("label", np.dtype(np.int64), ("N",))),
        files={"model.onnx": pair_model(5, name="pair").SerializeToString()},
        entry={"model": "model.onnx"}, options={"threads": 1},
    ).save(path)  # fmt: skip


def drop_version(path: Path, name: str, size: int, seed: int) -> None:
    """Write a version beside the repository and rename it into place (atomic)."""
    staging = path.parent / f".staging-{path.name}"
    save_gemm(staging, name, size, seed)
    os.rename(staging, path)


def grpc_input(array: np.ndarray, name: str = "x") -> Any:
    tensor = tgrpc.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture
def serve() -> Any:
    running: list[Served] = []

    def start(repository: ModelRepository, wait_ready: bool = True) -> Served:
        running.append(Served(repository).start(wait_ready))
        return running[-1]

    yield start
    for served in running:
        served.stop()


# ------------------------------------------------------------------ version policy


@pytest.mark.parametrize(("text", "available", "chosen"), [
    ("latest", [3, 1, 2], [3]),
    ("latest:2", [3, 1, 2], [2, 3]),
    ("latest:5", [1, 2], [1, 2]),
    ("all", [2, 1], [1, 2]),
    ("specific:1,3", [1, 2, 3, 4], [1, 3]),
    ("specific:7", [1, 2], []),
])  # fmt: skip
def test_version_policy(text: str, available: list[int], chosen: list[int]) -> None:
    policy = VersionPolicy.parse(text)
    assert policy.select(available) == chosen
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["latest:0", "newest", "specific:", "specific:a", "all:2"])
def test_bad_version_policy_names_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="latest, latest:N"):
        VersionPolicy.parse(text)


# ------------------------------------------------------------- the main scenario


@pytest.mark.service
@pytest.mark.slow
def test_three_models_unload_and_live_swap_under_load(tmp_path: Path, serve: Any) -> None:
    root = tmp_path / "repo"
    for version in (1, 2):
        save_gemm(root / "lin" / str(version), "lin", 16, seed=version)
    (root / "lin" / "config.json").write_text('{"version_policy": "latest:2", "max_batch": 16}')
    save_gemm(root / "gemm64" / "1", "gemm64", 64, seed=11)
    save_pair(root / "pair" / "1")
    repository = ModelRepository(label="http+grpc", poll_s=0.2, allow_model_control=True)
    repository.add_directory(root)
    served = serve(repository)
    g = tgrpc.InferenceServerClient(served.grpc.address)
    h = thttp.InferenceServerClient(f"127.0.0.1:{served.http.port}")

    inputs = {"lin": np.linspace(-1, 1, 16, dtype=np.float32)[None],
              "gemm64": np.linspace(-2, 2, 64, dtype=np.float32)[None]}  # fmt: skip
    expected: dict[tuple[str, str], np.ndarray] = {}

    def expect(model: str, version: str) -> np.ndarray:
        if (model, version) not in expected:
            artifact = irkit.runtime.load(root / model / version)
            expected[model, version] = artifact.run({"x": inputs[model]})["y"]
        return expected[model, version]

    # every model and version answers, over both protocols
    assert [(m["name"], m["version"], m["state"]) for m in h.get_model_repository_index()] == [
        ("gemm64", "1", "READY"), ("lin", "1", "READY"), ("lin", "2", "READY"),
        ("pair", "1", "READY")]  # fmt: skip
    for version in ("1", "2"):
        got = g.infer("lin", [grpc_input(inputs["lin"])], model_version=version).as_numpy("y")
        np.testing.assert_allclose(got, expect("lin", version), rtol=1e-5, atol=1e-5)
    assert not np.allclose(expect("lin", "1"), expect("lin", "2"))
    latest = g.infer("lin", [grpc_input(inputs["lin"])])
    assert latest.get_response().model_version == "2"
    assert g.get_model_metadata("lin").versions == ["1", "2"]
    got = g.infer("gemm64", [grpc_input(inputs["gemm64"])]).as_numpy("y")
    np.testing.assert_allclose(got, expect("gemm64", "1"), rtol=1e-5, atol=1e-5)
    x, s = np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)
    pair = irkit.runtime.load(root / "pair" / "1").run({"x": x, "s": s})
    result = g.infer("pair", [grpc_input(x, "x"), grpc_input(s, "s")])
    np.testing.assert_array_equal(result.as_numpy("label"), pair["label"])

    # unload one model (gRPC), the others keep serving; load it back (HTTP)
    g.unload_model("pair")
    with pytest.raises(InferenceServerException) as info:
        g.infer("pair", [grpc_input(x, "x"), grpc_input(s, "s")])
    assert info.value.status() == "StatusCode.UNAVAILABLE" and "unloaded" in info.value.message()
    assert not g.is_model_ready("pair") and g.is_server_ready()
    index = {(m["name"], m["version"]): m for m in h.get_model_repository_index()}
    assert index["pair", ""]["state"] == "UNAVAILABLE" and index["pair", ""]["reason"] == "unloaded"
    time.sleep(0.5)  # polls pass: an unloaded model stays unloaded
    assert not g.is_model_ready("pair")
    h.load_model("pair")
    assert g.is_model_ready("pair")
    np.testing.assert_array_equal(
        g.infer("pair", [grpc_input(x, "x"), grpc_input(s, "s")]).as_numpy("label"),
        pair["label"])

    # live swap: new versions of lin and gemm64 appear while 64 clients keep asking
    counts: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []

    async def hammer() -> float:
        stop = asyncio.Event()
        grpc_client = tgrpc_aio.InferenceServerClient(served.grpc.address)
        http_client = thttp_aio.InferenceServerClient(f"127.0.0.1:{served.http.port}",
                                                      conn_limit=16)  # fmt: skip

        async def client(i: int) -> None:
            model = "lin" if i % 2 else "gemm64"
            array = inputs[model]
            while not stop.is_set():
                try:
                    if i % 8 == 0:  # one client in eight speaks HTTP
                        tensor = thttp.InferInput("x", list(array.shape), "FP32")
                        tensor.set_data_from_numpy(array)
                        result = await http_client.infer(model, [tensor])
                        version = result.get_response()["model_version"]
                    else:
                        result = await grpc_client.infer(model, [grpc_input(array)])
                        version = result.get_response().model_version
                    if not np.allclose(result.as_numpy("y"), expect(model, version),
                                       rtol=1e-5, atol=1e-5):  # fmt: skip
                        failures.append(f"{model} v{version}: wrong outputs")
                    counts[model, version] += 1
                except Exception as exc:  # every failure is counted, none tolerated
                    failures.append(f"{model}: {exc!r}")

        async def swap() -> float:
            warmup = time.monotonic() + 60  # a slow machine takes a while to answer the first
            while time.monotonic() < warmup and sum(counts.values()) <= 64 and not failures:
                await asyncio.sleep(0.05)
            before = sum(counts.values())
            await asyncio.to_thread(drop_version, root / "lin" / "3", "lin", 16, 3)
            await asyncio.to_thread(drop_version, root / "gemm64" / "2", "gemm64", 64, 12)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                    counts["lin", "3"] < 100 or counts["gemm64", "2"] < 100):
                await asyncio.sleep(0.05)
            stop.set()
            return before

        try:
            tasks = [asyncio.create_task(client(i)) for i in range(64)]
            before = await swap()
            await asyncio.gather(*tasks)
        finally:
            await grpc_client.close()
            await http_client.close()
        return before

    before_swap = asyncio.run(hammer())
    print(f"requests before the swap: {before_swap}, by model and version: {dict(counts)}")
    assert failures == [], f"{len(failures)} failed requests, e.g. {failures[:3]}"
    assert before_swap > 64, "the load did not run before the swap"
    assert counts["lin", "2"] > 0 and counts["lin", "3"] >= 100, counts
    assert counts["gemm64", "1"] > 0 and counts["gemm64", "2"] >= 100, counts
    assert set(counts) == {("lin", "2"), ("lin", "3"), ("gemm64", "1"), ("gemm64", "2")}

    # after the swap: the policy's versions, and the new versions' outputs
    assert [(m["name"], m["version"]) for m in h.get_model_repository_index(
        ) if m["state"] == "READY"] == [("gemm64", "2"), ("lin", "2"), ("lin", "3"), ("pair", "1")]
    for model, version in (("lin", "3"), ("gemm64", "2")):
        result = g.infer(model, [grpc_input(inputs[model])])
        assert result.get_response().model_version == version
        np.testing.assert_allclose(result.as_numpy("y"), expect(model, version),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(InferenceServerException) as info:
        g.infer("lin", [grpc_input(inputs["lin"])], model_version="1")
    assert info.value.status() == "StatusCode.NOT_FOUND"


# -------------------------------------------------------- readiness and draining


@pytest.mark.service
def test_ready_only_when_every_required_model_is(tmp_path: Path, serve: Any) -> None:
    root = tmp_path / "repo"
    save_gemm(root / "good" / "1", "good", 8, 1)
    broken = save_gemm(root / "needed" / "1", "needed", 8, 2)
    (broken / "model.onnx").write_bytes(b"not the file the manifest names")
    optional = save_gemm(root / "extra" / "1", "extra", 8, 3)
    (optional / "model.onnx").write_bytes(b"broken too")
    (root / "extra" / "config.json").write_text('{"required": false}')
    repository = ModelRepository(poll_s=0.1)
    repository.add_directory(root)
    served = serve(repository, wait_ready=False)
    g = tgrpc.InferenceServerClient(served.grpc.address)
    deadline = time.monotonic() + 20
    while not g.is_model_ready("good") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g.is_model_ready("good") and not g.is_server_ready()
    index = {m.name: m for m in g.get_model_repository_index().models}
    assert index["needed"].state == "UNAVAILABLE" and "checksum mismatch" in index["needed"].reason
    response = httpx.get(f"{served.http.url}/v2/health/ready")
    assert response.status_code == 503 and "'needed'" in response.json()["error"]
    assert "'extra'" not in response.json()["error"]  # not required
    shutil.rmtree(broken)
    save_gemm(broken, "needed", 8, 2)  # fixed files: the next poll loads them
    assert repository.ready.wait(20) and g.is_server_ready()
    assert not g.is_model_ready("extra")


@pytest.mark.service
def test_stop_drains_every_model_batcher(digits_model: Any, pair_model: Any,
                                         gated: Any) -> None:
    slow_digits = gated(digits_model, gate_run=True)
    slow_pair = gated(pair_model, gate_run=True)
    repository = ModelRepository(label="http+grpc")
    repository.add_model("digits", slow_digits)
    repository.add_model("pair", slow_pair)
    served = Served(repository).start()
    g = tgrpc.InferenceServerClient(served.grpc.address)
    x = np.ones((1, 64), np.float32)
    pair_inputs = [grpc_input(np.ones((1, 4), np.float32), "x"),
                   grpc_input(np.ones((1, 3), np.float32), "s")]  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        calls: list[Callable[[], Any]] = [lambda: g.infer("digits", [grpc_input(x)])] * 4
        calls += [lambda: g.infer("pair", pair_inputs)] * 4
        futures = [pool.submit(call) for call in calls]
        assert slow_digits.running.wait(10) and slow_pair.running.wait(10)
        deadline = time.monotonic() + 10
        while sum(b.in_flight for b in repository.batchers()) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        served.grpc.stop()  # as on SIGTERM: stop accepting, finish what is in flight
        time.sleep(0.3)
        assert served.thread.is_alive(), "stopped before the in-flight requests finished"
        slow_digits.run_gate.set()
        slow_pair.run_gate.set()
        results = [f.result(20) for f in futures]
    served.thread.join(30)
    assert not served.thread.is_alive()
    assert [r.as_numpy("logits").shape for r in results[:4]] == [(1, 10)] * 4
    assert [r.as_numpy("label").shape for r in results[4:]] == [(1,)] * 4
    assert repository.batchers() == [] and not repository.ready.is_set()
