"""ONNX-ML ops (ai.onnx.ml) compile natively: ``legalize-onnx-ml`` rewrites them into
standard ops, the llvm backend (x86-64-v3) compiles the result, and it matches ONNX
Runtime on the original node: labels exactly, scores to rtol 1e-5 / atol 1e-5 (tree sums
are added in another order than ORT's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.errors import UnsupportedOpsError  # noqa: E402
from irkit.lower import onnx_ml_trees  # noqa: E402

ML = "ai.onnx.ml"
FEATURES = 5


def ml_model(nodes: list[Any], doubles: bool = False) -> onnx.ModelProto:
    """ONNX-ML nodes reading ``x: f32[N, 5]`` (``m``: the same with NaNs, ``xd``: f64) and
    writing graph outputs named as the nodes name them (``*label``: int64)."""
    outputs = [helper.make_tensor_value_info(
        name, TensorProto.INT64 if name.endswith("label") else TensorProto.FLOAT, None)
        for node in nodes for name in node.output]
    graph_inputs = [helper.make_tensor_value_info(name, elem, ["N", FEATURES]) for name, elem
                    in (("x", TensorProto.FLOAT), ("m", TensorProto.FLOAT),
                        ("xd", TensorProto.DOUBLE))
                    if any(name in node.input for node in nodes)]
    graph = helper.make_graph(nodes, "ml", graph_inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ML, 3)])
    model.ir_version = 9
    return model


def _grow(rng: np.random.Generator, rows: list[list[Any]], leaves: list[tuple[int, int]],
          tree: int, level: int, depth: int, modes: list[str], tracks: float) -> int:
    """Append a random subtree's nodes to ``rows``; its root's position."""
    me = len(rows)
    rows.append([])
    if level == depth or (level > 0 and rng.random() < 0.25):
        rows[me] = [0, "LEAF", 0.0, 0, 0, 0]
        leaves.append((tree, me))
        return me
    feature = int(rng.integers(FEATURES))
    # thresholds on a 0.5 grid: inputs hit them exactly (LEQ vs LT, EQ, NEQ)
    threshold = float(rng.integers(-4, 5)) / 2
    mode = modes[int(rng.integers(len(modes)))]
    true_id = _grow(rng, rows, leaves, tree, level + 1, depth, modes, tracks)
    false_id = _grow(rng, rows, leaves, tree, level + 1, depth, modes, tracks)
    rows[me] = [feature, mode, threshold, true_id, false_id, int(rng.random() < tracks)]
    return me


def random_trees(rng: np.random.Generator, n_trees: int, depth: int, modes: list[str],
                 tracks: float = 0.0) -> tuple[dict[str, list[Any]], list[tuple[int, int]]]:
    """``nodes_*`` attributes of ``n_trees`` random (not perfect) trees of at most
    ``depth`` splits per path, and the leaves as (tree, node)."""
    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true")}
    leaves: list[tuple[int, int]] = []
    for t in range(n_trees):
        rows: list[list[Any]] = []
        _grow(rng, rows, leaves, t, 0, depth, modes, tracks)
        for i, (f, mode, v, tid, fid, mv) in enumerate(rows):
            for key, val in zip(attrs, (t, i, f, mode, v, tid, fid, mv)):
                attrs[key].append(val)
    return attrs, leaves


def regressor(rng: np.random.Generator, name: str, n_trees: int, depth: int, *,
              targets: int = 1, modes: tuple[str, ...] = ("BRANCH_LEQ",),
              aggregate: str = "SUM", base: list[float] | None = None, tracks: float = 0.0,
              as_tensor: bool = False, post: str = "NONE", partial: float = 0.2) -> Any:
    attrs, leaves = random_trees(rng, n_trees, depth, list(modes), tracks)
    w: dict[str, list[Any]] = {"target_treeids": [], "target_nodeids": [], "target_ids": [],
                               "target_weights": []}
    for t, n in leaves:
        for k in range(targets):
            if targets > 1 and rng.random() < partial:
                continue  # some leaves vote for only some targets
            for key, val in zip(w, (t, n, k, float(rng.normal()))):
                w[key].append(val)
    extra: dict[str, Any] = {"aggregate_function": aggregate, "n_targets": targets,
                             "post_transform": post}
    if base is not None:
        extra["base_values"] = base
    if as_tensor:  # ORT takes double thresholds with a double input only
        values = np.array(attrs.pop("nodes_values"), np.float64)
        extra["nodes_values_as_tensor"] = helper.make_tensor(
            "v", TensorProto.DOUBLE, [len(values)], values)
    return helper.make_node("TreeEnsembleRegressor", ["xd" if as_tensor else "m"], [name],
                            domain=ML, **attrs, **w, **extra)


def classifier(rng: np.random.Generator, name: str, n_trees: int, depth: int,
               labels: list[int], voted: list[int], *, base: list[float] | None = None,
               post: str = "NONE", positive: bool = False,
               modes: tuple[str, ...] = ("BRANCH_LEQ",), tracks: float = 0.0,
               partial: float = 0.0) -> Any:
    attrs, leaves = random_trees(rng, n_trees, depth, list(modes), tracks)
    w: dict[str, list[Any]] = {"class_treeids": [], "class_nodeids": [], "class_ids": [],
                               "class_weights": []}
    for t, n in leaves:
        for k in voted:
            if rng.random() < partial:
                continue
            weight = float(rng.random() if positive else rng.normal())
            for key, val in zip(w, (t, n, k, weight)):
                w[key].append(val)
    extra: dict[str, Any] = {"post_transform": post, "classlabels_int64s": labels}
    if base is not None:
        extra["base_values"] = base
    return helper.make_node("TreeEnsembleClassifier", ["m"], [f"{name}_label", name],
                            domain=ML, **attrs, **w, **extra)


def feeds(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """``x`` on the thresholds' 0.5 grid (some rows off it), ``m`` with NaNs, ``xd``."""
    x = (rng.integers(-5, 6, size=(rows, FEATURES)) / 2).astype(np.float32)
    x += (rng.random(x.shape) < 0.3) * rng.normal(0, 0.3, x.shape).astype(np.float32)
    x[0] = 0.0  # a zero row: Normalizer passes it through
    m = np.where(rng.random(x.shape) < 0.2, np.float32(np.nan), x)
    return {"x": x, "m": m, "xd": x.astype(np.float64)}


