"""Registry of irkit-domain ops and their decompositions into standard ONNX ops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from irkit.errors import UnsupportedOpsError
from irkit.ir import Graph, Node, Value

IRKIT_DOMAIN = "irkit"

Decompose = Callable[[Graph, Node], list[Value]]
"""Insert standard ops before ``node`` computing its outputs; return the new outputs."""


@dataclass(frozen=True)
class IrkitOp:
    name: str
    decompose: Decompose
    doc: str = ""


_OPS: dict[str, IrkitOp] = {}


def register_irkit_op(name: str, decompose: Decompose, doc: str = "") -> IrkitOp:
    if name in _OPS:
        raise ValueError(f"irkit op {name!r} is registered twice")
    op = IrkitOp(name, decompose, doc)
    _OPS[name] = op
    return op


def _load_builtin_ops() -> None:
    # Op families register themselves on import; import lazily to avoid cycles.
    import importlib
    import pkgutil

    import irkit.ops as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry",) and not info.name.startswith("_"):
            importlib.import_module(f"irkit.ops.{info.name}")


def is_irkit_op(name: str) -> bool:
    if name not in _OPS:
        _load_builtin_ops()
    return name in _OPS


def get_irkit_op(node: Node) -> IrkitOp:
    if not is_irkit_op(node.op):
        raise UnsupportedOpsError(
            f"{node.describe()}: unknown irkit op {node.op!r}",
            [{"op": node.op, "domain": IRKIT_DOMAIN, "opset": None, "node": node.name}],
        )
    return _OPS[node.op]
