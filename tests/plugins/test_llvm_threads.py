"""The llvm runner's worker threads (``irkit.runtime.runner.Workers``): split kernels give the one-thread
results, a worker's error reaches the caller, workers stop on close, and a forked child
process (Kafka ``processes = N``, multiprocessing) gets threads of its own instead of
waiting forever on its parent's."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

import irkit
import irkit.runtime
from irkit.bench import mlp_onnx
from irkit.runtime.runner import Workers


def split_model(tmp_path: Path) -> Any:
    artifact = irkit.compile(irkit.load_model(mlp_onnx((32, 512, 256, 10))), target="llvm")
    return irkit.runtime.load(artifact.save(tmp_path / "mlp"), threads=2, parallel_min_us=0)


def workers_alive() -> int:
    return sum(t.name == "irkit-kernel-worker" for t in threading.enumerate())


def test_a_workers_error_reaches_the_caller() -> None:
    workers = Workers(1)

    def fail() -> None:
        raise RuntimeError("in the worker")

    workers.start(0, fail)
    with pytest.raises(RuntimeError, match="in the worker"):
        workers.wait(0)
    done: list[int] = []
    workers.start(0, lambda: done.append(1))  # still serving after the error
    workers.wait(0)
    assert done == [1]
    workers.close()


def test_split_calls_match_and_close_stops_the_workers(tmp_path: Path) -> None:
    before = workers_alive()
    model = split_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((40, 32)).astype(np.float32)
    first = model(x=x)["y"]
    for _ in range(4):
        np.testing.assert_array_equal(model(x=x)["y"], first)
    assert all(model._runner._split_plan[(40,)])
    assert workers_alive() == before + 1
    model.close()
    deadline = time.monotonic() + 10
    while workers_alive() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers_alive() == before


def _child(model: Any, x: np.ndarray, want: np.ndarray, results: Any) -> None:
    results.put(bool(np.array_equal(model(x=x)["y"], want)))


def test_a_forked_child_runs_split_kernels(tmp_path: Path) -> None:
    model = split_model(tmp_path)
    x = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32)
    for _ in range(3):
        want = model(x=x)["y"]
    assert all(model._runner._split_plan[(40,)])
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child, args=(model, x, want, results))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the child hung on its parent's worker threads"
    assert child.exitcode == 0 and results.get(timeout=5) is True
    model.close()
