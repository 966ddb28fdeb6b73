"""Lowering: Graph IR → kernel IR programs (fusion, GEMM templates, memory planning)."""

from irkit.lower.context import Tiles
from irkit.lower.driver import (
    SUPPORTED_OPS,
    Capabilities,
    LoweredModel,
    lower_graph,
    unsupported_nodes,
)
from irkit.lower.tensor import LoweringError

__all__ = ["SUPPORTED_OPS", "Capabilities", "LoweredModel", "LoweringError", "Tiles",
           "lower_graph", "unsupported_nodes"]
