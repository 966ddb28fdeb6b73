"""Memory planning: place workspace buffers in reusable slots by liveness.

Sizes are affine in the batch size (``a * N + b`` bytes). A buffer is live from the
first to the last kernel that touches it; a slot is reused once its occupant is dead,
and grows to the (coefficient-wise) largest occupant. Slots are laid out one after
another, so every offset is affine in N too and one plan serves every batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from irkit.kir import Buffer, Kernel, Placement
from irkit.kir.nodes import ITEMSIZE
from irkit.lower.tensor import affine

ALIGN = 64


def _round(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


@dataclass
class MemoryPlan:
    placements: dict[str, Placement]
    workspace_n: int
    workspace_c: int
    naive_n: int
    naive_c: int

    def peak_bytes(self, n: int) -> int:
        return self.workspace_n * n + self.workspace_c

    def report(self) -> dict[str, object]:
        return {
            "workspace_bytes": {"per_N": self.workspace_n, "constant": self.workspace_c},
            "peak_bytes_at_N1": self.peak_bytes(1),
            "peak_bytes_at_N64": self.peak_bytes(64),
            "without_reuse_at_N64": self.naive_n * 64 + self.naive_c,
        }


def plan_workspace(kernels: list[Kernel], buffers: list[Buffer]) -> MemoryPlan:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for k, kernel in enumerate(kernels):
        for buf in kernel.buffers:
            first.setdefault(buf.name, k)
            last[buf.name] = k
    sizes = {}
    for buf in buffers:
        a, b = affine(buf.size)
        sizes[buf.name] = (_round(a * ITEMSIZE[buf.dtype]), _round(b * ITEMSIZE[buf.dtype]))
    order = sorted((b for b in buffers if b.name in first), key=lambda b: first[b.name])
    slots: list[dict[str, object]] = []  # size_n, size_c, free_after, members
    assignment: dict[str, int] = {}
    for buf in order:
        need = sizes[buf.name]
        # Best fit: the free slot whose size (at N=64) is closest to this buffer's.
        want = need[0] * 64 + need[1]
        free = [s for s, slot in enumerate(slots)
                if slot["free_after"] < first[buf.name]]  # type: ignore[operator]
        best = min(free, key=lambda s: abs(slots[s]["n"] * 64 + slots[s]["c"] - want),  # type: ignore[operator]
                   default=None)
        if best is None:
            slots.append({"n": need[0], "c": need[1], "free_after": last[buf.name]})
            best = len(slots) - 1
        else:
            slot = slots[best]
            slot["n"] = max(slot["n"], need[0])  # type: ignore[call-overload]
            slot["c"] = max(slot["c"], need[1])  # type: ignore[call-overload]
            slot["free_after"] = last[buf.name]
        assignment[buf.name] = best
    offsets = []
    on = oc = 0
    for slot in slots:
        offsets.append((on, oc))
        on += slot["n"]  # type: ignore[operator]
        oc += slot["c"]  # type: ignore[operator]
    placements = {
        name: Placement("workspace", offset_n=offsets[s][0], offset_c=offsets[s][1])
        for name, s in assignment.items()
    }
    naive_n = sum(sizes[b.name][0] for b in order)
    naive_c = sum(sizes[b.name][1] for b in order)
    return MemoryPlan(placements, on, oc, naive_n, naive_c)