def check(model: onnx.ModelProto, arrays: dict[str, np.ndarray], tmp_path: Path) -> int:
    """Compile for llvm (x86-64-v3), run, compare every output with ORT's; how many."""
    graph = irkit.load_model(model)
    legal = irkit.optimize(graph, "legalize-onnx-ml")
    assert not any(n.domain == ML for n in legal.nodes)
    # every value's batch dim is the input's N (a dim of its own costs each call a lot)
    assert not [v for n in legal.nodes for v in n.outputs if "unk" in str(v.type)]
    art = irkit.compile(graph, target="llvm", arch="x86-64-v3").save(tmp_path / "ml")
    compiled = irkit.runtime.load(art, threads=1, reject_nonfinite=False)  # NaN: missing
    used = {i.name for i in model.graph.input}
    arrays = {k: v for k, v in arrays.items() if k in used}
    try:
        got = compiled(**arrays)
    finally:
        compiled.close()
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for out, want in zip(session.get_outputs(), session.run(None, arrays)):
        if want.dtype.kind in "iu":
            np.testing.assert_array_equal(got[out.name], want, err_msg=out.name)
        else:
            np.testing.assert_allclose(got[out.name], want, rtol=1e-5, atol=1e-5,
                                       err_msg=out.name)
    return len(session.get_outputs())


def _linear(op: str, name: str, rows: int, labels: list[int] | None = None,
            **attrs: Any) -> Any:
    rng = np.random.default_rng(rows)
    coef = rng.normal(size=rows * FEATURES).round(3).tolist()
    intercepts = rng.normal(size=rows).round(3).tolist()
    if labels is None:
        return helper.make_node(op, ["x"], [name], domain=ML, coefficients=coef,
                                intercepts=intercepts, targets=rows, **attrs)
    return helper.make_node(op, ["x"], [f"{name}_label", name], domain=ML,
                            coefficients=coef, intercepts=intercepts, classlabels_ints=labels,
                            **attrs)


