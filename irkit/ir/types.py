"""Value types: tensors with symbolic dims, sequences, optionals, maps."""

from __future__ import annotations

from dataclasses import dataclass

from irkit.ir.dtypes import DType

Dim = int | str | None
"""A dimension: a known size, a symbol name (``"N"``), or ``None`` for unknown."""


@dataclass(frozen=True)
class TensorType:
    """A tensor of ``dtype``; ``shape`` is None when even the rank is unknown."""

    dtype: DType
    shape: tuple[Dim, ...] | None = ()

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
            for d in self.shape:
                if not (d is None or isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                    raise ValueError(f"invalid dimension {d!r} in shape {self.shape}")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[*]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.short}[{dims}]"


@dataclass(frozen=True)
class SparseTensorType:
    dtype: DType
    shape: tuple[Dim, ...] | None = ()

    def __str__(self) -> str:
        return f"sparse<{TensorType(self.dtype, self.shape)}>"


@dataclass(frozen=True)
class SequenceType:
    elem: ValueType

    def __str__(self) -> str:
        return f"seq<{self.elem}>"


@dataclass(frozen=True)
class OptionalType:
    elem: ValueType

    def __str__(self) -> str:
        return f"opt<{self.elem}>"


@dataclass(frozen=True)
class MapType:
    key: DType
    value: ValueType

    def __str__(self) -> str:
        return f"map<{self.key.short},{self.value}>"


@dataclass(frozen=True)
class UnknownType:
    """A value whose type ONNX shape inference could not determine."""

    def __str__(self) -> str:
        return "?"


ValueType = TensorType | SparseTensorType | SequenceType | OptionalType | MapType | UnknownType
