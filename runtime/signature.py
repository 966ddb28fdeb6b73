"""Tensor signatures of compiled models, and the input checks done before native code runs.

A signature is a list of :class:`TensorSpec`: name, numpy dtype and a shape whose dims are
ints (fixed), strings (symbols such as ``"N"``, bound per call and consistent across
inputs) or ``None`` (any size, unrelated to other dims).

Input rules (:func:`validate_inputs`), applied by every ``CompiledModel`` call:

- names must match the signature exactly: unknown and missing names are rejected;
- numpy arrays (and numpy scalars) must already have the expected dtype: no silent casts.
  The one value-preserving exception is byte order: a big-endian ``>f4`` array for a
  ``float32`` input is converted to native order;
- anything else (lists, Python scalars, nested sequences) is converted with
  ``np.asarray`` and then checked (a list of numpy arrays or scalars follows the numpy
  rule: ``[float64 array, ...]`` for a float32 input is refused like a float64 array is);
  because Python numbers carry no precision, Python floats
  are accepted for any floating input, Python ints for any integer or floating input (when
  every value survives the conversion unchanged) and Python bools for bool inputs;
- rank and every fixed dim must match; a symbol must have one value across all inputs;
- arrays are made C-contiguous and aligned (copied only when they are not).

Non-finite values (:class:`FiniteCheck`, applied by ``CompiledModel`` after these rules
unless the model was loaded with ``reject_nonfinite=False``): a floating-point input
holding NaN, +inf or -inf is refused with an :class:`InputError` naming the input, the
index of the first such value and the option that lets them through. The check runs
before any backend, so every backend and adapter refuses the same inputs.

Wrong names, shapes and dims raise :class:`InputError` (a ``ValueError``); wrong dtypes
raise :class:`InputTypeError` (a ``TypeError``). Both are ``IrkitError``s and name the input,
what was expected and what was given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.errors import IrkitError

Dim = int | str | None
Shape = tuple[Dim, ...]

# Open Inference Protocol v2 tensor datatypes, by numpy dtype name.
OIP_DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}


class InputError(IrkitError, ValueError):
    """An input has an unknown or missing name, or a wrong rank, shape or dim."""


class InputTypeError(IrkitError, TypeError):
    """An input has the wrong dtype (or is not convertible to an array at all)."""


def parse_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype called ``name`` (``"float32"``, ``"int64"``, ``"bfloat16"`` …).

    Raises ``ValueError`` for names numpy (and, for bfloat16/float8, ml_dtypes) do not know.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dtype must be a numpy dtype name such as 'float32', got {name!r}")
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None:
        try:  # extension dtypes register themselves with numpy on import
            import ml_dtypes  # noqa: F401

            dtype = np.dtype(name)
        except (ImportError, TypeError):
            raise ValueError(f"unknown dtype {name!r}") from None
    extension = dtype.kind == "V" and dtype.type.__module__ == "ml_dtypes"  # bfloat16…
    if dtype.hasobject or (dtype.kind in "USVMm" and not extension):
        raise ValueError(f"dtype {name!r} is not a tensor element type")
    return dtype


def canonical_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in native byte order, as numpy's own instance for its scalar type: the
    object arrays made with ``np.float32`` carry (``newbyteorder`` returns a copy that
    compares equal but is another object, which identity checks would refuse)."""
    native = dtype.newbyteorder("=")
    shared = np.dtype(native.type)
    return shared if shared == native else native


def dtype_name(dtype: np.dtype[Any]) -> str:
    """The canonical numpy name of ``dtype`` (``"float32"``), as stored in manifests."""
    return np.dtype(dtype).newbyteorder("=").name


