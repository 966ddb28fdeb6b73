"""A list of numpy values follows the numpy rule (no silent casts), as one array does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from irkit.runtime import InputTypeError, TensorSpec
from irkit.runtime.signature import validate_inputs

SPEC = [TensorSpec("x", np.dtype(np.float32), ("N", 3))]


@pytest.mark.parametrize("value", [
    np.zeros((2, 3)),                                  # a float64 array
    [np.zeros(3), np.zeros(3)],                        # a list of float64 arrays
    [[np.float64(1.0), 2.0, 3.0]],                     # a float64 scalar among floats
    ([np.zeros(3, np.int64)],),                        # nested deeper, int64
], ids=["array", "list-of-arrays", "scalar-in-list", "nested-int64"])
def test_float64_numpy_values_are_refused_however_wrapped(value: Any) -> None:
    with pytest.raises(InputTypeError, match="does not cast arrays silently"):
        validate_inputs({"x": value[0] if isinstance(value, tuple) else value}, SPEC)


@pytest.mark.parametrize("value", [
    [np.zeros(3, np.float32), np.ones(3, np.float32)],  # numpy values of the right dtype
    [[1.0, 2.0, 3.0]],                                  # Python floats carry no precision
    [[1, 2, 3]],
], ids=["float32-arrays", "python-floats", "python-ints"])
def test_exact_numpy_values_and_python_numbers_are_accepted(value: Any) -> None:
    arrays, dims = validate_inputs({"x": value}, SPEC)
    assert arrays["x"].dtype == np.float32 and dims == {"N": len(value)}
    np.testing.assert_array_equal(arrays["x"], np.asarray(value, np.float32))
