"""Kernel IR: printer goldens, simplifier rewrite rules, verifier, unrolling."""

from __future__ import annotations

import pytest

from irkit.kir import (
    Binary,
    Block,
    Broadcast,
    Buffer,
    Call,
    Cast,
    Const,
    For,
    If,
    Kernel,
    KirError,
    Let,
    Load,
    N,
    Select,
    Store,
    Unary,
    Var,
    format_expr,
    prepare_kernel,
    print_kernel,
    simplify_expr,
    simplify_stmt,
    unroll_loops,
    verify_kernel,
)
from irkit.kir.simplify import EXPR_RULES, rewrite_expr

IV, JV = Var("i"), Var("j")
X = Buffer("x", "f32", N * 4)
Y = Buffer("y", "f32", N * 4)


def relu_kernel() -> Kernel:
    body = For(IV, N, For(JV, Const(4), Store(Y, IV * 4 + JV, Binary(
        "max", Load(X, IV * 4 + JV), Const(0.0, "f32")))), "parallel")
    return Kernel("relu", (X, Y), body)


GOLDEN_RELU = """\
kernel relu(x: f32[(N * 4)], y: f32[(N * 4)]) {
  for i in range(N) parallel:
    for j in range(4):
      y[((i * 4) + j)] = max(x[((i * 4) + j)], 0.0:f32)
}"""


def test_print_kernel_golden() -> None:
    assert print_kernel(relu_kernel()) == GOLDEN_RELU


def test_print_vector_local_if_let() -> None:
    acc = Buffer("acc", "f32", Const(16), "local")
    v = Var("v", "f32")
    body = Block((
        Let(v, Load(X, Const(0), 8)),
        Store(acc, Const(0), Call("fma", (Broadcast(Load(X, IV), 8), v, Load(acc, Const(0), 8)))),
        If(Binary("lt", IV, Const(3)), Store(Y, IV, Cast("f32", IV)), Store(Y, IV, Select(
            Binary("eq", IV, Const(4)), Const(1.0, "f32"), Const(2.0, "f32")))),
    ))
    kernel = Kernel("k", (X, Y), For(IV, Const(8), body, "serial", Const(2)), (acc,))
    assert print_kernel(kernel) == """\
kernel k(x: f32[(N * 4)], y: f32[(N * 4)]) {
  local acc: f32[16]
  for i in range(2, +8):
    let v: f32 = x[0 : +8]
    acc[0 : +8] = fma(broadcast(x[i], 8), v, acc[0 : +8])
    if (i < 3):
      y[i] = f32(i)
    else:
      y[i] = select((i == 4), 1.0:f32, 2.0:f32)
}"""
    verify_kernel(kernel)


