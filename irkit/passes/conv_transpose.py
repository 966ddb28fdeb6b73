"""``conv-transpose-as-matmul``: a ConvTranspose whose kernel equals its stride, as a MatMul.

The upsampling ConvTranspose of U-Nets and decoders (kernel 2, stride 2, no padding)
writes every output pixel from exactly one input pixel, so it is a GEMM followed by a
pixel shuffle::

    y[n, co, i*kh + a, j*kw + b] = sum_ci x[n, ci, i, j] * w[ci, co, a, b] + bias[co]
    = Reshape(Transpose(Reshape(Transpose(x) @ w.reshape(Cin, Cout*kh*kw))))

Lowered as a gather over taps (what the kernel-IR lowering does for any ConvTranspose),
three of four taps miss at stride 2 and each tests its hit with a division and a modulo:
a U-Net's 2x2 upsampling took half the model's time, 5x ONNX Runtime's whole model on
AVX-512 code. Other ConvTransposes (overlapping taps, padding, groups, dilation) stay.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ir.types import TensorType
from irkit.passes.base import rewrite_each, take_name

Lowers = Callable[[str, str], bool]


def _plain_upsampling(node: Node) -> bool:
    """A 2-D ConvTranspose with constant weights, kernel == stride, no overlap or padding."""
    if node.domain not in ("", "ai.onnx") or node.op != "ConvTranspose":
        return False
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or w.const.ndim != 4 or x.shape is None:
        return False
    if len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape[1:]):
        return False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const is None:
        return False
    kernel = list(w.const.shape[2:])
    strides = [int(s) for s in node.attr("strides", None) or [1, 1]]
    zeros = [0, 0, 0, 0]
    return (strides == kernel and int(node.attr("group", 1)) == 1
            and [int(d) for d in node.attr("dilations", None) or [1, 1]] == [1, 1]
            and [int(p) for p in node.attr("pads", None) or zeros] == zeros
            and [int(p) for p in node.attr("output_padding", None) or [0, 0]] == [0, 0]
            and node.attr("output_shape", None) is None
            and str(node.attr("auto_pad", "NOTSET")) in ("NOTSET", "VALID")
            and w.dtype is not None and x.dtype == w.dtype)


def conv_transpose_as_matmul(graph: Graph, lowers: Lowers | None = None) -> tuple[Graph, int]:
    """``graph`` (itself when nothing matched, else a rewritten copy) and how many
    ConvTransposes became MatMuls."""
    def wanted(node: Node) -> bool:
        return _plain_upsampling(node) and (lowers is None or (
            lowers("MatMul", "") and lowers("Transpose", "") and lowers("Reshape", "")))

    return rewrite_each(graph, wanted, _rewrite)


def _rewrite(graph: Graph, node: Node) -> None:
    x, w_value = node.inputs[0], node.inputs[1]
    assert x is not None and w_value is not None and x.shape is not None
    w = np.asarray(w_value.const)
    dtype = x.dtype
    assert dtype is not None
    batch, cin, h, wd = x.shape
    cout, kh, kw = w.shape[1], w.shape[2], w.shape[3]

    def add(op: str, inputs: list[Value], shape: tuple, **attrs: object) -> Value:
        return graph.add_node(op, inputs, attrs or None, before=node,
                              types=[TensorType(dtype, shape)]).output

    def ints(name: str, values: list[int]) -> Value:
        return graph.add_constant(name, np.array(values, np.int64))

    pixels = add("Transpose", [x], (batch, h, wd, cin), perm=[0, 2, 3, 1])
    weight = graph.add_constant(f"{w_value.name}_kn", np.ascontiguousarray(
        w.reshape(cin, cout * kh * kw)))
    y = add("MatMul", [pixels, weight], (batch, h, wd, cout * kh * kw))
    y = add("Reshape", [y, ints("convt_taps", [0, h, wd, cout, kh, kw])],
            (batch, h, wd, cout, kh, kw))
    y = add("Transpose", [y], (batch, cout, h, kh, wd, kw), perm=[0, 3, 1, 4, 2, 5])
    out = node.outputs[0]
    y = add("Reshape", [y, ints("convt_out", [0, cout, h * kh, wd * kw])],
            (batch, cout, h * kh, wd * kw))
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const is not None:
        b = graph.add_constant(f"{bias.name}_c11", np.asarray(bias.const).reshape(cout, 1, 1))
        y = add("Add", [y, b], (batch, cout, h * kh, wd * kw))
    out.replace_all_uses_with(y)
    name = out.name
    graph.remove_node(node)
    take_name(graph, y, name)
