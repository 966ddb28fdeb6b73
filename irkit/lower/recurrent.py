"""ONNX ``LSTM``, ``GRU`` and ``RNN`` whose sequence length is known only at run time, as
one kernel each.

A recurrence with a static length is unrolled into straight-line ops before lowering
(:mod:`irkit.lower.unroll`); one with a symbolic length (``S``) keeps its node and comes
here. The kernel is parallel over the batch; per batch item and direction it keeps the
state (``h``, and ``c`` for an LSTM) and the gate pre-activations in local buffers and
steps through time. Per step, for the ``G`` gates (LSTM 4: i, o, f, c; GRU 3: z, r, h;
RNN 1), ``xg = W x_t + Wb`` and ``hg = R h + Rb``, then

- LSTM: ``c = σ(f) c + σ(i) tanh(c~)``, ``h = σ(o) tanh(c)`` (gates ``xg + hg``);
- GRU: ``z, r = σ(xg + hg)``, ``n = tanh(xg_h + r ⊙ hg_h)`` (``linear_before_reset=1``,
  torch's form) or ``tanh(xg_h + R_h (r ⊙ h) + Rb_h)`` (0), ``h = (1 - z) n + z h``;
- RNN: ``h = f(xg + hg)`` with ``f`` Tanh or Relu;

writing ``h`` into ``Y`` at every step and the last state into ``Y_h`` (``Y_c``).
Both layouts and all directions, optional initial states and bias; the default
activations only (RNN: Tanh or Relu), no ``clip``, no peepholes, no ``input_forget``,
no ``sequence_lens`` (every sequence runs the full length).
"""

from __future__ import annotations

from collections.abc import Callable

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    Load,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.lower.context import LoweringContext
from irkit.lower.elementwise import _sigmoid
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    product,
    static,
)

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"),
                        "RNN": ("tanh",)}


def _activations(node: Node, dirs: int) -> tuple[str, ...]:
    acts = tuple(str(a).lower() for a in (node.attr("activations", None) or []))
    default = _DEFAULT_ACTIVATIONS[node.op]
    if not acts:
        return default
    allowed = [default * dirs] + ([("relu",) * dirs] if node.op == "RNN" else [])
    if acts not in allowed:
        raise LoweringError(f"{node.op} activations {list(acts)} with a run-time sequence "
                            f"length (only the defaults{', or Relu' if node.op == 'RNN' else ''})")
    return acts[:len(default)]


def _check(node: Node, ins: list[TensorRef | None]) -> None:
    if node.attr("clip", None) is not None or int(node.attr("input_forget", 0)):
        raise LoweringError(f"{node.op} clip / input_forget with a run-time sequence length")
    if len(ins) > 4 and ins[4] is not None:
        raise LoweringError(f"{node.op} sequence_lens with a run-time sequence length")
    if len(ins) > 7 and ins[7] is not None:
        raise LoweringError(f"{node.op} peepholes with a run-time sequence length")
    if any(r is not None and r.dtype != "f32" for r in ins[:3]):
        raise LoweringError(f"{node.op} supports f32 only")


