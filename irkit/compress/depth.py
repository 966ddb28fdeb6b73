"""Students with fewer layers: find a repeated block in the graph (the same op sequence
several times in a row, each copy reading only the previous copy's output) and drop the
first copies, so the kept ones read what the first copy read. Transformer encoder layers
and stacks of identical MLP/CNN stages have this shape."""

from __future__ import annotations

from dataclasses import dataclass

from irkit.errors import IrkitError
from irkit.ir import Graph, Node, Value
from irkit.passes.base import drop_unused_constants

MAX_NODES = 3000


@dataclass(frozen=True)
class Blocks:
    """``count`` consecutive copies of ``length`` nodes starting at node ``start``."""

    start: int
    length: int
    count: int


def _signature(node: Node) -> tuple[str, str, int, int]:
    return (node.domain, node.op, len(node.inputs), len(node.outputs))


def _external_inputs(block: list[Node]) -> list[Value]:
    inside = {id(v) for n in block for v in n.outputs}
    seen: dict[int, Value] = {}
    for node in block:
        for value in node.inputs:
            if value is not None and value.const is None and id(value) not in inside:
                seen.setdefault(id(value), value)
    return list(seen.values())


def find_blocks(graph: Graph) -> Blocks | None:
    """The longest run of repeated blocks (most nodes covered; at least 2 copies of at
    least 3 nodes) whose copies after the first each read one value, produced by the
    copy before."""
    nodes = list(graph.nodes)
    if len(nodes) > MAX_NODES:
        raise IrkitError(f"distill depth: {len(nodes)} nodes are more than the block search "
                         f"handles ({MAX_NODES})")
    sigs = [_signature(n) for n in nodes]
    best: Blocks | None = None
    for length in range(len(nodes) // 2, 2, -1):
        if best is not None and best.length * best.count >= length * (len(nodes) // length):
            break
        for start in range(0, len(nodes) - 2 * length + 1):
            count = 1
            while (start + (count + 1) * length <= len(nodes)
                   and sigs[start + count * length:start + (count + 1) * length]
                   == sigs[start:start + length]):
                count += 1
            if count < 2 or (best is not None and count * length <= best.count * best.length):
                continue
            if _chained(nodes, Blocks(start, length, count)):
                best = Blocks(start, length, count)
    return best


def _block(nodes: list[Node], blocks: Blocks, index: int) -> list[Node]:
    first = blocks.start + index * blocks.length
    return nodes[first:first + blocks.length]


def _chained(nodes: list[Node], blocks: Blocks) -> bool:
    first = _external_inputs(_block(nodes, blocks, 0))
    if len(first) != 1:
        return False
    for index in range(1, blocks.count):
        external = _external_inputs(_block(nodes, blocks, index))
        previous = {id(v) for n in _block(nodes, blocks, index - 1) for v in n.outputs}
        if len(external) != 1 or id(external[0]) not in previous:
            return False
        if external[0].type != first[0].type:  # a copy must accept what the first reads
            return False
    return True


def drop_blocks(graph: Graph, keep: int) -> tuple[Graph, dict[str, int]]:
    """A copy of ``graph`` keeping the last ``keep`` copies of its repeated block."""
    work = graph.clone()
    blocks = find_blocks(work)
    if blocks is None:
        raise IrkitError("distill: depth found no repeated block of layers in this graph; "
                         "give a student = \"pkg.mod:factory\" torch module instead")
    if not 1 <= keep < blocks.count:
        raise IrkitError(f"distill: depth = {keep}, but the graph repeats its block "
                         f"{blocks.count} times (depth must be 1 to {blocks.count - 1})")
    nodes = list(work.nodes)
    first_input = _external_inputs(_block(nodes, blocks, 0))[0]
    dropped = [n for i in range(blocks.count - keep) for n in _block(nodes, blocks, i)]
    kept_input = _external_inputs(_block(nodes, blocks, blocks.count - keep))[0]
    kept_input.replace_all_uses_with(first_input)
    for node in reversed(dropped):
        work.remove_node(node)
    drop_unused_constants(work)
    return work, {"blocks": blocks.count, "kept": keep, "nodes_per_block": blocks.length}
