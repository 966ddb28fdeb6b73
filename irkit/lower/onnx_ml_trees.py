"""``TreeEnsembleRegressor`` / ``TreeEnsembleClassifier`` (ai.onnx.ml, opset 1 and 3)
rewritten into standard ops, two ways:

- **gemm** (Hummingbird's GEMM strategy) for shallow trees: every split's feature is
  gathered and compared at once, ``[T, L, M] @ decisions[T, M, N]`` counts, per tree and
  leaf, the splits on the leaf's path that went its way, the leaf whose count equals its
  number of true-branches is the one reached, and a second GEMM sums the reached leaves'
  weights.
- **walk** for deeper trees: nodes are laid out so each split's two children are
  neighbours; one step per tree level gathers every tree's current feature and threshold
  for every row (``GatherElements``), compares, and moves to ``child + (not taken)``.
  Leaves loop to themselves through a sentinel feature column that is always 0.

``walk`` is the default: measured against ORT's TreeEnsemble (1 thread, batch 1 and 1000,
100-tree ensembles of depth 1 to 17) it was as fast as ``gemm`` on stumps and faster on
everything deeper (gemm's work grows with 2^depth per tree, the walk's with depth); the
pass option ``legalize-onnx-ml{trees=gemm}`` picks gemm for sum-aggregated ensembles. Every
mode (BRANCH_LEQ/LT/GTE/GT/EQ/NEQ) is first put in one of three canonical forms
(``x <= t``, ``x < t``, ``x == t``) by swapping the children where needed, and
``nodes_missing_value_tracks_true`` becomes a per-split "NaN takes the first child" flag,
so a split is ``cmp(x, t) or (isnan(x) and flag)`` — ORT's rule, NaN compared by IEEE.

The aggregation follows ORT's kernels (checked against ORT 1.32), including what the spec
leaves open: which classes "have a score" (a class no reached leaf votes for is left out of
the argmax and written as 0), the binary cases (one voted class; ``base_values`` of size
0, 1 or 2), and the labels ORT writes there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.ir import DType, Graph, Node, Value
from irkit.lower.onnx_ml import (
    MLBuilder,
    Refused,
    class_labels,
    floats,
    post_transform,
    take_labels,
)

TREE_LOWERINGS = ("walk", "gemm")
MAX_EXPANDED_NODES = 1 << 20
UNBALANCED_RATIO = 3.0  # deepest path / expected path length that gets a compile note
GEMM_MAX_ELEMENTS = 1 << 24  # path-matrix entries (T x leaves x splits) gemm may use  # a DAG of shared subtrees is expanded up to this many nodes
LEQ, LT, EQ = 0, 1, 2
# mode -> (canonical comparison, children swapped, NaN takes the canonical first child
# when missing_value_tracks_true is (False, True))
_CANONICAL: dict[str, tuple[int, bool, tuple[bool, bool]]] = {
    "BRANCH_LEQ": (LEQ, False, (False, True)),
    "BRANCH_LT": (LT, False, (False, True)),
    "BRANCH_GTE": (LT, True, (True, False)),
    "BRANCH_GT": (LEQ, True, (True, False)),
    "BRANCH_EQ": (EQ, False, (False, True)),
    "BRANCH_NEQ": (EQ, True, (False, False)),  # NaN != t holds: the original true child
}
_COMPARE = {LEQ: "LessOrEqual", LT: "Less", EQ: "Equal"}


def _sum(ws: list[float]) -> float:
    return float(sum(ws))


_COMBINE: dict[str, Callable[[list[float]], float]] = {"sum": _sum, "min": min, "max": max}

Has = Value | bool  # whether a class has a vote: known now, or per row ([N, 1] bool)


@dataclass
class Split:
    feature: int
    threshold: float
    compare: int
    nan_first: bool
    first: int  # canonical "taken" child (node index)
    second: int


@dataclass
class Ensemble:
    """The trees in canonical form; nodes indexed by position in the node attributes."""

    roots: list[int]
    splits: dict[int, Split]
    leaves: dict[int, dict[int, list[float]]] = field(default_factory=dict)  # node->k->ws
    n_targets: int = 1
    depth: int = 0

    def leaf_table(self, reduce: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Leaf node indices, their per-target weight ``[L, K]`` (entries combined by
        ``reduce``; missing: 0 for sums, ±inf for min/max) and ``[L, K]`` has-entry."""
        order = sorted(self.leaves)
        missing = {"sum": 0.0, "min": np.inf, "max": -np.inf}[reduce]
        weights = np.full((len(order), self.n_targets), missing, np.float32)
        has = np.zeros((len(order), self.n_targets), bool)
        combine: Callable[[list[float]], float] = _COMBINE[reduce]
        for row, leaf in enumerate(order):
            for k, ws in self.leaves[leaf].items():
                weights[row, k] = np.float32(combine(ws))
                has[row, k] = True
        return order, weights, has


