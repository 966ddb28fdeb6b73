"""Runtime loader for ``llvm`` artifacts: a relocatable object linked in process by
llvmlite's ORC JIT (no system linker), its kernels called through ctypes.

Everything but linking is shared with the other kernel-program backends
(:mod:`irkit.runtime.runner`): this module JIT-links ``code`` (an ELF object), hands the
runner each kernel's address, and offers the exact path.

Each kernel ``k`` exports ``k(io, weights, workspace, dims, start, end)`` and
``k_extent(dims)``; ``<run>`` runs them all and ``<run>_packed(block)`` takes the four
pointers in one block (:mod:`irkit.plugins.llvm.entry`).

The exact path: ``run_exact`` serves the common call (numpy arrays of exactly the
signature's dtypes, C-contiguous, aligned, non-empty, at dims served before) with one call
of ``native.call``, which the loader wraps in a CPython builtin function (no ctypes
conversions). It checks every array's type, dtype, flags and dims against a table before
any kernel runs and releases the GIL while kernels run. The table holds the byte offsets
of the CPython and numpy struct fields it reads; the loader verifies them on probe objects
(``_object_layout``) and keeps to the runner's checked path when they differ, when the
program has no fast entry, has guards, or a dim is not ``a*N + b``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.facts import MAX_FACTS_BYTES, check_facts, facts_symbol, has_facts
from irkit.runtime.program import KernelProgram
from irkit.runtime.runner import ProgramRunner, SegmentedRunner, open_program
from irkit.runtime.signature import canonical_dtype

_KERNEL_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
)  # fmt: skip
_EXTENT_TYPE = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
_PACKED_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _MethodDef(ctypes.Structure):
    """CPython's ``PyMethodDef``: the JIT-linked fast entry becomes a builtin function."""

    _fields_ = [("name", ctypes.c_char_p), ("meth", ctypes.c_void_p),
                ("flags", ctypes.c_int), ("doc", ctypes.c_char_p)]


_METH_FASTCALL = 0x80
_JIT_LOCK = threading.Lock()
_LIBRARY_COUNTER = iter(range(1 << 62))


