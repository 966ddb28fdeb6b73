"""Runtime loader for ``wasm`` artifacts: WebAssembly modules run by ``wasmtime``.

The shared program runner (:func:`irkit.runtime.runner.open_program`) picks the variant,
binds the symbolic dims and sizes outputs and workspace; this loader provides the
:class:`WasmLibrary` under it. A module imports nothing and exports ``memory``, the run
entry, each kernel and the allocator ``irkit_alloc``/``irkit_release`` (see
:mod:`irkit.plugins.wasm`). At load the weights are copied into the module's linear memory
once; each call copies the inputs into an arena of that memory (grown when a call needs
more), writes the io pointer table and the dims, runs the entry and copies the outputs
back into the arrays the runner allocated.

Which build runs is decided like a CPU's: the engine is a :class:`~irkit.runtime.hostcpu.Host`
with arch ``wasm32`` and the features it validates (``simd128`` when a SIMD module
validates), compared with each variant's ``requires``. ``load(path, host=host_with([],
arch="wasm32"))`` asks for an engine without SIMD: the engine is then configured with
SIMD off and runs the scalar build.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.hostcpu import Host
from irkit.runtime.program import KernelProgram
from irkit.runtime.runner import ProgramRunner, SegmentedRunner, open_program

ARCH = "wasm32"
# The smallest module that uses a 128-bit SIMD instruction (v128.const); model.mjs holds
# the same bytes for WebAssembly.validate.
SIMD_PROBE = bytes([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1,
                    20, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11])
_ALIGN = 64


def _wasmtime() -> Any:
    try:
        import wasmtime
    except ImportError as exc:
        raise ArtifactError("wasm artifacts run in wasmtime, which is not installed: "
                            "pip install 'irkit[wasm]'") from exc
    return wasmtime


@functools.cache
def _engine(simd: bool) -> Any:
    """A wasmtime engine with WebAssembly SIMD on or off (one per process each)."""
    wasmtime = _wasmtime()
    config = wasmtime.Config()
    if not simd:
        config.wasm_relaxed_simd = False  # relaxed SIMD needs SIMD: off first
        config.wasm_simd = False
    config.cranelift_opt_level = "speed"
    # Compile on the calling thread: wasmtime's parallel compilation uses a thread pool
    # that fork does not copy, and a forked child (the kafka and postgres workers, the
    # conformance pool) compiling after its parent did waits for it forever. irkit's
    # modules are small; their compile time barely changes.
    config.parallel_compilation = False
    engine = wasmtime.Engine(config)
    # Released before interpreter shutdown unloads wasmtime's C functions (else its
    # finalizer prints an ignored TypeError at exit).
    atexit.register(engine.close)
    return engine


def engine_features(engine: Any) -> frozenset[str]:
    """The WebAssembly features irkit's code may use that ``engine`` validates."""
    wasmtime = _wasmtime()
    try:
        wasmtime.Module.validate(engine, SIMD_PROBE)
    except wasmtime.WasmtimeError:
        return frozenset()
    return frozenset({"simd128"})


def engine_host(simd: bool = True) -> Host:
    """The wasmtime engine as a machine variants are chosen for."""
    return Host(ARCH, engine_features(_engine(simd)), "wasmtime")