def rewrite_tree_ensemble(b: MLBuilder, node: Node, kind: str) -> list[Value]:
    if kind == "regressor":
        return _regressor(b, node)
    if kind == "classifier":
        return _classifier(b, node)
    raise Refused(f"{kind} trees")


def tree_notes(graph: Graph) -> list[dict[str, Any]]:
    """Compile-report notes for tree ensembles the walk may run slower than ORT: the walk
    takes every tree's deepest path for every row, ORT stops at each row's leaf. Flagged
    when the deepest path is :data:`UNBALANCED_RATIO` times the expected length of a path
    that takes either child with probability 1/2 (measured: 100 one-sided trees of depth
    10 and 30, ratio 5 and 15, ran 2.3x and 5x slower than ORT at batch 1000; forests of
    ratio 1.1-2.6 ran 1.2-4.3x faster)."""
    notes: list[dict[str, Any]] = []
    for node in graph.nodes:
        if node.domain != "ai.onnx.ml" or node.op not in ("TreeEnsembleRegressor",
                                                           "TreeEnsembleClassifier"):
            continue
        classifier = node.op == "TreeEnsembleClassifier"
        try:
            ens = parse(node, "class" if classifier else "target",
                        len(class_labels(node)) if classifier else int(node.attr("n_targets", 1)))
        except Refused:
            continue
        expected = float(np.mean([_expected_depth(ens, r) for r in ens.roots]))
        if ens.depth >= UNBALANCED_RATIO * max(expected, 1.0):
            notes.append({"note": (
                f"{node.describe()}: {len(ens.roots)} trees, deepest path {ens.depth} splits, "
                f"a random path {expected:.1f}: irkit walks every tree {ens.depth} steps for "
                "every row while ONNX Runtime stops at each row's leaf, so on trees this "
                "unbalanced ORT can be faster (2.3-5x measured on one-sided trees): compare "
                "with `irkit bench`, or compile with --target ort")})
    return notes


def _expected_depth(ens: Ensemble, root: int) -> float:
    total, stack = 0.0, [(root, 0)]
    while stack:
        i, depth = stack.pop()
        s = ens.splits.get(i)
        if s is None:
            total += depth * 2.0 ** -depth
        else:
            stack.extend([(s.first, depth + 1), (s.second, depth + 1)])
    return total


