"""A seeded family of small models drawn from the shapes users deploy, not the built-ins.

CNNs: images 8x8 to 64x64 with 1 or 3 channels, 2-4 stages of Conv (1x1, 3x3 or 5x5,
stride 1 or 2, channel counts that are not powers of two) + BatchNorm + ReLU, pools
between some stages, global average pooling and a linear head. MLPs and small
transformer encoders (d 48-128, 2 layers, sequence 16-48). Every model is exported with
its BatchNorm nodes kept (``irkit.testing.digits.export_legacy``'s exporter), so what the
``fuse`` pass folds is really there.

``family(seed)`` returns the specs; ``export(spec, path)`` writes one ONNX file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = (12, 20, 24, 36, 40, 48, 56, 72)
SIZES = (8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class Stage:
    channels: int
    kernel: int
    stride: int
    pool: str  # "", "max" or "avg": a 2x2 pool after the stage


@dataclass(frozen=True)
class ModelSpec:
    """One model of the family: ``kind`` is "cnn", "mlp" or "transformer"."""

    name: str
    kind: str
    input_shape: tuple[int, ...]  # without the batch dim
    stages: tuple[Stage, ...] = ()
    dims: tuple[int, ...] = ()  # MLP widths
    d_model: int = 0
    heads: int = 0
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def _cnn(rng: np.random.Generator, index: int) -> ModelSpec:
    size = int(rng.choice(SIZES))
    cin = int(rng.choice((1, 3)))
    stages: list[Stage] = []
    spatial = size
    for position in range(int(rng.integers(2, 5))):
        kernel = int(rng.choice((1, 3, 3, 5))) if position else int(rng.choice((3, 5)))
        stride = 2 if spatial >= 16 and rng.random() < 0.3 else 1
        spatial = -(-spatial // stride)
        pool = ""
        if spatial >= 8 and rng.random() < 0.4:
            pool = str(rng.choice(("max", "avg")))
            spatial //= 2
        stages.append(Stage(int(rng.choice(CHANNELS)), kernel, stride, pool))
    return ModelSpec(f"cnn{index:02d}_{cin}x{size}", "cnn", (cin, size, size), tuple(stages),
                     seed=index)


def family(seed: int = 0, cnns: int = 12, mlps: int = 2, transformers: int = 2
           ) -> list[ModelSpec]:
    """The seeded family: ``cnns`` CNNs, ``mlps`` MLPs and ``transformers`` encoders."""
    rng = np.random.default_rng(seed)
    specs = [_cnn(rng, i) for i in range(cnns)]
    for i in range(mlps):
        width = int(rng.choice((200, 300, 500)))
        dims = (int(rng.choice((64, 100, 784))), width, int(rng.choice((120, 250))), 10)
        specs.append(ModelSpec(f"mlp{i}_{'-'.join(map(str, dims))}", "mlp", (dims[0],),
                               dims=dims, seed=100 + i))
    for i in range(transformers):
        d, seq = int(rng.choice((48, 96, 128))), int(rng.choice((16, 32, 48)))
        specs.append(ModelSpec(f"transformer{i}_d{d}_s{seq}", "transformer", (seq, d),
                               d_model=d, heads=int(rng.choice((2, 4))), seed=200 + i))
    return specs


def build_module(spec: ModelSpec) -> Any:
    """The torch module of ``spec`` (eval mode, seeded weights and BatchNorm statistics)."""
    import torch
    from torch import nn

    torch.manual_seed(spec.seed)
    if spec.kind == "mlp":
        layers: list[nn.Module] = []
        for a, b in zip(spec.dims[:-1], spec.dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1]).eval()
    if spec.kind == "transformer":
        from irkit.testing.models import make_transformer_encoder

        return make_transformer_encoder(spec.d_model, spec.heads, 2, spec.input_shape[0],
                                        spec.seed)
    layers = []
    channels = spec.input_shape[0]
    for stage in spec.stages:
        layers += [nn.Conv2d(channels, stage.channels, stage.kernel, stage.stride,
                             stage.kernel // 2), nn.BatchNorm2d(stage.channels), nn.ReLU()]
        if stage.pool:
            layers.append(nn.MaxPool2d(2) if stage.pool == "max" else nn.AvgPool2d(2))
        channels = stage.channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    model = nn.Sequential(*layers).eval()
    generator = torch.Generator().manual_seed(spec.seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics as after training
            with torch.no_grad():
                size = module.num_features
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
    return model


def inputs(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """Seeded inputs of ``spec`` at ``batch``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)


def export(spec: ModelSpec, path: Path) -> Path:
    """Write ``spec`` as ONNX (input ``x``, output ``logits``, batch dim ``N``, opset 17)."""
    from irkit.testing.digits import export_legacy
    from irkit.testing.models import export_onnx

    module = build_module(spec)
    example = inputs(spec, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.kind == "transformer":  # the legacy exporter lacks its attention ops
            import torch

            return export_onnx(module, (torch.from_numpy(example),), path,
                               input_names=["x"], output_names=["logits"])
        export_legacy(module, example, path)
    return path
