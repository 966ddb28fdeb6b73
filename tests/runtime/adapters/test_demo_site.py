"""``/demo/`` on a real HTTP server for wasm builds of two models: the page draws one 8x8
digit (64 float32 values), so a model with another input is left out with the reason
(its infer route still serves it), and ``models.json`` names the builds the artifact
holds. The browser itself is driven in test_demo_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

from onnx import TensorProto, helper, numpy_helper

import irkit
import irkit.runtime
from irkit.runtime.adapters.http import HttpAdapter

pytestmark = pytest.mark.service


def _wasm_gemm(k: int, n: int, path: Path) -> Path:
    w = np.random.default_rng(k).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], f"gemm{k}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return irkit.compile(irkit.load_model(model), target="wasm",
                         arch="wasm32-simd").save(path)


def test_demo_leaves_out_a_model_it_cannot_feed(tmp_path: Path, start_server: Any) -> None:
    digits, odd = _wasm_gemm(64, 10, tmp_path / "digits"), _wasm_gemm(37, 5, tmp_path / "odd")
    odd_only = HttpAdapter(irkit.runtime.load(odd), port=0)
    why = odd_only.add_demo("odd", odd)
    assert why == ("the page draws one 8x8 image (float32, 64 values per sample); "
                   "input 'x' is float32[N, 37]")
    both = HttpAdapter(irkit.runtime.load(digits), port=0)
    assert both.add_demo("digits", digits) is None
    assert both.add_demo("odd", odd) == why
    for adapter in (start_server(odd_only), start_server(both)):
        with httpx.Client(base_url=adapter.url, timeout=30) as client:
            page = client.get("/demo/")
            if adapter is odd_only:  # once a blank page that failed on the first drawing
                assert page.status_code == 404
                assert page.json()["error"] == f"no model served here fits the page: odd: {why}"
                continue
            assert page.status_code == 200 and "<canvas" in page.text
            assert client.get("/demo/models.json").json() == [
                {"model": "digits", "input": "x", "dtype": "float32", "shape": ["N", 64],
                 "output": "y", "variants": ["wasm32-simd"]}]  # was always []
            wasm = client.get("/demo/models/digits/model.wasm")  # one build: no arch folder
            assert wasm.headers["content-type"] == "application/wasm"
            assert wasm.content == (digits / "model.wasm").read_bytes()
