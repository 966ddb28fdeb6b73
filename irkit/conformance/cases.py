"""Regenerate ONNX's backend node test cases into a cache directory and read them back.

The onnx wheel ships only the case definitions; ``ensure_cases`` writes each case in the
standard layout (``model.onnx``, ``test_data_set_0/input_0.pb`` …) under a directory keyed
by the onnx version, so later runs read files instead of re-running the generators.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TypeProto, numpy_helper

_COMPLETE = "COMPLETE.json"


@dataclass
class Case:
    """One node case: its model and data sets (inputs and expected outputs)."""

    name: str
    directory: Path
    rtol: float
    atol: float

    @property
    def model_path(self) -> Path:
        return self.directory / "model.onnx"

    def load_model(self) -> onnx.ModelProto:
        return onnx.load(str(self.model_path))

    def data_sets(self, model: onnx.ModelProto) -> list[tuple[list[Any], list[Any]]]:
        inputs_t = [vi.type for vi in model.graph.input if not _is_initializer(model, vi.name)]
        outputs_t = [vi.type for vi in model.graph.output]
        sets = []
        for data_dir in sorted(self.directory.glob("test_data_set_*")):
            ins = [_read_value(data_dir / f"input_{i}.pb", t) for i, t in enumerate(inputs_t)
                   if (data_dir / f"input_{i}.pb").exists()]
            outs = [_read_value(data_dir / f"output_{i}.pb", t) for i, t in enumerate(outputs_t)]
            sets.append((ins, outs))
        return sets


def _is_initializer(model: onnx.ModelProto, name: str) -> bool:
    return any(t.name == name for t in model.graph.initializer)


def default_cache_dir() -> Path:
    root = os.environ.get("IRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "irkit"
    )
    return Path(root) / f"onnx-node-cases-{onnx.__version__}"


def _to_proto(value: Any, type_proto: TypeProto, name: str) -> Any:
    if isinstance(value, onnx.TensorProto | onnx.SequenceProto | onnx.OptionalProto):
        return value
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, name)
    return numpy_helper.from_array(np.asarray(value), name)


def _read_value(path: Path, type_proto: TypeProto) -> Any:
    data = path.read_bytes()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def ensure_cases(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Write every node case under ``cache_dir`` (once); return the directory."""
    cache_dir = Path(cache_dir or default_cache_dir())
    if (cache_dir / _COMPLETE).exists():
        return cache_dir
    from onnx.backend.test.case import node as node_cases

    if progress:
        print(f"irkit: regenerating ONNX node cases into {cache_dir} …", flush=True)
    # A staging directory of this process's own: test workers (pytest -n) that start at
    # once each write theirs, and the first complete one takes the final name.
    tmp = cache_dir.with_name(f"{cache_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    index = {}
    for case in cases:
        if case.model is None:
            continue
        directory = tmp / case.name
        directory.mkdir()
        onnx.save(case.model, str(directory / "model.onnx"))
        graph = case.model.graph
        in_types = [vi.type for vi in graph.input]
        out_types = [vi.type for vi in graph.output]
        for k, (inputs, outputs) in enumerate(case.data_sets or []):
            data_dir = directory / f"test_data_set_{k}"
            data_dir.mkdir()
            for i, value in enumerate(inputs):
                proto = _to_proto(value, in_types[i], graph.input[i].name)
                (data_dir / f"input_{i}.pb").write_bytes(proto.SerializeToString())
            for i, value in enumerate(outputs):
                proto = _to_proto(value, out_types[i], graph.output[i].name)
                (data_dir / f"output_{i}.pb").write_bytes(proto.SerializeToString())
        index[case.name] = {"rtol": case.rtol, "atol": case.atol}
    (tmp / _COMPLETE).write_text(json.dumps(index, indent=0, sort_keys=True))
    if (cache_dir / _COMPLETE).exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return cache_dir
    shutil.rmtree(cache_dir, ignore_errors=True)  # an incomplete one: never renamed into place
    try:
        tmp.rename(cache_dir)
    except OSError:  # another process renamed its complete copy in meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not (cache_dir / _COMPLETE).exists():
            raise
    if progress:
        print(f"irkit: wrote {len(index)} cases", flush=True)
    return cache_dir


def load_cases(cache_dir: Path | None = None, pattern: str | None = None) -> list[Case]:
    import re

    cache_dir = ensure_cases(cache_dir)
    index = json.loads((cache_dir / _COMPLETE).read_text())
    regex = re.compile(pattern) if pattern else None
    return [
        Case(name, cache_dir / name, float(tol["rtol"]), float(tol["atol"]))
        for name, tol in sorted(index.items())
        if regex is None or regex.search(name)
    ]