SIMPLIFY_CASES = [
    (IV + 0, "i"),
    (0 + IV, "i"),
    (IV * 1, "i"),
    (IV * 0, "0"),
    (IV - IV, "0"),
    ((IV + 3) + 4, "(i + 7)"),
    ((IV * 2) * 8, "(i * 16)"),
    (Const(3) + IV, "(i + 3)"),
    (Const(6) * Const(7), "42"),
    (Const(7) // Const(2), "3"),
    (Const(-7) % Const(3), "-1"),
    ((IV * 8) % 8, "0"),
    ((IV * 8) // 8, "i"),
    ((IV // 32) * 32 + IV % 32, "i"),
    (((JV + IV // 32) * 32) + IV % 32, "((j * 32) + i)"),
    (Select(Binary("lt", Const(1), Const(2)), IV, JV), "i"),
    (Select(Binary("lt", IV, JV), JV, JV), "j"),
    (Cast("i64", IV), "i"),
    (Cast("f32", Const(3)), "3.0:f32"),
    (Unary("neg", Unary("neg", IV)), "i"),
    (Binary("max", Const(2), Const(5)), "5"),
    (Const(1.5, "f32") * Const(2.0, "f32"), "3.0:f32"),
    (Var("x", "f32") + Const(0.0, "f32"), "x"),
    # integer and/or/not are bitwise; bool ones logical; division exact past 2**53
    (Binary("and", Const(12), Const(10)), "8"),
    (Binary("or", Const(12), Const(3)), "15"),
    (Binary("xor", Const(12), Const(10)), "6"),
    (Binary("xor", IV, JV), "(i ^ j)"),
    (Binary("xor", Const(True, "bool"), Const(True, "bool")), "false"),
    (Unary("not", Const(5)), "-6"),
    (Binary("and", Const(True, "bool"), Const(False, "bool")), "false"),
    (Const(2**62 + 1) // Const(1), str(2**62 + 1)),
    (Const(-7) // Const(2), "-3"),
]


@pytest.mark.parametrize(("expr", "expected"), SIMPLIFY_CASES, ids=[c[1] for c in SIMPLIFY_CASES])
def test_simplify_rules(expr, expected) -> None:
    assert format_expr(simplify_expr(expr)) == expected


def test_simplify_cases_counted() -> None:
    assert len(SIMPLIFY_CASES) == 32
    assert len(EXPR_RULES) >= 7


def test_rewrite_rule_returning_none_is_no_match() -> None:
    calls = []

    def never(expr):
        calls.append(expr)
        return None

    expr = Binary("add", IV, JV)
    assert rewrite_expr(expr, [(Binary, never)]) == expr
    assert calls == [expr]


def test_simplify_stmt_folds_loops_and_ifs() -> None:
    stmt = Block((
        For(IV, Const(0), Store(Y, IV, Const(1.0, "f32"))),
        For(JV, Const(1), Store(Y, JV + 2, Const(2.0, "f32")), "serial", Const(5)),
        If(Binary("gt", Const(2), Const(1)), Store(Y, Const(0), Const(3.0, "f32"))),
    ))
    out = simplify_stmt(stmt)
    assert out == Block((Store(Y, Const(7), Const(2.0, "f32")), Store(Y, Const(0),
                                                                       Const(3.0, "f32"))))


def test_unroll_expands_constant_loops() -> None:
    stmt = For(IV, Const(3), Store(Y, IV * 2, Const(0.0, "f32")), "unroll")
    assert simplify_stmt(unroll_loops(stmt)) == Block(tuple(
        Store(Y, Const(2 * k), Const(0.0, "f32")) for k in range(3)))
    with pytest.raises(KirError, match="constant extent"):
        unroll_loops(For(IV, N, Store(Y, IV, Const(0.0, "f32")), "unroll"))


def test_prepare_kernel_keeps_semantics_text() -> None:
    prepared = prepare_kernel(relu_kernel())
    assert print_kernel(prepared) == GOLDEN_RELU


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (Store(Y, Var("k"), Const(0.0, "f32")), "variable k"),
        (Store(Buffer("z", "f32", Const(1)), Const(0), Const(0.0, "f32")), "undeclared"),
        (Store(Y, Const(0), Const(1)), "storing i64"),
        (Store(Y, Const(0), Binary("add", Const(1.0, "f32"), Const(1))), "mixes f32 and i64"),
        (Store(Y, Const(0), Call("nope", (Const(1.0, "f32"),))), "unknown call"),
        (Store(Y, Const(0), Binary("nand", Const(1.0, "f32"), Const(1.0, "f32"))),
         "unknown binary op nand"),
        (Store(Y, Const(0), Binary("xor", Const(1.0, "f32"), Const(1.0, "f32"))), "bitwise"),
        (For(IV, Const(2), Store(Y, IV, Const(0.0, "f32")), "sideways"), "loop kind"),
        (Let(Var("a", "f32"), Const(1)), "let a"),
    ],
)
def test_verifier_rejects(body, message) -> None:
    with pytest.raises(KirError, match=message):
        verify_kernel(Kernel("bad", (X, Y), body))


def test_vector_loop_becomes_vector_code_and_remainder() -> None:
    from irkit.kir.vectorize import affine_stride, vectorize_loops

    b = Buffer("b", "f32", Const(4))
    body = Store(Y, IV * 4 + JV, Binary("max", Load(X, IV * 4 + JV) + Load(b, IV),
                                        Const(0.0, "f32")))
    loop = For(JV, Const(10), body, "vector")
    text = print_kernel(Kernel("v", (X, Y, b), simplify_stmt(vectorize_loops(loop, 4))))
    assert text == """\
kernel v(x: f32[(N * 4)], y: f32[(N * 4)], b: f32[4]) {
  for j_v in range(2):
    y[((i * 4) + (j_v * 4)) : +4] = max((x[((i * 4) + (j_v * 4)) : +4] + b[i]), 0.0:f32)
  for j in range(8, +2):
    y[((i * 4) + j)] = max((x[((i * 4) + j)] + b[i]), 0.0:f32)
}"""
    assert affine_stride(IV * 4 + JV * 3, JV) == 3
    assert affine_stride((JV // 2) + IV, JV) is None


def test_vector_loop_left_serial_when_not_contiguous() -> None:
    from irkit.kir.vectorize import vectorize_loops

    gather = For(JV, Const(8), Store(Y, JV, Load(X, JV * 3)), "vector")
    assert vectorize_loops(gather, 4) == For(JV, Const(8), Store(Y, JV, Load(X, JV * 3)))
    every_other = vectorize_loops(For(JV, Const(8), Store(Y, JV, Load(X, JV * 2)), "vector"), 4)
    from irkit.kir.visit import walk_exprs, walk_stmts

    strided = [e for st in walk_stmts(every_other) if isinstance(st, Store)
               for e in walk_exprs(st.value) if isinstance(e, Load) and e.vlanes == 4]
    assert strided and all(e.stride == 2 for e in strided)
    as_value = For(JV, Const(8), Store(Y, JV, Cast("f32", JV)), "vector")
    assert vectorize_loops(as_value, 4).kind == "serial"  # type: ignore[attr-defined]