def format_shape(shape: Sequence[Dim]) -> str:
    """``[N,64]`` style text for error messages (``?`` for unknown dims)."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _check_dim(dim: object, where: str) -> Dim:
    if dim is None:
        return None
    if isinstance(dim, bool):
        raise ValueError(f"{where}: dim {dim!r} must be an int, a symbol name or null")
    if isinstance(dim, int | np.integer):
        if dim < 0:
            raise ValueError(f"{where}: dim {dim} is negative")
        return int(dim)
    if isinstance(dim, str) and dim.strip():
        return dim
    raise ValueError(f"{where}: dim {dim!r} must be an int, a symbol name or null")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and (possibly symbolic) shape of one model input or output."""

    name: str
    dtype: np.dtype[Any]
    shape: Shape

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        dtype = parse_dtype(self.dtype) if isinstance(self.dtype, str) else np.dtype(self.dtype)
        object.__setattr__(self, "dtype", canonical_dtype(dtype))
        dims = tuple(_check_dim(d, f"tensor {self.name!r}") for d in self.shape)
        object.__setattr__(self, "shape", dims)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: ``{"name", "dtype": "float32", "shape": ["N", 64]}``."""
        return {"name": self.name, "dtype": dtype_name(self.dtype), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise ValueError(f"tensor spec must be an object, got {type(data).__name__}")
        missing = [k for k in ("name", "dtype", "shape") if k not in data]
        if missing:
            raise ValueError(f"tensor spec {dict(data)!r} lacks {', '.join(missing)}")
        shape = data["shape"]
        if not isinstance(shape, list | tuple):
            raise ValueError(f"tensor {data['name']!r}: shape must be a list, got {shape!r}")
        return cls(data["name"], parse_dtype(data["dtype"]), tuple(shape))

    def metadata(self) -> dict[str, Any]:
        """HTTP metadata: OIP v2 ``datatype`` and ``shape`` (-1 = variable), plus ours."""
        name = dtype_name(self.dtype)
        return {
            "name": self.name,
            "datatype": OIP_DATATYPES.get(name, name.upper()),
            "shape": [d if isinstance(d, int) else -1 for d in self.shape],
            "dtype": name,
            "symbolic_shape": list(self.shape),
        }


def _python_sequence_to_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    """Convert a list / Python scalar, allowing only the documented value-preserving cases."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting, unconvertible objects
        raise InputError(
            f"input {name!r}: expected {dtype_name(spec.dtype)}{format_shape(spec.shape)}, "
            f"got a {type(value).__name__} that is not a rectangular array ({exc})"
        ) from None
    got = array.dtype
    want = spec.dtype
    if got == want:
        return array
    typed = _numpy_item(value)
    if typed is not None:  # a list of float64 arrays is float64 data, as one array is
        raise InputTypeError(
            f"input {name!r}: expected dtype {dtype_name(want)}, got a "
            f"{type(value).__name__} of {_describe_dtype(typed)} numpy values; irkit does "
            f"not cast arrays silently (use .astype(np.{dtype_name(want)}) on each)")
    ok = False
    if got.kind == "f" and want.kind == "f" and array.dtype == np.float64:
        # Python floats have no precision of their own, but must fit the model's type.
        with np.errstate(all="ignore"):
            converted = array.astype(want)
        if not np.array_equal(np.isfinite(converted), np.isfinite(array)):
            raise InputTypeError(
                f"input {name!r}: values outside the range of {dtype_name(want)} "
                f"(largest finite: {float(np.finfo(want).max):g}); convert or scale them")
        return converted
    elif got.kind in "iu" and want.kind in "iuf" and array.dtype == np.int64:
        with np.errstate(all="ignore"):
            converted = array.astype(want)
            ok = bool(np.array_equal(converted.astype(got), array))
        if ok:
            return converted
    elif got.kind == "b" and want.kind == "b":
        ok = True
    if ok:
        return array.astype(want)
    raise InputTypeError(
        f"input {name!r}: expected dtype {dtype_name(want)}, got {_describe_dtype(got)} "
        f"(from a {type(value).__name__}); convert it explicitly"
    )


