"""Shard writers of the batch adapter: npy, npz, csv, parquet, jsonl.

Writers write one shard: a ``row`` column (the input row index; npy has none) then, per
output, ``name`` for one value per row or ``name_0 .. name_{k-1}`` flattened (csv,
parquet), a nested list per row (jsonl), or whole arrays (npy: the single output; npz:
``row`` plus each output). Output bytes depend only on the rows and values written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: shard bytes must be reproducible


def output_columns(spec: Any, shape: tuple[int, ...]) -> list[str]:
    """Flat column names of one output: ``name`` or ``name_0 .. name_{k-1}``."""
    size = math.prod(shape[1:])
    return (
        [spec.name] if size == 1 and len(shape) <= 2 else [f"{spec.name}_{i}" for i in range(size)]
    )


class ShardWriter:
    """Writes one shard file; ``write`` per chunk, then ``close``."""

    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        self.path = path
        self.specs = list(specs)

    def write(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _BufferedWriter(ShardWriter):
    """npy/npz need the row count in the header: keep the shard (bounded by shard_rows)."""

    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        super().__init__(path, specs)
        self.rows: list[np.ndarray] = []
        self.outputs: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}

    def write(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        self.rows.append(rows)
        for name, parts in self.outputs.items():
            parts.append(np.asarray(outputs[name]))

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"row": np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)}
        for spec in self.specs:
            parts = self.outputs[spec.name]
            empty = np.zeros(
                (0, *(d if isinstance(d, int) else 0 for d in spec.shape[1:])), spec.dtype
            )
            arrays[spec.name] = np.ascontiguousarray(np.concatenate(parts) if parts else empty)
        return arrays


class NpyWriter(_BufferedWriter):
    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        if len(specs) != 1:
            raise ValueError("npy output holds one output: choose it with `outputs`")
        super().__init__(path, specs)

    def close(self) -> None:
        with open(self.path, "wb") as handle:
            np.lib.format.write_array(
                handle, self._arrays()[self.specs[0].name], allow_pickle=False
            )


class NpzWriter(_BufferedWriter):
    def close(self) -> None:
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED) as archive:
            for name, array in self._arrays().items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                archive.writestr(info, buffer.getvalue())


def _format_values(array: np.ndarray) -> list[list[str]]:
    # str() of a numpy scalar is the shortest text that reads back to the same value.
    return [[str(v) for v in row] for row in array.reshape(len(array), -1)]


class CsvWriter(ShardWriter):
    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        super().__init__(path, specs)
        self.handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.writer(self.handle, lineterminator="\n")
        self.header_written = False

    def write(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        if not self.header_written:
            header = ["row"]
            for spec in self.specs:
                header += output_columns(spec, outputs[spec.name].shape)
            self.writer.writerow(header)
            self.header_written = True
        columns = [_format_values(np.asarray(outputs[spec.name])) for spec in self.specs]
        for i, row in enumerate(rows.tolist()):
            self.writer.writerow([row, *(v for part in columns for v in part[i])])

    def close(self) -> None:
        self.handle.close()


class JsonlWriter(ShardWriter):
    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        super().__init__(path, specs)
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        lists = {spec.name: np.asarray(outputs[spec.name]).tolist() for spec in self.specs}
        for i, row in enumerate(rows.tolist()):
            record = {"row": row, **{name: values[i] for name, values in lists.items()}}
            self.handle.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.handle.close()


class ParquetWriter(ShardWriter):
    def __init__(self, path: Path, specs: Sequence[Any]) -> None:
        super().__init__(path, specs)
        self.writer: Any = None

    def write(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names, columns = ["row"], [pa.array(rows, pa.int64())]
        for spec in self.specs:
            array = np.asarray(outputs[spec.name])
            flat = array.reshape(len(array), -1)
            names += output_columns(spec, array.shape)
            columns += [pa.array(flat[:, i]) for i in range(flat.shape[1])]
        table = pa.Table.from_arrays(columns, names=names)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # a shard of only bad rows: still a valid, empty file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"row": pa.array([], pa.int64())}), self.path)
            return
        self.writer.close()


WRITERS: dict[str, type[ShardWriter]] = {
    "npy": NpyWriter,
    "npz": NpzWriter,
    "csv": CsvWriter,
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
}
