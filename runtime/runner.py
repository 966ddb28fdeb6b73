"""The program runner every kernel-program backend shares.

A backend's loader turns each compiled program of an artifact into a
:class:`KernelLibrary` — "here is the code, linked; run kernel *i* over iterations
``[start, end)``" — and :func:`open_program` does everything else, the same way for every
backend: pick the variant this machine can run (:meth:`ProgramEntry.select`), check the
values of size-setting inputs (guards), bind the symbolic dims from the input shapes, work
out output shapes and workspace bytes (checking the program's constraints), allocate the
outputs, split long kernels over worker threads where a timed trial shows it pays, and
chain kernel programs with ONNX Runtime segments (``fallback = "ort"``).

Threads: with ``threads > 1`` the first call at each binding of the symbolic dims times
every kernel on one thread; the second splits those that took at least
``parallel_min_us`` (load option, default 60; 0 splits every one, unmeasured) and keeps a
split only where it was 10% faster. Handing a part to a worker (:class:`Workers`: one lock
to start it, one to wait for it) costs about 13 µs, where a ``ThreadPoolExecutor`` submit
and result cost about 65 µs. Calls share one workspace, so a runner is not
``thread_safe``: CompiledModel serializes concurrent calls.

Workspace: a library keeps its workspace between calls only up to ``workspace_keep_mb``
(load option, default 16). After a call that needed more (a huge direct call), a library
with ``shrink_workspace`` (llvm) frees it and keeps what the largest kept call needed, so
memory between calls is bounded by the option, not by the largest call ever made; a call
above the limit allocates its workspace afresh each time.

Random ops without a seed: a program holding one has the symbol ``N64``
(:mod:`irkit.runtime.call_keys`), which no input binds; each call sets its ``dims`` slot
to the next key of the model's :class:`~irkit.runtime.call_keys.CallKeys`, so every call
draws fresh values (load option ``random_seed``: reproducible per call number).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest, read_verified
from irkit.runtime.call_keys import CALL_KEY_SYMBOL, CallKeys, random_seed_option
from irkit.runtime.control import (
    CONTROL_KINDS,
    CheckedProgram,
    feed_value,
    nested_runners,
    open_control,
)
from irkit.runtime.dynamic import TrimmingRunner
from irkit.runtime.guards import check_guards, validate_guards
from irkit.runtime.hostcpu import Host, host
from irkit.runtime.program import KernelProgram, Poly, ProgramEntry, Segment, evaluate_poly
from irkit.runtime.signature import canonical_dtype, parse_dtype

# Below this many iterations per thread a parallel split costs more than it saves.
_MIN_SPLIT = 2
# Handing a kernel part to a worker costs about 13 us; only kernels that took longer than
# this on one thread (measured on the first call per binding) split.
_MIN_PARALLEL_SECONDS = 6e-5
# Bindings of the symbolic dims remembered per runner (shapes, split plans).
_MAX_BINDINGS = 64
# Workspace bytes a library keeps between calls (load option workspace_keep_mb).
WORKSPACE_KEEP_BYTES = 16 << 20
RUNTIME_OPTIONS = ("threads", "parallel_min_us", "host", "workspace_keep_mb", "random_seed")


class KernelLibrary(Protocol):
    """One kernel program, loaded by a backend. The runner calls ``bind`` and then either
    ``run`` (every kernel in order) or ``run_kernel`` per kernel followed by ``sync``."""

    kernel_count: int
    # Whether parts of one kernel may run on several threads at once (CPU code).
    concurrent_parts: bool

    def bind(self, arrays: Sequence[np.ndarray], dims: Sequence[int],
             workspace_bytes: int) -> None:
        """Buffers for the next run: the io arrays in the program's io order (outputs
        allocated, C-contiguous), the symbol values, the workspace size in bytes."""

    def run(self) -> None:
        """Every kernel in order on the bound buffers; outputs are complete after it."""

    def run_kernel(self, index: int, start: int, end: int) -> None:
        """Iterations ``[start, end)`` of kernel ``index``'s top-level parallel loop."""

    def extent(self, index: int) -> int:
        """Trip count of kernel ``index``'s parallel loop at the bound dims (1 if none)."""

    def sync(self) -> None:
        """Make the outputs complete after ``run_kernel`` calls (copies, for device code)."""

    def close(self) -> None: ...


