"""Run-time control flow between compiled segments: ``Loop``, ``If``, sequences, optionals.

A kernel-program artifact's segments pass values by name (:mod:`irkit.runtime.program`).
Three more segment kinds run on the host, between compiled kernel programs:

``loop``
    A ``Loop`` whose trip count or condition is only known at run time. Its body is a
    list of segments of its own (kernel programs compiled like the model's), run once per
    iteration with the loop-carried values fed back and scan outputs collected and
    stacked. A carried value whose shape changes across iterations gets symbolic dims in
    the body's programs, bound per call from the shapes it has then.
``if``
    Both branches compiled as segment lists; the condition picks one at run time.
``seq``
    One sequence or optional op (SequenceEmpty/Construct/Insert/At/Erase/Length,
    SplitToSequence, ConcatFromSequence, Optional, OptionalHasElement,
    OptionalGetElement): a Python list of tensors is the sequence, ``None`` the empty
    optional. These ops move tensors between lists; every arithmetic op is compiled code.

Manifest form (inside a variant's ``segments``; ``body``/``then``/``else`` hold segments
in the same form, nested at most :data:`MAX_DEPTH` deep)::

    {"kind": "loop", "inputs": [...], "outputs": [...], "trip": "M" | null,
     "cond": "c" | null, "carried": ["v0", ...],
     "scan_dtypes": ["int64"], "scan_shapes": [[1, null]],
     "consts": {"name": {"dtype": "int64", "shape": [], "data": "<base64>"}},
     "body": {"inputs": ["i", "cond_in", "v_in"], "outputs": ["cond_out", "v_out", "s"],
              "consts": {...}, "segments": [...]}}
    {"kind": "if", "inputs": [...], "outputs": [...], "cond": "c", "consts": {...},
     "then": {"inputs": [], "outputs": [...], "consts": {...}, "segments": [...]},
     "else": {...}}
    {"kind": "seq", "inputs": [...], "outputs": [...], "op": "SequenceInsert",
     "args": ["s", "t", null], "attrs": {"axis": 0}, "consts": {...}}
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError
from irkit.runtime.signature import InputError

CONTROL_KINDS = ("loop", "if", "seq")
SEQUENCE_OPS = ("SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt",
                "SequenceErase", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
                "Optional", "OptionalHasElement", "OptionalGetElement", "Identity")
MAX_DEPTH = 8  # nested bodies
MAX_CONST_BYTES = 1 << 20  # constants a control segment carries in the manifest
_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
           "float16", "float32", "float64")


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _name_list(obj: Any, where: str, nullable: bool = False) -> tuple[Any, ...]:
    ok = isinstance(obj, list) and all(
        (isinstance(n, str) and n) or (nullable and n is None) for n in obj)
    if not ok:
        raise ArtifactError(f"{where}: expected a list of names, got {_short(obj)}")
    return tuple(obj)


def _opt_name(obj: Any, where: str) -> str | None:
    if obj is None or (isinstance(obj, str) and obj):
        return obj
    raise ArtifactError(f"{where}: expected a name or null, got {_short(obj)}")


def _dtype(obj: Any, where: str) -> str:
    if obj not in _DTYPES:
        raise ArtifactError(f"{where}: dtype {_short(obj)} is not one of {', '.join(_DTYPES)}")
    return str(obj)


def const_to_json(array: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(array)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape),
            "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _consts(obj: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected an object, got {_short(obj)}")
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, item in obj.items():
        at = f"{where}.{name}"
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise ArtifactError(f"{at}: expected {{dtype, shape, data}}")
        dtype = np.dtype(_dtype(item.get("dtype"), f"{at}.dtype"))
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ArtifactError(f"{at}.shape: expected a list of sizes, got {_short(shape)}")
        try:
            raw = base64.b64decode(item["data"], validate=True)
        except ValueError as exc:
            raise ArtifactError(f"{at}.data: not base64: {exc}") from None
        count = int(np.prod(shape, dtype=np.int64))
        total += len(raw)
        if len(raw) != count * dtype.itemsize or total > MAX_CONST_BYTES:
            raise ArtifactError(f"{at}.data: {len(raw)} bytes do not hold a {dtype.name} "
                                f"tensor of shape {shape} (or the constants exceed "
                                f"{MAX_CONST_BYTES} bytes)")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        array.flags.writeable = False
        out[name] = array
    return out


@dataclass(frozen=True)
class Body:
    """A loop body or an If branch: named formal inputs and outputs, constants, segments."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    segments: tuple[Any, ...]  # irkit.runtime.program.Segment
    consts: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs),
                "consts": {k: const_to_json(v) for k, v in self.consts.items()},
                "segments": [s.to_json() for s in self.segments]}

    @classmethod
    def from_json(cls, data: Any, where: str, depth: int) -> Body:
        from irkit.runtime.program import Segment

        if depth > MAX_DEPTH:
            raise ArtifactError(f"{where}: control flow nested more than {MAX_DEPTH} deep")
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected an object, got {_short(data)}")
        segments = data.get("segments")
        if not isinstance(segments, list):
            raise ArtifactError(f"{where}.segments: expected a list, got {_short(segments)}")
        return cls(_name_list(data.get("inputs"), f"{where}.inputs"),
                   _name_list(data.get("outputs"), f"{where}.outputs"),
                   tuple(Segment.from_json(s, f"{where}.segments[{i}]", depth + 1)
                         for i, s in enumerate(segments)),
                   _consts(data.get("consts", {}), f"{where}.consts"))


