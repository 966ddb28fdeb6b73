"""Row readers of the batch adapter: npy, npz, csv, parquet, jsonl.

Readers turn a file into ``Chunk`` s of model inputs, reading only the rows asked for
(``read(start, stop)``), so memory stays bounded by the chunk size. Rows that cannot
become model inputs are not dropped: they come back in ``Chunk.errors`` as
``(row, reason)``, the row being the 0-based index of the data record in the file (the
CSV header is not a record). What counts as a bad row:

- csv/jsonl: a line that does not parse, a wrong number of values, a value that is not
  a number; parquet: a null, or a list of the wrong length;
- every format: a NaN or infinity in a floating input, when ``reject_nonfinite``.

A file whose *schema* does not fit the model (a missing column, a npy array of the wrong
width or an uncastable dtype) is refused up front with ValueError: nothing can run.

Columns -> inputs (``input_name``): ``None`` feeds all columns, in file order, to a
single-input model (for several inputs each takes the column or npz array of its own
name); a string names the one input a npy file or all columns feed; a dict maps input
name -> column name or list of column names (npz: array name). Each row of an input is
flattened from the listed columns, scalar columns giving one value, list columns many.
Values are cast to the input dtype only when numpy calls that a ``same_kind`` cast.
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMATS = ("npy", "npz", "csv", "parquet", "jsonl")


def infer_format(path: str | Path, given: str | None = None) -> str:
    """``given`` if set, else the format named by the file extension."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"unknown format {given!r}; known: {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    suffix = {"pq": "parquet", "ndjson": "jsonl", "json": "jsonl"}.get(suffix, suffix)
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {str(path)!r}; say input/output_format")
    return suffix


@dataclass
class Chunk:
    """Rows ``[start, stop)`` of the input: the good ones as model inputs, the bad ones."""

    start: int
    stop: int
    rows: np.ndarray  # int64 row indices of the good rows
    inputs: dict[str, np.ndarray]
    errors: list[tuple[int, str]] = field(default_factory=list)


def _row_size(spec: Any) -> int:
    dims = spec.shape[1:]
    if not all(isinstance(d, int) for d in dims):
        raise ValueError(f"input {spec.name!r}: rows of shape {dims} are not fixed; tabular "
                         "formats need every non-batch dim fixed")  # fmt: skip
    return math.prod(dims)


def _cast(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise ValueError(f"input {name!r}: cannot use {array.dtype} data for {dtype}")
    return array.astype(dtype)


def make_chunk(
    start: int,
    stop: int,
    arrays: Mapping[str, np.ndarray],
    bad: Mapping[int, str],
    reject_nonfinite: bool,
) -> Chunk:
    """Assemble a Chunk from full-height arrays (bad rows hold garbage) and bad-row reasons."""
    errors = dict(bad)
    if reject_nonfinite:
        for name, array in arrays.items():
            if array.dtype.kind != "f" or not len(array):
                continue
            finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            for index in np.flatnonzero(~finite):
                errors.setdefault(start + int(index), f"NaN or infinity in input {name!r}")
    rows = np.arange(start, stop, dtype=np.int64)
    if not errors:
        return Chunk(start, stop, rows, dict(arrays))
    keep = np.ones(stop - start, dtype=bool)
    keep[np.asarray(sorted(errors), dtype=np.int64) - start] = False
    inputs = {name: array[keep] for name, array in arrays.items()}
    return Chunk(start, stop, rows[keep], inputs, sorted(errors.items()))


# ------------------------------------------------------------------------- readers


class Reader:
    """Base reader: ``total_rows`` (None until known) and ``read(start, stop)``."""

    total_rows: int | None = None

    def __init__(self, path: Path, specs: Sequence[Any], input_name: Any, reject: bool):
        self.path = path
        self.specs = list(specs)
        self.input_name = input_name
        self.reject_nonfinite = reject

    def read(self, start: int, stop: int) -> Chunk | None:
        """Rows [start, stop) (fewer at the end of the file); None past the end."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles."""


def _read_npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if fortran or dtype.hasobject:
        raise ValueError("npy data must be C-ordered numbers (not Fortran order, not objects)")
    return shape, dtype, handle.tell()


class _ArrayStream:
    """Row-addressable reads from one npy stream (a file, or a member of an npz zip)."""

    def __init__(self, handle: BinaryIO, spec: Any, where: str) -> None:
        self.handle = handle
        self.spec = spec
        self.shape, self.dtype, self.offset = _read_npy_header(handle)
        if (
            not self.shape
            or tuple(self.shape[1:])
            != tuple(d if isinstance(d, int) else s for d, s in zip(spec.shape[1:], self.shape[1:]))
            or len(self.shape) != len(spec.shape)
        ):
            raise ValueError(f"{where}: array of shape {list(self.shape)} does not fit input "
                             f"{spec.name!r} of shape {list(spec.shape)}")  # fmt: skip
        _cast(spec.name, np.zeros(0, self.dtype), spec.dtype)  # refuse early
        self.row_items = math.prod(self.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        self.handle.seek(self.offset + start * self.row_items * self.dtype.itemsize)
        count = (stop - start) * self.row_items
        data = self.handle.read(count * self.dtype.itemsize)
        array = np.frombuffer(data, dtype=self.dtype, count=count).reshape(
            (stop - start, *self.shape[1:])
        )
        return _cast(self.spec.name, array, self.spec.dtype)


class NpyReader(Reader):
    def __init__(self, path: Path, specs: Sequence[Any], input_name: Any, reject: bool):
        super().__init__(path, specs, input_name, reject)
        if len(self.specs) != 1 and not isinstance(input_name, str):
            raise ValueError("a npy file feeds one input: set input_name to its name")
        name = input_name if isinstance(input_name, str) else self.specs[0].name
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            raise ValueError(f"input_name {name!r} is not an input of the model")
        self._handle = open(path, "rb")  # noqa: SIM115 (closed by close())
        self.stream = _ArrayStream(self._handle, spec, str(path))
        self.total_rows = self.stream.shape[0]

    def read(self, start: int, stop: int) -> Chunk | None:
        stop = min(stop, self.total_rows or 0)
        if start >= stop:
            return None
        arrays = {self.stream.spec.name: self.stream.read(start, stop)}
        return make_chunk(start, stop, arrays, {}, self.reject_nonfinite)

    def close(self) -> None:
        self._handle.close()


class NpzReader(Reader):
    def __init__(self, path: Path, specs: Sequence[Any], input_name: Any, reject: bool):
        super().__init__(path, specs, input_name, reject)
        mapping = input_name if isinstance(input_name, dict) else {}
        if isinstance(input_name, str) and len(self.specs) == 1:
            mapping = {self.specs[0].name: input_name}
        self._zip = zipfile.ZipFile(path)
        members = {n.removesuffix(".npy"): n for n in self._zip.namelist()}
        self.streams: dict[str, _ArrayStream] = {}
        for spec in self.specs:
            key = mapping.get(spec.name, spec.name)
            if key not in members:
                raise ValueError(f"{path}: no array {key!r} for input {spec.name!r} "
                                 f"(arrays: {sorted(members)})")  # fmt: skip
            handle = self._zip.open(members[key])
            self.streams[spec.name] = _ArrayStream(handle, spec, f"{path}:{key}")  # type: ignore[arg-type]
        lengths = {s.shape[0] for s in self.streams.values()}
        if len(lengths) != 1:
            raise ValueError(f"{path}: input arrays differ in length {sorted(lengths)}")
        self.total_rows = lengths.pop()

    def read(self, start: int, stop: int) -> Chunk | None:
        stop = min(stop, self.total_rows or 0)
        if start >= stop:
            return None
        arrays = {name: stream.read(start, stop) for name, stream in self.streams.items()}
        return make_chunk(start, stop, arrays, {}, self.reject_nonfinite)

    def close(self) -> None:
        self._zip.close()


def plan_columns(
    specs: Sequence[Any], columns: Sequence[str], input_name: Any
) -> dict[str, list[str]]:
    """Input name -> the columns whose values, in order, make one row of it."""
    if isinstance(input_name, dict):
        plan = {k: [v] if isinstance(v, str) else list(v) for k, v in input_name.items()}
    elif len(specs) == 1:
        name = input_name if isinstance(input_name, str) else specs[0].name
        plan = {name: list(columns)}
    else:
        plan = {spec.name: [spec.name] for spec in specs}
    names = {spec.name for spec in specs}
    if set(plan) != names:
        raise ValueError(f"input_name maps {sorted(plan)}, the model's inputs are {sorted(names)}")
    missing = sorted({c for cols in plan.values() for c in cols} - set(columns))
    if missing:
        raise ValueError(f"column(s) {missing} not in the file (columns: {list(columns)})")
    return plan


class _LineReader(Reader):
    """csv/jsonl: a forward cursor over records; seeking back reopens the file."""

    def __init__(self, path: Path, specs: Sequence[Any], input_name: Any, reject: bool):
        super().__init__(path, specs, input_name, reject)
        self.sizes = {spec.name: _row_size(spec) for spec in self.specs}
        self._open()

    def _open(self) -> None:
        self._handle = open(self.path, newline="", encoding="utf-8")  # noqa: SIM115
        self._records = self._iter_records()
        self._cursor = 0

    def _iter_records(self) -> Iterator[Any]:
        raise NotImplementedError

    def _parse(self, record: Any) -> dict[str, list[Any]]:
        """One record -> flat values per input; ValueError says why the row is bad."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> Chunk | None:
        if start < self._cursor:
            self.close()
            self._open()
        for _ in range(start - self._cursor):
            if next(self._records, None) is None:
                return None
            self._cursor += 1
        values: dict[str, list[Any]] = {name: [] for name in self.sizes}
        bad: dict[int, str] = {}
        row = start
        for record in self._records:
            try:
                parsed = self._parse(record)
            except (ValueError, TypeError) as exc:
                bad[row] = str(exc)
                parsed = {name: [0] * size for name, size in self.sizes.items()}
            for name, flat in parsed.items():
                values[name].append(flat)
            row += 1
            if row == stop:
                break
        self._cursor = row
        if row == start:
            return None
        arrays = {}
        for spec in self.specs:
            try:
                array = np.asarray(values[spec.name], dtype=spec.dtype)
            except (ValueError, OverflowError):  # e.g. 1e999 into an int input: find the rows
                array = self._rowwise(spec, values[spec.name], start, bad)
            arrays[spec.name] = array.reshape((row - start, *spec.shape[1:]))
        return make_chunk(start, row, arrays, bad, self.reject_nonfinite)

    @staticmethod
    def _rowwise(spec: Any, rows: list[Any], start: int, bad: dict[int, str]) -> np.ndarray:
        out = np.zeros((len(rows), _row_size(spec)), dtype=spec.dtype)
        for i, flat in enumerate(rows):
            try:
                out[i] = np.asarray(flat, dtype=spec.dtype)
            except (ValueError, OverflowError) as exc:
                bad.setdefault(start + i, f"input {spec.name!r}: {exc}")
        return out

    def _check_width(self, name: str, flat: list[Any]) -> list[Any]:
        if len(flat) != self.sizes[name]:
            raise ValueError(f"input {name!r} needs {self.sizes[name]} values, got {len(flat)}")
        return flat

    def close(self) -> None:
        self._handle.close()


def _number(text: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"column {column!r}: {text!r} is not a number") from None


class CsvReader(_LineReader):
    """A header line names the columns (detected: any field that is not a number)."""

    def _open(self) -> None:
        if not hasattr(self, "plan"):
            with open(self.path, newline="", encoding="utf-8") as probe:
                first = next(csv.reader(probe), [])
            self.has_header = any(not _is_number(f) for f in first)
            self.columns = first if self.has_header else [f"c{i}" for i in range(len(first))]
            plan = plan_columns(self.specs, self.columns, self.input_name)
            index = {c: i for i, c in enumerate(self.columns)}
            self.plan = {name: [(c, index[c]) for c in cols] for name, cols in plan.items()}
        super()._open()

    def _iter_records(self) -> Iterator[list[str]]:
        records = csv.reader(self._handle)
        if self.has_header:
            next(records, None)
        return records

    def _parse(self, record: list[str]) -> dict[str, list[Any]]:
        if len(record) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} fields, got {len(record)}")
        return {
            name: self._check_width(name, [_number(record[i], c) for c, i in cols])
            for name, cols in self.plan.items()
        }


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class JsonlReader(_LineReader):
    """Each line: an object (input names, or columns named by input_name) or an array."""

    def _iter_records(self) -> Iterator[str]:
        return (line.rstrip("\r\n") for line in self._handle)

    def _parse(self, line: str) -> dict[str, list[Any]]:
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        except RecursionError:
            raise ValueError("not JSON: nested too deeply") from None
        if isinstance(doc, list):
            if len(self.specs) != 1:
                raise ValueError("an array line needs a single-input model")
            name = self.specs[0].name
            return {name: self._check_width(name, _flatten(doc, name))}
        if not isinstance(doc, dict):
            raise ValueError(f"expected an object or array, got {type(doc).__name__}")
        out = {}
        for spec in self.specs:
            columns = self._columns(spec.name)
            flat: list[Any] = []
            for column in columns:
                if column not in doc:
                    raise ValueError(f"no key {column!r}")
                flat.extend(_flatten(doc[column], column))
            out[spec.name] = self._check_width(spec.name, flat)
        return out

    def _columns(self, name: str) -> list[str]:
        mapping = self.input_name
        if isinstance(mapping, dict) and name in mapping:
            value = mapping[name]
            return [value] if isinstance(value, str) else list(value)
        return [mapping] if isinstance(mapping, str) else [name]


def _flatten(value: Any, where: str) -> list[Any]:
    if isinstance(value, list):
        return [v for item in value for v in _flatten(item, where)]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where!r}: {value!r} is not a number")
    return [value]


class ParquetReader(Reader):
    """Scalar numeric columns give one value per row, list columns several."""

    def __init__(self, path: Path, specs: Sequence[Any], input_name: Any, reject: bool):
        import pyarrow.parquet as pq

        super().__init__(path, specs, input_name, reject)
        # pre_buffer would hold the raw bytes of a row group next to its decoded form.
        self.file = pq.ParquetFile(path, pre_buffer=False)
        self._group_index = -1
        self._group: Any = None
        self.columns = list(self.file.schema_arrow.names)
        self.plan = plan_columns(self.specs, self.columns, input_name)
        self.needed = sorted(
            {c for cols in self.plan.values() for c in cols}, key=self.columns.index
        )
        self.total_rows = self.file.metadata.num_rows
        meta = self.file.metadata
        self.group_starts = np.cumsum(
            [0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        )

    def _row_group(self, index: int) -> Any:
        # One decoded row group at a time: pyarrow's iter_batches reads ahead several,
        # so memory is bounded by the row-group size (plus a chunk), not the file size.
        if self._group_index != index:
            self._group = None
            self._group = self.file.read_row_group(index, columns=self.needed)
            self._group_index = index
        return self._group

    def read(self, start: int, stop: int) -> Chunk | None:
        import pyarrow as pa

        stop = min(stop, self.total_rows or 0)
        if start >= stop:
            return None
        pieces, position = [], start
        while position < stop:
            index = int(np.searchsorted(self.group_starts, position, side="right")) - 1
            first, end = int(self.group_starts[index]), int(self.group_starts[index + 1])
            take = min(stop, end) - position
            pieces.append(self._row_group(index).slice(position - first, take))
            position += take
        table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
        bad: dict[int, str] = {}
        arrays = {}
        for spec in self.specs:
            columns = self.plan[spec.name]
            width = _row_size(spec) if len(columns) == 1 else None
            parts = [self._column(table.column(c), c, start, bad, width) for c in columns]
            matrix = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
            if matrix.shape[1] != _row_size(spec):
                raise ValueError(f"input {spec.name!r} needs {_row_size(spec)} values per row; "
                                 f"columns {self.plan[spec.name]} give {matrix.shape[1]}")  # fmt: skip
            matrix = _cast(spec.name, matrix, spec.dtype)
            arrays[spec.name] = matrix.reshape((stop - start, *spec.shape[1:]))
        return make_chunk(start, stop, arrays, bad, self.reject_nonfinite)

    @staticmethod
    def _column(
        column: Any, name: str, start: int, bad: dict[int, str], width: int | None
    ) -> np.ndarray:
        """One column as a [rows, k] matrix; nulls and wrong list lengths go to ``bad``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if column.null_count:
            for index in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                bad.setdefault(start + int(index), f"null in column {name!r}")
        kind = column.type
        if (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
            if width is None:  # several columns feed the input: the usual length is right
                present = lengths[lengths >= 0]
                width = int(np.bincount(present).argmax()) if len(present) else 0
            wrong = np.flatnonzero(lengths != width)
            for index in wrong:
                if lengths[index] >= 0:
                    bad.setdefault(start + int(index),
                                   f"column {name!r}: {lengths[index]} values, expected {width}")  # fmt: skip
            if len(wrong):  # stand-in rows keep the good ones rectangular
                filler = [0] * width
                fixed = [v if n == width else filler for v, n in zip(column.to_pylist(), lengths)]
                column = pa.array(fixed, pa.list_(kind.value_type))
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            return values.reshape(len(column), width)
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise ValueError(f"column {name!r} has type {kind}, not numbers")
        if column.null_count:
            column = column.fill_null(0)
        return column.to_numpy(zero_copy_only=False).reshape(len(column), 1)


READERS: dict[str, type[Reader]] = {
    "npy": NpyReader,
    "npz": NpzReader,
    "csv": CsvReader,
    "jsonl": JsonlReader,
    "parquet": ParquetReader,
}


def open_reader(
    path: Path, fmt: str, specs: Sequence[Any], input_name: Any, reject: bool
) -> Reader:
    return READERS[fmt](path, specs, input_name, reject)
