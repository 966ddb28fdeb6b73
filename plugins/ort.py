"""The ``ort`` backend: export the graph to ONNX and let ONNX Runtime run it.

``irkit.compile(graph, target="ort", threads=0, optimization_level="all")`` returns an
:class:`~irkit.runtime.artifact.Artifact` holding ``model.onnx``; the runtime loader
``irkit.runtime.backends.ort`` opens it in an ``onnxruntime.InferenceSession``. This is the
reference backend: every other backend is compared against it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from irkit.backend import BackendError, build_artifact
from irkit.runtime.artifact import Artifact
from irkit.runtime.backends.ort import OPTIMIZATION_LEVELS
from irkit.runtime.options import Option, resolve_options

MODEL_FILE = "model.onnx"


class OrtBackendError(BackendError):
    """The graph cannot be compiled for ONNX Runtime (bad option, unsupported type, …)."""


class OrtBackend:
    """Compile a Graph into an ``ort`` artifact (ONNX model + manifest)."""

    name = "ort"
    options: ClassVar[dict[str, Option]] = {
        "threads": Option(int, 0, "intra-op threads; 0 = ORT default"),
        "optimization_level": Option(
            str,
            "all",
            "ONNX Runtime graph optimization level used when the artifact is loaded",
            choices=OPTIMIZATION_LEVELS,
        ),
    }

    def compile(self, graph: Any, **options: Any) -> Artifact:
        """Export ``graph`` to ONNX and package it; ONNX Runtime must be able to load it."""
        from irkit.interop.onnx_export import to_onnx

        resolved = resolve_options("ort backend", self.options, options, OrtBackendError)
        if resolved["threads"] < 0:
            raise OrtBackendError(f"ort option threads={resolved['threads']} must be >= 0")
        name = getattr(graph, "name", "") or "model"
        model = to_onnx(graph)
        try:
            model_bytes = model.SerializeToString()
        except ValueError as exc:  # protobuf refuses messages over 2 GiB
            raise OrtBackendError(f"graph {name!r} is too large for one ONNX file: {exc}") from exc
        self._check_loadable(model_bytes, name)
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        return build_artifact(
            graph, backend=self.name, target="cpu", files={MODEL_FILE: model_bytes},
            entry={"model": MODEL_FILE, "ir_version": model.ir_version, "opsets": opsets},
            options=resolved)

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
