"""An irkit Graph as a trainable ``torch.nn.Module``.

``GraphModule(graph)`` replays the graph's nodes with torch operations; every float
constant with more than one element (weights, biases, BatchNorm scales; not its running
statistics) becomes an
``nn.Parameter`` initialised from the graph, so the module trains with any torch
optimizer. ``write_back(graph, module)`` returns a copy of the graph holding the trained
values. Only standard ONNX ops are replayed (the ones MLP/CNN/transformer stacks use):
run ``distill`` before ``fuse``/``quantize``, whose irkit-domain ops have no torch form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph, Node


class ReplayError(IrkitError):
    """The graph uses an op the torch replay does not translate."""


def _trainable(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.size > 1


def _ints(tensor: Any) -> list[int]:
    return [int(v) for v in (tensor.tolist() if hasattr(tensor, "tolist") else tensor)]


def _axes(node: Node, args: list[Any], index: int) -> list[int] | None:
    axes = node.attr("axes", None)
    if axes is None and len(args) > index and args[index] is not None:
        axes = _ints(args[index])
    return None if axes is None else [int(a) for a in axes]


def _conv(F: Any, node: Node, args: list[Any]) -> Any:
    pads = list(node.attr("pads", None) or [0] * 2 * (args[1].dim() - 2))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise ReplayError(f"{node.describe()}: asymmetric pads have no torch replay")
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[args[1].dim()]
    return conv(args[0], args[1], args[2] if len(args) > 2 else None,
                stride=list(node.attr("strides", None) or [1] * half), padding=pads[:half],
                dilation=list(node.attr("dilations", None) or [1] * half),
                groups=int(node.attr("group", 1)))


def _pool(F: Any, node: Node, args: list[Any]) -> Any:
    kernel = list(node.attr("kernel_shape"))
    pads = list(node.attr("pads", None) or [0] * 2 * len(kernel))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise ReplayError(f"{node.describe()}: asymmetric pads have no torch replay")
    strides = list(node.attr("strides", None) or kernel)
    ceil = bool(node.attr("ceil_mode", 0))
    if node.op == "MaxPool":
        return F.max_pool2d(args[0], kernel, strides, pads[:half], ceil_mode=ceil)
    return F.avg_pool2d(args[0], kernel, strides, pads[:half], ceil_mode=ceil,
                        count_include_pad=bool(node.attr("count_include_pad", 0)))


def _gemm(torch: Any, node: Node, args: list[Any]) -> Any:
    a = args[0].T if node.attr("transA", 0) else args[0]
    b = args[1].T if node.attr("transB", 0) else args[1]
    out = torch.matmul(a, b) * float(node.attr("alpha", 1.0))
    if len(args) > 2 and args[2] is not None:
        out = out + float(node.attr("beta", 1.0)) * args[2]
    return out


def _slice(node: Node, args: list[Any]) -> Any:
    data = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * data.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = data.shape[axis]
        start = max(min(start + size if start < 0 else start, size), 0)
        end = max(min(end + size if end < 0 else end, size), 0)
        if step < 0:
            raise ReplayError(f"{node.describe()}: negative slice steps have no replay")
        index[axis] = slice(start, end, step)
    return data[tuple(index)]


def _reshape(torch: Any, args: list[Any]) -> Any:
    shape = _ints(args[1])
    shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return torch.reshape(args[0], shape)


def _run_node(torch: Any, F: Any, node: Node, args: list[Any]) -> list[Any]:
    op = node.op
    x: Any = args[0] if args else None
    simple = {
        "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
        "Sqrt": torch.sqrt, "Exp": torch.exp, "Neg": torch.neg, "Abs": torch.abs,
        "Identity": lambda t: t,
    }
    binary = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
              "Pow": torch.pow}
    if node.domain not in ("", "ai.onnx"):
        raise ReplayError(f"{node.describe()}: irkit-domain ops have no torch replay; run "
                          "distill before fuse/quantize")
    if op in simple:
        return [simple[op](x)]
    if op in binary:
        return [binary[op](args[0], args[1])]
    if op == "MatMul":
        return [torch.matmul(args[0], args[1])]
    if op == "Gemm":
        return [_gemm(torch, node, args)]
    if op == "Conv":
        return [_conv(F, node, args)]
    if op == "BatchNormalization":
        return [F.batch_norm(x, args[3], args[4], args[1], args[2], False, 0.0,
                             float(node.attr("epsilon", 1e-5)))]
    if op in ("MaxPool", "AveragePool"):
        return [_pool(F, node, args)]
    if op == "GlobalAveragePool":
        return [torch.mean(x, dim=tuple(range(2, x.dim())), keepdim=True)]
    if op == "Flatten":
        axis = int(node.attr("axis", 1))
        return [torch.reshape(x, (int(np.prod(x.shape[:axis])), -1))]
    if op == "Gelu":
        approx = "tanh" if node.attr("approximate", "none") == "tanh" else "none"
        return [F.gelu(x, approximate=approx)]
    if op == "LeakyRelu":
        return [F.leaky_relu(x, float(node.attr("alpha", 0.01)))]
    if op == "Softmax":
        return [torch.softmax(x, int(node.attr("axis", -1)))]
    if op == "LayerNormalization":
        axis = int(node.attr("axis", -1)) % x.dim()
        shape = tuple(x.shape[axis:])
        bias = args[2] if len(args) > 2 else None
        return [F.layer_norm(x, shape, args[1], bias, float(node.attr("epsilon", 1e-5)))]
    if op == "Transpose":
        perm = node.attr("perm", None) or list(range(x.dim()))[::-1]
        return [x.permute(*perm)]
    if op == "Reshape":
        return [_reshape(torch, args)]
    if op == "Shape":
        dims = list(x.shape)
        start, end = node.attr("start", 0), node.attr("end", len(dims))
        return [torch.tensor(dims[start:end], dtype=torch.int64)]
    if op == "Cast":
        dtype = _CAST_TYPES.get(int(node.attr("to", 1)))
        return [x.to(getattr(torch, dtype)) if dtype else x]
    if op == "Concat":
        return [torch.cat([a for a in args if a is not None], int(node.attr("axis", 0)))]
    if op == "Gather":
        axis = int(node.attr("axis", 0))
        return [torch.index_select(x, axis, args[1].reshape(-1).long()).reshape(
            *x.shape[:axis], *args[1].shape, *x.shape[axis + 1:])]
    if op == "Unsqueeze":
        out = x
        for axis in sorted(a % (x.dim() + len(_axes(node, args, 1) or []))
                           for a in _axes(node, args, 1) or []):
            out = out.unsqueeze(axis)
        return [out]
    if op == "Squeeze":
        axes = _axes(node, args, 1)
        return [x.squeeze() if axes is None else x.squeeze(tuple(axes))]
    if op == "Slice":
        return [_slice(node, args)]
    if op == "ReduceMean":
        axes = _axes(node, args, 1)
        keep = bool(node.attr("keepdims", 1))
        return [x.mean() if axes is None else x.mean(dim=tuple(axes), keepdim=keep)]
    extra = _run_mask_op(torch, node, args)
    if extra is not None:
        return [extra]
    raise ReplayError(f"{node.describe()}: op {op!r} has no torch replay")


_CAST_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 16: "bfloat16"}


def _run_mask_op(torch: Any, node: Node, args: list[Any]) -> Any:
    """The comparison, logic, broadcast and indexing ops of attention-mask arithmetic
    (an exported BERT's ``Range``/``Expand``/``GatherND``/``Where``...); None: not one."""
    op = node.op
    compare = {"Equal": torch.eq, "Greater": torch.gt, "GreaterOrEqual": torch.ge,
               "Less": torch.lt, "LessOrEqual": torch.le, "And": torch.logical_and,
               "Or": torch.logical_or, "Xor": torch.logical_xor}
    if op in compare:
        return compare[op](args[0], args[1])
    if op == "Not":
        return torch.logical_not(args[0])
    if op == "IsNaN":
        return torch.isnan(args[0])
    if op == "Where":
        return torch.where(args[0], args[1], args[2])
    if op in ("Max", "Min"):
        pick = torch.maximum if op == "Max" else torch.minimum
        out = args[0]
        for other in args[1:]:
            out = pick(out, other)
        return out
    if op == "Range":
        start, limit, delta = (a.item() for a in args[:3])
        return torch.arange(start, limit, delta, dtype=args[0].dtype)
    if op == "Expand":
        shape = torch.broadcast_shapes(tuple(args[0].shape), tuple(_ints(args[1])))
        return torch.broadcast_to(args[0], shape)
    if op == "GatherND" and int(node.attr("batch_dims", 0)) == 0:
        return args[0][tuple(args[1].long().unbind(-1))]
    return None


def _module_class() -> Any:
    import torch
    import torch.nn.functional as F

    class GraphModule(torch.nn.Module):
        """The graph replayed in torch; float weights are parameters."""

        def __init__(self, graph: Graph) -> None:
            super().__init__()
            self.graph = graph
            self.names: dict[str, str] = {}  # constant name -> parameter name
            self.params = torch.nn.ParameterList()
            self.fixed: dict[str, Any] = {}
            statistics = {v.name for n in graph.nodes if n.op == "BatchNormalization"
                          for v in n.inputs[3:5] if v is not None}
            for name, value in graph.constants.items():
                array = np.array(value.const)  # a writable copy
                if _trainable(array) and name not in statistics:
                    self.names[name] = str(len(self.params))
                    self.params.append(torch.nn.Parameter(torch.from_numpy(array)))
                else:
                    self.fixed[name] = torch.from_numpy(array)
            for node in graph.nodes:  # fail now, not in the first training step
                if node.domain not in ("", "ai.onnx"):
                    _run_node(torch, F, node, [])

        def forward(self, *inputs: Any) -> tuple[Any, ...]:
            values: dict[str, Any] = dict(self.fixed)
            for name, index in self.names.items():
                values[name] = self.params[int(index)]
            values.update({v.name: t for v, t in zip(self.graph.inputs, inputs)})
            for node in self.graph.nodes:
                args = [values[v.name] if v is not None and v.name else None
                        for v in node.inputs]
                for value, out in zip(node.outputs, _run_node(torch, F, node, args)):
                    values[value.name] = out
            return tuple(values[v.name] for v in self.graph.outputs)

        def reinitialize(self, seed: int) -> None:
            """Fresh random weight matrices/kernels (He-uniform by fan-in), seeded; 1-D
            parameters (biases, BatchNorm scales) keep their values."""
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in self.params:
                    if param.dim() >= 2:
                        bound = float(np.sqrt(6.0 / max(param.numel() // param.shape[0], 1)))
                        param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1)
                                    * bound)

        def trained_constants(self) -> dict[str, np.ndarray]:
            return {name: self.params[int(index)].detach().numpy().copy()
                    for name, index in self.names.items()}

    return GraphModule


def graph_module(graph: Graph) -> Any:
    """A trainable torch module computing ``graph`` (ReplayError for untranslated ops)."""
    return _module_class()(graph)


def write_back(graph: Graph, module: Any) -> Graph:
    """A copy of ``graph`` whose float weights are the module's trained parameters."""
    out = graph.clone()
    for name, array in module.trained_constants().items():
        old = out.constants[name]
        assert old.const is not None
        new = out.add_constant(name + "_distilled", array.astype(old.const.dtype))
        old.replace_all_uses_with(new)
        out.remove_constant(old)
    return out