# -- parsing ------------------------------------------------------------------------------
def parse(node: Node, prefix: str, n_targets: int) -> Ensemble:
    tree_ids = [int(v) for v in node.attr("nodes_treeids") or ()]
    node_ids = [int(v) for v in node.attr("nodes_nodeids") or ()]
    features = [int(v) for v in node.attr("nodes_featureids") or ()]
    modes = [str(v) for v in node.attr("nodes_modes") or ()]
    values = floats(node, "nodes_values")
    true_ids = [int(v) for v in node.attr("nodes_truenodeids") or ()]
    false_ids = [int(v) for v in node.attr("nodes_falsenodeids") or ()]
    tracks = [bool(v) for v in node.attr("nodes_missing_value_tracks_true") or ()]
    count = len(tree_ids)
    if not count or any(len(a) != count for a in (node_ids, features, modes, true_ids,
                                                  false_ids)):
        raise Refused("node attributes of different lengths")
    values = values or [0.0] * count
    tracks = tracks or [False] * count
    doubles = node.attr("nodes_values_as_tensor") is not None
    index = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
    splits: dict[int, Split] = {}
    for i, mode in enumerate(modes):
        if mode == "LEAF":
            continue
        if mode not in _CANONICAL:
            raise Refused(f"node mode {mode!r}")
        compare, swap, nan_first = _CANONICAL[mode]
        try:
            true_i, false_i = index[tree_ids[i], true_ids[i]], index[tree_ids[i], false_ids[i]]
        except KeyError as exc:
            raise Refused(f"child {exc} of tree {tree_ids[i]} missing") from None
        first, second = (false_i, true_i) if swap else (true_i, false_i)
        threshold = _threshold(values[i], doubles)
        splits[i] = Split(features[i], threshold, compare, nan_first[tracks[i]], first, second)
    children = {c for s in splits.values() for c in (s.first, s.second)}
    roots: dict[int, int] = {}
    for i, t in enumerate(tree_ids):
        if i not in children and t not in roots:
            roots[t] = i
    if len(roots) != len(set(tree_ids)):
        raise Refused("a tree has no root")
    ens = Ensemble([roots[t] for t in sorted(roots)], splits, n_targets=n_targets)
    for i in range(count):
        if i not in splits:
            ens.leaves[i] = {}
    weights = floats(node, f"{prefix}_weights")
    targets = [int(v) for v in node.attr(f"{prefix}_ids") or ()]
    w_trees = [int(v) for v in node.attr(f"{prefix}_treeids") or ()]
    w_nodes = [int(v) for v in node.attr(f"{prefix}_nodeids") or ()]
    if not len(weights) == len(targets) == len(w_trees) == len(w_nodes):
        raise Refused(f"{prefix}_* attributes of different lengths")
    for t, n, k, w in zip(w_trees, w_nodes, targets, weights):
        leaf = index.get((t, n))
        if leaf is None or leaf not in ens.leaves or not 0 <= k < n_targets:
            raise Refused(f"weight for tree {t} node {n} target {k} has no leaf")
        ens.leaves[leaf].setdefault(k, []).append(w)
    ens.depth = _depth(ens)
    return ens


def _threshold(value: float, doubles: bool) -> float:
    """The threshold as ORT holds it: float32 unless given as a double tensor."""
    return value if doubles else float(np.float32(value))


def _depth(ens: Ensemble) -> int:
    """Longest root-to-leaf path in splits (a cycle is refused)."""
    depth: dict[int, int] = {}
    for root in ens.roots:
        stack: list[tuple[int, bool]] = [(root, False)]
        on_path: set[int] = set()
        while stack:
            i, done = stack.pop()
            if done:
                on_path.discard(i)
                s = ens.splits[i]
                depth[i] = 1 + max(depth[s.first], depth[s.second])
                continue
            if i in depth:
                continue
            if i not in ens.splits:
                depth[i] = 0
                continue
            if i in on_path:
                raise Refused("a tree has a cycle")
            on_path.add(i)
            s = ens.splits[i]
            stack.extend([(i, True), (s.first, False), (s.second, False)])
    return max(depth[r] for r in ens.roots)


# -- evaluation ---------------------------------------------------------------------------
def _prepare_input(b: MLBuilder, node: Node) -> tuple[Value, np.dtype]:
    """The input as a float matrix in the dtype splits compare in: double for a double
    input or double thresholds (ORT compares in the wider type), else float32 (an integer
    input is converted as C++ converts it to float)."""
    x = node.inputs[0]
    assert x is not None
    if x.dtype == DType.FLOAT64 or node.attr("nodes_values_as_tensor") is not None:
        wide = x if x.dtype == DType.FLOAT64 else b.op("Cast", [x], to=11)
        return b.as_matrix(wide), np.dtype(np.float64)
    return b.as_matrix(b.as_float(x)), np.dtype(np.float32)