LibraryFactory = Callable[[Path, Manifest, KernelProgram], KernelLibrary]
RunnerFactory = Callable[[KernelProgram, Any, int, Mapping[str, np.dtype]], "ProgramRunner"]


class Workers:
    """``count`` daemon threads that each run one job per ``start`` and signal ``wait``.

    Two locks per worker: ``start`` releases its "go" lock, the worker runs the job (a
    native kernel call, which releases the GIL) and releases its "done" lock. Threads are
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
                             name="irkit-kernel-worker").start()
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


class ProgramRunner:
    """Runs one kernel program: binds dims, sizes outputs and workspace, splits kernels."""

    thread_safe = False
    variant: str | None = None  # the target of the compiled code it runs

    def __init__(self, program: KernelProgram, library: KernelLibrary, threads: int,
                 output_dtypes: Mapping[str, np.dtype]) -> None:
        self.program = program
        self.library = library
        self._symbols = list(program.symbols)
        self._input_dims = {name: list(dims) for name, dims in program.input_shapes.items()}
        self._output_names = list(program.output_shapes)
        self._output_dims = [list(program.output_shapes[n]) for n in self._output_names]
        self._output_dtypes = [canonical_dtype(np.dtype(output_dtypes[n]))
                               for n in self._output_names]
        self._constraints = list(program.constraints)
        self._guards = validate_guards(list(program.guards))
        self._workspace = program.workspace
        position = {name: i for i, name in enumerate(program.io)}
        self._in_slots = [(position[name], name) for name in self._input_dims]
        self._out_slots = [position[name] for name in self._output_names]
        self._arity = len(program.io)
        self.sources = _symbol_sources(self._symbols, self._input_dims)
        self.threads = max(1, threads)
        self._workers = Workers(self.threads - 1) if self.threads > 1 else None
        # Per binding of the symbols: output shapes and workspace bytes; split plans.
        self._bindings: dict[tuple[int, ...], tuple[list[tuple[int, ...]], int]] = {}
        self._split_plan: dict[tuple[int, ...], list[bool]] = {}
        self._serial_seconds: dict[tuple[int, ...], list[float]] = {}
        self.parallel_min_seconds = _MIN_PARALLEL_SECONDS
        self.workspace_keep_bytes = WORKSPACE_KEEP_BYTES
        self._kept_workspace = 0  # the most a call under the keep limit needed
        # Bindings served once with no split planned: a backend's exact path may take them.
        self.ready: dict[Any, list[tuple[int, ...]]] = {}
        # The dims slot of the per-call key of unseeded random ops (-1: none), and the
        # keys (open_program shares one sequence among a model's programs).
        self.call_key_slot = (self._symbols.index(CALL_KEY_SYMBOL)
                              if CALL_KEY_SYMBOL in self._symbols else -1)
        self.call_keys = CallKeys()

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    @property
    def output_dtypes(self) -> list[np.dtype]:
        return self._output_dtypes

    def dims_of(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        """The symbol values the input shapes give (each from one dim ``a*sym + b``)."""
        return tuple([(int(inputs[name].shape[axis]) - b) // a if name else 1
                      for name, axis, a, b in self.sources])

    def bind(self, key: tuple[int, ...]) -> tuple[list[tuple[int, ...]], int]:
        found = self._bindings.get(key)
        if found is not None:
            return found
        values = dict(zip(self._symbols, key))
        for size, why in self._constraints:
            if evaluate_poly(size, values) < 0:
                raise ValueError(f"inputs outside the shapes this model supports: {why} "
                                 f"(dims {', '.join(f'{k}={v}' for k, v in values.items())})")
        shapes = [tuple(evaluate_poly(d, values) for d in dims) for dims in self._output_dims]
        if any(d < 0 for shape in shapes for d in shape):
            raise ValueError(f"inputs give a negative output size at dims {values}")
        found = (shapes, evaluate_poly(self._workspace, values))
        if len(self._bindings) < _MAX_BINDINGS:
            self._bindings[key] = found
        return found

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._guards:  # size-setting input values, before any native code
            check_guards(self._guards, inputs)
        key = self.dims_of(inputs)
        shapes, workspace_bytes = self.bind(key)
        arrays: list[Any] = [None] * self._arity
        for slot, name in self._in_slots:
            arrays[slot] = inputs[name]
        outputs: dict[str, np.ndarray] = {}
        for slot, name, dtype, shape in zip(self._out_slots, self._output_names,
                                            self._output_dtypes, shapes):
            arrays[slot] = outputs[name] = np.empty(shape, dtype=dtype)
        library = self.library
        dims: Sequence[int] = key
        if self.call_key_slot >= 0:  # unseeded random ops: a fresh key per call
            dims = list(key)
            dims[self.call_key_slot] = self.call_keys.next()
        library.bind(arrays, dims, workspace_bytes)
        try:
            if self._workers is None or not library.concurrent_parts:
                library.run()
            else:
                self._run_parallel(key)
        finally:
            if workspace_bytes > self.workspace_keep_bytes:
                shrink = getattr(library, "shrink_workspace", None)
                if shrink is not None:
                    shrink(self._kept_workspace)
        if workspace_bytes > self.workspace_keep_bytes:
            return outputs  # never in `ready`: the exact path runs on the workspace kept
        self._kept_workspace = max(self._kept_workspace, workspace_bytes)
        if len(self.ready) < _MAX_BINDINGS and not any(
                self._split_plan.get(key, [self._workers is not None])):
            self.ready[key[0] if len(key) == 1 else key] = shapes
        return outputs

    def _run_parallel(self, key: tuple[int, ...]) -> None:
        """Run the kernels, splitting the ones the plan for ``key`` says gain from it.

        The plan is measured on the first two calls at each binding of the symbolic dims:
        the first runs every kernel on one thread and times it; the second splits those
        that took at least ``parallel_min_seconds`` and times them again. A kernel stays
        split only if that was at least 10% faster (a 512x512 GEMM at batch 64 is not:
        its halves wait on the same memory)."""
        library = self.library
        plan = self._split_plan.get(key)
        if plan is not None:
            if not any(plan):
                library.run()
                return
            for index, split in enumerate(plan):
                self._run_kernel(index, split)
            library.sync()
            return
        serial = self._serial_seconds.get(key)
        timed = []
        for index in range(library.kernel_count):
            trial = serial is not None and serial[index] >= self.parallel_min_seconds
            start = time.perf_counter()
            self._run_kernel(index, trial)
            timed.append(time.perf_counter() - start)
        library.sync()
        if serial is None:
            if len(self._serial_seconds) < _MAX_BINDINGS:
                self._serial_seconds[key] = timed
        elif len(self._split_plan) < _MAX_BINDINGS:
            least = self.parallel_min_seconds  # 0: split every parallel kernel, unmeasured
            self._split_plan[key] = [s >= least and (not least or t < 0.9 * s)
                                     for s, t in zip(serial, timed)]

    def _run_kernel(self, index: int, split: bool) -> None:
        """One kernel over its whole extent: on this thread, or in ``threads`` parts."""
        library = self.library
        extent = library.extent(index)
        parts = min(self.threads, extent // _MIN_SPLIT) if split else 1
        if parts <= 1 or self._workers is None:
            library.run_kernel(index, 0, extent)
            return
        bounds = [extent * p // parts for p in range(parts + 1)]
        for p in range(1, parts):
            self._workers.start(p - 1, functools.partial(library.run_kernel, index, bounds[p],
                                                         bounds[p + 1]))
        try:
            library.run_kernel(index, bounds[0], bounds[1])
        finally:
            for p in range(1, parts):
                self._workers.wait(p - 1)

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
        self.library.close()


def _symbol_sources(symbols: Sequence[str], input_dims: Mapping[str, list[Poly]]
                    ) -> list[tuple[str, int, int, int]]:
    """For each symbol, the first input dim ``a * symbol + b`` (a != 0) that carries it:
    (input, axis, a, b); ``("", 0, 1, 0)`` for a symbol no input dim carries."""
    sources = []
    for symbol in symbols:
        found = [(name, axis, dim.get((symbol,), 0), dim.get((), 0))
                 for name, dims in input_dims.items() for axis, dim in enumerate(dims)
                 if dim.get((symbol,)) and set(dim) <= {(symbol,), ()}]
        sources.append(found[0] if found else ("", 0, 1, 0))
    return sources


class OrtSegmentRunner:
    """A run of nodes the kernel backend could not lower, executed by ONNX Runtime."""

    def __init__(self, model: bytes, outputs: Sequence[str], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._outputs = list(outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(inputs))))

    def close(self) -> None:
        self._session = None


class SegmentedRunner:
    """Segments in order (kernel programs and ORT fallbacks), passing tensors by name."""

    thread_safe = False
    variant: str | None = None

    def __init__(self, segments: list[tuple[Sequence[str], Any]], outputs: list[str]) -> None:
        self._segments = segments
        self._outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = dict(inputs)
        for names, runner in self._segments:
            feed = {name: feed_value(values[name]) for name in names}
            values.update(runner.run(feed))
        return {name: values[name] for name in self._outputs}

    def close(self) -> None:
        for _, runner in self._segments:
            runner.close()


def runtime_options(artifact_dir: Path, manifest: Manifest, overrides: Mapping[str, Any]
                    ) -> tuple[int, float, Host]:
    """``threads`` (0: every core this process may use), ``parallel_min_us`` and ``host``
    (the machine to check the code's requirements against; this one by default);
    ``workspace_keep_mb`` is validated here and applied by :func:`open_program`."""
    where = f"artifact {artifact_dir}"
    unknown = sorted(set(overrides) - set(RUNTIME_OPTIONS))
    if unknown:
        raise ArtifactError(f"{where}: unknown {manifest.backend} runtime option(s) "
                            f"{', '.join(unknown)} (known: {', '.join(RUNTIME_OPTIONS)})")
    threads = overrides.get("threads", manifest.options.get("threads", 0))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ArtifactError(f"{where}: threads={threads!r} must be an int >= 0")
    if threads == 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    min_us = overrides.get("parallel_min_us", _MIN_PARALLEL_SECONDS * 1e6)
    if not isinstance(min_us, int | float) or isinstance(min_us, bool) or min_us < 0:
        raise ArtifactError(f"{where}: parallel_min_us={min_us!r} must be a number >= 0")
    keep_mb = overrides.get("workspace_keep_mb", WORKSPACE_KEEP_BYTES / 2**20)
    if not isinstance(keep_mb, int | float) or isinstance(keep_mb, bool) or not (
            0 <= keep_mb <= 1 << 20):
        raise ArtifactError(f"{where}: workspace_keep_mb={keep_mb!r} must be a number of "
                            "MiB between 0 and 2**20")
    machine = overrides.get("host", None) or host()
    if not isinstance(machine, Host):
        raise ArtifactError(f"{where}: host= must be an irkit.runtime.hostcpu.Host")
    return threads, float(min_us), machine


def open_program(artifact_dir: Path, manifest: Manifest, make_library: LibraryFactory,
                 make_runner: RunnerFactory | None = None, **overrides: Any
                 ) -> ProgramRunner | SegmentedRunner:
    """The runner of a kernel-program artifact: the variant this host runs, each of its
    kernel programs loaded by ``make_library`` and run by ``make_runner`` (a
    :class:`ProgramRunner` subclass with a backend's own fast path; ProgramRunner by
    default), ORT segments by ONNX Runtime."""
    where = f"artifact {artifact_dir}"
    threads, min_us, machine = runtime_options(artifact_dir, manifest, overrides)
    keys = CallKeys(random_seed_option(overrides.get("random_seed"), where))
    entry = ProgramEntry.from_json(manifest.entry, f"{where}: manifest.json entry")
    variant = entry.select(machine, where)
    signature_outputs = [spec.name for spec in manifest.outputs]
    dtypes = {spec.name: spec.dtype for spec in manifest.outputs}
    runners: list[tuple[Sequence[str], Any]] = []
    try:
        for segment in variant.segments:
            runners.append((segment.inputs, _segment_runner(
                artifact_dir, manifest, segment, make_library, make_runner or ProgramRunner,
                threads, dtypes)))
    except BaseException:
        for _, opened in runners:
            opened.close()
        raise
    keep = int(overrides.get("workspace_keep_mb", WORKSPACE_KEEP_BYTES / 2**20) * 2**20)
    for part in [p for _, r in runners for p in (r, *nested_runners(r))]:
        part = getattr(part, "inner", part)  # a TrimmingRunner's program runner
        if isinstance(part, ProgramRunner):
            part.parallel_min_seconds = min_us / 1e6
            part.workspace_keep_bytes = keep
            part.call_keys = keys
    runner: ProgramRunner | SegmentedRunner = SegmentedRunner(runners, signature_outputs)
    if len(runners) == 1 and isinstance(runners[0][1], ProgramRunner) and set(
            runners[0][1].output_names) == set(signature_outputs):
        runner = runners[0][1]
    runner.variant = variant.name
    return runner


def _signature_poly(dim: Any, symbols: Sequence[str]) -> Poly | None:
    """A signature dim as a size polynomial (64, "N"); None for forms not compared: a
    name the program does not bind (an output size the model computes from input values,
    e.g. ONNX's ``unk__0``) is whatever the program's own size expression gives."""
    if type(dim) is int:
        return {(): dim} if dim else {}
    if isinstance(dim, str) and dim in symbols:
        return {(dim,): 1}
    return None


def check_program(artifact_dir: Path, manifest: Manifest, program: KernelProgram,
                  where: str) -> None:
    """ArtifactError unless the program agrees with the manifest's signature (the shapes
    of the model inputs it reads and outputs it writes: the code writes exactly that many
    elements) and its weights file has the size the compiler wrote, its guards are
    well-formed. Checked before any code is linked: a manifest re-hashed after an edit
    must not make compiled code read or write past a buffer."""
    specs = {spec.name: spec for spec in (*manifest.inputs, *manifest.outputs)}
    for side, shapes in (("input_shapes", program.input_shapes),
                         ("output_shapes", program.output_shapes)):
        for name, dims in shapes.items():
            spec = specs.get(name)
            if spec is None:
                continue  # a tensor between segments
            wanted = [_signature_poly(d, program.symbols) for d in spec.shape]
            clean = [{m: c for m, c in d.items() if c} for d in dims]
            if len(wanted) != len(clean) or any(
                    w is not None and w != d for w, d in zip(wanted, clean)):
                raise ArtifactError(f"{where}: manifest.json entry {side}.{name} does not match "
                                    f"the signature's shape {list(spec.shape)}")
    try:
        validate_guards(list(program.guards))
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{where}: manifest.json entry guards: {exc}") from None
    if program.weights_bytes is not None:
        path = artifact_dir / program.weights
        try:
            size = path.lstat().st_size
        except OSError as exc:
            raise ArtifactError(f"{where}: cannot read {program.weights}: {exc.strerror}"
                                ) from None
        if size != program.weights_bytes:
            raise ArtifactError(f"{where}: {program.weights} holds {size} bytes, manifest.json "
                                f"entry weights_bytes says {program.weights_bytes}")


def _segment_runner(artifact_dir: Path, manifest: Manifest, segment: Segment,
                    make_library: LibraryFactory, make_runner: RunnerFactory,
                    threads: int, dtypes: Mapping[str, np.dtype]) -> Any:
    where = f"artifact {artifact_dir}"
    if segment.kind in CONTROL_KINDS:  # loop bodies and branches: their own segments
        return open_control(segment, functools.partial(
            _nested_runner, artifact_dir, manifest, make_library, make_runner, threads))
    if segment.kind == "ort":
        assert segment.model is not None
        model = read_verified(artifact_dir, manifest, segment.model)
        try:
            return OrtSegmentRunner(model, segment.outputs, threads)
        except ImportError as exc:
            raise ArtifactError(f"{where}: the ORT fallback segments need onnxruntime: "
                                f"{exc}") from exc
    program = segment.program
    assert program is not None
    output_dtypes = {}
    for name, text in program.output_dtypes.items():
        try:
            written = canonical_dtype(parse_dtype(text))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: output {name!r} has dtype {text!r}: {exc}") from exc
        declared = dtypes.get(name)
        if declared is not None and canonical_dtype(np.dtype(declared)) != written:
            raise ArtifactError(f"{where}: manifest.json signature gives output {name!r} dtype "
                                f"{np.dtype(declared).name}, its code writes {written.name}")
        output_dtypes[name] = declared or written
    check_program(artifact_dir, manifest, program, where)
    library = make_library(artifact_dir, manifest, program)
    try:
        runner = make_runner(program, library, threads, output_dtypes)
        return runner if segment.trim is None else TrimmingRunner(runner, segment.trim)
    except BaseException:
        library.close()
        raise


def _nested_runner(artifact_dir: Path, manifest: Manifest, make_library: LibraryFactory,
                   make_runner: RunnerFactory, threads: int, segment: Segment) -> Any:
    """A segment of a loop body or an If branch: kernel programs check the shapes they
    are fed (a loop-carried value may change shape), one thread each (a body runs many
    short calls)."""
    runner = _segment_runner(artifact_dir, manifest, segment, make_library, make_runner,
                             1, {})
    if segment.program is not None:
        return CheckedProgram(runner, segment.program)
    return runner
