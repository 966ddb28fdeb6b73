"""``CompiledModel``: a loaded artifact that checks its inputs before native code runs.

Empty batches: when an input has a zero-size dim and every output's shape resolves (from
fixed dims and symbols bound by the inputs) to a zero-size shape, the call returns empty
arrays of those shapes and dtypes without running native code — there is no data an
output could hold. When an input is empty but some output is not (a sum over an empty
batch, a CastLike whose ``like`` input is empty), the backend runs: kernels loop zero
times over the empty input, and the llvm runner hands an empty input a zeroed guard
buffer rather than numpy's zero-byte allocation.

Non-finite inputs: by default a call whose floating-point input holds NaN or +/-inf is
refused with an ``InputError`` naming the input and the first such index, before any
backend runs (see ``signature.FiniteCheck``), so every backend answers the same way.
``load(path, reject_nonfinite=False)`` (or setting ``model.reject_nonfinite``) passes
them to the backend instead; what comes out is then the backend's arithmetic: float
kernels propagate NaN and inf (IEEE); quantized (int8) kernels quantize NaN to the zero
point and saturate inf, so their outputs stay finite.

Thread safety: ``run``/``__call__`` may be called from several threads at once. Runners
that declare ``thread_safe = True`` (ONNX Runtime) run concurrently; any other runner is
serialized with a per-model lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, verify
from irkit.runtime.loaders import Runner, open_runner
from irkit.runtime.signature import (
    FiniteCheck,
    InputPlan,
    TensorSpec,
    format_shape,
    resolve_shape,
    validate_inputs,
)


class CompiledModel:
    """A model loaded from an artifact directory; call it with arrays by input name."""

    def __init__(self, manifest: Manifest, runner: Runner, path: Path | None = None, *,
                 reject_nonfinite: bool = True) -> None:
        self.manifest = manifest
        self.path = path
        self._runner: Runner | None = runner
        self._lock: threading.Lock | None = (
            None if getattr(runner, "thread_safe", False) else threading.Lock()
        )
        self._input_plan = InputPlan(manifest.inputs)
        self._output_plan = InputPlan(manifest.outputs)  # the same exact-match test
        self._finite = FiniteCheck(manifest.inputs)
        self._finite_check: FiniteCheck | None = None
        self.reject_nonfinite = reject_nonfinite
        # A runner's exact path (llvm: one checked native call), and the dims at which
        # its outputs were checked against the signature once.
        self._exact = runner.run_exact if getattr(runner, "exact", False) else None
        self._exact_keys: set[Any] = set()

    @property
    def reject_nonfinite(self) -> bool:
        """Whether calls refuse floating inputs holding NaN or +/-inf (the default)."""
        return self._reject

    @reject_nonfinite.setter
    def reject_nonfinite(self, reject: bool) -> None:
        if not isinstance(reject, bool):
            raise TypeError(f"reject_nonfinite must be True or False, got {reject!r}")
        self._reject = reject
        self._finite_check = self._finite if reject and self._finite else None

    def check_finite(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise ``InputError`` when ``reject_nonfinite`` is on and a floating input of
        the validated ``inputs`` holds NaN or +/-inf (adapters that cache shape verdicts
        call it per request)."""
        if self._finite_check is not None:
            self._finite_check.check(inputs)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def target(self) -> str:
        """What the artifact was compiled for (several comma-separated arches for a
        multi-arch artifact)."""
        return self.manifest.target

    @property
    def variant(self) -> str | None:
        """The arch whose code this process runs (kernel backends; None otherwise)."""
        return getattr(self._runner, "variant", None)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.manifest.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.manifest.outputs)

    def signature(self) -> dict[str, Any]:
        """Model metadata for HTTP: name, platform, backend, target, inputs, outputs.

        Each tensor carries its OIP v2 ``datatype`` and ``shape`` (-1 for a variable dim)
        plus irkit's ``dtype`` and ``symbolic_shape``.
        """
        return {
            "name": self.name,
            "platform": f"irkit_{self.backend}",
            "backend": self.backend,
            "target": self.target,
            "inputs": [spec.metadata() for spec in self.manifest.inputs],
            "outputs": [spec.metadata() for spec in self.manifest.outputs],
        }

    def validate(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Checked, C-contiguous arrays for ``inputs``; raises ``InputError``/``InputTypeError``."""
        # the plan's fast path first, as in run(): servers validate every request
        checked = self._input_plan.check(inputs) if isinstance(inputs, Mapping) else None
        arrays = checked[0] if checked is not None else \
            validate_inputs(inputs, self.manifest.inputs)[0]
        if self._finite_check is not None:
            self._finite_check.check(arrays)
        return arrays

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate ``inputs`` and run the model; returns ``{output name: array}``."""
        exact, finite = self._exact, self._finite_check
        if exact is not None and type(inputs) is dict and (finite is None or finite.fast(inputs)):
            lock = self._lock
            if lock is None:
                done = exact(inputs)
            else:
                with lock:
                    done = exact(inputs)
            if done is not None:
                outputs, key = done
                if key in self._exact_keys or self._check_exact(inputs, outputs, key):
                    return outputs
        checked = self._input_plan.check(inputs) if isinstance(inputs, Mapping) else None
        if checked is not None:  # exact arrays, none empty
            arrays, bindings = checked
        else:
            arrays, bindings = validate_inputs(inputs, self.manifest.inputs)
        if finite is not None:
            finite.check(arrays)
        if checked is None:
            empty = self._empty_outputs(arrays, bindings)
            if empty is not None:
                return empty
        if self._lock is None:
            produced = self._open_runner().run(arrays)
        else:
            with self._lock:  # close() takes it too: no call runs on released code
                produced = self._open_runner().run(arrays)
        fast = self._output_plan.check(produced)
        if fast is not None and fast[1].items() <= bindings.items():
            return fast[0]  # outputs exactly as declared, dims agreeing with the inputs
        return self._collect(produced, bindings)

    def _open_runner(self) -> Runner:
        runner = self._runner
        if runner is None:
            raise ArtifactError(f"model {self.name!r} is closed")
        return runner

    def _check_exact(self, inputs: Mapping[str, Any], outputs: Mapping[str, np.ndarray],
                     key: Any) -> bool:
        """Whether an exact-path call at new dims ``key`` meets the signature, inputs and
        outputs; if so, later calls at ``key`` skip this (the runner checked the same
        dtypes and dims natively). False sends the call down the checked path."""
        checked = self._input_plan.check(inputs)
        produced = self._output_plan.check(outputs)
        if checked is None or produced is None or not produced[1].items() <= checked[1].items():
            return False
        if len(self._exact_keys) < 64:
            self._exact_keys.add(key)
        return True

    def _empty_outputs(
        self, arrays: Mapping[str, np.ndarray], bindings: Mapping[str, int]
    ) -> dict[str, np.ndarray] | None:
        """Empty outputs without running the backend when some input is empty and every
        output is empty too; None when the backend must run (a sum over an empty batch is
        zeros, a CastLike reads only its ``like`` input's type)."""
        if all(a.size for a in arrays.values()):
            return None
        outputs: dict[str, np.ndarray] = {}
        for spec in self.manifest.outputs:
            shape = resolve_shape(spec, bindings)
            if shape is None or 0 not in shape:
                return None
            outputs[spec.name] = np.empty(shape, dtype=spec.dtype)
        return outputs

    def _collect(
        self, produced: Mapping[str, np.ndarray], bindings: Mapping[str, int]
    ) -> dict[str, np.ndarray]:
        """Outputs in signature order, checked against the signature.

        A mismatch here is a backend bug, not a user error, so it is an ``ArtifactError``
        naming the backend: better than handing a client a wrongly typed tensor.
        """
        outputs: dict[str, np.ndarray] = {}
        symbols = dict(bindings)
        for spec in self.manifest.outputs:
            if spec.name not in produced:
                raise ArtifactError(
                    f"backend {self.backend!r} did not produce output {spec.name!r} "
                    f"of model {self.name!r}"
                )
            array = np.asarray(produced[spec.name])
            if array.dtype != spec.dtype or not _matches(spec, array.shape, symbols):
                bound = ", ".join(f"{k}={v}" for k, v in bindings.items())
                raise ArtifactError(
                    f"backend {self.backend!r} produced output {spec.name!r} of model "
                    f"{self.name!r} as {array.dtype.name}{format_shape(array.shape)}, but the "
                    f"signature says {spec.dtype.name}{format_shape(spec.shape)}"
                    + (f" with {bound}" if bound else "")
                )
            outputs[spec.name] = array
        return outputs

    def warmup(self) -> dict[str, np.ndarray]:
        """Run once on zeros with every symbolic or unknown dim set to 1 (batch 1)."""
        zeros = {
            spec.name: np.zeros(
                tuple(d if isinstance(d, int) else 1 for d in spec.shape), dtype=spec.dtype
            )
            for spec in self.manifest.inputs
        }
        return self.run(zeros)

    def close(self) -> None:
        """Release the runner (native sessions, JIT code) once calls in flight finish;
        later calls raise."""
        if self._lock is not None:
            with self._lock:
                self._close()
        else:
            self._close()

    def _close(self) -> None:
        self._exact = None
        runner, self._runner = self._runner, None
        close = getattr(runner, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        def side(specs: tuple[TensorSpec, ...]) -> str:
            return ", ".join(f"{s.name}: {s.dtype.name}{format_shape(s.shape)}" for s in specs)

        return (
            f"CompiledModel({self.name!r}, backend={self.backend!r}, "
            f"({side(self.manifest.inputs)}) -> ({side(self.manifest.outputs)}))"
        )


def _matches(spec: TensorSpec, shape: tuple[int, ...], bindings: dict[str, int]) -> bool:
    """Whether ``shape`` fits ``spec`` under ``bindings``; binds symbols only outputs use."""
    if len(shape) != spec.rank:
        return False
    for dim, size in zip(spec.shape, shape):
        if isinstance(dim, int) and dim != size:
            return False
        if isinstance(dim, str) and bindings.setdefault(dim, size) != size:
            return False
    return True


def load(path: str | os.PathLike[str], *, trusted_keys: Iterable[Any] | None = None,
         reject_nonfinite: bool = True, **options: Any) -> CompiledModel:
    """Load the artifact directory at ``path``: verify it, then open its backend's runner.

    Checks, in order: with ``trusted_keys`` (Ed25519 public keys: PEM files or bytes, or
    hex), ``manifest.sig`` is a signature of ``manifest.json`` by one of them (see
    :mod:`irkit.runtime.signing`: unsigned and foreign artifacts are refused);
    ``manifest.json`` exists and parses, its format version is supported, every listed
    file is a regular file present with its sha256, no unlisted files exist, no path
    escapes the directory, the backend entry agrees with the signature. ``options``
    override the backend's runtime options (e.g. ``threads``; kernel backends take
    ``random_seed``, an int in [0, 2**64): random ops without a seed attribute, which
    draw fresh values on every call, then repeat them per call number after each load,
    see :mod:`irkit.runtime.call_keys`). ``reject_nonfinite=False``
    lets floating inputs holding NaN or +/-inf reach the backend (see the module
    docstring; by default they are refused with an ``InputError``). Raises
    :class:`ArtifactError` naming the file or field at fault.
    """
    if not isinstance(reject_nonfinite, bool):
        raise TypeError(f"reject_nonfinite must be True or False, got {reject_nonfinite!r}")
    directory = Path(path)
    if trusted_keys is not None:
        from irkit.runtime.signing import check_signature

        check_signature(directory, trusted_keys)
    manifest = verify(directory)
    runner = open_runner(directory, manifest, **options)
    return CompiledModel(manifest, runner, directory, reject_nonfinite=reject_nonfinite)