def evaluate(b: MLBuilder, ens: Ensemble, x: Value, dtype: np.dtype, reduce: str,
             columns: np.ndarray) -> Value:
    """Per row, the leaf columns ``columns[leaf]`` (``[L, K']``) of the reached leaves
    combined over the trees by ``reduce``: ``[N, K']`` float32."""
    if ens.depth == 0:
        raise Refused("every tree is a single leaf")
    if b.trees == "gemm" and reduce == "sum" and _gemm_elements(ens) <= GEMM_MAX_ELEMENTS:
        # (min/max need each tree's own value, and deep trees' path matrices explode: walk)
        return _gemm(b, ens, x, dtype, columns)
    return _walk(b, ens, x, dtype, reduce, columns)


def _gemm_elements(ens: Ensemble) -> int:
    """Entries of gemm's ``[T, L, M]`` path matrix (trees padded to the largest)."""
    sizes = [(len(_leaves_of(ens, r)), _split_count(ens, r)) for r in ens.roots]
    return len(sizes) * max(n for n, _ in sizes) * max(1, max(m for _, m in sizes))


def _split_count(ens: Ensemble, root: int) -> int:
    count, stack = 0, [root]
    while stack:
        s = ens.splits.get(stack.pop())
        if s is not None:
            count += 1
            stack.extend([s.first, s.second])
    return count


def _compare(b: MLBuilder, xv: Value, thr: Value, codes: Sequence[int], kinds: Value | None
             ) -> Value:
    """``cmp(xv, thr)`` for one canonical comparison, or picked per split by ``kinds``."""
    used = sorted(set(codes))
    if len(used) == 1:
        return b.op(_COMPARE[used[0]], [xv, thr])
    assert kinds is not None
    result = b.op(_COMPARE[used[0]], [xv, thr])
    for code in used[1:]:
        pick = b.op("Equal", [kinds, b.const(np.int64(code))])
        result = b.op("Where", [pick, b.op(_COMPARE[code], [xv, thr]), result])
    return result


def _with_nan(b: MLBuilder, cond: Value, xv: Value, nan_first: Value | None) -> Value:
    if nan_first is None:
        return cond
    return b.op("Or", [cond, b.op("And", [b.op("IsNaN", [xv]), nan_first])])


def _gemm(b: MLBuilder, ens: Ensemble, x: Value, dtype: np.dtype, columns: np.ndarray
          ) -> Value:
    trees = [_tree_paths(ens, r) for r in ens.roots]
    n_trees = len(trees)
    m = max(1, max(len(splits) for splits, _ in trees))
    n_leaves = max(len(paths) for _, paths in trees)
    feat = np.zeros((n_trees, m), np.int64)
    thr = np.zeros((n_trees, m), dtype)
    code = np.zeros((n_trees, m), np.int64)
    nan_first = np.zeros((n_trees, m), bool)
    paths = np.zeros((n_trees, n_leaves, m), np.float32)
    wanted = np.full((n_trees, n_leaves, 1), -1.0, np.float32)  # padding never matches
    leaf_rows = np.full((n_trees, n_leaves), -1, np.int64)
    leaf_order, _, _ = ens.leaf_table("sum")
    row_of = {leaf: r for r, leaf in enumerate(leaf_order)}
    for t, (splits, leaf_paths) in enumerate(trees):
        for j, i in enumerate(splits):
            s = ens.splits[i]
            feat[t, j], thr[t, j], code[t, j], nan_first[t, j] = (
                s.feature, s.threshold, s.compare, s.nan_first)
        for l_idx, (leaf, steps) in enumerate(leaf_paths):
            for j, taken in steps:
                paths[t, l_idx, j] = 1.0 if taken else -1.0
            wanted[t, l_idx, 0] = sum(1 for _, taken in steps if taken)
            leaf_rows[t, l_idx] = row_of[leaf]
    table = np.zeros((n_trees * n_leaves, columns.shape[1]), np.float32)
    flat_rows = leaf_rows.reshape(-1)
    table[flat_rows >= 0] = columns[flat_rows[flat_rows >= 0]]
    xt = b.op("Transpose", [x], perm=[1, 0])  # [F, N]
    xv = b.op("Gather", [xt, b.const(feat, "tree_features")], axis=0)  # [T, M, N]
    thr_v = b.const(thr.reshape(n_trees, m, 1), "tree_thresholds")
    kinds = (b.const(code.reshape(n_trees, m, 1), "tree_compare")
             if len(set(code.reshape(-1).tolist())) > 1 else None)
    cond = _compare(b, xv, thr_v, code.reshape(-1).tolist(), kinds)
    flags = b.const(nan_first.reshape(n_trees, m, 1), "tree_nan") if nan_first.any() else None
    cond = _with_nan(b, cond, xv, flags)
    decisions = b.op("Cast", [cond], to=1)
    counts = b.op("MatMul", [b.const(paths, "tree_paths"), decisions])  # [T, L, N]
    reached = b.op("Cast", [b.op("Equal", [counts, b.const(wanted, "tree_wanted")])], to=1)
    reached = b.op("Reshape", [reached, b.ints([n_trees * n_leaves, -1])])
    summed = b.op("MatMul", [b.const(np.ascontiguousarray(table.T), "leaf_values"), reached])
    return b.op("Transpose", [summed], perm=[1, 0])


