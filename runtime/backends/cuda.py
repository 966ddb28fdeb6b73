"""Runtime loader for ``cuda`` artifacts: PTX kernels launched through numba-cuda.

On a GPU (``device="gpu"``, the default) each kernel's PTX (``ptx/<kernel>.ptx``, checked
against the manifest like every file) is loaded into the current CUDA context through
numba-cuda's driver (the driver JIT-compiles PTX for sm_90 to the GPU at hand, so newer
GPUs run it too). The weights blob is copied to the device once and stays there; the
workspace lives on the device; each call copies the inputs in, launches the kernels in
order on one stream and copies the outputs back. The launch grid of every kernel and the
device address of every buffer come from the host-side functions of the generated
``kernels.py`` (``launches(dims)``, ``buffers(dims)``), which is executed only after the
checks of :mod:`irkit.runtime.backends.pysource`.

``device="simulator"`` runs the same kernels' Python in numba-cuda's CUDA simulator: no GPU
needed, every thread a Python thread (tests, small shapes). Without a usable GPU the
default load raises :class:`~irkit.runtime.ArtifactError` saying so.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.backends.numba import flat_view
from irkit.runtime.hostcpu import Host
from irkit.runtime.program import KernelProgram
from irkit.runtime.runner import ProgramRunner, SegmentedRunner, open_program, runtime_options

DEVICES = ("gpu", "simulator")
# Compute capabilities a PTX target runs on (the driver JIT-compiles PTX forward).
_PTX_TARGETS = {"sm_90": (9, 0)}
# Simulator launches: few small blocks, each thread looping over a grid's worth of work.
_SIM_BLOCK, _SIM_MAX_BLOCKS = 32, 4


def _numba_cuda(where: str) -> Any:
    try:
        from numba import cuda
    except ImportError as exc:
        raise ArtifactError(f"{where}: cuda artifacts need numba-cuda (pip install "
                            f"'irkit[cuda]'): {exc}") from exc
    return cuda


def gpu_host(where: str) -> Host:
    """The GPU numba-cuda would use, as a Host whose features are the PTX targets it runs;
    ArtifactError when there is none."""
    cuda = _numba_cuda(where)
    why = ""
    try:
        available = bool(cuda.is_available())
    except Exception as exc:  # driver libraries present but broken
        available, why = False, f" ({type(exc).__name__}: {exc})"
    if not available:
        raise ArtifactError(
            f"{where}: this cuda artifact runs on an NVIDIA GPU with compute capability "
            f"9.0 or newer (sm_90), and numba-cuda finds no usable GPU on this machine{why}. "
            "Load it on a GPU machine, or with device='simulator' (irkit run --device "
            "simulator) to run its kernels in numba-cuda's CUDA simulator (slow; for "
            "testing).")
    device = cuda.get_current_device()
    cc = tuple(device.compute_capability)
    features = frozenset(name for name, need in _PTX_TARGETS.items() if cc >= need)
    name = getattr(device, "name", "numba-cuda simulator")  # NUMBA_ENABLE_CUDASIM=1: no name
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Host("nvptx64", features, f"{name} (sm_{cc[0]}{cc[1]})")


def cuda_module(artifact_dir: Path, manifest: Manifest, relpath: str, simulator: bool
                ) -> Any:
    """The generated module: kernels decorated for the simulator, or left as plain
    functions (on a GPU only its host-side tables are used; the kernels are PTX)."""
    from irkit.runtime.backends.pysource import load_generated_module

    names: dict[str, Any] = {"IRKIT_PURE_PYTHON": simulator}
    if simulator:
        from numba.cuda import simulator as sim

        names["IRKIT_KERNEL"] = sim.jit
        names["IRKIT_DEVICE"] = sim.jit(device=True)
    else:
        names["IRKIT_DEVICE"] = _identity
    return load_generated_module(artifact_dir, manifest, relpath, "cuda", names, False)


def _identity(fn: Any) -> Any:
    return fn


class _Library:
    """What both libraries share: the module's tables, dims and the host io arrays."""

    concurrent_parts = False

    def __init__(self, module: Any, program: KernelProgram) -> None:
        self.module = module
        self.program = program
        self.kernel_count = len(module.KERNELS)
        self._dims = [1] * max(1, len(program.symbols))
        self._arrays: list[np.ndarray] = []
        self._workspace_bytes = 0
        self._outputs = [program.io.index(name) for name in program.output_shapes]

    def bind(self, arrays: Sequence[np.ndarray], dims: Sequence[int],
             workspace_bytes: int) -> None:
        self._arrays = list(arrays)
        for i, value in enumerate(dims):
            self._dims[i] = int(value)
        self._workspace_bytes = workspace_bytes

    def run_kernel(self, index: int, start: int, end: int) -> None:
        raise NotImplementedError("cuda kernels run whole (concurrent_parts is False)")

    def extent(self, index: int) -> int:
        return 1

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self._arrays = []


