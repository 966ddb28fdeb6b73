"""The torch anchor of ``irkit bench --against torch``: the model run eagerly by PyTorch
under ``torch.inference_mode()`` with ``torch.set_num_threads(threads)``.

Where the torch module comes from:

- built-ins exported from torch (``resnet``, ``transformer``, ``minilm``): the same
  seeded (or pretrained) module the ONNX file was exported from;
- a spec whose model is ``torch("pkg.mod:factory", ...)``: that factory's module;
- any other graph (ONNX files, the ``mlp``/``gemm512``/``mobilenet`` built-ins): the
  graph's own nodes run one by one with ``torch.nn.functional`` (MatMul, Gemm, Conv,
  Relu, Clip, Add, GlobalAveragePool, Flatten), which is what an eager torch module of
  the same layers does. A graph with other ops has no torch anchor: the bench says so.

Inputs are converted to tensors once, outside the timed call, as a torch user holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

TORCH_BUILTINS = ("resnet", "transformer", "minilm")
EAGER_OPS = frozenset({"MatMul", "Gemm", "Conv", "Relu", "Clip", "Add",
                       "GlobalAveragePool", "Flatten"})


class TorchUnavailable(Exception):
    """This model has no torch form the bench can run."""


def torch_module(name: str, graph: Any, source: Any = None) -> Any:
    """A ``torch.nn.Module`` computing ``graph`` (see the module docstring)."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise TorchUnavailable(f"torch is not installed ({exc})") from None
    if source is not None:
        from irkit.frontends.torch import resolve_module

        return resolve_module(source)[0].eval()
    if name in TORCH_BUILTINS:
        from irkit.testing import models

        if name == "resnet":
            return models.make_resnet_cnn()
        if name == "transformer":
            return models.make_transformer_encoder()
        return models.make_minilm_encoder()
    missing = sorted({n.op for n in graph.nodes} - EAGER_OPS)
    if missing:
        raise TorchUnavailable(f"no torch source, and the graph uses {', '.join(missing)}, "
                               "which the eager replay does not translate")
    return EagerGraph(graph)


def torch_call(module: Any, graph: Any, feeds: Mapping[str, np.ndarray], threads: int
               ) -> Callable[[], Any]:
    """A no-argument call of ``module`` on ``feeds`` with ``threads`` intra-op threads."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(feeds[v.name])) for v in graph.inputs]

    def call() -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return module(*tensors)
        finally:
            torch.set_num_threads(previous)

    return call


def max_difference(torch_out: Any, irkit_out: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference between the first torch output and the first irkit
    output (a sanity check that both sides compute the same model)."""
    first = torch_out[0] if isinstance(torch_out, tuple | list) else torch_out
    ours = next(iter(irkit_out.values()))
    theirs = first.detach().numpy()
    if theirs.shape != ours.shape:
        return float("inf")
    return float(np.max(np.abs(theirs.astype(np.float64) - ours.astype(np.float64))))


class EagerGraph:
    """``graph``'s nodes replayed with ``torch.nn.functional``, weights as tensors."""

    def __init__(self, graph: Any) -> None:
        import torch

        self.graph = graph
        self.consts = {name: torch.from_numpy(np.array(value.const))  # a writable copy
                       for name, value in graph.constants.items()}

    def eval(self) -> EagerGraph:
        return self

    def __call__(self, *inputs: Any) -> Any:
        import torch
        import torch.nn.functional as F

        values: dict[str, Any] = dict(self.consts)
        values.update({v.name: t for v, t in zip(self.graph.inputs, inputs)})
        for node in self.graph.nodes:
            args: list[Any] = [values[v.name] if v is not None and v.name else None
                               for v in node.inputs]
            op = node.op
            if op == "MatMul":
                out = torch.matmul(args[0], args[1])
            elif op == "Gemm":
                a = args[0].T if node.attr("transA", 0) else args[0]
                b = args[1].T if node.attr("transB", 0) else args[1]
                out = torch.matmul(a, b) * float(node.attr("alpha", 1.0))
                if len(args) > 2 and args[2] is not None:
                    out = out + float(node.attr("beta", 1.0)) * args[2]
            elif op == "Conv":
                pads = list(node.attr("pads", None) or [0] * 4)
                if pads[:2] != pads[2:]:
                    raise TorchUnavailable("Conv with asymmetric pads")
                out = F.conv2d(args[0], args[1], args[2] if len(args) > 2 else None,
                               stride=list(node.attr("strides", None) or [1, 1]),
                               padding=pads[:2],
                               dilation=list(node.attr("dilations", None) or [1, 1]),
                               groups=int(node.attr("group", 1)))
            elif op == "Relu":
                out = F.relu(args[0])
            elif op == "Clip":
                low = args[1] if len(args) > 1 else None
                high = args[2] if len(args) > 2 else None
                out = torch.clamp(args[0], low, high)
            elif op == "Add":
                out = args[0] + args[1]
            elif op == "GlobalAveragePool":
                out = torch.mean(args[0], dim=(2, 3), keepdim=True)
            else:  # Flatten
                out = torch.flatten(args[0], int(node.attr("axis", 1)))
            values[node.outputs[0].name] = out
        return tuple(values[v.name] for v in self.graph.outputs)
