"""Runtime loader for ``ort`` artifacts: an ONNX model run by ONNX Runtime.

Artifact layout: ``entry = {"model": "model.onnx"}``; ``options`` may hold ``threads``
(intra-op threads, 0 = ORT default), ``optimization_level`` (disable, basic, extended,
all) and ``providers`` (list of execution providers; default CPU). Any of them can be
overridden at load time: ``irkit.runtime.load(path, threads=2)``.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once, so the
runner is ``thread_safe``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
_KNOWN_OPTIONS = ("threads", "optimization_level", "providers")


class OrtRunner:
    """An ``onnxruntime.InferenceSession`` over the artifact's model, outputs by name."""

    thread_safe = True

    def __init__(self, session: Any, output_names: Sequence[str]) -> None:
        self.session = session
        self.output_names = list(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self.session = None


def _session_options(options: Mapping[str, Any], where: str) -> Any:
    import onnxruntime as ort

    unknown = sorted(set(options) - set(_KNOWN_OPTIONS))
    if unknown:
        raise ArtifactError(
            f"{where}: unknown ort option(s) {', '.join(unknown)} "
            f"(known: {', '.join(_KNOWN_OPTIONS)})"
        )
    session_options = ort.SessionOptions()
    threads = options.get("threads", 0)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ArtifactError(f"{where}: ort option threads={threads!r} must be an int >= 0")
    session_options.intra_op_num_threads = threads
    level = options.get("optimization_level", "all")
    if level not in OPTIMIZATION_LEVELS:
        raise ArtifactError(
            f"{where}: ort option optimization_level={level!r} must be one of "
            f"{', '.join(OPTIMIZATION_LEVELS)}"
        )
    session_options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return session_options


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any) -> OrtRunner:
    """Open the artifact's ONNX model in an ONNX Runtime session."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ArtifactError(
            f"artifact {artifact_dir} needs onnxruntime (pip install onnxruntime): {exc}"
        ) from exc

    where = f"artifact {artifact_dir}"
    options = {**manifest.options, **overrides}
    session_options = _session_options(options, where)
    providers = options.get("providers") or ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ArtifactError(
            f"{where}: execution provider(s) {', '.join(missing)} are not available in this "
            f"onnxruntime (available: {', '.join(available)})"
        )

    model_file = manifest.entry.get("model", "model.onnx")
    if not isinstance(model_file, str):
        raise ArtifactError(f"{where}: entry.model must be a file name, got {model_file!r}")
    model_bytes = read_verified(artifact_dir, manifest, model_file)
    try:
        session = ort.InferenceSession(model_bytes, session_options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise ArtifactError(
            f"{where}: onnxruntime could not load {model_file}: {exc}"
        ) from exc

    session_inputs = {i.name for i in session.get_inputs()}
    session_outputs = {o.name for o in session.get_outputs()}
    declared_inputs = {spec.name for spec in manifest.inputs}
    if session_inputs != declared_inputs:
        raise ArtifactError(
            f"{where}: {model_file} has inputs {sorted(session_inputs)} but the manifest "
            f"declares {sorted(declared_inputs)}"
        )
    missing_outputs = [s.name for s in manifest.outputs if s.name not in session_outputs]
    if missing_outputs:
        raise ArtifactError(
            f"{where}: {model_file} has no output(s) {missing_outputs} declared by the manifest"
        )
    return OrtRunner(session, [spec.name for spec in manifest.outputs])