@dataclass(frozen=True)
class Control:
    """What a ``loop``/``if``/``seq`` segment holds besides its inputs and outputs."""

    kind: str
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    # loop
    trip: str | None = None
    cond: str | None = None  # loop: the initial condition; if: the condition
    carried: tuple[str, ...] = ()
    scan_dtypes: tuple[str, ...] = ()
    scan_shapes: tuple[tuple[int | None, ...], ...] = ()
    body: Body | None = None
    # if
    then: Body | None = None
    other: Body | None = None
    # seq
    op: str = ""
    args: tuple[str | None, ...] = ()
    attrs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"consts": {k: const_to_json(v) for k, v in self.consts.items()}}
        if self.kind == "loop":
            assert self.body is not None
            out.update(trip=self.trip, cond=self.cond, carried=list(self.carried),
                       scan_dtypes=list(self.scan_dtypes),
                       scan_shapes=[list(s) for s in self.scan_shapes],
                       body=self.body.to_json())
        elif self.kind == "if":
            assert self.then is not None and self.other is not None
            out.update({"cond": self.cond, "then": self.then.to_json(),
                        "else": self.other.to_json()})
        else:
            out.update(op=self.op, args=list(self.args), attrs=dict(self.attrs))
        return out

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any], where: str, depth: int
                  ) -> Control:
        consts = _consts(data.get("consts", {}), f"{where}.consts")
        if kind == "loop":
            body = Body.from_json(data.get("body"), f"{where}.body", depth)
            carried = _name_list(data.get("carried"), f"{where}.carried")
            dtypes = tuple(_dtype(d, f"{where}.scan_dtypes") for d in
                           _list(data.get("scan_dtypes"), f"{where}.scan_dtypes"))
            shapes = tuple(_dims(s, f"{where}.scan_shapes") for s in
                           _list(data.get("scan_shapes"), f"{where}.scan_shapes"))
            if len(body.inputs) != 2 + len(carried) or len(body.outputs) != 1 + len(
                    carried) + len(dtypes) or len(shapes) != len(dtypes):
                raise ArtifactError(f"{where}: body inputs/outputs do not match "
                                    f"{len(carried)} carried and {len(dtypes)} scan values")
            return cls("loop", consts, trip=_opt_name(data.get("trip"), f"{where}.trip"),
                       cond=_opt_name(data.get("cond"), f"{where}.cond"), carried=carried,
                       scan_dtypes=dtypes, scan_shapes=shapes, body=body)
        if kind == "if":
            then = Body.from_json(data.get("then"), f"{where}.then", depth)
            other = Body.from_json(data.get("else"), f"{where}.else", depth)
            if len(then.outputs) != len(other.outputs):
                raise ArtifactError(f"{where}: the branches give different output counts")
            cond = _opt_name(data.get("cond"), f"{where}.cond")
            if cond is None:
                raise ArtifactError(f"{where}.cond: an if segment needs its condition")
            return cls("if", consts, cond=cond, then=then, other=other)
        op = data.get("op")
        if op not in SEQUENCE_OPS:
            raise ArtifactError(f"{where}.op: {_short(op)} is not one of "
                                f"{', '.join(SEQUENCE_OPS)}")
        attrs = data.get("attrs", {})
        if not isinstance(attrs, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in attrs.items()):
            raise ArtifactError(f"{where}.attrs: expected an object of name -> int")
        return cls("seq", consts, op=str(op),
                   args=_name_list(data.get("args"), f"{where}.args", nullable=True),
                   attrs=dict(attrs))


