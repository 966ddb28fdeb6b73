"""ONNX ``LSTM`` whose sequence length is known only at run time, as one kernel.

An LSTM with a static length is unrolled into straight-line ops before lowering
(:mod:`irkit.lower.unroll`); one with a symbolic length (``S``) keeps its node and comes
here. The kernel is parallel over the batch; per batch item and direction it keeps
``h``, ``c`` and the ``4H`` gate pre-activations in local buffers and steps through time:

    gates = W x_t + R h + (Wb + Rb)        (ONNX gate order i, o, f, c)
    c = sigmoid(f) * c + sigmoid(i) * tanh(c~);  h = sigmoid(o) * tanh(c)

writing ``h`` into ``Y`` at every step and the last ``h``/``c`` into ``Y_h``/``Y_c``.
Both layouts and directions (forward, reverse, bidirectional) and the optional initial
states and bias are supported; the default activations only, no ``clip``, no peepholes,
no ``input_forget``, no ``sequence_lens`` (every sequence runs the full length).
"""

from __future__ import annotations

from irkit.ir import Node
from irkit.kir import Buffer, Call, Const, Expr, For, Load, Stmt, Store, block, simplify_expr
from irkit.lower.context import LoweringContext
from irkit.lower.elementwise import _sigmoid
from irkit.lower.tensor import (
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    product,
    static,
)

_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def _check(node: Node, ins: list[TensorRef | None]) -> None:
    acts = [str(a).lower() for a in (node.attr("activations", None) or [])]
    dirs = 2 if node.attr("direction", "forward") == "bidirectional" else 1
    if acts and acts != list(_DEFAULT_ACTIVATIONS) * dirs:
        raise LoweringError(f"LSTM activations {acts} with a run-time sequence length "
                            "(only the default sigmoid/tanh/tanh)")
    if node.attr("clip", None) is not None or int(node.attr("input_forget", 0)):
        raise LoweringError("LSTM clip / input_forget with a run-time sequence length")
    if len(ins) > 4 and ins[4] is not None:
        raise LoweringError("LSTM sequence_lens with a run-time sequence length")
    if len(ins) > 7 and ins[7] is not None:
        raise LoweringError("LSTM peepholes with a run-time sequence length")
    if any(r is not None and r.dtype != "f32" for r in ins[:3]):
        raise LoweringError("LSTM supports f32 only")


def lower_lstm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    _check(node, ins)
    x, w, r = ins[0], ins[1], ins[2]
    assert x is not None and w is not None and r is not None
    bias = ins[3] if len(ins) > 3 else None
    init_h = ins[5] if len(ins) > 5 else None
    init_c = ins[6] if len(ins) > 6 else None
    layout = int(node.attr("layout", 0))
    direction = str(node.attr("direction", "forward"))
    dirs = 2 if direction == "bidirectional" else 1
    hidden = static(r.shape[-1], "LSTM hidden size")
    width = static(x.shape[2], "LSTM input size")
    seq, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    if x.cost > 8:
        x = ctx.materialize(x, "lstm_x")
    y_shape = ((batch, seq, Const(dirs), Const(hidden)) if layout
               else (seq, Const(dirs), batch, Const(hidden)))
    state_shape = ((batch, Const(dirs), Const(hidden)) if layout
                   else (Const(dirs), batch, Const(hidden)))
    y = ctx.new_buffer("lstm_y", "f32", product(y_shape))
    y_h = ctx.new_buffer("lstm_yh", "f32", product(state_shape))
    y_c = ctx.new_buffer("lstm_yc", "f32", product(state_shape))
    h = Buffer(ctx.fresh("h"), "f32", Const(hidden), "local")
    c = Buffer(ctx.fresh("c"), "f32", Const(hidden), "local")
    gates = Buffer(ctx.fresh("gates"), "f32", Const(4 * hidden), "local")
    acc = Buffer(ctx.fresh("acc"), "f32", Const(1), "local")
    n = ctx.var("n")
    zero = Const(0)

    def state_at(d: int, k: Expr) -> tuple[Expr, ...]:
        return (n, Const(d), k) if layout else (Const(d), n, k)

    def initial(ref: TensorRef | None, d: int, k: Expr) -> Expr:
        return ref.read(state_at(d, k)) if ref is not None else fconst(0.0)

    def direction_body(d: int) -> Stmt:
        reverse = direction == "reverse" or d == 1
        k, t, g, i = ctx.var("k"), ctx.var("t"), ctx.var("g"), ctx.var("i")
        step = simplify_expr(seq - 1 - t) if reverse else t
        x_at = (n, step, i) if layout else (step, n, i)
        start = fconst(0.0) if bias is None else (
            bias.read((Const(d), g)) + bias.read((Const(d), g + 4 * hidden)))
        gate = block(
            Store(acc, zero, start),
            For(i, Const(width), Store(acc, zero, Load(acc, zero) + x.read(x_at) *
                                       w.read((Const(d), g, i)))),
            For(k, Const(hidden), Store(acc, zero, Load(acc, zero) + Load(h, k) *
                                        r.read((Const(d), g, k)))),
            Store(gates, g, Load(acc, zero)))
        j = ctx.var("j")
        i_t = _sigmoid(Load(gates, j))
        o_t = _sigmoid(Load(gates, j + hidden))
        f_t = _sigmoid(Load(gates, j + 2 * hidden))
        c_t = Call("tanh", (Load(gates, j + 3 * hidden),))
        y_at = (n, step, Const(d), j) if layout else (step, Const(d), n, j)
        update = block(
            Store(c, j, f_t * Load(c, j) + i_t * c_t),
            Store(h, j, o_t * Call("tanh", (Load(c, j),))),
            Store(y, flat_index(y_at, y_shape), Load(h, j)))
        q = ctx.var("q")
        return block(
            For(q, Const(hidden), block(Store(h, q, initial(init_h, d, q)),
                                        Store(c, q, initial(init_c, d, q)))),
            For(t, seq, block(For(g, Const(4 * hidden), gate), For(j, Const(hidden), update))),
            For(q, Const(hidden), block(
                Store(y_h, flat_index(state_at(d, q), state_shape), Load(h, q)),
                Store(y_c, flat_index(state_at(d, q), state_shape), Load(c, q)))))

    body = block(*(direction_body(d) for d in range(dirs)))
    ctx.add_kernel("lstm", For(n, batch, body, "parallel"), [h, c, gates, acc])
    return [buffer_ref(y, y_shape), buffer_ref(y_h, state_shape), buffer_ref(y_c, state_shape)]


LOWERINGS = {"LSTM": lower_lstm}
