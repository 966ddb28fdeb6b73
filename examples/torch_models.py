"""PyTorch modules for the README's "PyTorch models" section.

A factory is a function that returns a module, or ``(module, example_inputs)``; irkit
names it ``package.module:function`` and imports it from the current directory too::

    irkit compile examples.torch_models:resconv --arch native -o build/resconv
"""

from __future__ import annotations

import torch
from torch import nn


class ResConv(nn.Module):
    """Conv + BatchNorm + ReLU, a residual block, global average pool, a linear head."""

    def __init__(self, channels: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.BatchNorm2d(channels))
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))


def resconv() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResConv on f32[N, 3, 16, 16] images (the batch N is dynamic)."""
    torch.manual_seed(0)
    return ResConv().eval(), (torch.randn(2, 3, 16, 16),)


def encoder() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, dict[int, str]]]:
    """A stock 2-layer ``nn.TransformerEncoder`` (d=32, 4 heads) on f32[N, S, 32]: the
    third item declares the batch N and the sequence length S of ``src`` dynamic."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return (nn.TransformerEncoder(layer, 2).eval(), (torch.randn(2, 10, 32),),
            {"src": {0: "N", 1: "S"}})


class Tagger(nn.Module):
    """A 2-layer ``nn.LSTM`` and a linear head per time step (a sequence tagger)."""

    def __init__(self, features: int = 16, hidden: int = 32, tags: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, 2, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def tagger() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, dict[int, str]]]:
    """Tagger on f32[N, S, 16], batch and sequence length dynamic."""
    torch.manual_seed(0)
    return Tagger().eval(), (torch.randn(2, 10, 16),), {"x": {0: "N", 1: "S"}}
