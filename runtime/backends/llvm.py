"""Runtime loader for ``llvm`` artifacts: a relocatable object linked in process by
llvmlite's ORC JIT (no system linker), called through ctypes.

Artifact layout (``entry``)::

    {"object": "model.o", "weights": "weights.bin", "run": "<name>_run",
     "kernels": ["k0", ...], "io": ["x", "y"],           # io pointer order
     "symbols": ["N", "N1"],                             # symbolic dims, dims order
     "workspace": [bytes per N, constant bytes],
     "workspace_terms": {"N*N1": 98304},                 # further workspace bytes
     "input_shapes": {"x": [[1, 0], {"N1": 1}, [0, 64]]},  # a*N + b, or polynomials
     "output_shapes": {"y": [[1, 0], [0, 10]]},
     "constraints": [{"size": {"": 512, "N1": -1}, "why": "..."}],  # each >= 0
     "guards": [{"op": "reduce", "inputs": {"axes": "axes"}, ...}], ...}  # runtime.guards

or, with per-node ORT fallback, ``{"segments": [{"kind": "llvm", <the keys above>,
"inputs": [...], "outputs": [...]}, {"kind": "ort", "model": "seg1.onnx", ...}]}``.

Each call binds the symbolic dims from the input shapes (each symbol from an input dim
``a*sym + b``), then evaluates every output dim and the workspace size from them. Each
kernel ``k`` exports ``k(io, weights, workspace, dims, start, end)`` and
``k_extent(dims)`` (``dims``: pointer to the symbol values, ``int64`` each).

With ``threads > 1`` the runner splits a kernel's top-level parallel loop over worker
threads (ctypes releases the GIL while native code runs). The first call at each binding
of the symbolic dims times every kernel on one thread; the second splits those that took
at least ``parallel_min_us`` (load option, default 60; 0 splits every one, unmeasured)
and keeps a split only where it was 10% faster. Handing a part to a worker
(``_Workers``: one lock to start it, one to wait for it) costs about 13 µs, where a
``ThreadPoolExecutor`` submit and result cost about 65 µs.
Calls share one workspace, so the runner is not ``thread_safe``: CompiledModel
serializes concurrent calls.

The exact path: ``run_exact`` serves the common call (numpy arrays of exactly the
signature's dtypes, C-contiguous, aligned, non-empty, at dims seen before) with one call
of ``<run>_call`` (:mod:`irkit.plugins.llvm.entry`), which the loader wraps in a CPython
builtin function (no ctypes conversions). It checks every array's type, dtype, flags and
dims against a table before any kernel runs and releases the GIL while kernels run. The
table holds the byte offsets of the CPython and numpy struct fields it reads; the loader
verifies them on probe objects (``_object_layout``) and keeps to ``run`` when they
differ, when the artifact has no fast entry, when it has guards, or when a dim is not
``a*N + b``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.guards import check_guards, validate_guards
from irkit.runtime.signature import canonical_dtype, parse_dtype

_KERNEL_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
)  # fmt: skip
_EXTENT_TYPE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
_RUN_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)
_PACKED_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _MethodDef(ctypes.Structure):
    """CPython's ``PyMethodDef``: the JIT-linked fast entry becomes a builtin function."""

    _fields_ = [("name", ctypes.c_char_p), ("meth", ctypes.c_void_p),
                ("flags", ctypes.c_int), ("doc", ctypes.c_char_p)]


_METH_FASTCALL = 0x80
_JIT_LOCK = threading.Lock()
_LIBRARY_COUNTER = iter(range(1 << 62))
# Below this many iterations per thread a parallel split costs more than it saves.
_MIN_SPLIT = 2
# Handing a kernel part to a worker costs about 13 us; only kernels that took longer than
# this on one thread (measured on the first call per batch size) split.
_MIN_PARALLEL_SECONDS = 6e-5


