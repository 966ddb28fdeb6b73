"""Op templates per target family: which lowering an op gets on a CPU and on a GPU.

The kernel-IR lowering's own tables (``irkit.lower.driver.LOWERINGS`` and ``HEAVY``, and
the GEMM template :func:`irkit.lower.gemm.emit_gemm`) are the CPU templates: register
tiles sized from the Target's vector registers. A target family registers replacements
for the ops it computes another way; the ``gpu`` family's (``irkit.lower.gpu``: shared-
memory tiled GEMM and convolution, attention, warp-shuffle reductions) are registered
when a GPU target is first lowered. Lowering asks :func:`family_template` before its
default table, so the CPU templates stay as they are.

Kinds: ``"lowering"`` (an op's lowering function, ``(ctx, node, ins) -> [TensorRef]``),
``"heavy"`` (a heavy op's plan, ``(ctx, node, ins) -> HeavyPlan``, whose epilogue the
driver fuses) and ``"gemm"`` (the GEMM template itself, ``(ctx, spec, hint, tiles)``;
op name ``"*"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("lowering", "heavy", "gemm")
# Families whose templates live in a module imported on first use.
_FAMILY_MODULES = {"gpu": "irkit.lower.gpu"}
_TEMPLATES: dict[tuple[str, str, str], Callable[..., Any]] = {}
_LOADED: set[str] = set()


def register_template(family: str, kind: str, op: str, fn: Callable[..., Any]) -> None:
    """Use ``fn`` for ``op`` (a ``kind`` template) on targets of ``family``."""
    if kind not in KINDS:
        raise ValueError(f"template kind {kind!r} is not one of {', '.join(KINDS)}")
    _TEMPLATES[(family, kind, op)] = fn


def family_template(family: str, kind: str, op: str) -> Callable[..., Any] | None:
    """The ``family``'s own ``kind`` template for ``op``, or None (use the default)."""
    module = _FAMILY_MODULES.get(family)
    if module is not None and family not in _LOADED:
        _LOADED.add(family)
        importlib.import_module(module)
    return _TEMPLATES.get((family, kind, op))


def family_templates(family: str) -> dict[str, list[str]]:
    """``{kind: [op, ...]}`` of ``family``'s registered templates (for reports)."""
    family_template(family, "gemm", "*")
    table: dict[str, list[str]] = {}
    for (fam, kind, op), _ in sorted(_TEMPLATES.items()):
        if fam == family:
            table.setdefault(kind, []).append(op)
    return table


__all__ = ["KINDS", "family_template", "family_templates", "register_template"]
