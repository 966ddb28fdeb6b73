"""irkit: take a trained model to a fast, served artifact.

The public API (see DESIGN.md) is re-exported here lazily, so that ``import irkit.runtime``
on a serving box pulls in neither the compiler nor onnx/torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load_model": "irkit.api",
    "evaluate": "irkit.api",
    "to_onnx": "irkit.api",
    "optimize": "irkit.api",
    "compile": "irkit.api",
    "build": "irkit.api",
    "Artifact": "irkit.api",
    "IrkitError": "irkit.errors",
}

if TYPE_CHECKING:
    from irkit.api import Artifact, build, compile, evaluate, load_model, optimize, to_onnx
    from irkit.errors import IrkitError


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    if name == "runtime":
        import importlib

        return importlib.import_module("irkit.runtime")
    raise AttributeError(f"module 'irkit' has no attribute {name!r}")


__all__ = [
    "Artifact",
    "IrkitError",
    "build",
    "compile",
    "evaluate",
    "load_model",
    "optimize",
    "to_onnx",
]
