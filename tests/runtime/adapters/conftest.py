"""Shared fixtures for adapter tests: real ``ort`` artifacts and a controllable model.

- ``digits_dir`` / ``digits_model``: the digits MLP (x f32[N,64] -> logits f32[N,10]) as a
  saved ``ort`` artifact, from ``specs/models/digits_mlp.onnx`` when scripts/make_models.py
  has produced it, else an equivalent seeded MLP built with onnx.helper.
- ``gemm_dir``: a 512x512 GEMM model (x f32[N,512] -> y f32[N,512]).
- ``pair_model``: two inputs and two outputs, one of them INT64 (see its docstring).
- ``GatedModel``: wraps a CompiledModel; its warmup and/or run block on events, to force
  503 (not yet warmed up), 429 (queue full) and 504 (timeout) deterministically.
- ``gated(model, gate_run=True)``: factory of GatedModels (gates opened at teardown).
- ``start_server(adapter)``: a real uvicorn server on 127.0.0.1 in a thread, stopped at
  teardown.
- ``serve(repository)``: an HTTP and a gRPC frontend over one ``ModelRepository`` on free
  ports (``Served``: ``.http``, ``.grpc``, ``.repository``), stopped at teardown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import irkit.runtime
from irkit.runtime import Artifact, CompiledModel, TensorSpec
from irkit.runtime.adapters.repository import ModelRepository
from irkit.testing.onnx_models import gemm_model
from irkit.testing.serving import Served

REPO = Path(__file__).resolve().parents[3]
DIGITS_ONNX = REPO / "specs" / "models" / "digits_mlp.onnx"


def mlp_onnx_bytes(seed: int = 0) -> bytes:
    """A seeded 64-32-10 ReLU MLP with the digits model's signature."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((64, 32)).astype(np.float32) * 0.2
    b0 = rng.standard_normal(32).astype(np.float32) * 0.1
    w1 = rng.standard_normal((32, 10)).astype(np.float32) * 0.2
    b1 = rng.standard_normal(10).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w1", "b1"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w0, "w0"), (b0, "b0"), (w1, "w1"), (b1, "b1"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_onnx_bytes(size: int = 512, seed: int = 1) -> bytes:
    """y = x @ W + b with W f32[size,size]."""
    return gemm_model(size, seed).SerializeToString()


def save_ort_artifact(path: Path, name: str, onnx_bytes: bytes, inputs: Any, outputs: Any) -> Path:
    artifact = Artifact(
        name=name,
        backend="ort",
        target="cpu",
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        files={"model.onnx": onnx_bytes},
        entry={"model": "model.onnx"},
        options={"threads": 1},
    )
    return artifact.save(path)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = DIGITS_ONNX.read_bytes() if DIGITS_ONNX.is_file() else mlp_onnx_bytes()
    return save_ort_artifact(
        tmp_path_factory.mktemp("artifacts") / "digits",
        "digits",
        data,
        [TensorSpec("x", np.dtype(np.float32), ("N", 64))],
        [TensorSpec("logits", np.dtype(np.float32), ("N", 10))],
    )


@pytest.fixture(scope="session")
def gemm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_ort_artifact(
        tmp_path_factory.mktemp("artifacts") / "gemm512",
        "gemm512",
        gemm_onnx_bytes(),
        [TensorSpec("x", np.dtype(np.float32), ("N", 512))],
        [TensorSpec("y", np.dtype(np.float32), ("N", 512))],
    )


@pytest.fixture(scope="session")
def digits_model(digits_dir: Path) -> CompiledModel:
    return irkit.runtime.load(digits_dir)


@pytest.fixture(scope="session")
def pair_model(tmp_path_factory: pytest.TempPathFactory) -> CompiledModel:
    """Two inputs, two outputs of different dtypes: x f32[N,4], s f32[N,3] ->
    y = relu(x @ W + s) f32[N,3], label = argmax(y) i64[N]."""
    from irkit.testing.onnx_models import pair_model as pair_proto

    model = pair_proto(5, name="pair")
    directory = save_ort_artifact(
        tmp_path_factory.mktemp("artifacts") / "pair",
        "pair",
        model.SerializeToString(),
        [TensorSpec("x", np.dtype(np.float32), ("N", 4)),
         TensorSpec("s", np.dtype(np.float32), ("N", 3))],
        [TensorSpec("y", np.dtype(np.float32), ("N", 3)),
         TensorSpec("label", np.dtype(np.int64), ("N",))],
    )  # fmt: skip
    return irkit.runtime.load(directory)


class GatedModel:
    """A CompiledModel whose warmup/run wait on events (set them to let calls through)."""

    def __init__(self, inner: CompiledModel, *, gate_warmup: bool = False, gate_run: bool = False):
        self.inner = inner
        self.name = inner.name
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.warmup_gate = threading.Event()
        self.run_gate = threading.Event()
        if not gate_warmup:
            self.warmup_gate.set()
        if not gate_run:
            self.run_gate.set()
        self.running = threading.Event()  # set while a run() waits at the gate
        self.batch_sizes: list[int] = []

    def validate(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.inner.validate(inputs)

    def warmup(self) -> None:
        self.warmup_gate.wait(30)
        self.inner.warmup()

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self.running.set()
        self.run_gate.wait(30)
        self.batch_sizes.append(len(next(iter(inputs.values()))))
        return self.inner.run(inputs)

    def signature(self) -> dict[str, Any]:
        return self.inner.signature()


@pytest.fixture
def gated() -> Iterator[Callable[..., GatedModel]]:
    """Factory of GatedModels; every gate is opened at teardown so no thread hangs."""
    made: list[GatedModel] = []

    def make(inner: CompiledModel, **gates: bool) -> GatedModel:
        made.append(GatedModel(inner, **gates))
        return made[-1]

    yield make
    for model in made:
        model.warmup_gate.set()
        model.run_gate.set()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Any]]:
    """``start_server(adapter, wait_ready=True)`` runs ``adapter.serve()`` in a thread
    (a real uvicorn on 127.0.0.1; use ``port=0``) and stops and joins it at teardown."""
    running: list[tuple[Any, threading.Thread]] = []

    def start(adapter: Any, wait_ready: bool = True) -> Any:
        thread = threading.Thread(target=adapter.serve, name="test-http-server", daemon=True)
        thread.start()
        running.append((adapter, thread))
        assert adapter.started.wait(20), "server did not start"
        if wait_ready:
            assert adapter.ready.wait(20), "model did not become ready"
        return adapter

    yield start
    for adapter, thread in running:
        adapter.stop()
        thread.join(30)
        assert not thread.is_alive(), "server did not stop"


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    running: list[Served] = []

    def start(repository: ModelRepository, wait_ready: bool = True, **options: Any) -> Served:
        served = Served(repository, **options)
        running.append(served)
        return served.start(wait_ready)

    yield start
    for served in running:
        served.stop()