class SimulatorLibrary(_Library):
    """The kernels' Python run by numba-cuda's simulator on numpy views."""

    def __init__(self, module: Any, program: KernelProgram, weights: bytes) -> None:
        super().__init__(module, program)
        self._weights = np.frombuffer(weights, dtype=np.uint8).copy()
        self._workspace = np.zeros(0, np.uint8)

    def run(self) -> None:
        module, dims = self.module, self._dims
        if self._workspace.nbytes < self._workspace_bytes:
            self._workspace = np.zeros(self._workspace_bytes, np.uint8)
        views = []
        for _, place, where, nbytes, dtype in module.buffers(dims):
            if place == "io":
                views.append(flat_view(self._arrays[where], dtype))
            else:
                base = self._weights if place == "weights" else self._workspace
                views.append(base[where : where + nbytes].view(dtype))
        launches = module.launches(dims, _SIM_BLOCK, _SIM_MAX_BLOCKS)
        for (name, shape, positions, _), (grid, block, extras) in zip(module.KERNELS,
                                                                      launches):
            if shape == "grid" and extras[0] == 0:
                continue
            args = [views[p] for p in positions] + list(dims[:len(self.program.symbols)])
            getattr(module, name)[grid, block](*args, *extras)


class GpuLibrary(_Library):
    """PTX modules in the current CUDA context; weights and workspace on the device."""

    def __init__(self, module: Any, program: KernelProgram, weights: bytes,
                 ptx: Sequence[tuple[str, str]], cuda: Any) -> None:
        super().__init__(module, program)
        from cuda.core import LaunchConfig, launch

        self._cuda = cuda
        self._launch, self._config = launch, LaunchConfig
        context = cuda.current_context()
        # The context keeps each loaded module; the proxies it returns stay valid while
        # it lives.
        self._kernels = [context.create_module_ptx(text).get_function(entry).kernel
                         for text, entry in ptx]
        self._stream = cuda.default_stream()
        self._weights = cuda.to_device(np.frombuffer(weights, dtype=np.uint8).copy()
                                       if weights else np.zeros(1, np.uint8))
        self._workspace = cuda.device_array(max(1, self._workspace_bytes), np.uint8)
        self._io: list[Any] = [None] * len(program.io)

    def _device_io(self, slot: int, nbytes: int) -> Any:
        current = self._io[slot]
        if current is None or current.nbytes < max(1, nbytes):
            current = self._cuda.device_array(max(1, nbytes), np.uint8)
            self._io[slot] = current
        return current

    def run(self) -> None:
        cuda, stream = self._cuda, self._stream
        if self._workspace.nbytes < self._workspace_bytes:
            self._workspace = cuda.device_array(self._workspace_bytes, np.uint8)
        host = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in self._arrays]
        outputs = set(self._outputs)
        for slot, data in enumerate(host):
            target = self._device_io(slot, data.nbytes)
            if slot not in outputs and data.nbytes:
                target[: data.nbytes].copy_to_device(data, stream=stream)
        self.launch()
        for slot in self._outputs:
            data = host[slot]
            if data.nbytes:
                self._io[slot][: data.nbytes].copy_to_host(data, stream=stream)
        stream.synchronize()
        for slot in self._outputs:  # host[slot] is a view of the output unless copied
            out = self._arrays[slot]
            if out.size and not np.shares_memory(out, host[slot]):
                out.reshape(-1).view(np.uint8)[:] = host[slot]

    def launch(self) -> None:
        """Every kernel, in order, on the device buffers as the last ``run`` left them
        (no copies, not waited for): the GPU's own time, for benchmarks."""
        module, dims, stream = self.module, self._dims, self._stream
        pointers = []
        for _, place, where, _, _ in module.buffers(dims):
            if place == "io":
                pointers.append(_address(self._io[where]))
            else:
                base = self._weights if place == "weights" else self._workspace
                pointers.append(_address(base) + where)
        symbols = [ctypes.c_int64(v) for v in dims[:len(self.program.symbols)]]
        for kernel, (_, shape, positions, _), (grid, block, extras) in zip(
                self._kernels, module.KERNELS, module.launches(dims)):
            if shape == "grid" and extras[0] == 0:
                continue
            args = [pointers[p] for p in positions] + symbols + [ctypes.c_int64(e)
                                                                 for e in extras]
            self._launch(stream, self._config(grid=grid, block=(block, 1, 1)), kernel,
                         *args)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        super().close()
        self._kernels = []
        self._io = []