def _numpy_item(value: Any) -> np.dtype[Any] | None:
    """The dtype of the first numpy array or scalar found in nested lists/tuples ``value``
    (Python numbers carry no precision; numpy values do, and are not cast silently)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray | np.generic):
            return item.dtype
        if isinstance(item, list | tuple):
            stack.extend(item)
    return None


def _describe_dtype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "US":
        return "strings"
    if dtype.hasobject:
        return "Python objects"
    return dtype_name(dtype)


def _as_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype != spec.dtype:
            if array.dtype.newbyteorder("=") == spec.dtype and not array.dtype.hasobject:
                array = array.astype(spec.dtype)  # same type, other byte order: lossless
            else:
                raise InputTypeError(
                    f"input {name!r}: expected dtype {dtype_name(spec.dtype)}, got "
                    f"{_describe_dtype(array.dtype)}; irkit does not cast arrays silently "
                    f"(use .astype(np.{dtype_name(spec.dtype)}))"
                )
        return array
    if isinstance(value, str | bytes | Mapping) or value is None:
        raise InputTypeError(
            f"input {name!r}: expected a {dtype_name(spec.dtype)} array, "
            f"got {type(value).__name__}"
        )
    return _python_sequence_to_array(name, value, spec)


def validate_inputs(
    inputs: Mapping[str, Any], specs: Sequence[TensorSpec]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Check ``inputs`` against ``specs``; return C-contiguous arrays and symbol bindings.

    The arrays are in signature order. Raises :class:`InputError` or
    :class:`InputTypeError` naming the offending input; see the module docstring.
    """
    if not isinstance(inputs, Mapping):
        raise InputTypeError(
            f"inputs must be a mapping of input name to array, got {type(inputs).__name__}"
        )
    by_name = {spec.name: spec for spec in specs}
    expected = ", ".join(repr(n) for n in by_name) or "none"
    unknown = [str(k) for k in inputs if k not in by_name]
    if unknown:
        raise InputError(
            f"unknown input name(s) {', '.join(repr(u) for u in unknown)}; "
            f"the model's inputs are {expected}"
        )
    missing = [n for n in by_name if n not in inputs]
    if missing:
        raise InputError(
            f"missing input(s) {', '.join(repr(m) for m in missing)}; "
            f"the model's inputs are {expected}"
        )

    arrays: dict[str, np.ndarray] = {}
    bindings: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    for spec in specs:
        array = _as_array(spec.name, inputs[spec.name], spec)
        want = f"{format_shape(spec.shape)}"
        if array.ndim != spec.rank:
            raise InputError(
                f"input {spec.name!r}: expected rank {spec.rank} shape {want}, "
                f"got rank {array.ndim} shape {format_shape(array.shape)}"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(dim, int) and dim != size:
                raise InputError(
                    f"input {spec.name!r}: expected shape {want}, got "
                    f"{format_shape(array.shape)} (axis {axis} must be {dim})"
                )
            if isinstance(dim, str):
                if dim in bindings and bindings[dim] != size:
                    raise InputError(
                        f"input {spec.name!r}: dim {dim!r} (axis {axis}) is {size}, but "
                        f"input {bound_by[dim]!r} bound {dim} to {bindings[dim]}; expected "
                        f"shape {want}, got {format_shape(array.shape)}"
                    )
                bindings[dim] = size
                bound_by.setdefault(dim, spec.name)
        arrays[spec.name] = np.require(array, requirements=["C", "A"])
    return arrays, bindings


class InputPlan:
    """A precomputed fast path of :func:`validate_inputs` for the common call: numpy arrays
    of exactly the right dtype, rank and fixed dims, C-contiguous and aligned.

    ``check`` returns what ``validate_inputs`` would, or None when any input needs the
    full path (conversion, a copy, an empty array, or an error message).
    """

    __slots__ = ("_count", "_specs")

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._count = len(specs)
        self._specs = tuple(
            (
                spec.name,
                spec.dtype,
                spec.rank,
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if isinstance(dim, int)),
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if isinstance(dim, str)),
            )
            for spec in specs
        )

    def check(
        self, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, int]] | None:
        if len(inputs) != self._count:
            return None
        arrays: dict[str, np.ndarray] = {}
        bindings: dict[str, int] = {}
        for name, dtype, rank, fixed, symbols in self._specs:
            array = inputs.get(name)
            if type(array) is not np.ndarray or array.dtype != dtype or array.ndim != rank:
                return None
            flags = array.flags
            if not (flags.c_contiguous and flags.aligned) or not array.size:
                return None  # copies and empty inputs take the full path
            shape = array.shape
            for axis, dim in fixed:
                if shape[axis] != dim:
                    return None
            for axis, symbol in symbols:
                size = shape[axis]
                if bindings.setdefault(symbol, size) != size:
                    return None
            arrays[name] = array
        return arrays, bindings


