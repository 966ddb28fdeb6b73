"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` captured as one op, so their sequence length
can stay dynamic.

torch.export traces ``aten.lstm`` / ``gru`` / ``rnn_tanh`` through their step-by-step
decompositions, which fix the sequence length to the example's. While the frontend
exports, :func:`recurrences_as_one_op` routes every plain ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` (no projection, not packed, batched input) through the custom op
``irkit::recurrent``, whose fake kernel gives the output sizes without stepping; it
lowers to one ONNX ``LSTM`` / ``GRU`` (``linear_before_reset=1``, torch's form) / ``RNN``
node per layer (seq-first layout; batch-first inputs are transposed).
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

# torch's gate order -> ONNX's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}


@torch.library.custom_op("irkit::recurrent", mutates_args=())
def _recurrent(x: Tensor, h0: Tensor | None, c0: Tensor | None, params: list[Tensor],
               mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
               batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    h0, c0 = _initial_states(x, h0, c0, params, num_layers, bidirectional, batch_first)
    common = (params, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    if mode == "LSTM":
        out, hn, cn = torch.ops.aten.lstm.input(x, [h0, c0], *common)
    else:
        op = {"GRU": torch.ops.aten.gru.input, "RNN_TANH": torch.ops.aten.rnn_tanh.input,
              "RNN_RELU": torch.ops.aten.rnn_relu.input}[mode]
        out, hn = op(x, h0, *common)
        cn = hn
    return out.clone(), hn.clone(), cn.clone()


@_recurrent.register_fake
def _recurrent_fake(x: Tensor, h0: Tensor | None, c0: Tensor | None, params: list[Tensor],
                    mode: str, has_biases: bool, num_layers: int, bidirectional: bool,
                    batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
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


def _plain(module: nn.Module) -> bool:
    return (isinstance(module, nn.LSTM | nn.GRU | nn.RNN)
            and getattr(module, "mode", "") in _GATE_ORDER
            and not getattr(module, "proj_size", 0))


def _one_op_forward(module: Any) -> Any:
    original = module.forward
    lstm = module.mode == "LSTM"

    def forward(input: Any, hx: Any = None) -> Any:
        if not isinstance(input, Tensor) or input.dim() != 3:
            return original(input, hx)  # packed or unbatched: torch's own path
        h0, c0 = (hx if hx is not None else (None, None)) if lstm else (hx, None)
        out, hn, cn = torch.ops.irkit.recurrent(
            input, h0, c0, list(module._flat_weights), module.mode, module.bias,
            module.num_layers, module.bidirectional, module.batch_first)
        return (out, (hn, cn)) if lstm else (out, hn)

    return forward


@contextlib.contextmanager
def recurrences_as_one_op(module: nn.Module) -> Iterator[None]:
    """While active, every plain ``nn.LSTM``/``GRU``/``RNN`` in ``module`` calls
    ``irkit::recurrent``."""
    patched = [m for m in module.modules() if _plain(m)]
    for m in patched:
        m.forward = _one_op_forward(m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in patched:
            del m.forward


# -- lowering: one ONNX LSTM / GRU / RNN node per layer ---------------------------------------
def _onnx_weights(w: np.ndarray, mode: str) -> np.ndarray:
    """A torch gate-stacked weight or bias in ONNX's gate order."""
    order = _GATE_ORDER[mode]
    return np.concatenate([np.split(w, len(order))[g] for g in order])


def _param(ctx: LoweringContext, arg: Any) -> np.ndarray:
    value = ctx.values.get(arg)
    if not isinstance(value, Value) or value.const is None:
        raise LoweringUnsupported("a recurrent weight that is not a constant parameter")
    return np.asarray(value.const)


@lowers("irkit.recurrent.default")
def lower_recurrent(ctx: LoweringContext, x: Any, h0: Any, c0: Any, params: Any, mode: str,
                    has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool
                    ) -> tuple[Value, Value | None, Value | None]:
    lstm = mode == "LSTM"
    onnx_op = "LSTM" if lstm else "GRU" if mode == "GRU" else "RNN"
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    dtype = ctx.out_dtype
    if dtype is not DType.FLOAT32:
        raise LoweringUnsupported(f"{onnx_op} on {dtype.name} (float32 only)")
    out_val, hn_val, _ = ctx.out_val
    batch, seq = ctx.dim(hn_val.shape[1]), ctx.dim(out_val.shape[1 if batch_first else 0])
    hidden = int(hn_val.shape[2])
    seq_in = ctx.get(x)
    if batch_first:
        seq_in = ctx.emit("Transpose", [seq_in], {"perm": [1, 0, 2]}, typed=False)
    states = [ctx.get(s) if s is not None else None for s in ((h0, c0) if lstm else (h0,))]
    attrs: dict[str, Any] = {"hidden_size": hidden,
                             "direction": "bidirectional" if bidirectional else "forward"}
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    elif not lstm:
        attrs["activations"] = ["Relu" if mode == "RNN_RELU" else "Tanh"] * dirs
    last: list[list[Value]] = [[], []]
    for layer in range(num_layers):
        group = [params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
                 for d in range(dirs)]
        w = np.stack([_onnx_weights(_param(ctx, g[0]), mode) for g in group])
        r = np.stack([_onnx_weights(_param(ctx, g[1]), mode) for g in group])
        inputs: list[Value | None] = [seq_in, ctx.const(w, "rnn_w"), ctx.const(r, "rnn_r")]
        if has_biases:
            b = np.stack([np.concatenate([_onnx_weights(_param(ctx, g[2]), mode),
                                          _onnx_weights(_param(ctx, g[3]), mode)])
                          for g in group])
            inputs.append(ctx.const(b, "rnn_b"))
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
        outputs = [f"{name}_y", f"{name}_h", f"{name}_c"][:3 if lstm else 2]
        node = ctx.graph.add_node(
            onnx_op, inputs, attrs, outputs=outputs,
            types=[TensorType(dtype, (seq, dirs, batch, hidden)), *[state_type] * 2][
                :len(outputs)])
        for k, value in enumerate(node.outputs[1:]):
            last[k].append(value)
        y = node.outputs[0]
        if dirs == 1:
            seq_in = ctx.emit("Squeeze", [y, ctx.ints([1])], typed=False)
        else:
            moved = ctx.emit("Transpose", [y], {"perm": [0, 2, 1, 3]}, typed=False)
            seq_in = ctx.emit("Reshape", [moved, ctx.ints([0, 0, dirs * hidden])], typed=False)
    out = seq_in
    if batch_first:
        out = ctx.emit("Transpose", [out], {"perm": [1, 0, 2]}, typed=False)
    out = ctx.emit("Identity", [out])
    finals: list[Value | None] = []
    for k, pieces in enumerate(last):
        if not pieces:  # GRU / RNN: no cell state (nothing reads torch's copy of h_n)
            finals.append(finals[0])
            continue
        joined = pieces[0] if len(pieces) == 1 else ctx.emit("Concat", pieces, {"axis": 0},
                                                               typed=False)
        node = ctx.graph.add_node("Identity", [joined], outputs=[ctx._output_name(k + 1, 3)],
                                  types=[ctx.type_of(ctx.out_val[k + 1])])
        finals.append(node.output)
    return out, finals[0], finals[1]
