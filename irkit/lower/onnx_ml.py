"""ONNX-ML ops (``ai.onnx.ml``: scikit-learn, XGBoost and LightGBM exports) rewritten into
standard ONNX ops the kernel lowering handles, so every kernel backend compiles them.

ONNX Runtime is the reference wherever the spec is vague; each rewrite follows what ORT's
CPU kernels compute (checked against ORT 1.32):

- ``Scaler``: ``(float(x) - offset) * scale``.
- ``Normalizer`` MAX / L1 / L2 per row; a row whose norm is 0 is passed through.
- ``LinearRegressor`` (post_transform NONE) and ``LinearClassifier`` (NONE, LOGISTIC,
  SOFTMAX, SOFTMAX_ZERO; int labels). One coefficient row with two labels is ORT's binary
  case: label ``labels[1]`` when the score is > 0, scores ``[1 - s, s]`` (LOGISTIC:
  ``[1 - p, p]`` with ``p = sigmoid(s)``).
- ``Binarizer`` (``x > threshold``; a NaN gives 0 where ORT raises), ``Imputer`` (float),
  ``ArrayFeatureExtractor``.
- ``TreeEnsembleRegressor`` / ``TreeEnsembleClassifier``: :mod:`.onnx_ml_trees`.

String class labels and ``ZipMap`` (a sequence of maps) cannot be carried by an artifact:
a used output of that kind raises :class:`~irkit.errors.UnsupportedOpsError` naming the
node and the fix. Any other node that cannot be rewritten exactly (PROBIT transforms, SVM
ops, …) stays as it is, so the lowering names it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from irkit.errors import UnsupportedOpsError
from irkit.ir import DEFAULT_OPSET, DType, Graph, Node, TensorType, Value

_log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
MAX_ROUNDS = 8
MIN_OPSET = 13  # Squeeze/Unsqueeze/Slice/Pad/ReduceSum take their sizes as inputs
SOFTMAX_ZERO_EPS = 1e-7  # ORT's SOFTMAX_ZERO leaves |v| <= this out of the sum


class Refused(Exception):
    """The node cannot be rewritten exactly; it stays for the lowering to name."""


class MLBuilder:
    """Emits standard ops in front of ``anchor`` (the node being replaced)."""

    def __init__(self, graph: Graph, anchor: Node, trees: str = "walk") -> None:
        self.graph = graph
        self.anchor = anchor
        self.trees = trees  # how tree ensembles are lowered: "walk" or "gemm"
        self.opset = graph.opset_imports.get("", DEFAULT_OPSET)
        if self.opset < MIN_OPSET:
            raise Refused(f"default-domain opset {self.opset}; {MIN_OPSET} or newer needed")

    def reduce(self, op: str, x: Value, axis: int, keepdims: int = 1) -> Value:
        """``op`` (ReduceSum, ReduceMax, …) over one axis, in the graph opset's form (axes
        an input from opset 18 on, ReduceSum's from 13)."""
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            return self.op(op, [x, self.ints([axis])], keepdims=keepdims)
        return self.op(op, [x], axes=[axis], keepdims=keepdims)

    def op(self, op: str, inputs: Sequence[Value | None], **attrs: Any) -> Value:
        return self.graph.add_node(op, inputs, attrs or None, before=self.anchor).output

    def const(self, array: Any, name: str = "ml") -> Value:
        return self.graph.add_constant(name, np.asarray(array))

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(np.array(values, np.int64), "shape")

    def as_float(self, x: Value) -> Value:
        """``x`` as float32 (ORT casts every ML input to float first)."""
        return x if x.dtype == DType.FLOAT32 else self.op("Cast", [x], to=1)

    def as_matrix(self, x: Value) -> Value:
        """A 1-D input as one row ``[1, C]`` (ORT's reading of a vector input)."""
        shape = x.shape
        if shape is not None and len(shape) == 1:
            return self.op("Unsqueeze", [x, self.ints([0])])
        if shape is None or len(shape) != 2:
            raise Refused(f"input of rank {None if shape is None else len(shape)}; 2 expected")
        return x

    def where(self, cond: Value | bool, a: Value, b: Value) -> Value:
        if cond is True:
            return a
        if cond is False:
            return b
        return self.op("Where", [cond, a, b])


