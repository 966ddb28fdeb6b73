"""ONNX frontend plugin: ``.onnx`` files and ``onnx.ModelProto`` objects, imported by
:func:`irkit.interop.onnx_import.load_onnx`."""

from __future__ import annotations

import os
from typing import Any

import onnx

from irkit.interop.onnx_import import load_onnx
from irkit.ir import Graph


class OnnxFrontend:
    """Frontend plugin ``onnx``: loads ``.onnx`` files and ``onnx.ModelProto`` objects."""

    name = "onnx"

    def can_load(self, source: Any) -> bool:
        if isinstance(source, onnx.ModelProto):
            return True
        return isinstance(source, str | os.PathLike) and str(source).endswith(".onnx")

    def load(self, source: Any, **options: Any) -> Graph:
        return load_onnx(source, **options)
