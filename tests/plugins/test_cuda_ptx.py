"""Every kernel of the built-in models, compiled by the cuda backend to PTX for sm_90 and
assembled by ``ptxas -arch=sm_90`` (the CUDA 13.0 assembler the GPU machines' drivers
match). No GPU needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")

from irkit.testing.gpu import assemble, ptx_toolchain_missing, ptxas

if ptx_toolchain_missing() or ptxas() is None:
    pytest.skip(str(ptx_toolchain_missing() or "ptxas not found"), allow_module_level=True)

import irkit

# (model, heavy ops that must come from the GPU templates, not the CPU register tiles)
MODELS = {
    "mlp": 3, "gemm512": 1, "mobilenet": 7, "resnet": 12, "transformer": 10,
    "digits_mlp": 2, "digits_cnn": 3,
}


def _graph(name: str, digits_models: Path) -> Any:
    from irkit.bench import builtin_model

    if name.startswith("digits_"):
        return irkit.optimize(irkit.load_model(digits_models / f"{name}.onnx"), "fuse")
    if name in ("resnet", "transformer"):
        pytest.importorskip("torch")
    return builtin_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MODELS, pytest.param("minilm", marks=pytest.mark.slow)])
def test_ptxas_accepts_every_kernel(name: str, request: pytest.FixtureRequest,
                                    tmp_path: Path) -> None:
    digits = request.getfixturevalue("digits_models") if name.startswith("digits_") else None
    graph = _graph(name, digits) if digits else _graph(name, tmp_path)
    artifact = irkit.compile(graph, target="cuda")
    (segment,) = artifact.entry["variants"][0]["segments"]
    kernels = segment["kernels"]
    ptx = [f for f in artifact.files if f.endswith(".ptx")]
    assert len(ptx) == len(kernels) > 0
    for relpath in ptx:
        result = assemble(artifact.files[relpath], "sm_90", tmp_path)
        assert result.returncode == 0, f"{name} {relpath}: {result.stderr[-2000:]}"
        assert b".target sm_90" in artifact.files[relpath]
    templates = segment["info"]["kernel_shapes"].get("template", 0)
    assert templates >= MODELS.get(name, 1), segment["info"]["kernel_shapes"]