class WasmLibrary:
    """One module instance: its memory, the weights in it and a growing arena."""

    concurrent_parts = False  # one instance, one thread: the runner never splits kernels

    def __init__(self, program: KernelProgram, code: bytes, weights: bytes, engine: Any) -> None:
        wasmtime = _wasmtime()
        self.program = program
        self._store = wasmtime.Store(engine)
        module = wasmtime.Module(engine, code)
        if module.imports:
            names = ", ".join(f"{i.module}.{i.name}" for i in module.imports)
            raise ArtifactError(f"{program.code} imports {names}; irkit modules import nothing")
        self._instance = wasmtime.Instance(self._store, module, [])
        exports = self._instance.exports(self._store)
        native = program.native
        self._memory = exports[native.get("memory", "memory")]
        self._alloc = exports[native["alloc"]]
        self._release = exports[native["release"]]
        self._run = exports[program.run]
        self._kernels = [exports[k] for k in program.kernels]
        self._extents = [exports[f"{k}_extent"] for k in program.kernels]
        self.kernel_count = len(self._kernels)
        self._weights = self._allocate(max(len(weights), 1))
        self._io = self._allocate(4 * len(program.io))
        self._dims = self._allocate(8 * max(len(program.symbols), 1))
        self._write(self._weights, weights)
        self._arena = 0
        self._arena_bytes = 0
        self._arrays: list[np.ndarray] = []
        self._slots: list[int] = []
        position = {name: i for i, name in enumerate(program.io)}
        self._input_slots = {position[name] for name in program.input_shapes}
        self._workspace_at = 0

    # -- linear memory ----------------------------------------------------------------
    def _allocate(self, nbytes: int) -> int:
        address = int(self._alloc(self._store, nbytes))
        if address == 0:
            raise MemoryError(f"the wasm module could not grow its memory by {nbytes} bytes")
        return address

    def _base(self) -> int:
        # Read again after every allocation: growing memory may move it.
        return ctypes.addressof(self._memory.data_ptr(self._store).contents)

    def _write(self, address: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._base() + address, data, len(data))

    # -- the KernelLibrary protocol -------------------------------------------------------
    def bind(self, arrays: Sequence[np.ndarray], dims: Sequence[int],
             workspace_bytes: int) -> None:
        offsets = []
        total = 0
        for array in arrays:
            offsets.append(total)
            total += -(-array.nbytes // _ALIGN) * _ALIGN
        self._workspace_at = total
        need = total + max(workspace_bytes, 0) + _ALIGN
        if need > self._arena_bytes:
            if self._arena:
                self._release(self._store, self._arena)
                self._arena, self._arena_bytes = 0, 0
            self._arena = self._allocate(need)
            self._arena_bytes = need
        self._arrays = list(arrays)
        self._slots = [self._arena + offset for offset in offsets]
        base = self._base()
        table = (ctypes.c_uint32 * len(arrays)).from_address(base + self._io)
        for slot, address in enumerate(self._slots):
            table[slot] = address
        values = (ctypes.c_int64 * max(len(dims), 1)).from_address(base + self._dims)
        for i, value in enumerate(dims):
            values[i] = value
        for slot in self._input_slots:
            array = self._arrays[slot]
            if array.nbytes:
                ctypes.memmove(base + self._slots[slot], array.ctypes.data, array.nbytes)

    def run(self) -> None:
        self._run(self._store, self._io, self._weights, self._arena + self._workspace_at,
                  self._dims)
        self.sync()

    def run_kernel(self, index: int, start: int, end: int) -> None:
        self._kernels[index](self._store, self._io, self._weights,
                             self._arena + self._workspace_at, self._dims, start, end)

    def extent(self, index: int) -> int:
        return int(self._extents[index](self._store, self._dims))

    def sync(self) -> None:
        """Copy the outputs out of linear memory into the runner's arrays."""
        base = self._base()
        for slot, (array, address) in enumerate(zip(self._arrays, self._slots)):
            if slot not in self._input_slots and array.nbytes:
                ctypes.memmove(array.ctypes.data, base + address, array.nbytes)

    def close(self) -> None:
        self._kernels, self._extents, self._arrays = [], [], []
        self._instance = None


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any
         ) -> ProgramRunner | SegmentedRunner:
    """Instantiate the module of the variant this engine runs and return its runner.

    ``host`` (a runtime option) describes the engine to choose for; given one without
    ``simd128``, the engine is configured without SIMD."""
    machine = overrides.get("host")
    if machine is None:
        machine = engine_host()
    elif not isinstance(machine, Host) or machine.arch != ARCH:
        raise ArtifactError(f"artifact {artifact_dir}: a wasm artifact runs on a {ARCH} "
                            "engine; host= must be a Host with arch 'wasm32'")
    engine = _engine("simd128" in machine.features)
    machine = Host(ARCH, engine_features(engine) & machine.features, "wasmtime")

    def library(directory: Path, manifest_: Manifest, program: KernelProgram) -> WasmLibrary:
        code = read_verified(directory, manifest_, program.code)
        weights = read_verified(directory, manifest_, program.weights)
        wasmtime = _wasmtime()
        try:
            return WasmLibrary(program, code, weights, engine)
        except (wasmtime.WasmtimeError, KeyError) as exc:
            raise ArtifactError(f"artifact {directory}: wasmtime could not instantiate "
                                f"{program.code}: {exc}") from exc

    return open_program(artifact_dir, manifest, library, None,
                        **{**overrides, "host": machine, "threads": 1})