def lower_recurrent(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    _check(node, ins)
    x, w, r = ins[0], ins[1], ins[2]
    assert x is not None and w is not None and r is not None
    bias = ins[3] if len(ins) > 3 else None
    init_h = ins[5] if len(ins) > 5 else None
    init_c = ins[6] if len(ins) > 6 and node.op == "LSTM" else None
    layout = int(node.attr("layout", 0))
    direction = str(node.attr("direction", "forward"))
    dirs = 2 if direction == "bidirectional" else 1
    acts = _activations(node, dirs)
    hidden = static(r.shape[-1], f"{node.op} hidden size")
    width = static(x.shape[2], f"{node.op} input size")
    gates = GATES[node.op] * hidden
    seq, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    if x.cost > 8:
        x = ctx.materialize(x, "rnn_x")
    y_shape = ((batch, seq, Const(dirs), Const(hidden)) if layout
               else (seq, Const(dirs), batch, Const(hidden)))
    state_shape = ((batch, Const(dirs), Const(hidden)) if layout
                   else (Const(dirs), batch, Const(hidden)))
    y = ctx.new_buffer("rnn_y", "f32", product(y_shape))
    finals = [ctx.new_buffer(f"rnn_y{s}", "f32", product(state_shape))
              for s in ("h", "c")[:2 if node.op == "LSTM" else 1]]
    h = Buffer(ctx.fresh("h"), "f32", Const(hidden), "local")
    c = Buffer(ctx.fresh("c"), "f32", Const(hidden), "local")
    xg = Buffer(ctx.fresh("xg"), "f32", Const(gates), "local")
    hg = Buffer(ctx.fresh("hg"), "f32", Const(gates), "local")
    acc = Buffer(ctx.fresh("acc"), "f32", Const(1), "local")
    n = ctx.var("n")
    zero = Const(0)
    reset_first = node.op == "GRU" and not int(node.attr("linear_before_reset", 0))

    def state_at(d: int, k: Expr) -> Index:
        return (n, Const(d), k) if layout else (Const(d), n, k)

    def initial(ref: TensorRef | None, d: int, k: Expr) -> Expr:
        return ref.read(state_at(d, k)) if ref is not None else fconst(0.0)

    def dot(out: Buffer, g: Var, first: Expr, count: int, term: Callable[[Var], Expr]
            ) -> Stmt:
        """``out[g] = first + sum_k term(k)`` with a local accumulator."""
        k = ctx.var("k")
        return block(Store(acc, zero, first),
                     For(k, Const(count), Store(acc, zero, Load(acc, zero) + term(k))),
                     Store(out, g, Load(acc, zero)))

    def bias_at(d: int, g: Expr) -> Expr:
        return bias.read((Const(d), g)) if bias is not None else fconst(0.0)

    def direction_body(d: int) -> Stmt:
        reverse = direction == "reverse" or d == 1
        t = ctx.var("t")
        step = simplify_expr(seq - 1 - t) if reverse else t
        g, j = ctx.var("g"), ctx.var("j")
        x_at = (lambda i: (n, step, i)) if layout else (lambda i: (step, n, i))
        recurrent_rows = 2 * hidden if reset_first else gates
        projections = [
            For(g, Const(gates), dot(xg, g, bias_at(d, g), width,
                                     lambda i: x.read(x_at(i)) * w.read((Const(d), g, i)))),
            For(g, Const(recurrent_rows), dot(
                hg, g, bias_at(d, g + gates), hidden,
                lambda k: Load(h, k) * r.read((Const(d), g, k)))),
        ]
        y_at = (n, step, Const(d), j) if layout else (step, Const(d), n, j)
        write_y = Store(y, flat_index(y_at, y_shape), Load(h, j))
        steps = block(*projections, *_update(ctx, node.op, acts, h, c, xg, hg, j, hidden,
                                             reset_first, dot, d, r, bias_at), )
        q = ctx.var("q")
        state_init = [Store(h, q, initial(init_h, d, q))]
        if node.op == "LSTM":
            state_init.append(Store(c, q, initial(init_c, d, q)))
        last = [Store(buf, flat_index(state_at(d, q), state_shape), Load(src, q))
                for buf, src in zip(finals, (h, c))]
        return block(
            For(q, Const(hidden), block(*state_init)),
            For(t, seq, block(steps, For(j, Const(hidden), write_y))),
            For(q, Const(hidden), block(*last)))

    body = block(*(direction_body(d) for d in range(dirs)))
    ctx.add_kernel(node.op.lower(), For(n, batch, body, "parallel"), [h, c, xg, hg, acc])
    return [buffer_ref(y, y_shape), *(buffer_ref(buf, state_shape) for buf in finals)]


def _act(name: str, value: Expr) -> Expr:
    if name == "sigmoid":
        return _sigmoid(value)
    if name == "relu":
        return Binary("max", value, fconst(0.0))
    return Call("tanh", (value,))


def _update(ctx: LoweringContext, op: str, acts: tuple[str, ...], h: Buffer, c: Buffer,
            xg: Buffer, hg: Buffer, j: Var, hidden: int, reset_first: bool,
            dot: Callable[..., Stmt], d: int, r: TensorRef,
            bias_at: Callable[[int, Expr], Expr]) -> list[Stmt]:
    """The state update of one step, after ``xg`` and ``hg`` (``j`` runs over hidden)."""
    def pre(gate: int) -> Expr:
        return Load(xg, j + gate * hidden) + Load(hg, j + gate * hidden)

    if op == "LSTM":  # gates i, o, f, c
        f_act, g_act, h_act = acts
        return [For(j, Const(hidden), block(
            Store(c, j, _act(f_act, pre(2)) * Load(c, j) + _act(f_act, pre(0)) *
                  _act(g_act, pre(3))),
            Store(h, j, _act(f_act, pre(1)) * _act(h_act, Load(c, j)))))]
    if op == "RNN":
        return [For(j, Const(hidden), Store(h, j, _act(acts[0], pre(0))))]
    f_act, g_act = acts  # GRU: gates z, r, h
    z = _act(f_act, pre(0))
    one = fconst(1.0)
    if not reset_first:  # linear_before_reset: n = g(xg_h + r * (R_h h + Rb_h))
        cand = _act(g_act, Load(xg, j + 2 * hidden) + _act(f_act, pre(1)) *
                    Load(hg, j + 2 * hidden))
        return [For(j, Const(hidden), Store(h, j, (one - z) * cand + z * Load(h, j)))]
    # n = g(xg_h + R_h (r ⊙ h) + Rb_h): r ⊙ h first (in c), then its product with R_h
    g = ctx.var("g")
    return [
        For(j, Const(hidden), Store(c, j, _act(f_act, pre(1)) * Load(h, j))),
        For(g, Const(hidden), dot(hg, g + 2 * hidden, bias_at(d, g + 5 * hidden), hidden,
                                  lambda k: Load(c, k) * r.read((Const(d), g + 2 * hidden,
                                                                 k)))),
        For(j, Const(hidden), Store(h, j, (one - z) * _act(
            g_act, Load(xg, j + 2 * hidden) + Load(hg, j + 2 * hidden)) + z * Load(h, j))),
    ]


LOWERINGS = {"LSTM": lower_recurrent, "GRU": lower_recurrent, "RNN": lower_recurrent}