def _tree_paths(ens: Ensemble, root: int) -> tuple[list[int], list[tuple[int, list[tuple[int, bool]]]]]:
    """A tree's splits (in visiting order) and, per leaf, its path as (split position,
    took the first child)."""
    splits: list[int] = []
    position: dict[int, int] = {}
    leaves: list[tuple[int, list[tuple[int, bool]]]] = []
    stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
    while stack:
        i, path = stack.pop()
        if i not in ens.splits:
            leaves.append((i, path))
            continue
        if i in position:
            raise Refused("trees share subtrees")
        position[i] = len(splits)
        splits.append(i)
        s = ens.splits[i]
        stack.append((s.second, [*path, (position[i], False)]))
        stack.append((s.first, [*path, (position[i], True)]))
    return splits, leaves


def _walk(b: MLBuilder, ens: Ensemble, x: Value, dtype: np.dtype, reduce: str,
          columns: np.ndarray) -> Value:
    order, _, _ = ens.leaf_table("sum")
    row_of = {leaf: r for r, leaf in enumerate(order)}
    width = _width(x)
    if any(not 0 <= s.feature < width for s in ens.splits.values()):
        raise Refused(f"a split reads a feature outside the input's {width}")
    layout = _walk_layout(ens, row_of, width, dtype, columns)
    sentinel = b.op("Pad", [x, b.ints([0, 0, 0, 1])])  # column `width`: always 0
    codes = layout.code.tolist()
    mixed = len(set(codes)) > 1
    nan_any = bool(layout.nan_first.any())
    roots = np.array(layout.roots, np.int64)
    # step 0: every row starts at the roots (constants)
    xv = b.op("Gather", [sentinel, b.const(layout.feat[roots], "root_features")], axis=1)
    kinds0 = b.const(layout.code[roots], "root_compare") if mixed else None
    cond = _compare(b, xv, b.const(layout.thr[roots], "root_thresholds"), codes, kinds0)
    if nan_any:
        cond = _with_nan(b, cond, xv, b.const(layout.nan_first[roots], "root_nan"))
    current = b.op("Sub", [b.const(layout.child1[roots], "root_children"),
                           b.op("Cast", [cond], to=7)])
    feat_t = b.const(layout.feat, "tree_features")
    thr_t = b.const(layout.thr, "tree_thresholds")
    child_t = b.const(layout.child1, "tree_children")
    code_t = b.const(layout.code, "tree_compare") if mixed else None
    nan_t = b.const(layout.nan_first, "tree_nan") if nan_any else None
    for _ in range(ens.depth - 1):
        feature = b.op("Gather", [feat_t, current], axis=0)
        xv = b.op("GatherElements", [sentinel, feature], axis=1)
        thr = b.op("Gather", [thr_t, current], axis=0)
        kinds = b.op("Gather", [code_t, current], axis=0) if code_t is not None else None
        cond = _compare(b, xv, thr, codes, kinds)
        if nan_t is not None:
            cond = _with_nan(b, cond, xv, b.op("Gather", [nan_t, current], axis=0))
        current = b.op("Sub", [b.op("Gather", [child_t, current], axis=0),
                               b.op("Cast", [cond], to=7)])
    values = b.op("Gather", [b.const(layout.values, "leaf_values"), current], axis=0)
    op = {"sum": "ReduceSum", "min": "ReduceMin", "max": "ReduceMax"}[reduce]
    return b.reduce(op, values, 1, keepdims=0)  # [N, T, K] -> [N, K]