def test_simple_ops_match_ort(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Scaler", ["x"], ["scaler"], domain=ML, offset=[0.5, -1, 0, 2, 1],
                         scale=[2, 0.5, 1, -1, 3]),
        *[helper.make_node("Normalizer", ["x"], [f"norm_{n}"], domain=ML, norm=n)
          for n in ("MAX", "L1", "L2")],
        helper.make_node("Binarizer", ["x"], ["binarizer"], domain=ML, threshold=0.5),
        helper.make_node("Imputer", ["m"], ["imputer"], domain=ML,
                         imputed_value_floats=[9.0, 8.0, 7.0, 6.0, 5.0],
                         replaced_value_float=float("nan")),
        _linear("LinearRegressor", "linreg", 3),
        _linear("LinearClassifier", "softmax", 3, [4, 5, 6], post_transform="SOFTMAX"),
        _linear("LinearClassifier", "softmax_zero", 3, [0, 1, 2],
                post_transform="SOFTMAX_ZERO"),
        # one coefficient row, two labels: ORT's binary case ([1 - p, p], score > 0)
        _linear("LinearClassifier", "binary_logistic", 1, [3, 7], post_transform="LOGISTIC"),
        _linear("LinearClassifier", "binary_none", 1, [3, 7]),
    ]
    assert check(ml_model(nodes), feeds(np.random.default_rng(0), 9), tmp_path) == 15


def test_array_feature_extractor_then_scaler(tmp_path: Path) -> None:
    """Two ML ops in a row (the second is typed only after the first is rewritten)."""
    take = helper.make_node("ArrayFeatureExtractor", ["x", "idx"], ["picked"], domain=ML)
    scale = helper.make_node("Scaler", ["picked"], ["y"], domain=ML, offset=[1.0],
                             scale=[0.5])
    model = ml_model([take, scale])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([4, 0, 2], np.int64),
                                                                "idx"))
    del model.graph.output[0]  # "picked" is internal
    assert check(model, feeds(np.random.default_rng(1), 4), tmp_path) == 1


ALL_MODES = tuple(onnx_ml_trees._CANONICAL)


def tree_nodes(rng: np.random.Generator) -> list[Any]:
    deep = 5
    return [
        # LEQ vs LT on inputs that sit on the thresholds, NaN inputs; shallow and deep
        regressor(rng, "reg_leq_shallow", 6, 3, base=[0.25]),
        regressor(rng, "reg_lt_deep", 5, deep + 1, modes=("BRANCH_LT",)),
        # every mode mixed, missing_value_tracks_true on half the splits
        regressor(rng, "reg_modes_deep", 4, deep, modes=ALL_MODES, tracks=0.5),
        regressor(rng, "reg_modes_shallow", 4, 2, modes=ALL_MODES, tracks=0.5),
        # 2 trees: some rows reach no vote for a target (ORT writes 0 there, not the base)
        regressor(rng, "reg_average", 2, 3, targets=3, aggregate="AVERAGE",
                  base=[1.0, 2.0, 3.0], post="SOFTMAX", partial=0.5),
        regressor(rng, "reg_max", 5, 4, targets=2, aggregate="MAX"),
        regressor(rng, "reg_min_double", 3, 5, aggregate="MIN",
                  modes=("BRANCH_LT", "BRANCH_GTE"), as_tensor=True),
        classifier(rng, "cls_softmax", 6, deep, [2, 4, 6, 8], [0, 1, 2, 3], post="SOFTMAX",
                   base=[0.1, 0.2, 0.3, 0.4]),
        # classes only some leaves vote for: out of the argmax in rows no vote reached
        classifier(rng, "cls_partial", 3, 3, [0, 1, 2], [0, 1, 2], partial=0.4),
        # binary, one voted class (GBM-style): label by score, scores [1-p, p] / [-s, s]
        classifier(rng, "bin_logistic", 5, 3, [3, 7], [0], base=[0.1], post="LOGISTIC"),
        classifier(rng, "bin_positive", 4, deep, [3, 7], [0], positive=True),
        classifier(rng, "bin_positive_partial", 2, 3, [3, 7], [0], positive=True,
                   post="LOGISTIC", partial=0.5),
        # binary with both classes voted (RF-style): ORT's labels are 1 / 0 here
        classifier(rng, "bin_both", 4, deep, [3, 7], [0, 1], positive=True,
                   modes=("BRANCH_LEQ", "BRANCH_GT"), tracks=0.5),
    ]


