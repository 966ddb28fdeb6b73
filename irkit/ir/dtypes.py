"""Element types: irkit's short names, ONNX TensorProto codes and numpy dtypes."""

from __future__ import annotations

import enum
from typing import Any

import ml_dtypes
import numpy as np


class DType(enum.Enum):
    """An element type. ``value`` is the ONNX ``TensorProto.DataType`` code."""

    FLOAT32 = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    FLOAT64 = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        """The name used in IR text: ``f32``, ``i64``, ``bool``…"""
        return _SHORT[self]

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds values of this type."""
        return np.dtype(_NUMPY[self])

    @property
    def itemsize(self) -> int:
        return 0 if self is DType.STRING else self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTEGERS

    @classmethod
    def from_short(cls, name: str) -> DType:
        try:
            return _FROM_SHORT[name]
        except KeyError:
            raise ValueError(
                f"unknown dtype {name!r}; known: {', '.join(sorted(_FROM_SHORT))}"
            ) from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return DType.STRING
        for member, np_type in _NUMPY.items():
            if member is not DType.STRING and np.dtype(np_type) == dt:
                return member
        raise ValueError(f"numpy dtype {dt} has no irkit DType")

    @classmethod
    def from_onnx(cls, code: int) -> DType:
        try:
            return cls(code)
        except ValueError:
            raise ValueError(f"ONNX element type {code} is not supported by irkit") from None


_SHORT = {
    DType.FLOAT32: "f32",
    DType.UINT8: "u8",
    DType.INT8: "i8",
    DType.UINT16: "u16",
    DType.INT16: "i16",
    DType.INT32: "i32",
    DType.INT64: "i64",
    DType.STRING: "str",
    DType.BOOL: "bool",
    DType.FLOAT16: "f16",
    DType.FLOAT64: "f64",
    DType.UINT32: "u32",
    DType.UINT64: "u64",
    DType.COMPLEX64: "c64",
    DType.COMPLEX128: "c128",
    DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "f8e4m3fn",
    DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz",
    DType.FLOAT8E5M2: "f8e5m2",
    DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz",
    DType.UINT4: "u4",
    DType.INT4: "i4",
    DType.FLOAT4E2M1: "f4e2m1",
    DType.FLOAT8E8M0: "f8e8m0",
    DType.UINT2: "u2",
    DType.INT2: "i2",
}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}

_NUMPY: dict[DType, Any] = {
    DType.FLOAT32: np.float32,
    DType.UINT8: np.uint8,
    DType.INT8: np.int8,
    DType.UINT16: np.uint16,
    DType.INT16: np.int16,
    DType.INT32: np.int32,
    DType.INT64: np.int64,
    DType.STRING: np.object_,
    DType.BOOL: np.bool_,
    DType.FLOAT16: np.float16,
    DType.FLOAT64: np.float64,
    DType.UINT32: np.uint32,
    DType.UINT64: np.uint64,
    DType.COMPLEX64: np.complex64,
    DType.COMPLEX128: np.complex128,
    DType.BFLOAT16: ml_dtypes.bfloat16,
    DType.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    DType.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    DType.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    DType.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
    DType.UINT4: ml_dtypes.uint4,
    DType.INT4: ml_dtypes.int4,
    DType.FLOAT4E2M1: ml_dtypes.float4_e2m1fn,
    DType.FLOAT8E8M0: ml_dtypes.float8_e8m0fnu,
    DType.UINT2: ml_dtypes.uint2,
    DType.INT2: ml_dtypes.int2,
}

_FLOATS = {
    DType.FLOAT32, DType.FLOAT16, DType.FLOAT64, DType.BFLOAT16, DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1,
    DType.FLOAT8E8M0,
}
_INTEGERS = {
    DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.INT32, DType.INT64,
    DType.UINT32, DType.UINT64, DType.UINT4, DType.INT4, DType.UINT2, DType.INT2,
}