def device_launcher(model: Any) -> Any:
    """For a CompiledModel of a cuda artifact loaded on a GPU and called once: a function
    that launches its kernels on the device-resident buffers of that call and waits for
    them (no host copies), to time the GPU's work alone. Single-program artifacts only."""
    library = getattr(getattr(model, "_runner", None), "library", None)
    if not isinstance(library, GpuLibrary):
        raise TypeError("not a cuda artifact loaded on a GPU (one kernel program)")

    def launch() -> None:
        library.launch()
        library.synchronize()

    return launch


def _address(device_array: Any) -> int:
    return int(device_array.__cuda_array_interface__["data"][0])


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any
         ) -> ProgramRunner | SegmentedRunner:
    """The runner of a cuda artifact on this machine's GPU, or in the simulator."""
    where = f"artifact {artifact_dir}"
    device = overrides.pop("device", None)
    if device is None:  # NUMBA_ENABLE_CUDASIM=1 leaves numba-cuda nothing but its simulator
        device = "simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "gpu"
    if device not in DEVICES:
        raise ArtifactError(f"{where}: device={device!r} must be one of {', '.join(DEVICES)}")
    runtime_options(artifact_dir, manifest, overrides)  # validates the other options
    simulator = device == "simulator"
    if "host" not in overrides:
        overrides["host"] = (Host("nvptx64", frozenset(_PTX_TARGETS), "CUDA simulator")
                             if simulator else gpu_host(where))
    cuda = _numba_cuda(where)

    def make_library(directory: Path, man: Manifest, program: KernelProgram) -> Any:
        module = cuda_module(directory, man, program.code, simulator)
        weights = read_verified(directory, man, program.weights)
        if simulator:
            return SimulatorLibrary(module, program, weights)
        ptx = []
        for kernel in program.kernels:
            relpath, entry = program.native.get(f"ptx:{kernel}"), program.native.get(
                f"entry:{kernel}")
            if not relpath or not entry:
                raise ArtifactError(f"artifact {directory}: kernel {kernel} has no PTX "
                                    "in the manifest entry")
            ptx.append((read_verified(directory, man, relpath).decode("utf-8"), entry))
        try:
            return GpuLibrary(module, program, weights, ptx, cuda)
        except Exception as exc:  # driver errors: PTX JIT, out of memory
            raise ArtifactError(f"artifact {directory}: loading the PTX on the GPU failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    return open_program(artifact_dir, manifest, make_library, **overrides)
