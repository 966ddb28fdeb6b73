"""Batch input of several files: a directory or a glob of parquet/npy/npz files as one input.

``input_files("data/")`` lists a directory's files of one format (sorted by name);
``input_files("data/part-*.parquet")`` expands a glob (sorted); a plain file is itself.
``MultiReader`` reads the files as one sequence of rows: row numbers are global (the
first file's rows first), so shards, errors files and resumption work as for one file.
A bad row's reason names its file and row within it (``part-1.parquet row 17: null in
column 'c3'``). Only formats whose row count is known without reading the data (parquet,
npy, npz) can be combined: the shard layout must be known before the first row runs.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .batch_readers import FORMATS, Chunk, Reader, infer_format, open_reader

__all__ = ["MultiReader", "input_files", "open_input"]

COUNTABLE = ("parquet", "npy", "npz")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def input_files(source: str | Path, given_format: str | None = None) -> tuple[list[Path], str]:
    """The files ``source`` names (a file, a directory or a glob) and their common format."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if given_format is None:
            files = [p for p in files if p.suffix.lower().lstrip(".") in (*FORMATS, "pq")]
    elif _is_glob(text) and not path.exists():
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
    else:  # one file (a missing one is reported when the run opens it)
        return [path], infer_format(path, given_format)
    if not files:
        raise ValueError(f"input {text!r}: no input files in it")
    formats = {infer_format(p, given_format) for p in files}
    if len(formats) != 1:
        raise ValueError(f"input {text!r} mixes formats {sorted(formats)}; one format per input")
    fmt = formats.pop()
    if fmt not in COUNTABLE:
        raise ValueError(f"input {text!r}: several {fmt} files cannot be one input; "
                         f"directories and globs take {', '.join(COUNTABLE)} files")  # fmt: skip
    return files, fmt


def open_input(
    files: Sequence[Path], fmt: str, specs: Sequence[Any], input_name: Any, reject: bool
) -> Reader:
    """One reader over ``files``: the file's own reader when there is one file."""
    if len(files) == 1:
        return open_reader(files[0], fmt, specs, input_name, reject)
    return MultiReader(files, fmt, specs, input_name, reject)


class MultiReader(Reader):
    """Several files of one format read as one input (see the module docstring)."""

    def __init__(
        self, files: Sequence[Path], fmt: str, specs: Sequence[Any], input_name: Any,
        reject: bool,
    ) -> None:  # fmt: skip
        super().__init__(Path(files[0]), specs, input_name, reject)
        self.files = list(files)
        self.fmt = fmt
        counts = []
        for path in self.files:
            reader = open_reader(path, fmt, specs, input_name, reject)  # checks the schema
            try:
                counts.append(reader.total_rows)
            finally:
                reader.close()
        if any(n is None for n in counts):
            raise ValueError(f"{fmt} files do not state their row count; cannot combine them")
        self.ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self.starts = self.ends - np.asarray(counts, dtype=np.int64)
        self.total_rows = int(self.ends[-1])
        self._current: tuple[int, Reader] | None = None

    def _reader(self, index: int) -> Reader:
        if self._current is None or self._current[0] != index:
            self.close()
            reader = open_reader(self.files[index], self.fmt, self.specs, self.input_name,
                                 self.reject_nonfinite)  # fmt: skip
            self._current = (index, reader)
        return self._current[1]

    def read(self, start: int, stop: int) -> Chunk | None:
        stop = min(stop, self.total_rows or 0)
        if start >= stop:
            return None
        pieces: list[Chunk] = []
        position = start
        while position < stop:
            index = int(np.searchsorted(self.ends, position, side="right"))
            offset, end = int(self.starts[index]), min(stop, int(self.ends[index]))
            chunk = self._reader(index).read(position - offset, end - offset)
            if chunk is None:  # the file is shorter than its metadata said
                raise ValueError(f"{self.files[index]}: fewer rows than its header states")
            name = self.files[index].name
            pieces.append(Chunk(
                start=position, stop=end, rows=chunk.rows + offset, inputs=chunk.inputs,
                errors=[(row + offset, f"{name} row {row}: {why}") for row, why in chunk.errors],
            ))  # fmt: skip
            position = end
        if len(pieces) == 1:
            return pieces[0]
        inputs = {
            spec.name: np.concatenate([p.inputs[spec.name] for p in pieces]) for spec in self.specs
        }
        rows = np.concatenate([p.rows for p in pieces])
        errors = [e for p in pieces for e in p.errors]
        return Chunk(start, stop, rows, inputs, errors)

    def close(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None
