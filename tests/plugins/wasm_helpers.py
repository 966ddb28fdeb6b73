"""Helpers of the wasm tests: run artifacts in node through their ``model.mjs``."""

from __future__ import annotations

import atexit
import base64
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RUNNER = Path(__file__).resolve().parent / "wasm" / "run_model.mjs"


def node() -> str | None:
    return shutil.which("node")


def tensor(array: np.ndarray, bare: bool = False) -> dict[str, Any]:
    """An input for run_model.mjs: ``{data, shape}``, or the bare typed array."""
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.name, "shape": None if bare else list(array.shape),
            "b64": base64.b64encode(array.tobytes()).decode()}


def decode(output: dict[str, Any]) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(output["b64"]), dtype=output["dtype"])
    return data.reshape(output["shape"])


def run_in_node(requests: list[dict[str, Any]], timeout: float = 300) -> list[dict[str, Any]]:
    """One node process answers every request (see run_model.mjs); outputs decoded."""
    binary = node()
    assert binary is not None, "node is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.json"
        path.write_text(json.dumps(requests))
        result = subprocess.run([binary, str(RUNNER), str(path)], capture_output=True,
                                text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == len(requests), result.stderr[-2000:]
    for answer in answers:
        if "outputs" in answer:
            answer["outputs"] = {k: decode(v) for k, v in answer["outputs"].items()}
    return answers


def matmul_onnx(k: int, n: int, seed: int = 0) -> Any:
    """``y = x @ W``: input ``x`` f32[N, k], output ``y`` f32[N, n]."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@functools.cache
def builtin_artifact(name: str) -> tuple[Any, Path]:
    """A built-in benchmark model's graph and its wasm artifact, compiled once per test
    session for the wasmtime and the node tests (compiling dominates their cost)."""
    import irkit
    from irkit.bench import builtin_model

    graph = builtin_model(name)
    root = Path(tempfile.mkdtemp(prefix="irkit-wasm-builtin-"))
    atexit.register(shutil.rmtree, root, True)
    return graph, irkit.compile(graph, target="wasm").save(root / name)