def legalize_onnx_ml(graph: Graph, lowers: Callable[[str, str], bool], trees: str = "walk"
                     ) -> Graph:
    """``graph`` itself when it holds no ONNX-ML node to rewrite, else a re-typed copy with
    every ``ai.onnx.ml`` node the lowering lacks replaced by standard ops (tree ensembles
    by ``trees``: "walk" or "gemm", see :mod:`.onnx_ml_trees`)."""
    if not any(n.domain == ML_DOMAIN and not lowers(n.op, n.domain) for n in graph.nodes):
        return graph
    _refuse_unrepresentable(graph)
    current = name_unknown_input_dims(graph)  # else outputs get dims of their own (unk__0)
    if "" not in current.opset_imports and "ai.onnx" not in current.opset_imports:
        current = current.clone()  # an ML-only model: the rewrite brings standard ops
        current.opset_imports[""] = DEFAULT_OPSET
    from onnx.shape_inference import InferenceError

    from irkit.errors import IrkitError

    for _ in range(MAX_ROUNDS):  # a rewrite may need the types of an earlier one's output
        work = current.clone()
        if not _rewrite_round(work, lowers, trees):
            break
        try:
            current = _retype(work)
        except (IrkitError, InferenceError, ValueError, RuntimeError) as exc:
            # ONNX could not type the rewrite: the ops stay and the lowering names them
            _log.debug("re-typing the rewritten %r failed: %s", graph.name, exc)
            break
    return current if current is not graph and _changed(graph, current) else graph


def _changed(graph: Graph, current: Graph) -> bool:
    return sum(n.domain == ML_DOMAIN for n in current.nodes) < sum(
        n.domain == ML_DOMAIN for n in graph.nodes)


def _rewrite_round(work: Graph, lowers: Callable[[str, str], bool], trees: str) -> bool:
    from irkit.passes.base import drop_unused_constants, remove_dead_nodes, replace_outputs

    changed = False
    for node in list(work.nodes):
        rewrite = REWRITES.get(node.op)
        if node.domain != ML_DOMAIN or rewrite is None or lowers(node.op, node.domain):
            continue
        try:
            outs = rewrite(MLBuilder(work, node, trees), node)
        except Refused as exc:
            _log.debug("%s stays: %s", node.describe(), exc)
            continue
        replace_outputs(work, node, outs)
        changed = True
    if changed:
        while remove_dead_nodes(work):
            pass
        drop_unused_constants(work)
    return changed


def name_unknown_input_dims(graph: Graph) -> Graph:
    """``graph`` itself when every input dim is a number or a name, else a re-typed copy
    where each unnamed dim (skl2onnx writes the batch dim so) gets a name: ``N`` for the
    first axis, ``N_<input>_<axis>`` for others, so kernel backends can lower it."""
    unnamed = [(v, i) for v in graph.inputs if isinstance(v.type, TensorType)
               and v.type.shape is not None for i, d in enumerate(v.type.shape) if d is None]
    if not unnamed:
        return graph
    work = graph.clone()
    for value in work.inputs:
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None or None not in t.shape:
            continue
        shape = tuple(("N" if i == 0 else f"N_{value.name}_{i}") if d is None else d
                      for i, d in enumerate(t.shape))
        value.type = TensorType(t.dtype, shape)
    from onnx.shape_inference import InferenceError

    from irkit.errors import IrkitError

    try:
        return _retype(work)
    except (IrkitError, InferenceError, ValueError, RuntimeError) as exc:
        _log.debug("naming the unnamed input dims of %r failed: %s", graph.name, exc)
        return graph  # the lowering names the unknown dims