class _Workers:
    """``count`` daemon threads that each run one job per ``start`` and signal ``wait``.

    Two locks per worker: ``start`` releases its "go" lock, the worker runs the job (a
    ctypes kernel call, which releases the GIL) and releases its "done" lock. Threads are
    started on first use and again after a fork (a child process has none of them).
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._pid = -1
        self._slots: list[list[Any]] = []

    def _spawn(self) -> None:
        self._pid = os.getpid()
        self._slots = []
        for _ in range(self.count):
            go, done = threading.Lock(), threading.Lock()
            go.acquire()
            done.acquire()
            slot: list[Any] = [go, done, None, None]  # locks, job, error
            threading.Thread(target=self._loop, args=(slot,), daemon=True,
                             name="irkit-llvm-worker").start()
            self._slots.append(slot)

    @staticmethod
    def _loop(slot: list[Any]) -> None:
        go, done = slot[0], slot[1]
        while True:
            go.acquire()
            job = slot[2]
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # handed to the caller by wait()
                slot[3] = exc
            done.release()

    def start(self, index: int, job: Any) -> None:
        if self._pid != os.getpid():
            self._spawn()
        slot = self._slots[index]
        slot[2], slot[3] = job, None
        slot[0].release()

    def wait(self, index: int) -> None:
        slot = self._slots[index]
        slot[1].acquire()
        if slot[3] is not None:
            raise slot[3]

    def close(self) -> None:
        if self._pid == os.getpid():
            for slot in self._slots:
                slot[2] = None
                slot[0].release()
        self._slots = []


Poly = dict[tuple[str, ...], int]


def _poly(obj: Any) -> Poly:
    """A manifest dim or size: ``[a, b]`` (``a*N + b``), an int, or ``{"N*N1": k}``."""
    if isinstance(obj, list | tuple) and len(obj) == 2:
        return {("N",): int(obj[0]), (): int(obj[1])}
    if isinstance(obj, int):
        return {(): obj}
    return {tuple(k.split("*")) if k else (): int(v) for k, v in dict(obj).items()}


def _evaluate(poly: Poly, values: Mapping[str, int]) -> int:
    total = 0
    for monomial, coefficient in poly.items():
        term = coefficient
        for symbol in monomial:
            term *= values[symbol]
        total += term
    return total


def _aligned_empty(nbytes: int, alignment: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    shift = (-raw.ctypes.data) % alignment
    return raw[shift : shift + nbytes]


# Zero-size inputs point into the middle of this zeroed block: no kernel should read
# them, and one that did would read zeros instead of a neighbouring allocation.
_EMPTY_GUARD = np.zeros(1024, np.uint8)
_EMPTY_GUARD_ADDRESS = int(_EMPTY_GUARD.ctypes.data) + 512


def _address(array: np.ndarray) -> int:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # read-only or zero-size arrays
        return int(array.ctypes.data)


# numpy flag bits (ndarraytypes.h) the checked entry requires.
_C_CONTIGUOUS, _ALIGNED, _WRITEABLE = 0x1, 0x100, 0x400


@functools.cache
def _object_layout() -> tuple[int, ...] | None:
    """(ob_type, data, nd, dimensions, descr, flags) byte offsets as this CPython and
    numpy lay them out, checked on probe objects; None when any differs.

    These are the fields numpy's own C macros read (``PyArrayObject_fields``), so their
    places are part of numpy's ABI, but the runtime still trusts only what it has seen.
    """
    if ctypes.sizeof(ctypes.c_void_p) != 8 or sys.implementation.name != "cpython":
        return None
    offsets = (8, 16, 24, 32, 56, 64)
    off_type, off_data, off_nd, off_dims, off_descr, off_flags = offsets

    def read(obj: object, offset: int, ctype: Any) -> int:
        return int(ctype.from_address(id(obj) + offset).value or 0)

    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    readonly = np.arange(5, dtype=np.int64)
    readonly.flags.writeable = False
    probes = (base, base[:, ::2], base.T, readonly, np.zeros((), np.uint8))
    for array in probes:
        flags = array.flags
        expected_flags = ((_C_CONTIGUOUS if flags.c_contiguous else 0)
                          | (_ALIGNED if flags.aligned else 0)
                          | (_WRITEABLE if flags.writeable else 0))
        shape = ctypes.cast(read(array, off_dims, ctypes.c_void_p),
                            ctypes.POINTER(ctypes.c_int64)) if array.ndim else None
        if (read(array, off_type, ctypes.c_void_p) != id(np.ndarray)
                or read(array, off_data, ctypes.c_void_p) != array.ctypes.data
                or read(array, off_nd, ctypes.c_int32) != array.ndim
                or read(array, off_descr, ctypes.c_void_p) != id(array.dtype)
                or read(array, off_flags, ctypes.c_int32) & 0x501 != expected_flags
                or (shape is not None and tuple(shape[:array.ndim]) != array.shape)):
            return None
    return offsets


def _c_function(name: str) -> int:
    return int(ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value or 0)


class LlvmRunner:
    """Owns the JIT-linked code, the weights and a growing workspace."""

    thread_safe = False

    def __init__(self, entry: Mapping[str, Any], object_code: bytes, weights: bytes,
                 threads: int, output_dtypes: Mapping[str, np.dtype],
                 input_dtypes: Mapping[str, np.dtype] | None = None) -> None:
        import llvmlite.binding as llvm

        with _JIT_LOCK:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            self._jit = llvm.create_lljit_compiler()
            builder = llvm.JITLibraryBuilder().add_object_img(object_code)
            builder.add_current_process()  # libm for the rare math calls LLVM leaves
            symbols = [entry["run"], f"{entry['run']}_packed"]
            for name in entry["kernels"]:
                symbols += [name, f"{name}_extent"]
            if entry.get("call"):
                symbols += [entry["call"], entry["call_table"]]
            for symbol in symbols:
                builder.export_symbol(symbol)
            self._tracker = builder.link(self._jit, f"irkit_{next(_LIBRARY_COUNTER)}")
        self._run = _RUN_TYPE(self._tracker[entry["run"]])
        self._run_packed = _PACKED_TYPE(self._tracker[f"{entry['run']}_packed"])
        self._kernels = [
            (_KERNEL_TYPE(self._tracker[k]), _EXTENT_TYPE(self._tracker[f"{k}_extent"]))
            for k in entry["kernels"]
        ]
        self._symbols: list[str] = list(entry.get("symbols", ["N"]))
        self._input_dims = {name: [_poly(d) for d in dims]
                            for name, dims in entry["input_shapes"].items()}
        self._output_dims = {name: [_poly(d) for d in dims]
                             for name, dims in entry["output_shapes"].items()}
        self._io_names: list[str] = list(entry["io"])
        self._output_names = list(self._output_dims)
        self._output_dtypes = {name: canonical_dtype(np.dtype(output_dtypes[name]))
                               for name in self._output_names}
        n_bytes, c_bytes = (int(v) for v in entry["workspace"])
        # Sizes that must be >= 0 for the code to stay in bounds (polynomial, reason).
        self._constraints = [(_poly(c["size"]), str(c["why"]))
                             for c in entry.get("constraints", [])]
        self._guards = validate_guards(entry.get("guards", []))
        self._workspace_size = {("N",): n_bytes, (): c_bytes,
                                **_poly(entry.get("workspace_terms", {}))}
        self._weights = _aligned_empty(max(len(weights), 1))
        self._weights[: len(weights)] = np.frombuffer(weights, dtype=np.uint8)
        self._workspace = _aligned_empty(0)
        self._weights_address = self._weights.ctypes.data
        self._workspace_address = self._workspace.ctypes.data
        self._io = (ctypes.c_void_p * len(self._io_names))()
        self._prepare_slots()
        self.threads = max(1, threads)
        self._workers = _Workers(self.threads - 1) if self.threads > 1 else None
        self._call: Any = None
        self._exact: Any = None
        self._ready: dict[Any, list[tuple[int, ...]]] = {}
        if entry.get("call") and input_dtypes is not None:
            self._prepare_exact(entry, input_dtypes)
            if self._call is not None:
                self._exact = self._exact_path()

    def _prepare_slots(self) -> None:
        """Precompute where each io pointer comes from (the per-call path is hot)."""
        position = {name: i for i, name in enumerate(self._io_names)}
        self._in_slots = [(position[name], name) for name in self._input_dims]
        self._out_slots = [(position[name], name, self._output_dtypes[name])
                           for name in self._output_names]
        # Each symbol comes from the first input dim ``a * symbol + b`` (a != 0).
        self._sources: list[tuple[str, int, int, int]] = []
        for symbol in self._symbols:
            found = [(name, axis, dim.get((symbol,), 0), dim.get((), 0))
                     for name, dims in self._input_dims.items() for axis, dim in enumerate(dims)
                     if dim.get((symbol,)) and set(dim) <= {(symbol,), ()}]
            # A symbol no input dim carries only scales nothing (a model without any).
            self._sources.append(found[0] if found else ("", 0, 1, 0))
        self._io_address = ctypes.addressof(self._io)
        self._dims = (ctypes.c_int64 * max(1, len(self._symbols)))()
        for i in range(len(self._dims)):
            self._dims[i] = 1
        # {io, weights, workspace, dims} for the one-argument entry.
        self._packed_args = (ctypes.c_void_p * 4)(self._io_address, self._weights_address,
                                                  self._workspace_address,
                                                  ctypes.addressof(self._dims))
        self._packed_address = ctypes.addressof(self._packed_args)
        # Per binding of the symbols: output shapes and workspace bytes.
        self._bindings: dict[tuple[int, ...], tuple[list[tuple[int, ...]], int]] = {}
        self._split_plan: dict[tuple[int, ...], list[bool]] = {}
        self._serial_seconds: dict[tuple[int, ...], list[float]] = {}
        self.parallel_min_seconds = _MIN_PARALLEL_SECONDS

    def _bind(self, key: tuple[int, ...]) -> tuple[list[tuple[int, ...]], int]:
        values = dict(zip(self._symbols, key))
        for size, why in self._constraints:
            if _evaluate(size, values) < 0:
                raise ValueError(f"inputs outside the shapes this model supports: {why} "
                                 f"(dims {', '.join(f'{k}={v}' for k, v in values.items())})")
        shapes = [tuple(_evaluate(d, values) for d in self._output_dims[name])
                  for _, name, _ in self._out_slots]
        found = (shapes, _evaluate(self._workspace_size, values))
        if len(self._bindings) < 64:
            self._bindings[key] = found
        return found

    def _prepare_exact(self, entry: Mapping[str, Any], input_dtypes: Mapping[str, Any]
                       ) -> None:
        """The fast entry's table and builtin function (see :mod:`irkit.plugins.llvm.entry`);
        leaves the exact path off when this interpreter's layout is unverified, the model
        has guards or a dim is not ``a*symbol + b``."""
        layout = _object_layout()
        if layout is None or self._guards:
            return
        index = {symbol: i for i, symbol in enumerate(self._symbols)}
        position = {name: i for i, name in enumerate(self._io_names)}
        inputs = list(self._input_dims)
        arrays = [(name, self._input_dims[name], canonical_dtype(np.dtype(input_dtypes[name])),
                   _C_CONTIGUOUS | _ALIGNED) for name in inputs]
        arrays += [(name, self._output_dims[name], self._output_dtypes[name],
                    _C_CONTIGUOUS | _ALIGNED | _WRITEABLE) for name in self._output_names]
        records: list[int] = []
        for name, dims, dtype, flags in arrays:
            records += [id(dtype), flags, position[name], len(dims)]
            for dim in dims:
                symbols = [m[0] for m in dim if len(m) == 1]
                if any(len(m) > 1 for m in dim) or len(symbols) > 1:
                    return
                symbol = symbols[0] if symbols else ""
                records += [dim.get((symbol,), 0), dim.get((), 0), index.get(symbol, -1)]
        try:  # an interpreter that does not export these keeps to the checked path
            functions = [_c_function(name) for name in (
                "Py_IncRef", "PyEval_SaveThread", "PyEval_RestoreThread")]
            new_function = ctypes.pythonapi.PyCFunction_NewEx
        except (AttributeError, OSError):
            return
        python = [id(True), id(False), *functions]
        self._table = np.array([id(np.ndarray), *layout, self._packed_address, len(arrays),
                                *python, *records], dtype=np.int64)
        self._exact_dtypes = [dtype for _, _, dtype, _ in arrays]  # the table holds their ids
        self._exact_inputs = inputs
        ctypes.c_int64.from_address(self._tracker[entry["call_table"]]).value = (
            self._table.ctypes.data)
        # The definition must outlive the function object made from it.
        self._method = _MethodDef(f"{entry['run']}_call".encode(), self._tracker[entry["call"]],
                                  _METH_FASTCALL, None)
        new_function.argtypes = [ctypes.POINTER(_MethodDef), ctypes.c_void_p, ctypes.c_void_p]
        new_function.restype = ctypes.py_object
        self._call = new_function(ctypes.byref(self._method), None, None)

    @property
    def exact(self) -> bool:
        """Whether ``run_exact`` can serve calls (see the module docstring)."""
        return self._call is not None

    def run_exact(self, inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any] | None:
        """``(outputs, dims key)`` from one checked native call, or None when the call
        needs ``run``: a conversion, a copy, an empty array, dims ``run`` has not served
        yet, a parallel split, or an error message. Nothing has run when it returns None."""
        exact = self._exact
        return None if exact is None or self._call is None else exact(inputs)

    def _exact_path(self) -> Any:
        """The closure behind ``run_exact``, its lookups bound once: the batch-1 call path
        is mostly Python overhead. ``_ready`` maps a dims key to output shapes; ``run``
        fills it once a call at those dims has succeeded, with the workspace grown and no
        parallel split planned."""
        call, dims, ready, empty = self._call, self._dims, self._ready, np.empty
        names = self._exact_inputs
        out_names = self._output_names
        out_dtypes = self._exact_dtypes[len(names):]
        sources = [(names.index(name) if name else -1, axis, a, b)
                   for name, axis, a, b in self._sources]
        count = len(names)
        errors = (KeyError, AttributeError, IndexError, TypeError)
        if count == 1 and len(out_names) == 1 and len(sources) == 1 and sources[0][0] == 0:
            (name,), (out_name,), (out_dtype,) = names, out_names, out_dtypes
            _, axis, a, b = sources[0]

            def exact_one(inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any] | None:
                if len(inputs) != 1:
                    return None
                try:
                    array = inputs[name]
                    key = (array.shape[axis] - b) // a
                    dims[0] = key  # a TypeError unless an int; the type is checked natively
                except errors:
                    return None
                shapes = ready.get(key)
                if shapes is None:
                    return None
                out = empty(shapes[0], out_dtype)
                return ({out_name: out}, key) if call(array, out) else None

            return exact_one

        def exact_any(inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any] | None:
            if len(inputs) != count:
                return None
            try:
                objects = [inputs[name] for name in names]
                key = tuple([(objects[i].shape[axis] - b) // a if i >= 0 else 1
                             for i, axis, a, b in sources])
                for i, value in enumerate(key):
                    dims[i] = value
            except errors:
                return None
            shapes = ready.get(key[0] if len(key) == 1 else key)
            if shapes is None:
                return None
            outputs = [empty(shape, dtype) for shape, dtype in zip(shapes, out_dtypes)]
            if not call(*objects, *outputs):
                return None
            return dict(zip(out_names, outputs)), key

        return exact_any

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._guards:  # size-setting input values, before any native code
            check_guards(self._guards, inputs)
        dims = self._dims
        if len(self._sources) == 1:  # the common batch-only model: no loop on the hot path
            name, axis, a, b = self._sources[0]
            value = (int(inputs[name].shape[axis]) - b) // a if name else 1
            dims[0] = value
            key: tuple[int, ...] = (value,)
        else:
            key = tuple([(int(inputs[name].shape[axis]) - b) // a if name else 1
                         for name, axis, a, b in self._sources])
            for i, value in enumerate(key):
                dims[i] = value
        io = self._io
        for slot, name in self._in_slots:
            array = inputs[name]
            io[slot] = _address(array) if array.size else _EMPTY_GUARD_ADDRESS
        shapes, workspace_bytes = self._bindings.get(key) or self._bind(key)
        outputs: dict[str, np.ndarray] = {}
        for (slot, name, dtype), shape in zip(self._out_slots, shapes):
            array = np.empty(shape, dtype=dtype)
            io[slot] = _address(array)
            outputs[name] = array
        if self._workspace.nbytes < workspace_bytes:
            self._workspace = _aligned_empty(workspace_bytes)
            self._workspace_address = self._workspace.ctypes.data
            self._packed_args[2] = self._workspace_address
        if self._workers is None:
            self._run_packed(self._packed_address)
        else:
            self._run_parallel(
                (self._io_address, self._weights_address, self._workspace_address), key)
        if (self._call is not None and len(self._ready) < 64
                and not any(self._split_plan.get(key, [self._workers is not None]))):
            self._ready[key[0] if len(key) == 1 else key] = shapes
        return outputs

    def _run_parallel(self, args: tuple[int, int, int], key: tuple[int, ...]) -> None:
        """Run the kernels, splitting the ones the plan for ``key`` says gain from it.

        The plan is measured on the first two calls at each binding of the symbolic dims:
        the first runs every kernel on one thread and times it; the second splits those
        that took at least ``parallel_min_seconds`` and times them again. A kernel stays
        split only if that was at least 10% faster (a 512x512 GEMM at batch 64 is not:
        its halves wait on the same memory)."""
        dims = ctypes.addressof(self._dims)
        plan = self._split_plan.get(key)
        if plan is not None:
            if not any(plan):
                self._run_packed(self._packed_address)
                return
            for kernel_fns, split in zip(self._kernels, plan):
                self._run_kernel(kernel_fns, args, dims, split)
            return
        serial = self._serial_seconds.get(key)
        timed = []
        for i, kernel_fns in enumerate(self._kernels):
            trial = serial is not None and serial[i] >= self.parallel_min_seconds
            start = time.perf_counter()
            self._run_kernel(kernel_fns, args, dims, trial)
            timed.append(time.perf_counter() - start)
        if serial is None:
            if len(self._serial_seconds) < 64:
                self._serial_seconds[key] = timed
        elif len(self._split_plan) < 64:
            least = self.parallel_min_seconds  # 0: split every parallel kernel, unmeasured
            self._split_plan[key] = [s >= least and (not least or t < 0.9 * s)
                                     for s, t in zip(serial, timed)]

    def _run_kernel(self, kernel_fns: tuple[Any, Any], args: tuple[int, int, int], dims: int,
                    split: bool) -> None:
        """One kernel over its whole extent: on this thread, or in ``threads`` parts."""
        kernel, extent_fn = kernel_fns
        extent = extent_fn(dims)
        parts = min(self.threads, extent // _MIN_SPLIT) if split else 1
        if parts <= 1 or self._workers is None:
            kernel(*args, dims, 0, extent)
            return
        bounds = [extent * p // parts for p in range(parts + 1)]
        for p in range(1, parts):
            self._workers.start(p - 1, functools.partial(kernel, *args, dims, bounds[p],
                                                      bounds[p + 1]))
        try:
            kernel(*args, dims, bounds[0], bounds[1])
        finally:
            for p in range(1, parts):
                self._workers.wait(p - 1)

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
        self._call = self._exact = None
        self._kernels = []
        self._tracker = None


class OrtSegment:
    """A run of nodes the llvm backend could not lower, executed by ONNX Runtime."""

    def __init__(self, model: bytes, outputs: list[str], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(inputs))))

    def close(self) -> None:
        self._session = None


class SegmentedRunner:
    """Segments in order (llvm kernels and ORT fallbacks), passing tensors by name."""

    thread_safe = False

    def __init__(self, segments: list[tuple[list[str], Any]], outputs: list[str]) -> None:
        self._segments = segments
        self._outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = dict(inputs)
        for names, runner in self._segments:
            feed = {name: np.ascontiguousarray(values[name]) for name in names}
            values.update(runner.run(feed))
        return {name: values[name] for name in self._outputs}

    def close(self) -> None:
        for _, runner in self._segments:
            runner.close()


_REQUIRED = ("object", "weights", "run", "kernels", "io", "workspace", "input_shapes",
             "output_shapes")
# Version 2: kernels take a pointer to the symbolic dims' values (version 1 took N).
ABI_VERSION = 2


def _program_runner(artifact_dir: Path, manifest: Manifest, entry: Mapping[str, Any],
                    threads: int, dtypes: Mapping[str, np.dtype],
                    input_dtypes: Mapping[str, np.dtype] | None = None) -> LlvmRunner:
    where = f"artifact {artifact_dir}"
    for key in _REQUIRED:
        if key not in entry:
            raise ArtifactError(f"{where}: llvm manifest entry lacks {key!r}")
    if entry.get("abi", 1) != ABI_VERSION:
        raise ArtifactError(f"{where}: its code uses llvm kernel ABI {entry.get('abi', 1)}, "
                            f"this runtime calls ABI {ABI_VERSION}; recompile the model")
    object_code = read_verified(artifact_dir, manifest, entry["object"])
    weights = read_verified(artifact_dir, manifest, entry["weights"])
    try:
        return LlvmRunner(entry, object_code, weights, threads, dtypes, input_dtypes)
    except (RuntimeError, OSError, KeyError) as exc:
        raise ArtifactError(f"{where}: the JIT could not link {entry['object']}: {exc}") from exc


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any) -> LlvmRunner | SegmentedRunner:
    """Link the artifact's object file(s) into this process and return its runner."""
    where = f"artifact {artifact_dir}"
    entry = manifest.entry
    unknown = sorted(set(overrides) - {"threads", "parallel_min_us"})
    if unknown:
        raise ArtifactError(f"{where}: unknown llvm runtime option(s) {', '.join(unknown)}")
    threads = overrides.get("threads", manifest.options.get("threads", 0))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ArtifactError(f"{where}: threads={threads!r} must be an int >= 0")
    if threads == 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    min_us = overrides.get("parallel_min_us", _MIN_PARALLEL_SECONDS * 1e6)
    if not isinstance(min_us, int | float) or isinstance(min_us, bool) or min_us < 0:
        raise ArtifactError(f"{where}: parallel_min_us={min_us!r} must be a number >= 0")
    outputs = [spec.name for spec in manifest.outputs]
    if "segments" not in entry:
        dtypes = {spec.name: spec.dtype for spec in manifest.outputs}
        input_dtypes = {spec.name: spec.dtype for spec in manifest.inputs}
        runner = _program_runner(artifact_dir, manifest, entry, threads, dtypes, input_dtypes)
        runner.parallel_min_seconds = min_us / 1e6
        return runner
    segments: list[tuple[list[str], Any]] = []
    for segment in entry["segments"]:
        names = list(segment["inputs"])
        if segment.get("kind") == "ort":
            model = read_verified(artifact_dir, manifest, segment["model"])
            try:
                segments.append((names, OrtSegment(model, list(segment["outputs"]), threads)))
            except ImportError as exc:
                raise ArtifactError(f"{where}: the ORT fallback segments need onnxruntime: "
                                    f"{exc}") from exc
        else:
            dtypes = {name: parse_dtype(dt) for name, dt in segment["output_dtypes"].items()}
            segments.append((names, _program_runner(artifact_dir, manifest, segment, threads,
                                                    dtypes)))
    return SegmentedRunner(segments, outputs)
