"""Memory planning: place workspace buffers in reusable slots by liveness.

Sizes are polynomials in the symbolic dims (``a*N + b`` bytes for a batch-only model,
``384*N*N1 + …`` for one with batch and sequence symbols; see
:mod:`irkit.lower.symbolic`). A buffer is live from the first to the last kernel that
touches it; a slot is reused once its occupant is dead, and grows to the
coefficient-wise largest occupant — an upper bound of every occupant for all
non-negative symbol values. Slots are laid out one after another, so every offset is a
polynomial too and one plan serves every binding of the symbols: the runtime evaluates
the workspace size, and the kernels their buffer offsets, from the symbol values.
"""

from __future__ import annotations

from dataclasses import dataclass

from irkit.kir import Buffer, Kernel, Placement
from irkit.kir.nodes import ITEMSIZE, Terms
from irkit.lower import symbolic
from irkit.lower.symbolic import Poly

ALIGN = 64
# Slots are matched by their size at this sample binding (every symbol = 64).
_SAMPLE = 64


def _round(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def _split(poly: Poly) -> tuple[int, int, Terms]:
    """``(per N, constant, other terms)`` of a byte-size polynomial."""
    rest = {m: c for m, c in poly.items() if m not in ((), ("N",))}
    return poly.get(("N",), 0), poly.get((), 0), symbolic.freeze(rest)


def _at_sample(poly: Poly) -> int:
    return sum(c * _SAMPLE ** len(m) for m, c in poly.items())


@dataclass
class MemoryPlan:
    placements: dict[str, Placement]
    workspace_n: int
    workspace_c: int
    naive_n: int
    naive_c: int
    workspace_terms: Terms = ()
    naive_terms: Terms = ()

    def peak_bytes(self, n: int) -> int:
        """Workspace bytes with every symbol equal to ``n``."""
        extra = sum(c * n ** len(m) for m, c in self.workspace_terms)
        return self.workspace_n * n + self.workspace_c + extra

    def report(self) -> dict[str, object]:
        naive = self.naive_n * 64 + self.naive_c + sum(c * 64 ** len(m)
                                                       for m, c in self.naive_terms)
        return {
            "workspace_bytes": {"per_N": self.workspace_n, "constant": self.workspace_c,
                                **{"*".join(m): c for m, c in self.workspace_terms}},
            "peak_bytes_at_N1": self.peak_bytes(1),
            "peak_bytes_at_N64": self.peak_bytes(64),
            "without_reuse_at_N64": naive,
        }


def plan_workspace(kernels: list[Kernel], buffers: list[Buffer]) -> MemoryPlan:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for k, kernel in enumerate(kernels):
        for buf in kernel.buffers:
            first.setdefault(buf.name, k)
            last[buf.name] = k
    sizes: dict[str, Poly] = {}
    for buf in buffers:
        elems = symbolic.to_poly(buf.size)
        # Every coefficient rounds up to the alignment, so every offset stays aligned.
        sizes[buf.name] = {m: _round(c * ITEMSIZE[buf.dtype]) for m, c in elems.items()}
    order = sorted((b for b in buffers if b.name in first), key=lambda b: first[b.name])
    slot_sizes: list[Poly] = []
    free_after: list[int] = []
    assignment: dict[str, int] = {}
    for buf in order:
        need = sizes[buf.name]
        want = _at_sample(need)
        free = [s for s in range(len(slot_sizes)) if free_after[s] < first[buf.name]]
        # Best fit: the free slot whose size (at the sample binding) is closest.
        best = min(free, key=lambda s: abs(_at_sample(slot_sizes[s]) - want), default=None)
        if best is None:
            slot_sizes.append(dict(need))
            free_after.append(last[buf.name])
            best = len(slot_sizes) - 1
        else:
            slot_sizes[best] = symbolic.upper_bound(slot_sizes[best], need)
            free_after[best] = last[buf.name]
        assignment[buf.name] = best
    offsets: list[Poly] = []
    total: Poly = {}
    for size in slot_sizes:
        offsets.append(total)
        total = symbolic.add(total, size)
    placements = {}
    for name, s in assignment.items():
        on, oc, terms = _split(offsets[s])
        placements[name] = Placement("workspace", offset_n=on, offset_c=oc, offset_terms=terms)
    naive: Poly = {}
    for b in order:
        naive = symbolic.add(naive, sizes[b.name])
    wn, wc, wterms = _split(total)
    nn, nc, nterms = _split(naive)
    return MemoryPlan(placements, wn, wc, nn, nc, wterms, nterms)
