"""Graph passes. A pass is a frozen dataclass whose fields are its options; the built-in
ones are registered by name through ``plugins/builtins.py`` from ``BUILTIN_PASSES``."""

from irkit.passes.base import Pass, PassContext, PassResult

BUILTIN_PASSES: dict[str, str] = {
    "fold": "irkit.passes.fold:FoldConstants",
    "dce": "irkit.passes.dce:DeadCodeElimination",
    "cse": "irkit.passes.cse:CommonSubexpressionElimination",
    "shapes": "irkit.passes.shapes:SimplifyShapes",
    "simplify": "irkit.passes.simplify:Simplify",
    "fuse": "irkit.passes.fuse:Fuse",
    "quantize": "irkit.passes.quantize:Quantize",
    "prune": "irkit.passes.prune:Prune",
    "lowrank": "irkit.passes.lowrank:LowRank",
}

__all__ = ["BUILTIN_PASSES", "Pass", "PassContext", "PassResult"]