def test_tree_ensembles_match_ort(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    assert check(ml_model(tree_nodes(rng)), feeds(rng, 64), tmp_path) == 19


def test_gemm_tree_lowering_matches_ort(tmp_path: Path) -> None:
    """``legalize-onnx-ml{trees=gemm}``: decisions and leaf sums as GEMMs, same answers."""
    rng = np.random.default_rng(5)
    nodes = [regressor(rng, "reg_modes", 4, 3, modes=ALL_MODES, tracks=0.5),
             classifier(rng, "cls_partial", 3, 2, [0, 1, 2], [0, 1, 2], partial=0.4)]
    model = ml_model(nodes)
    gemm = irkit.optimize(irkit.load_model(model), "legalize-onnx-ml{trees=gemm}")
    assert "MatMul" in {n.op for n in gemm.nodes}
    assert "GatherElements" not in {n.op for n in gemm.nodes}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    arrays = feeds(rng, 32)
    want = session.run(None, {"m": arrays["m"]})
    compiled = irkit.runtime.load(irkit.compile(gemm, target="llvm", arch="x86-64-v3").save(
        tmp_path / "gemm"), threads=1, reject_nonfinite=False)
    got = compiled(m=arrays["m"])
    compiled.close()
    for out, expected in zip(session.get_outputs(), want):
        np.testing.assert_allclose(got[out.name], expected, rtol=1e-5, atol=1e-5,
                                   err_msg=out.name)


def test_string_labels_name_the_node_and_the_fix() -> None:
    strings = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain=ML,
                               coefficients=[1.0] * (2 * FEATURES), intercepts=[0.0, 1.0],
                               classlabels_strings=["cat", "dog"])
    model = ml_model([strings])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.STRING
    with pytest.raises(UnsupportedOpsError, match=r"classlabels_strings.*LabelEncoder"):
        irkit.compile(irkit.load_model(model), target="llvm")


def test_unbalanced_trees_get_a_compile_note() -> None:
    """One-sided trees (deepest path 9, a random path 2 on average) ran slower than ORT:
    the compile report says so; balanced random trees get no note."""
    ids = list(range(19))  # split 2i: true -> leaf 2i+1, false -> node 2i+2; last: leaf
    chain = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["chain"], domain=ML, n_targets=1,
        nodes_treeids=[0] * 19, nodes_nodeids=ids, nodes_featureids=[0] * 19,
        nodes_modes=["BRANCH_LEQ" if i % 2 == 0 and i < 18 else "LEAF" for i in ids],
        nodes_values=[0.0] * 19,
        nodes_truenodeids=[i + 1 if i % 2 == 0 and i < 18 else 0 for i in ids],
        nodes_falsenodeids=[i + 2 if i % 2 == 0 and i < 18 else 0 for i in ids],
        target_treeids=[0] * 10, target_nodeids=[*range(1, 19, 2), 18], target_ids=[0] * 10,
        target_weights=[float(i) for i in range(10)])
    balanced = regressor(np.random.default_rng(2), "balanced", 4, 6)
    notes = onnx_ml_trees.tree_notes(irkit.load_model(ml_model([chain, balanced])))
    assert len(notes) == 1
    assert "deepest path 9 splits" in notes[0]["note"] and "--target ort" in notes[0]["note"]
