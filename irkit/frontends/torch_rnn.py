"""``nn.LSTM`` captured as one op, so its sequence length can stay dynamic.

torch.export traces ``aten.lstm`` through its step-by-step decomposition, which fixes the
sequence length to the example's. While the frontend exports, :func:`lstm_as_one_op`
routes every plain ``nn.LSTM`` (no projection, not packed) through the custom op
``irkit::lstm``, whose fake kernel gives the output sizes without stepping; it lowers to
one ONNX ``LSTM`` node per layer (seq-first layout; batch-first inputs are transposed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from irkit.frontends.torch_lowering import LoweringContext, LoweringUnsupported
from irkit.frontends.torch_ops_base import lowers
from irkit.ir import DType, TensorType, Value

# torch gates: input, forget, cell, output; ONNX gates: input, output, forget, cell
_ONNX_GATE_ORDER = (0, 3, 1, 2)


@torch.library.custom_op("irkit::lstm", mutates_args=())
def _lstm(x: Tensor, h0: Tensor | None, c0: Tensor | None, params: list[Tensor],
          has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool
          ) -> tuple[Tensor, Tensor, Tensor]:
    h0, c0 = _initial_states(x, h0, c0, params, num_layers, bidirectional, batch_first)
    out, hn, cn = torch.ops.aten.lstm.input(x, [h0, c0], params, has_biases, num_layers, 0.0,
                                            False, bidirectional, batch_first)
    return out.clone(), hn.clone(), cn.clone()


@_lstm.register_fake
def _lstm_fake(x: Tensor, h0: Tensor | None, c0: Tensor | None, params: list[Tensor],
               has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool
               ) -> tuple[Tensor, Tensor, Tensor]:
    hidden = params[1].shape[1]
    dirs = 2 if bidirectional else 1
    batch = x.shape[0] if batch_first else x.shape[1]
    out = x.new_empty((*x.shape[:2], dirs * hidden))
    return (out, x.new_empty((num_layers * dirs, batch, hidden)),
            x.new_empty((num_layers * dirs, batch, hidden)))


def _initial_states(x: Tensor, h0: Tensor | None, c0: Tensor | None, params: list[Tensor],
                    num_layers: int, bidirectional: bool, batch_first: bool
                    ) -> tuple[Tensor, Tensor]:
    hidden = params[1].shape[1]
    shape = (num_layers * (2 if bidirectional else 1),
             x.shape[0] if batch_first else x.shape[1], hidden)
    zeros = x.new_zeros(shape)
    return (h0 if h0 is not None else zeros), (c0 if c0 is not None else zeros)


def _plain(module: nn.LSTM) -> bool:
    return not getattr(module, "proj_size", 0)


def _one_op_forward(module: nn.LSTM) -> Any:
    original = module.forward

    def forward(input: Any, hx: Any = None) -> Any:
        if not isinstance(input, Tensor) or input.dim() != 3:
            return original(input, hx)  # packed or unbatched: torch's own path
        h0, c0 = hx if hx is not None else (None, None)
        out, hn, cn = torch.ops.irkit.lstm(
            input, h0, c0, list(module._flat_weights), module.bias, module.num_layers,
            module.bidirectional, module.batch_first)
        return out, (hn, cn)

    return forward


@contextlib.contextmanager
def lstm_as_one_op(module: nn.Module) -> Iterator[None]:
    """While active, every plain ``nn.LSTM`` in ``module`` calls ``irkit::lstm``."""
    patched = [m for m in module.modules() if isinstance(m, nn.LSTM) and _plain(m)]
    for m in patched:
        m.forward = _one_op_forward(m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in patched:
            del m.forward


# -- lowering: one ONNX LSTM node per layer ---------------------------------------------------
def _onnx_weights(w: np.ndarray) -> np.ndarray:
    """A torch ``[4H, …]`` gate-stacked weight or bias in ONNX's gate order."""
    return np.concatenate([np.split(w, 4)[g] for g in _ONNX_GATE_ORDER])


def _param(ctx: LoweringContext, arg: Any) -> np.ndarray:
    value = ctx.values.get(arg)
    if not isinstance(value, Value) or value.const is None:
        raise LoweringUnsupported("an LSTM weight that is not a constant parameter")
    return np.asarray(value.const)


@lowers("irkit.lstm.default")
def lower_lstm(ctx: LoweringContext, x: Any, h0: Any, c0: Any, params: Any,
               has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool
               ) -> tuple[Value, Value, Value]:
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    dtype = ctx.out_dtype
    if dtype is not DType.FLOAT32:
        raise LoweringUnsupported(f"LSTM on {dtype.name} (float32 only)")
    out_val, hn_val, _ = ctx.out_val
    batch, seq = ctx.dim(hn_val.shape[1]), ctx.dim(out_val.shape[1 if batch_first else 0])
    hidden = int(hn_val.shape[2])
    seq_in = ctx.get(x)
    if batch_first:
        seq_in = ctx.emit("Transpose", [seq_in], {"perm": [1, 0, 2]}, typed=False)
    states = [ctx.get(s) if s is not None else None for s in (h0, c0)]
    last_h: list[Value] = []
    last_c: list[Value] = []
    for layer in range(num_layers):
        group = [params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
                 for d in range(dirs)]
        w = np.stack([_onnx_weights(_param(ctx, g[0])) for g in group])
        r = np.stack([_onnx_weights(_param(ctx, g[1])) for g in group])
        inputs: list[Value | None] = [seq_in, ctx.const(w, "lstm_w"), ctx.const(r, "lstm_r")]
        if has_biases:
            b = np.stack([np.concatenate([_onnx_weights(_param(ctx, g[2])),
                                          _onnx_weights(_param(ctx, g[3]))]) for g in group])
            inputs.append(ctx.const(b, "lstm_b"))
        else:
            inputs.append(None)
        inputs.append(None)  # sequence_lens: every sequence is full length
        for state in states:
            if state is not None and num_layers > 1:
                state = ctx.emit("Slice", [state, ctx.ints([layer * dirs]),
                                           ctx.ints([(layer + 1) * dirs]), ctx.ints([0])],
                                 typed=False)
            inputs.append(state)
        state_type = TensorType(dtype, (dirs, batch, hidden))
        name = f"{ctx.node.name}_l{layer}"
        node = ctx.graph.add_node(
            "LSTM", inputs,
            {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward"},
            outputs=[f"{name}_y", f"{name}_h", f"{name}_c"],
            types=[TensorType(dtype, (seq, dirs, batch, hidden)), state_type, state_type])
        y, yh, yc = node.outputs
        last_h.append(yh)
        last_c.append(yc)
        if dirs == 1:
            seq_in = ctx.emit("Squeeze", [y, ctx.ints([1])], typed=False)
        else:
            moved = ctx.emit("Transpose", [y], {"perm": [0, 2, 1, 3]}, typed=False)
            seq_in = ctx.emit("Reshape", [moved, ctx.ints([0, 0, dirs * hidden])], typed=False)
    out = seq_in
    if batch_first:
        out = ctx.emit("Transpose", [out], {"perm": [1, 0, 2]}, typed=False)
    out = ctx.emit("Identity", [out])
    finals = []
    for k, pieces in enumerate((last_h, last_c)):
        joined = pieces[0] if len(pieces) == 1 else ctx.emit("Concat", pieces, {"axis": 0},
                                                               typed=False)
        node = ctx.graph.add_node("Identity", [joined], outputs=[ctx._output_name(k + 1, 3)],
                                  types=[ctx.type_of(ctx.out_val[k + 1])])
        finals.append(node.output)
    return out, finals[0], finals[1]
