"""The ``ort`` backend: export the graph to ONNX and let ONNX Runtime run it.

``irkit.compile(graph, target="ort", threads=0, optimization_level="all")`` returns an
:class:`~irkit.runtime.artifact.Artifact` holding ``model.onnx``; the runtime loader
``irkit.runtime.backends.ort`` opens it in an ``onnxruntime.InferenceSession``. This is the
reference backend: every other backend is compared against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from irkit import __version__
from irkit.errors import IrkitError
from irkit.runtime.artifact import Artifact
from irkit.runtime.backends.ort import OPTIMIZATION_LEVELS
from irkit.runtime.options import Option
from irkit.runtime.signature import TensorSpec

MODEL_FILE = "model.onnx"


class OrtBackendError(IrkitError):
    """The graph cannot be compiled for ONNX Runtime (bad option, unsupported type, …)."""


def _tensor_spec(value: Any, side: str, graph_name: str) -> TensorSpec:
    dtype = value.type.dtype
    numpy_dtype = np.dtype(dtype.numpy)
    if numpy_dtype.hasobject or numpy_dtype.kind in "USO":
        raise OrtBackendError(
            f"graph {graph_name!r}: {side} {value.name!r} has dtype {dtype.name.lower()}, "
            "which irkit artifacts cannot carry (numeric and bool tensors only)"
        )
    try:
        return TensorSpec(value.name, numpy_dtype, tuple(value.type.shape))
    except ValueError as exc:
        raise OrtBackendError(f"graph {graph_name!r}: {side} {value.name!r}: {exc}") from exc


def _report(graph: Any) -> list[Any]:
    items: list[Any] = []
    for entry in getattr(graph, "history", None) or []:
        to_dict = getattr(entry, "to_dict", None)
        items.append(to_dict() if callable(to_dict) else entry)
    return items


class OrtBackend:
    """Compile a Graph into an ``ort`` artifact (ONNX model + manifest)."""

    name = "ort"
    options: dict[str, Option] = {
        "threads": Option(int, 0, "intra-op threads; 0 = ORT default"),
        "optimization_level": Option(
            str,
            "all",
            "ONNX Runtime graph optimization level used when the artifact is loaded",
            choices=OPTIMIZATION_LEVELS,
        ),
    }

    def _check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise OrtBackendError(
                f"ort backend has no option(s) {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(self.options)}"
            )
        resolved: dict[str, Any] = {}
        for key, option in self.options.items():
            value = options.get(key, option.default)
            if isinstance(value, bool) or not isinstance(value, option.type):
                raise OrtBackendError(
                    f"ort option {key}={value!r} must be of type {getattr(option.type, '__name__', option.type)}"
                )
            if option.choices is not None and value not in option.choices:
                raise OrtBackendError(
                    f"ort option {key}={value!r} must be one of {', '.join(map(str, option.choices))}"
                )
            resolved[key] = value
        if resolved["threads"] < 0:
            raise OrtBackendError(f"ort option threads={resolved['threads']} must be >= 0")
        return resolved

    def compile(self, graph: Any, **options: Any) -> Artifact:
        """Export ``graph`` to ONNX and package it; ONNX Runtime must be able to load it."""
        from irkit.api import to_onnx

        resolved = self._check_options(options)
        name = getattr(graph, "name", "") or "model"
        inputs = tuple(_tensor_spec(v, "input", name) for v in graph.inputs)
        outputs = tuple(_tensor_spec(v, "output", name) for v in graph.outputs)
        model = to_onnx(graph)
        try:
            model_bytes = model.SerializeToString()
        except ValueError as exc:  # protobuf refuses messages over 2 GiB
            raise OrtBackendError(f"graph {name!r} is too large for one ONNX file: {exc}") from exc
        self._check_loadable(model_bytes, name)
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        return Artifact(
            name=name,
            backend=self.name,
            target="cpu",
            inputs=inputs,
            outputs=outputs,
            files={MODEL_FILE: model_bytes},
            entry={"model": MODEL_FILE, "ir_version": model.ir_version, "opsets": opsets},
            options=resolved,
            report=_report(graph),
            created_by=f"irkit {__version__}",
        )

    @staticmethod
    def _check_loadable(model_bytes: bytes, name: str) -> None:
        """Fail at compile time, not at serving time, if ONNX Runtime rejects the model."""
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            ort.InferenceSession(model_bytes, session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise OrtBackendError(
                f"ONNX Runtime cannot load the ONNX export of graph {name!r}: {exc}"
            ) from exc