def _aligned_empty(nbytes: int, alignment: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    shift = (-raw.ctypes.data) % alignment
    return raw[shift : shift + nbytes]


_MAPPED_WORKSPACE = 1 << 20
"""Workspaces of at least this many bytes get their own anonymous memory map, so that
freeing one returns its pages to the OS at once (glibc keeps freed heap pages)."""
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _workspace_buffer(nbytes: int) -> np.ndarray:
    if nbytes < _MAPPED_WORKSPACE or not hasattr(mmap, "MAP_ANONYMOUS"):
        return _aligned_empty(nbytes)
    # page-aligned; the array holds the map, which is unmapped when the array is freed.
    # Private: an anonymous shared map is shmem, where huge pages are usually off.
    mapped = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if _HUGEPAGE is not None:  # a fresh 32 MiB: 7 ms of page faults instead of 48 (measured)
        with contextlib.suppress(OSError):  # huge pages off: 4 KiB pages
            mapped.madvise(_HUGEPAGE)
    return np.frombuffer(mapped, dtype=np.uint8)


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


class LlvmLibrary:
    """One JIT-linked object: kernel addresses, the weights and a workspace that grows to
    what a call needs and shrinks back after calls the runner does not keep it for."""

    concurrent_parts = True

    def __init__(self, program: KernelProgram, object_code: bytes, weights: bytes,
                 facts: bool = False) -> None:
        import llvmlite.binding as llvm

        with _JIT_LOCK:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            self._jit = llvm.create_lljit_compiler()
            builder = llvm.JITLibraryBuilder().add_object_img(object_code)
            builder.add_current_process()  # libm for the rare math calls LLVM leaves
            symbols = [f"{program.run}_packed"]
            for name in program.kernels:
                symbols += [name, f"{name}_extent"]
            symbols += [program.native[k] for k in ("call", "call_table") if k in program.native]
            if facts:
                symbols.append(facts_symbol(program.run))
            for symbol in symbols:
                builder.export_symbol(symbol)
            self._tracker = builder.link(self._jit, f"irkit_{next(_LIBRARY_COUNTER)}")
        self.program = program
        self._run_packed = _PACKED_TYPE(self._tracker[f"{program.run}_packed"])
        self._kernels = [_KERNEL_TYPE(self._tracker[k]) for k in program.kernels]
        self._extents = [_EXTENT_TYPE(self._tracker[f"{k}_extent"]) for k in program.kernels]
        self.kernel_count = len(self._kernels)
        self._weights = _aligned_empty(max(len(weights), 1))
        self._weights[: len(weights)] = np.frombuffer(weights, dtype=np.uint8)
        self._workspace = _aligned_empty(0)
        self._io = (ctypes.c_void_p * len(program.io))()
        self.dims = (ctypes.c_int64 * max(1, len(program.symbols)))(
            *([1] * max(1, len(program.symbols))))
        self._io_address = ctypes.addressof(self._io)
        self._dims_address = ctypes.addressof(self.dims)
        self._weights_address = self._weights.ctypes.data
        # {io, weights, workspace, dims} for the one-argument entry.
        self._packed = (ctypes.c_void_p * 4)(self._io_address, self._weights_address,
                                             self._workspace.ctypes.data, self._dims_address)
        self.packed_address = ctypes.addressof(self._packed)
        self._args = (self._io_address, self._weights_address, self._workspace.ctypes.data,
                      self._dims_address)

    def bind(self, arrays: Sequence[np.ndarray], dims: Sequence[int],
             workspace_bytes: int) -> None:
        io = self._io
        for slot, array in enumerate(arrays):
            io[slot] = _address(array) if array.size else _EMPTY_GUARD_ADDRESS
        for i, value in enumerate(dims):
            self.dims[i] = value
        if self._workspace.nbytes < workspace_bytes:
            self._set_workspace(workspace_bytes)

    def shrink_workspace(self, nbytes: int) -> None:
        """Free a workspace larger than ``nbytes`` and keep one of ``nbytes`` (the most
        that calls the runner keeps the workspace for need)."""
        if self._workspace.nbytes > nbytes:
            self._set_workspace(nbytes)

    def _set_workspace(self, nbytes: int) -> None:
        self._workspace = _workspace_buffer(nbytes)
        address = int(self._workspace.ctypes.data)
        self._packed[2] = address
        self._args = (self._io_address, self._weights_address, address, self._dims_address)

    def run(self) -> None:
        self._run_packed(self.packed_address)

    def run_kernel(self, index: int, start: int, end: int) -> None:
        self._kernels[index](*self._args, start, end)

    def extent(self, index: int) -> int:
        return int(self._extents[index](self._dims_address))

    def sync(self) -> None:
        pass

    def symbol(self, name: str) -> int:
        return int(self._tracker[name])

    def facts(self) -> bytes:
        """The JSON the compiler recorded in the code (:mod:`irkit.runtime.facts`)."""
        address = self.symbol(facts_symbol(self.program.run))
        length = ctypes.c_int64.from_address(address).value
        if not 0 < length <= MAX_FACTS_BYTES:
            raise ArtifactError(f"{self.program.code}: its facts claim {length} bytes")
        return ctypes.string_at(address + 8, length)

    def close(self) -> None:
        self._kernels = []
        self._extents = []
        self._tracker = None


class LlvmRunner(ProgramRunner):
    """The shared program runner plus the exact path of a JIT-linked object."""

    def __init__(self, program: KernelProgram, library: LlvmLibrary, threads: int,
                 output_dtypes: Mapping[str, np.dtype],
                 input_dtypes: Mapping[str, np.dtype]) -> None:
        super().__init__(program, library, threads, output_dtypes)
        self._call: Any = None
        self._exact: Any = None
        if program.native.get("call"):
            self._prepare_exact(library, input_dtypes)
            if self._call is not None:
                self._exact = self._exact_path(library)

    def _prepare_exact(self, library: LlvmLibrary, input_dtypes: Mapping[str, Any]) -> None:
        """The fast entry's table and builtin function (see :mod:`irkit.plugins.llvm.entry`);
        leaves the exact path off when this interpreter's layout is unverified, the model
        has guards or a dim is not ``a*symbol + b``."""
        layout = _object_layout()
        if layout is None or self._guards:
            return
        program = self.program
        index = {symbol: i for i, symbol in enumerate(program.symbols)}
        position = {name: i for i, name in enumerate(program.io)}
        inputs = list(program.input_shapes)
        arrays = [(name, program.input_shapes[name],
                   canonical_dtype(np.dtype(input_dtypes[name])), _C_CONTIGUOUS | _ALIGNED)
                  for name in inputs]
        arrays += [(name, program.output_shapes[name], dtype,
                    _C_CONTIGUOUS | _ALIGNED | _WRITEABLE)
                   for name, dtype in zip(self.output_names, self.output_dtypes)]
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
        self._table = np.array([id(np.ndarray), *layout, library.packed_address,
                                len(arrays), *python, *records], dtype=np.int64)
        self._exact_dtypes = [dtype for _, _, dtype, _ in arrays]  # the table holds their ids
        self._exact_inputs = inputs
        ctypes.c_int64.from_address(library.symbol(program.native["call_table"])).value = (
            self._table.ctypes.data)
        # The definition must outlive the function object made from it.
        self._method = _MethodDef(f"{program.run}_call".encode(),
                                  library.symbol(program.native["call"]), _METH_FASTCALL, None)
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

    def _exact_path(self, library: LlvmLibrary) -> Any:
        """The closure behind ``run_exact``, its lookups bound once: the batch-1 call path
        is mostly Python overhead. ``ready`` maps a dims key to output shapes; ``run``
        fills it once a call at those dims has succeeded, with the workspace grown and no
        parallel split planned."""
        call, dims, ready, empty = self._call, library.dims, self.ready, np.empty
        names = self._exact_inputs
        out_names = self.output_names
        out_dtypes = self._exact_dtypes[len(names):]
        sources = [(names.index(name) if name else -1, axis, a, b)
                   for name, axis, a, b in self.sources]
        count = len(names)
        errors = (KeyError, AttributeError, IndexError, TypeError)
        # Unseeded random ops: a fresh key per call in the last dims slot (run() keys
        # `ready` by the dims with 1 there).
        slot, runner = self.call_key_slot, self
        shape_sources = sources[:-1] if slot >= 0 and slot == len(sources) - 1 else sources
        if count == 1 and len(out_names) == 1 and len(shape_sources) == 1 and \
                sources[0][0] == 0 and (slot < 0 or shape_sources is not sources):
            (name,), (out_name,), (out_dtype,) = names, out_names, out_dtypes
            _, axis, a, b = sources[0]
            keyed = slot >= 0

            def exact_one(inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any] | None:
                if len(inputs) != 1:
                    return None
                try:
                    array = inputs[name]
                    key = (array.shape[axis] - b) // a
                    dims[0] = key  # a TypeError unless an int; the type is checked natively
                except errors:
                    return None
                shapes = ready.get((key, 1) if keyed else key)
                if shapes is None:
                    return None
                if keyed:
                    dims[slot] = runner.call_keys.next()
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
            if slot >= 0:
                dims[slot] = runner.call_keys.next()
            outputs = [empty(shape, dtype) for shape, dtype in zip(shapes, out_dtypes)]
            if not call(*objects, *outputs):
                return None
            return dict(zip(out_names, outputs)), key

        return exact_any


    def close(self) -> None:
        self._call = self._exact = None
        super().close()


def _library(artifact_dir: Path, manifest: Manifest, program: KernelProgram) -> LlvmLibrary:
    object_code = read_verified(artifact_dir, manifest, program.code)
    weights = read_verified(artifact_dir, manifest, program.weights)
    facts = has_facts(object_code, program.run)  # older code has none: loads as before
    try:
        library = LlvmLibrary(program, object_code, weights, facts)
    except (RuntimeError, OSError, KeyError) as exc:
        raise ArtifactError(f"artifact {artifact_dir}: the JIT could not link "
                            f"{program.code}: {exc}") from exc
    if facts:  # before the first call: the manifest must describe this very code
        try:
            check_facts(library.facts(), program, manifest, f"artifact {artifact_dir}")
        except BaseException:
            library.close()
            raise
    return library


def load(artifact_dir: Path, manifest: Manifest, **overrides: Any
         ) -> ProgramRunner | SegmentedRunner:
    """Link the object file(s) of the variant this machine runs and return its runner."""
    input_dtypes = {spec.name: spec.dtype for spec in manifest.inputs}

    def make_runner(program: KernelProgram, library: Any, threads: int,
                    output_dtypes: Mapping[str, np.dtype]) -> ProgramRunner:
        if set(program.input_shapes) != set(input_dtypes):  # a segment: no exact path
            return ProgramRunner(program, library, threads, output_dtypes)
        return LlvmRunner(program, library, threads, output_dtypes, input_dtypes)

    return open_program(artifact_dir, manifest, _library, make_runner, **overrides)
