"""The fast input check agrees with validate_inputs and defers everything unusual to it."""

from __future__ import annotations

import numpy as np
import pytest

from irkit.runtime.signature import InputPlan, TensorSpec, validate_inputs

SPECS = (TensorSpec("x", np.dtype(np.float32), ("N", 4)),
         TensorSpec("m", np.dtype(np.int64), ("N", None, 2)))


def good() -> dict[str, np.ndarray]:
    return {"x": np.ones((3, 4), np.float32), "m": np.zeros((3, 5, 2), np.int64)}


def test_fast_path_matches_full_validation() -> None:
    inputs = good()
    fast = InputPlan(SPECS).check(inputs)
    assert fast is not None
    arrays, bindings = fast
    full_arrays, full_bindings = validate_inputs(inputs, SPECS)
    assert bindings == full_bindings == {"N": 3}
    assert list(arrays) == list(full_arrays)
    for name in arrays:
        assert arrays[name] is inputs[name]  # no copy on the fast path


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(x=d["x"].astype(np.float64)),  # dtype
        lambda d: d.update(x=np.ones((3, 5), np.float32)),  # fixed dim
        lambda d: d.update(x=np.ones((4, 4), np.float32)),  # N bound twice
        lambda d: d.update(x=np.ones((4, 3), np.float32).T),  # not C-contiguous
        lambda d: d.update(x=d["x"].astype(">f4")),  # byte order
        lambda d: d.update(x=d["x"].tolist()),  # not an ndarray
        lambda d: d.update(y=d.pop("x")),  # unknown name
        lambda d: d.pop("m"),  # missing input
        lambda d: d.update(m=np.zeros((3, 2), np.int64)),  # rank
        lambda d: d.update(x=np.ones((0, 4), np.float32), m=np.zeros((0, 5, 2), np.int64)),
    ],
)
def test_anything_unusual_takes_the_full_path(change) -> None:
    inputs = good()
    change(inputs)
    assert InputPlan(SPECS).check(inputs) is None