def _describe_value(value: Any) -> str:
    value = float(value) if not isinstance(value, complex | np.complexfloating) else value
    if isinstance(value, float):
        return "NaN" if value != value else ("+inf" if value > 0 else "-inf")
    return f"the non-finite value {value}"


def _is_floating(dtype: np.dtype[Any]) -> bool:
    """Floating or complex, numpy's own or an ml_dtypes type (bfloat16, float8...)."""
    if dtype.kind in "fc":
        return True
    if dtype.kind != "V" or dtype.type.__module__ != "ml_dtypes" or "float" not in dtype.name:
        return False
    try:
        np.isfinite(np.zeros(1, dtype))
    except TypeError:
        return False
    return True


# FiniteCheck's dot overflows or meets NaN exactly when it has to look closer: no warning
# (np.errstate around every call would cost more than the dot itself)
warnings.filterwarnings("ignore", r"(overflow|invalid value) encountered in dot",
                        RuntimeWarning, __name__)

NONFINITE_HINT = ("irkit refuses NaN and inf inputs by default; let them through with "
                  "reject_nonfinite=False (irkit.runtime.load, or a serve block option; "
                  "irkit run --allow-nonfinite)")


class FiniteCheck:
    """The non-finite input rule: ``check(arrays)`` raises :class:`InputError` when a
    floating input holds NaN or +/-inf; ``fast(inputs)`` says whether ``inputs`` pass it
    (True too for values it cannot judge: the checked path decides those).

    The common case costs one BLAS dot per float32/float64 input: ``x . x`` is finite only
    when every ``x`` is (NaN and inf propagate through it), so a finite dot proves the
    input finite; when it is not (a NaN, or squares past the largest float), the exact
    ``np.isfinite`` scan decides. Other floating dtypes take the exact scan.
    """

    __slots__ = ("_dot", "_exact")

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        dot_types = (np.dtype(np.float32), np.dtype(np.float64))
        floating = [spec for spec in specs if _is_floating(spec.dtype)]
        self._dot = tuple(spec.name for spec in floating if spec.dtype in dot_types)
        self._exact = tuple(spec.name for spec in floating if spec.dtype not in dot_types)

    def __bool__(self) -> bool:
        return bool(self._dot or self._exact)

    def fast(self, inputs: Mapping[str, Any]) -> bool:
        """False when a float input given as an ndarray holds NaN or inf."""
        isfinite, dot = math.isfinite, np.dot
        for name in self._dot:
            array = inputs.get(name)
            if isinstance(array, np.ndarray):
                flat = array.ravel()
                try:
                    finite = isfinite(dot(flat, flat))
                except (TypeError, ValueError):  # not a number array: the checked path says
                    continue
                if not finite and not np.isfinite(array).all():
                    return False
        for name in self._exact:
            array = inputs.get(name)
            if isinstance(array, np.ndarray) and array.dtype.kind in "fcV":
                try:
                    if not np.isfinite(array).all():
                        return False
                except TypeError:
                    continue
        return True

    def check(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InputError` for the first input (signature order) holding a
        non-finite value; ``arrays`` are validated already."""
        if self.fast(arrays):
            return
        for name in self._dot + self._exact:
            array = arrays[name]
            bad = ~np.isfinite(array)
            if not bad.any():
                continue
            first = int(np.argmax(bad.ravel()))
            index = [int(i) for i in np.unravel_index(first, array.shape)]
            count = int(bad.sum())
            others = f" ({count} non-finite values in all)" if count > 1 else ""
            raise InputError(
                f"input {name!r}: {_describe_value(array.ravel()[first])} at index "
                f"{index}{others}; {NONFINITE_HINT}")


def resolve_shape(spec: TensorSpec, bindings: Mapping[str, int]) -> tuple[int, ...] | None:
    """The concrete shape of ``spec`` under ``bindings``, or None if a dim is unknown."""
    dims: list[int] = []
    for dim in spec.shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif isinstance(dim, str) and dim in bindings:
            dims.append(bindings[dim])
        else:
            return None
    return tuple(dims)