def _list(obj: Any, where: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ArtifactError(f"{where}: expected a list, got {_short(obj)}")
    return obj


def _dims(obj: Any, where: str) -> tuple[int | None, ...]:
    if not isinstance(obj, list) or not all(d is None or (type(d) is int and d >= 0)
                                            for d in obj):
        raise ArtifactError(f"{where}: expected a list of sizes or nulls, got {_short(obj)}")
    return tuple(obj)


def check_control(segment: Any, where: str) -> None:
    """ArtifactError unless the names a control segment reads are among its inputs and
    constants (the runner feeds nothing else)."""
    control: Control = segment.control
    known = set(segment.inputs) | set(control.consts)
    wanted = [n for n in (control.trip, control.cond, *control.carried, *control.args)
              if n is not None]
    missing = [n for n in wanted if n not in known]
    if missing:
        raise ArtifactError(f"{where}: reads {', '.join(missing)}, which are not among its "
                            "inputs")
    if control.kind == "loop" and len(segment.outputs) != len(control.carried) + len(
            control.scan_dtypes):
        raise ArtifactError(f"{where}: a loop gives {len(control.carried)} carried and "
                            f"{len(control.scan_dtypes)} scan outputs, not "
                            f"{len(segment.outputs)}")
    if control.kind == "loop":
        assert control.body is not None
        _check_body(control.body, set(segment.inputs), f"{where}.body")
    elif control.kind == "if":
        assert control.then is not None and control.other is not None
        if len(control.then.outputs) != len(segment.outputs):
            raise ArtifactError(f"{where}: the branches give {len(control.then.outputs)} "
                                f"outputs, the segment names {len(segment.outputs)}")
        _check_body(control.then, known, f"{where}.then")
        _check_body(control.other, known, f"{where}.else")
    elif control.kind == "seq" and len(segment.outputs) != 1:
        raise ArtifactError(f"{where}: a seq segment gives one output")


def _check_body(body: Body, outer: set[str], where: str) -> None:
    """ArtifactError unless every segment of ``body`` reads names defined before it (its
    formal inputs, the outer values, its constants, earlier segments' outputs) and its
    outputs are defined at the end."""
    known = outer | set(body.inputs) | set(body.consts)
    for i, segment in enumerate(body.segments):
        missing = [n for n in segment.inputs if n not in known]
        if missing:
            raise ArtifactError(f"{where}.segments[{i}]: reads {', '.join(missing)}, which "
                                "nothing before it defines")
        known.update(segment.outputs)
    missing = [n for n in body.outputs if n not in known]
    if missing:
        raise ArtifactError(f"{where}: outputs {', '.join(missing)} are never defined")


# -- running ---------------------------------------------------------------------------

Value = Any  # np.ndarray, a list of them (a sequence) or None (an empty optional)
OpenSegment = Callable[[Any], Any]  # Segment -> runner with run(feed) and close()


def feed_value(value: Value) -> Value:
    """How a value crosses to the next segment: tensors C-contiguous, lists as lists."""
    if value is None or isinstance(value, list):
        return value
    array = np.asarray(value)
    return array if array.flags.c_contiguous else np.ascontiguousarray(array).reshape(
        array.shape)  # (ascontiguousarray alone makes a 0-d array 1-d)


class Steps:
    """Segments in order over one name space (a model, a loop body, a branch)."""

    def __init__(self, body: Body, open_segment: OpenSegment) -> None:
        self.body = body
        self.runners: list[tuple[Sequence[str], Any]] = []
        try:
            for segment in body.segments:
                self.runners.append((segment.inputs, open_segment(segment)))
        except BaseException:
            self.close()
            raise

    def run(self, values: dict[str, Value]) -> list[Value]:
        values.update(self.body.consts)
        for names, runner in self.runners:
            values.update(runner.run({n: feed_value(values[n]) for n in names}))
        return [values[n] for n in self.body.outputs]

    def close(self) -> None:
        for _, runner in self.runners:
            runner.close()


def _scalar(value: Value, what: str, kinds: str) -> Any:
    if not isinstance(value, np.ndarray) or value.size != 1 or value.ndim > 1 or (
            value.dtype.kind not in kinds):
        got = (f"a {value.dtype.name} tensor of shape {list(value.shape)}"
               if isinstance(value, np.ndarray) else type(value).__name__)
        raise InputError(f"{what} must be a single {'boolean' if kinds == 'b' else 'integer'}"
                         f" value (shape [] or [1]), got {got}")
    return value.reshape(()).item()


class LoopRunner:
    """A ``loop`` segment: its body's segments once per iteration."""

    def __init__(self, segment: Any, open_segment: OpenSegment) -> None:
        self.control: Control = segment.control
        self.outputs = tuple(segment.outputs)
        assert self.control.body is not None
        self.steps = Steps(self.control.body, open_segment)
        self.captured = tuple(segment.inputs)

    def run(self, feed: Mapping[str, Value]) -> dict[str, Value]:
        c = self.control
        values = {**c.consts, **feed}
        trip = None
        if c.trip is not None:
            trip = _scalar(values[c.trip], f"Loop trip count {c.trip!r}", "iu")
            if trip < 0:
                raise InputError(f"Loop trip count {c.trip!r} is {trip}; it must be >= 0")
        go = True if c.cond is None else bool(_scalar(values[c.cond],
                                                      f"Loop condition {c.cond!r}", "b"))
        carried = [values[n] for n in c.carried]
        body = c.body
        assert body is not None
        scans: list[list[np.ndarray]] = [[] for _ in c.scan_dtypes]
        outer = {n: values[n] for n in self.captured}
        count = len(carried)
        i = 0
        while go and (trip is None or i < trip):
            scope = dict(outer)
            scope[body.inputs[0]] = np.array(i, dtype=np.int64)
            scope[body.inputs[1]] = np.array(go, dtype=np.bool_)
            scope.update(zip(body.inputs[2:], carried))
            out = self.steps.run(scope)
            go = bool(_scalar(out[0], "Loop body condition output", "b"))
            carried = out[1:1 + count]
            for k, item in enumerate(out[1 + count:]):
                if scans[k] and np.shape(item) != scans[k][0].shape:
                    raise InputError(f"Loop scan output {self.outputs[count + k]!r} changes "
                                     f"shape from {list(scans[k][0].shape)} to "
                                     f"{list(np.shape(item))} at iteration {i}")
                scans[k].append(np.asarray(item))
            i += 1
        result: dict[str, Value] = dict(zip(self.outputs, carried))
        for k, (dtype, dims) in enumerate(zip(c.scan_dtypes, c.scan_shapes)):
            name = self.outputs[count + k]
            if scans[k]:
                result[name] = np.stack(scans[k])
            else:
                result[name] = np.empty((0, *[d or 0 for d in dims]), dtype=dtype)
        return result

    def close(self) -> None:
        self.steps.close()


class IfRunner:
    """An ``if`` segment: one of two compiled branches, picked by the condition."""

    def __init__(self, segment: Any, open_segment: OpenSegment) -> None:
        self.control: Control = segment.control
        self.outputs = tuple(segment.outputs)
        assert self.control.then is not None and self.control.other is not None
        self.then = Steps(self.control.then, open_segment)
        try:
            self.other = Steps(self.control.other, open_segment)
        except BaseException:
            self.then.close()
            raise

    def run(self, feed: Mapping[str, Value]) -> dict[str, Value]:
        c = self.control
        assert c.cond is not None
        values = {**c.consts, **feed}
        taken = self.then if _scalar(values[c.cond], f"If condition {c.cond!r}",
                                     "b") else self.other
        return dict(zip(self.outputs, taken.run(dict(values))))

    def close(self) -> None:
        self.then.close()
        self.other.close()


def _seq(value: Value, op: str) -> list[np.ndarray]:
    if not isinstance(value, list):
        raise InputError(f"{op}: expected a sequence, got {type(value).__name__}")
    return value


def _position(value: Value, length: int, op: str, insert: bool = False) -> int:
    pos = int(_scalar(value, f"{op} position", "iu"))
    top = length if insert else length - 1
    if not -length <= pos <= top:
        raise InputError(f"{op}: position {pos} is outside a sequence of {length}")
    return pos + length if pos < 0 else pos


class SeqRunner:
    """A ``seq`` segment: one sequence/optional op on lists of tensors."""

    def __init__(self, segment: Any) -> None:
        self.control: Control = segment.control
        self.outputs = tuple(segment.outputs)

    def run(self, feed: Mapping[str, Value]) -> dict[str, Value]:
        c = self.control
        values = {**c.consts, **feed}
        args = [None if n is None else values[n] for n in c.args]
        return {self.outputs[0]: _apply(c.op, args, c.attrs, c.args)}

    def close(self) -> None:
        pass


def _apply(op: str, args: list[Value], attrs: Mapping[str, int],
           names: Sequence[str | None]) -> Value:
    if op == "Identity":
        return list(args[0]) if isinstance(args[0], list) else args[0]
    if op == "SequenceEmpty":
        return []
    if op == "SequenceConstruct":
        return list(args)
    if op == "SequenceLength":
        return np.array(len(_seq(args[0], op)), dtype=np.int64)
    if op == "SequenceAt":
        seq = _seq(args[0], op)
        return seq[_position(args[1], len(seq), op)]
    if op == "SequenceInsert":
        seq = list(_seq(args[0], op))
        where = len(seq) if len(args) < 3 or args[2] is None else _position(
            args[2], len(seq), op, insert=True)
        seq.insert(where, args[1])
        return seq
    if op == "SequenceErase":
        seq = list(_seq(args[0], op))
        where = len(seq) - 1 if len(args) < 2 or args[1] is None else _position(
            args[1], len(seq), op)
        if not seq:
            raise InputError("SequenceErase: the sequence is empty")
        del seq[where]
        return seq
    if op == "SplitToSequence":
        return _split(args, attrs)
    if op == "ConcatFromSequence":
        seq = _seq(args[0], op)
        if not seq:
            raise InputError("ConcatFromSequence: the sequence is empty")
        axis = attrs.get("axis", 0)
        if attrs.get("new_axis", 0):
            return np.stack(seq, axis=axis)
        return np.concatenate(seq, axis=axis)
    if op == "Optional":
        return args[0] if args else None
    if op == "OptionalHasElement":
        return np.array(bool(args) and args[0] is not None, dtype=np.bool_)
    if op == "OptionalGetElement":
        if args[0] is None:
            raise InputError(f"OptionalGetElement: optional {names[0]!r} is empty")
        return args[0]
    raise InputError(f"no sequence op {op!r}")


def _split(args: list[Value], attrs: Mapping[str, int]) -> list[np.ndarray]:
    data = args[0]
    axis = attrs.get("axis", 0)
    axis = axis + data.ndim if axis < 0 else axis
    length = data.shape[axis]
    split = args[1] if len(args) > 1 else None
    if split is None:
        parts = [np.take(data, [k], axis=axis) for k in range(length)]
        if not attrs.get("keepdims", 1):
            parts = [np.squeeze(p, axis=axis) for p in parts]
        return [np.ascontiguousarray(p) for p in parts]
    sizes = np.asarray(split).astype(np.int64).reshape(-1)
    if sizes.size == 1 and np.asarray(split).ndim == 0:
        step = int(sizes[0])
        if step <= 0:
            raise InputError(f"SplitToSequence: split {step} must be > 0")
        sizes = np.array([step] * (length // step) + ([length % step] if length % step
                                                       else []), dtype=np.int64)
    if (sizes < 0).any() or int(sizes.sum()) != length:
        raise InputError(f"SplitToSequence: split sizes {sizes.tolist()} do not add up to "
                         f"the axis length {length}")
    cuts = np.cumsum(sizes)[:-1]
    return [np.ascontiguousarray(p) for p in np.split(data, cuts, axis=axis)]


def nested_runners(runner: Any) -> list[Any]:
    """The runners inside a loop/if runner (bodies and branches, recursively; kernel
    programs unwrapped), for load options that apply to every program of a model."""
    if isinstance(runner, LoopRunner):
        steps = [runner.steps]
    elif isinstance(runner, IfRunner):
        steps = [runner.then, runner.other]
    else:
        return []
    found: list[Any] = []
    for step in steps:
        for _, inner in step.runners:
            inner = inner.runner if isinstance(inner, CheckedProgram) else inner
            found += [inner, *nested_runners(inner)]
    return found


def open_control(segment: Any, open_segment: OpenSegment) -> Any:
    """The runner of a ``loop``/``if``/``seq`` segment; nested segments by ``open_segment``."""
    if segment.kind == "loop":
        return LoopRunner(segment, open_segment)
    if segment.kind == "if":
        return IfRunner(segment, open_segment)
    return SeqRunner(segment)


class CheckedProgram:
    """A kernel program inside a loop body or a branch: input shapes are checked against
    what it was compiled for before native code runs (a carried value may change shape)."""

    def __init__(self, runner: Any, program: Any) -> None:
        self.runner = runner
        self.program = program
        self._names = tuple(program.input_shapes)
        self._seen: set[tuple[Any, ...]] = set()  # input shapes already checked

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            key = tuple(inputs[n].shape for n in self._names)
        except AttributeError:
            key = None
        if key is None or key not in self._seen:
            self._check(inputs)
            if key is not None and len(self._seen) < 256:
                self._seen.add(key)
        result: dict[str, np.ndarray] = self.runner.run(inputs)
        return result

    def _check(self, inputs: Mapping[str, np.ndarray]) -> None:
        from irkit.runtime.program import evaluate_poly

        shapes = self.program.input_shapes
        for name, dims in shapes.items():
            value = inputs[name]
            if not isinstance(value, np.ndarray) or value.ndim != len(dims):
                got = list(value.shape) if isinstance(value, np.ndarray) else value
                raise InputError(f"value {name!r}: the compiled body takes rank {len(dims)}, "
                                 f"got {_short(got)}")
        key = getattr(self.runner, "inner", self.runner).dims_of(inputs)  # (a TrimmingRunner)
        bound = dict(zip(self.program.symbols, key))
        for name, dims in shapes.items():
            want = tuple(evaluate_poly(d, bound) for d in dims)
            if inputs[name].shape != want:
                raise InputError(f"value {name!r} has shape {list(inputs[name].shape)}; the "
                                 f"compiled body takes {list(want)} here (a loop-carried "
                                 "value changed shape in a way the compiler did not see)")

    def close(self) -> None:
        self.runner.close()