def _width(x: Value) -> int:
    shape = x.shape
    if shape is None or not isinstance(shape[-1], int):
        raise Refused("the feature count is not static")
    return shape[-1]


@dataclass
class _Layout:
    roots: list[int]
    feat: np.ndarray
    thr: np.ndarray
    code: np.ndarray
    nan_first: np.ndarray
    child1: np.ndarray  # first child + 1: the next node is child1 - taken
    values: np.ndarray  # [G, K'] leaf columns by node id (zeros for splits)


def _walk_layout(ens: Ensemble, row_of: dict[int, int], sentinel: int, dtype: np.dtype,
                 columns: np.ndarray) -> _Layout:
    """Node ids where each split's children are neighbours (shared subtrees copied)."""
    feat: list[int] = []
    thr: list[float] = []
    code: list[int] = []
    nan_first: list[bool] = []
    child1: list[int] = []
    source: list[int] = []

    def alloc(i: int) -> int:
        if len(source) >= MAX_EXPANDED_NODES:
            raise Refused(f"more than {MAX_EXPANDED_NODES} tree nodes after expansion")
        source.append(i)
        feat.append(0)
        thr.append(0.0)
        code.append(LEQ)
        nan_first.append(False)
        child1.append(0)
        return len(source) - 1

    roots = [alloc(r) for r in ens.roots]
    queue = list(roots)
    while queue:
        g = queue.pop()
        i = source[g]
        s = ens.splits.get(i)
        if s is None:  # a leaf: the sentinel column (0) always takes the first child
            feat[g], code[g], child1[g] = sentinel, LEQ, g + 1
            continue
        first = alloc(s.first)
        second = alloc(s.second)
        assert second == first + 1
        feat[g], thr[g], code[g], nan_first[g], child1[g] = (
            s.feature, s.threshold, s.compare, s.nan_first, first + 1)
        queue.extend([first, second])
    codes = {code[g] for g, i in enumerate(source) if i in ens.splits}
    for g, i in enumerate(source):  # leaves compare 0 like the splits do, and take it
        if i not in ens.splits:
            code[g] = min(codes) if codes else LEQ
            thr[g] = 1.0 if code[g] == LT else 0.0
    values = np.zeros((len(source), columns.shape[1]), np.float32)
    for g, i in enumerate(source):
        if i not in ens.splits:
            values[g] = columns[row_of[i]]
    return _Layout(roots, np.array(feat, np.int64), np.array(thr, dtype),
                   np.array(code, np.int64), np.array(nan_first, bool),
                   np.array(child1, np.int64), values)