def adopt_output_types(graph: Graph, typed: Graph) -> Graph:
    """``graph`` itself when its outputs' shapes are fully known, else a copy whose outputs
    of unknown rank or with unnamed dims take their types from the same-named outputs of
    ``typed`` (the legalized graph: ONNX gives most ONNX-ML outputs no shape until they
    are rewritten, and skl2onnx leaves the batch dim unnamed)."""
    named = {d for v in typed.inputs if isinstance(v.type, TensorType)
             for d in v.type.shape or () if isinstance(d, str)}
    # only types whose dims are numbers or the inputs' names (never inference's unk__N)
    types = {v.name: v.type for v in typed.outputs if isinstance(v.type, TensorType)
             and v.type.shape is not None
             and all(isinstance(d, int) or d in named for d in v.type.shape)}

    def wants(value: Value) -> bool:
        t, new = value.type, types.get(value.name)
        if new is None or not isinstance(new, TensorType):
            return False
        if not isinstance(t, TensorType) or t.shape is None:
            return True
        return (None in t.shape and new.shape is not None and len(new.shape) == len(t.shape)
                and new.dtype == t.dtype)

    if not any(wants(v) for v in graph.outputs):
        return graph
    work = graph.clone()
    for value in work.outputs:
        if wants(value):
            value.type = types[value.name]
    return work


def _refuse_unrepresentable(graph: Graph) -> None:
    """String labels and ZipMap maps in a used output: no artifact can carry them."""
    for node in graph.nodes:
        if node.domain != ML_DOMAIN:
            continue
        if node.op == "ZipMap" and node.output.is_used:
            raise UnsupportedOpsError(
                f"{node.describe()} turns class scores into a sequence of maps, which irkit "
                "artifacts cannot carry (numeric tensors only): convert with skl2onnx's "
                "options={'zipmap': False} to get the probabilities as a tensor",
                [{"op": "ai.onnx.ml.ZipMap", "node": node.name}])
        if node.attr("classlabels_strings") and node.outputs[0].is_used:
            raise UnsupportedOpsError(
                f"{node.describe()} has string class labels (classlabels_strings), which "
                "irkit artifacts cannot carry (numeric tensors only): fit the model on "
                "integer labels (e.g. sklearn.preprocessing.LabelEncoder) so the export uses "
                "int64 labels, and map them back to names outside the model",
                [{"op": f"ai.onnx.ml.{node.op}", "node": node.name}])


def _retype(graph: Graph) -> Graph:
    """The graph exported, typed by ONNX shape inference and imported again."""
    import onnx.shape_inference

    from irkit.interop.onnx_export import to_onnx
    from irkit.interop.onnx_import import load_onnx

    model = to_onnx(graph, check=False)
    # Values of standard ops are typed afresh: a kept type would keep an unnamed or
    # inference-made dim (unk__3) where the input's dim is now named.
    standard = {out for node in model.graph.node if node.domain in ("", "ai.onnx", ML_DOMAIN)
                for out in node.output}
    kept = [vi for vi in model.graph.value_info if vi.name not in standard]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    typed = load_onnx(model, infer_shapes=False)
    typed.name = graph.name
    typed.history = list(graph.history)
    return typed


# -- shared pieces ------------------------------------------------------------------------
def floats(node: Node, name: str) -> list[float]:
    """A float list attribute, or its ``*_as_tensor`` form (as float64 values)."""
    tensor = node.attr(f"{name}_as_tensor")
    if tensor is not None:
        return [float(v) for v in np.asarray(tensor).reshape(-1)]
    return [float(v) for v in node.attr(name) or ()]


def class_labels(node: Node) -> list[int]:
    return [int(v) for v in node.attr("classlabels_ints") or node.attr("classlabels_int64s")
            or ()]


