"""Outputs whose size a kernel reports: the runtime half of data-dependent shapes.

A kernel program compiled for a data-dependent op (NonZero, Compress with a run-time
condition, Unique, NonMaxSuppression; :mod:`irkit.lower.dynamic`) writes its outputs at
an upper-bound size and one more output, an int64 ``count``: how many entries along the
data-dependent axis are valid. Its segment in the manifest says so::

    {"kind": "kernels", ..., "trim": {"count": "y__count", "outputs": {"y": 1}}}

and :class:`TrimmingRunner` hands on each listed output cut to ``count`` along its axis
(a view; the next segment copies what it reads into contiguous memory), never the count
itself. A count outside ``[0, bound]`` is an error, never an out-of-bounds view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.runtime.artifact import ArtifactError


@dataclass(frozen=True)
class Trim:
    """``count``: the output holding the valid size; ``outputs``: name -> axis cut."""

    count: str
    outputs: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "outputs": dict(self.outputs)}

    @classmethod
    def from_json(cls, data: Any, outputs: tuple[str, ...], ranks: Mapping[str, int],
                  where: str) -> Trim:
        if not isinstance(data, dict) or set(data) != {"count", "outputs"}:
            raise ArtifactError(f"{where}.trim: expected {{'count': name, 'outputs': "
                                "{name: axis}}}")
        count, cut = data["count"], data["outputs"]
        if not isinstance(count, str) or count not in outputs:
            raise ArtifactError(f"{where}.trim.count: {count!r} is not one of the segment's "
                                "outputs")
        if not isinstance(cut, dict):
            raise ArtifactError(f"{where}.trim.outputs: expected an object of name -> axis")
        for name, axis in cut.items():
            if name not in outputs or name == count:
                raise ArtifactError(f"{where}.trim.outputs: {name!r} is not an output of the "
                                    "segment")
            if type(axis) is not int or not 0 <= axis < ranks.get(name, 0):
                raise ArtifactError(f"{where}.trim.outputs.{name}: axis {axis!r} is not a "
                                    "dim of that output")
        return cls(count, dict(cut))


class TrimmingRunner:
    """Runs a kernel program, then cuts its bounded outputs to the count it wrote."""

    thread_safe = False

    def __init__(self, inner: Any, trim: Trim) -> None:
        self.inner = inner
        self.trim = trim

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.inner.run(inputs)
        count_array = outputs.pop(self.trim.count)
        count = int(count_array.reshape(-1)[0])
        for name, axis in self.trim.outputs.items():
            array = outputs[name]
            if not 0 <= count <= array.shape[axis]:
                raise RuntimeError(f"a kernel reported {count} entries for {name!r}, outside "
                                   f"its bound {array.shape[axis]}")
            index = (slice(None),) * axis + (slice(0, count),)
            outputs[name] = array[index]
        return outputs

    def close(self) -> None:
        self.inner.close()