# -- aggregation ----------------------------------------------------------------------------
def _votes(b: MLBuilder, ens: Ensemble, x: Value, dtype: np.dtype, reduce: str
           ) -> tuple[Value, list[Has]]:
    """Per row the combined leaf weights ``[N, K]`` and, per target, whether any reached
    leaf has a weight for it (known now when every tree agrees)."""
    order, weights, has = ens.leaf_table(reduce)
    row_of = {leaf: r for r, leaf in enumerate(order)}
    per_tree = [has[[row_of[leaf] for leaf in _leaves_of(ens, r)]] for r in ens.roots]
    static: list[bool | None] = []
    for k in range(ens.n_targets):
        if any(h[:, k].all() for h in per_tree):
            static.append(True)
        elif not any(h[:, k].any() for h in per_tree):
            static.append(False)
        else:
            static.append(None)
    dynamic = [k for k, s in enumerate(static) if s is None]
    columns = weights
    if dynamic and reduce == "sum":
        columns = np.concatenate([weights, has[:, dynamic].astype(np.float32)], axis=1)
    out = evaluate(b, ens, x, dtype, reduce, columns)
    result: list[Has] = []
    k_all = ens.n_targets
    if dynamic and reduce == "sum":
        counts = b.op("Slice", [out, b.ints([k_all]), b.ints([k_all + len(dynamic)]),
                                b.ints([1])])
        out = b.op("Slice", [out, b.ints([0]), b.ints([k_all]), b.ints([1])])
    for k, s in enumerate(static):
        if s is not None:
            result.append(s)
        elif reduce == "sum":
            j = dynamic.index(k)
            count = b.op("Slice", [counts, b.ints([j]), b.ints([j + 1]), b.ints([1])])
            result.append(b.op("Greater", [count, b.const(np.float32(0.0))]))
        else:
            col = b.op("Slice", [out, b.ints([k]), b.ints([k + 1]), b.ints([1])])
            result.append(b.op("Not", [b.op("IsInf", [col])]))
    return out, result


def _leaves_of(ens: Ensemble, root: int) -> list[int]:
    leaves, stack = [], [root]
    while stack:
        i = stack.pop()
        s = ens.splits.get(i)
        if s is None:
            leaves.append(i)
        else:
            stack.extend([s.first, s.second])
    return leaves


def _column(b: MLBuilder, v: Value, k: int) -> Value:
    return b.op("Slice", [v, b.ints([k]), b.ints([k + 1]), b.ints([1])])


def _pick(b: MLBuilder, has: Has, v: Value, other: float) -> Value:
    """``v`` where the class has a vote, else ``other``."""
    if has is True:
        return v
    cond = b.const(np.bool_(False)) if has is False else has
    return b.op("Where", [cond, v, b.const(np.float32(other))])


def _mask(b: MLBuilder, has: Has, v: Value) -> Value:
    """``v`` where the class has a vote, else 0 (ORT writes a vote-less score as 0)."""
    return _pick(b, has, v, 0.0)


def _regressor(b: MLBuilder, node: Node) -> list[Value]:
    k = int(node.attr("n_targets", 1))
    aggregate = node.attr("aggregate_function", "SUM")
    reduce = {"SUM": "sum", "AVERAGE": "sum", "MIN": "min", "MAX": "max"}.get(aggregate)
    if reduce is None:
        raise Refused(f"aggregate_function {aggregate!r}")
    transform = node.attr("post_transform", "NONE")
    if transform == "PROBIT" or (k > 1 and transform != "NONE" and transform not in (
            "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO")):
        raise Refused(f"post_transform {transform!r}")
    x, dtype = _prepare_input(b, node)
    ens = parse(node, "target", k)
    out, has = _votes(b, ens, x, dtype, reduce)
    if aggregate == "AVERAGE":
        out = b.op("Div", [out, b.const(np.float32(len(ens.roots)))])
    base = floats(node, "base_values")
    if k == 1:  # ORT's one-target path: a min/max without any vote is the base alone
        if reduce != "sum":
            out = _mask(b, has[0], out)
        if len(base) == 1:
            out = b.op("Add", [out, b.const(np.array(base, np.float32), "base_values")])
        return [out]  # and every transform but PROBIT is ignored there
    if len(base) == k:
        out = b.op("Add", [out, b.const(np.array(base, np.float32), "base_values")])
    if not all(h is True for h in has):  # a target no reached leaf votes for is written 0
        out = b.op("Concat", [_mask(b, h, _column(b, out, j)) for j, h in enumerate(has)],
                   axis=1)
    return [post_transform(b, out, transform)]