def post_transform(b: MLBuilder, scores: Value, transform: str) -> Value:
    """ORT's post transforms over the last axis of ``scores`` (float32)."""
    if transform == "NONE":
        return scores
    if transform == "LOGISTIC":
        return b.op("Sigmoid", [scores])
    if transform == "SOFTMAX":
        return b.op("Softmax", [scores], axis=-1)
    if transform == "SOFTMAX_ZERO":
        # exp(v - max) over the values with |v| > eps; the others become v * exp(-max)
        # and stay out of the sum (ORT's ComputeSoftmaxZero).
        top = b.reduce("ReduceMax", scores, -1)
        big = b.op("Greater", [b.op("Abs", [scores]), b.const(np.float32(SOFTMAX_ZERO_EPS))])
        exp = b.op("Exp", [b.op("Sub", [scores, top])])
        small = b.op("Mul", [scores, b.op("Exp", [b.op("Neg", [top])])])
        zero = b.const(np.float32(0.0))
        total = b.reduce("ReduceSum", b.op("Where", [big, exp, zero]), -1)
        return b.op("Div", [b.op("Where", [big, exp, small]), total])
    raise Refused(f"post_transform {transform!r}")


def take_labels(b: MLBuilder, labels: Sequence[int], index: Value) -> Value:
    """``labels[index]`` (int64); the index itself when the labels are 0..C-1."""
    if list(labels) == list(range(len(labels))):
        return index
    return b.op("Gather", [b.const(np.array(labels, np.int64), "classlabels"), index], axis=0)


# -- the simple ops -----------------------------------------------------------------------
def rewrite_scaler(b: MLBuilder, node: Node) -> list[Value]:
    x = b.as_float(node.inputs[0])  # type: ignore[arg-type]
    offset = np.array(node.attr("offset") or [0.0], np.float32)
    scale = np.array(node.attr("scale") or [1.0], np.float32)
    return [b.op("Mul", [b.op("Sub", [x, b.const(offset, "offset")]), b.const(scale, "scale")])]


def rewrite_normalizer(b: MLBuilder, node: Node) -> list[Value]:
    x = b.as_float(node.inputs[0])  # type: ignore[arg-type]
    norm = node.attr("norm", "MAX")
    if norm == "MAX":
        denom = b.reduce("ReduceMax", x, -1)
    elif norm == "L1":
        denom = b.reduce("ReduceSum", b.op("Abs", [x]), -1)
    elif norm == "L2":
        denom = b.op("Sqrt", [b.reduce("ReduceSumSquare", x, -1)])
    else:
        raise Refused(f"norm {norm!r}")
    zero = b.op("Equal", [denom, b.const(np.float32(0.0))])
    safe = b.op("Where", [zero, b.const(np.float32(1.0)), denom])
    return [b.op("Div", [x, safe])]


def _linear_scores(b: MLBuilder, node: Node, rows: int | None) -> tuple[Value, int]:
    """``x @ coefficients.T + intercepts`` as float32 ``[N, rows]``, and ``rows``."""
    x = b.as_matrix(b.as_float(node.inputs[0]))  # type: ignore[arg-type]
    coef = np.array(node.attr("coefficients") or [], np.float32)
    intercepts = np.array(node.attr("intercepts") or [], np.float32)
    rows = rows or len(intercepts)
    if not rows or coef.size % rows:
        raise Refused(f"{coef.size} coefficients do not split into {rows} rows")
    weights = b.const(np.ascontiguousarray(coef.reshape(rows, -1).T), "coefficients")
    if len(intercepts) not in (0, rows):
        raise Refused(f"{len(intercepts)} intercepts for {rows} rows")
    bias = intercepts if len(intercepts) else np.zeros(rows, np.float32)
    return b.op("Gemm", [x, weights, b.const(bias, "intercepts")]), rows


def rewrite_linear_regressor(b: MLBuilder, node: Node) -> list[Value]:
    if node.attr("post_transform", "NONE") != "NONE":
        raise Refused(f"post_transform {node.attr('post_transform')!r}")
    scores, _ = _linear_scores(b, node, int(node.attr("targets", 1)))
    return [scores]


