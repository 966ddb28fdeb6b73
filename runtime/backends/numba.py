"""Runtime loader for ``numba`` artifacts: the generated ``kernels.py`` compiled by Numba.

The module is checked and executed by :mod:`irkit.runtime.backends.pysource` (manifest
checksum, irkit's header line, Numba's cache in the artifact directory); its ``run``
(``threads = 1``) or ``run_parallel`` (Numba's ``prange`` on ``threads`` threads) is
compiled for this machine when the artifact loads — from the cache after the first
time — and each inference is one call of it. Everything else (variant choice, dims,
output shapes, workspace size, ORT segments) is the shared program runner
(:mod:`irkit.runtime.runner`).

Load options besides the runner's: ``cache`` (default True; False compiles without
Numba's cache).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.program import KernelProgram
from irkit.runtime.runner import ProgramRunner, SegmentedRunner, open_program, runtime_options


def _aligned_empty(nbytes: int, alignment: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    shift = (-raw.ctypes.data) % alignment
    return raw[shift : shift + nbytes]


def flat_view(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` as the writable, aligned, 1-D array of its memory type the generated
    functions take (bool as uint8, f16/bf16 as uint16); copies only when it must."""
    flat = array.reshape(-1)
    if not (flat.flags.writeable and flat.flags.aligned and flat.flags.c_contiguous):
        flat = np.array(flat)
    return flat if flat.dtype.name == dtype else flat.view(dtype)


class NumbaLibrary:
    """One compiled ``kernels.py``: its run function, the weights and a workspace."""

    concurrent_parts = False  # Numba's prange splits the parallel loops itself

    def __init__(self, module: Any, program: KernelProgram, weights: bytes,
                 threads: int) -> None:
        self.module = module
        self.program = program
        self.threads = threads
        self.kernel_count = len(module.KERNELS)
        self._io_dtypes = list(module.IO_DTYPES)
        self._run = module.run_parallel if threads > 1 else module.run
        if hasattr(self._run, "compile"):  # not with NUMBA_DISABLE_JIT: plain Python
            self._run.compile(module.RUN_SIGNATURE)
        self._weights = _aligned_empty(max(len(weights), 1))
        self._weights[: len(weights)] = np.frombuffer(weights, dtype=np.uint8)
        self._workspace = _aligned_empty(0)
        self._dims = np.ones(max(1, len(program.symbols)), dtype=np.int64)
        self._io: list[np.ndarray] = []
        self._numba_threads = 0
        if threads > 1:
            import numba

            limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
            self._numba_threads = min(threads, limit)
            self._set_threads = numba.set_num_threads

    def bind(self, arrays: Sequence[np.ndarray], dims: Sequence[int],
             workspace_bytes: int) -> None:
        self._io = [flat_view(a, d) for a, d in zip(arrays, self._io_dtypes)]
        for i, value in enumerate(dims):
            self._dims[i] = value
        if self._workspace.nbytes < workspace_bytes:
            self._workspace = _aligned_empty(workspace_bytes)

    def run(self) -> None:
        if self._numba_threads:
            self._set_threads(self._numba_threads)  # Numba's setting is per thread
        self._run(*self._io, self._weights, self._workspace, self._dims)

    def run_kernel(self, index: int, start: int, end: int) -> None:
        module = self.module
        name, _, positions = module.KERNELS[index]
        views = module.views(*self._io, self._weights, self._workspace, self._dims)
        getattr(module, name)(*[views[p] for p in positions], *self._dims.tolist(),
                              start, end)

    def extent(self, index: int) -> int:
        return int(self.module.extents(self._dims)[index])

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self._io = []


def numba_module(artifact_dir: Path, manifest: Manifest, relpath: str, cache: bool) -> Any:
    """The generated module of ``relpath``, executed (see :mod:`.pysource`)."""
    try:
        import numba
    except ImportError as exc:
        raise ArtifactError(f"artifact {artifact_dir}: numba artifacts need the numba "
                            f"package (pip install 'irkit[numba]'): {exc}") from exc
    from irkit.runtime.backends.pysource import load_generated_module

    pure = bool(numba.config.DISABLE_JIT)  # type: ignore[attr-defined]
    return load_generated_module(artifact_dir, manifest, relpath, "numba",
                                 {"IRKIT_PURE_PYTHON": pure}, cache)


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any
         ) -> ProgramRunner | SegmentedRunner:
    """Compile (or take from Numba's cache) the kernels of the variant this machine runs."""
    cache = overrides.pop("cache", True)
    if not isinstance(cache, bool):
        raise ArtifactError(f"artifact {artifact_dir}: cache={cache!r} must be True or False")
    threads, _, _ = runtime_options(artifact_dir, manifest, overrides)

    def make_library(directory: Path, man: Manifest, program: KernelProgram) -> NumbaLibrary:
        module = numba_module(directory, man, program.code, cache)
        weights = read_verified(directory, man, program.weights)
        try:
            return NumbaLibrary(module, program, weights, threads)
        except ArtifactError:
            raise
        except Exception as exc:  # Numba's typing and lowering errors
            text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
            raise ArtifactError(f"artifact {directory}: Numba could not compile "
                                f"{program.code}: {type(exc).__name__}: {text[:2000]}"
                                ) from exc

    return open_program(artifact_dir, manifest, make_library, **overrides)