def _classifier(b: MLBuilder, node: Node) -> list[Value]:
    labels = class_labels(node)
    transform = node.attr("post_transform", "NONE")
    if len(labels) < 2 or transform == "PROBIT":
        raise Refused("fewer than two int labels" if len(labels) < 2 else "PROBIT")
    x, dtype = _prepare_input(b, node)
    ens = parse(node, "class", len(labels))
    sums, has = _votes(b, ens, x, dtype, "sum")
    base = floats(node, "base_values")
    if len(labels) > 2:
        return _multiclass(b, labels, sums, has, base, transform)
    voted = {int(v) for v in node.attr("class_ids") or ()}
    weights = floats(node, "class_weights")
    return _binary(b, labels, sums, has, base, transform, binary_case=len(voted) == 1,
                   all_positive=all(w >= 0 for w in weights))


def _multiclass(b: MLBuilder, labels: list[int], sums: Value, has: list[Has],
                base: list[float], transform: str) -> list[Value]:
    n = len(labels)
    if len(base) > n:
        raise Refused(f"{len(base)} base_values for {n} classes")
    if base:
        padded = np.zeros(n, np.float32)
        padded[:len(base)] = base
        sums = b.op("Add", [sums, b.const(padded, "base_values")])
        has = [True if k < len(base) else h for k, h in enumerate(has)]
    ranked = sums
    if not all(h is True for h in has):
        ranked = b.op("Concat", [_pick(b, h, _column(b, sums, k), -np.inf)
                                 for k, h in enumerate(has)], axis=1)
    index = b.op("ArgMax", [ranked], axis=1, keepdims=0)
    return [take_labels(b, labels, index), post_transform(b, sums, transform)]


def _binary(b: MLBuilder, labels: list[int], sums: Value, has: list[Has], base: list[float],
            transform: str, *, binary_case: bool, all_positive: bool) -> list[Value]:
    """ORT's two-class rules (TreeAggregatorClassifier::FinalizeScores, write_scores)."""
    s0, s1 = _column(b, sums, 0), _column(b, sums, 1)
    h0, h1 = has
    f32 = np.float32
    additional = -1
    if len(base) == 2:
        moved = b.op("Add", [s0, b.const(f32(base[1]))])  # ORT: base[1] + score of class 0
        z1 = _mask(b, h1, moved)
        p0 = b.where(h1, b.op("Neg", [moved]), b.op("Add", [s0, b.const(f32(base[0]))]))
        z0 = _mask(b, h0, p0)
        pos = b.where(h1, moved, z0)
        keeps_two: Has = True
    elif len(base) <= 1:
        p0 = b.op("Add", [s0, b.const(f32(base[0]))]) if base else s0
        z0, z1 = _mask(b, h0, p0), s1
        pos = b.where(h1, s1, z0)
        keeps_two = h1
        additional = -1 if base else 3
    else:
        raise Refused(f"{len(base)} base_values for 2 classes")
    if binary_case:
        cut = 0.5 if all_positive else 0.0
        positive = b.op("Greater", [pos, b.const(f32(cut))])
        label = b.op("Where", [positive, b.const(np.int64(labels[1])),
                               b.const(np.int64(labels[0]))])
        additional = 0 if all_positive else 2
    else:
        positive = b.op("Greater", [pos, b.const(f32(0.0))])
        label = b.op("Cast", [positive], to=7)  # ORT writes 1 / 0 here, not the labels
    label = b.op("Squeeze", [label, b.ints([1])])  # [N, 1] -> [N], N kept
    two = post_transform(b, b.op("Concat", [z0, z1], axis=1), transform)
    if keeps_two is True:
        return [label, two]
    if additional == -1:
        raise Refused("ORT leaves the second score unwritten here")
    if additional == 0:  # [1 - p, p]: p the score, or its sigmoid for LOGISTIC
        p = b.op("Sigmoid", [z0]) if transform == "LOGISTIC" else z0
        one = b.op("Concat", [b.op("Sub", [b.const(f32(1.0)), p]), p], axis=1)
    elif transform == "LOGISTIC":
        one = b.op("Concat", [b.op("Sigmoid", [b.op("Neg", [z0])]), b.op("Sigmoid", [z0])],
                   axis=1)
    else:
        one = b.op("Concat", [b.op("Neg", [z0]), z0], axis=1)
    return [label, b.where(keeps_two, two, one)]