def rewrite_linear_classifier(b: MLBuilder, node: Node) -> list[Value]:
    labels = class_labels(node)
    if not labels:
        raise Refused("no int class labels")
    scores, rows = _linear_scores(b, node, None)
    transform = node.attr("post_transform", "NONE")
    if rows == 1:
        positive = b.op("Greater", [scores, b.const(np.float32(0.0))])
        pair = labels if len(labels) == 2 else [0, 1]
        label = b.op("Where", [positive, b.const(np.int64(pair[1])), b.const(np.int64(pair[0]))])
        label = b.op("Squeeze", [label, b.ints([1])])  # [N, 1] -> [N], N kept
        if len(labels) != 2:
            return [label, post_transform(b, scores, transform)]
        if transform == "LOGISTIC":
            scores = b.op("Sigmoid", [scores])
        elif transform not in ("NONE", "SOFTMAX", "SOFTMAX_ZERO"):
            raise Refused(f"post_transform {transform!r}")
        other = b.op("Sub", [b.const(np.float32(1.0)), scores])
        return [label, b.op("Concat", [other, scores], axis=1)]
    if len(labels) != rows:
        raise Refused(f"{len(labels)} labels for {rows} score rows")
    index = b.op("ArgMax", [scores], axis=1, keepdims=0)
    return [take_labels(b, labels, index), post_transform(b, scores, transform)]


def rewrite_binarizer(b: MLBuilder, node: Node) -> list[Value]:
    x = node.inputs[0]
    assert x is not None
    dtype = x.dtype
    if dtype is None:
        raise Refused("input type unknown")
    np_dtype = np.dtype(dtype.numpy)
    threshold = b.const(np.array(node.attr("threshold", 0.0)).astype(np_dtype), "threshold")
    above = b.op("Greater", [x, threshold])
    one, zero = b.const(np.array(1, np_dtype)), b.const(np.array(0, np_dtype))
    return [b.op("Where", [above, one, zero])]


def rewrite_imputer(b: MLBuilder, node: Node) -> list[Value]:
    x = node.inputs[0]
    assert x is not None
    values = node.attr("imputed_value_floats")
    if x.dtype != DType.FLOAT32 or not values:
        raise Refused("only float inputs with imputed_value_floats")
    replaced = float(node.attr("replaced_value_float", 0.0))
    hit = (b.op("IsNaN", [x]) if np.isnan(replaced)
           else b.op("Equal", [x, b.const(np.float32(replaced))]))
    return [b.op("Where", [hit, b.const(np.array(values, np.float32), "imputed"), x])]


def rewrite_array_feature_extractor(b: MLBuilder, node: Node) -> list[Value]:
    x, indices = node.inputs[0], node.inputs[1]
    assert x is not None and indices is not None
    flat = b.op("Reshape", [indices, b.ints([-1])])
    if x.shape is None:
        raise Refused("input rank unknown")
    picked = b.op("Gather", [x, flat], axis=len(x.shape) - 1)
    if len(x.shape) == 1:  # ORT gives a vector input one row
        picked = b.op("Unsqueeze", [picked, b.ints([0])])
    return [picked]


def _tree_rewrite(kind: str) -> Callable[[MLBuilder, Node], list[Value]]:
    def rewrite(b: MLBuilder, node: Node) -> list[Value]:
        from irkit.lower.onnx_ml_trees import rewrite_tree_ensemble

        return rewrite_tree_ensemble(b, node, kind)

    return rewrite


REWRITES: dict[str, Callable[[MLBuilder, Node], list[Value]]] = {
    "Scaler": rewrite_scaler,
    "Normalizer": rewrite_normalizer,
    "LinearRegressor": rewrite_linear_regressor,
    "LinearClassifier": rewrite_linear_classifier,
    "Binarizer": rewrite_binarizer,
    "Imputer": rewrite_imputer,
    "ArrayFeatureExtractor": rewrite_array_feature_extractor,
    "TreeEnsembleRegressor": _tree_rewrite("regressor"),
    "TreeEnsembleClassifier": _tree_rewrite("classifier"),
}

