"""The llvm backend's 16-bit floats (f16, bf16) and 16/32/64-bit integers (i16, u16, u32,
u64): elementwise arithmetic, unsigned semantics, casts between all dtypes, and the ops
that accumulate 16-bit floats in f32 (reductions, Softmax, LayerNorm, MatMul).

Each case has a numpy reference (ml_dtypes for bfloat16: like ONNX's reference, every
16-bit float op computes in f32 and rounds to nearest even). Where ONNX Runtime has a CPU
kernel for the case it is checked against ORT too. Tolerances: elementwise arithmetic and
casts are exact (same rounding as numpy); ops that accumulate use rtol 2e-3 / atol 1e-3
(f16) and rtol 2e-2 / atol 1e-2 (bf16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ml_dtypes = pytest.importorskip("ml_dtypes")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.kir import Binary, Cast, Const, Unary, simplify_expr  # noqa: E402

BF16 = ml_dtypes.bfloat16
ONNX_TYPES: dict[Any, int] = {
    np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
    np.float16: TensorProto.FLOAT16, BF16: TensorProto.BFLOAT16,
    np.int64: TensorProto.INT64, np.int32: TensorProto.INT32, np.int16: TensorProto.INT16,
    np.int8: TensorProto.INT8, np.uint64: TensorProto.UINT64, np.uint32: TensorProto.UINT32,
    np.uint16: TensorProto.UINT16, np.uint8: TensorProto.UINT8, np.bool_: TensorProto.BOOL,
}  # fmt: skip
TOLERANCE = {np.float16: (2e-3, 1e-3), BF16: (2e-2, 1e-2)}

Reference = Callable[..., np.ndarray]


@dataclass
class Case:
    name: str
    nodes: list[Any]
    inputs: dict[str, np.ndarray]
    reference: Reference  # numpy: inputs (in order) -> the output "y"
    out_type: Any = None  # numpy type of "y" (default: the first input's)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    exact: bool = True
    opset: int = 21


def node(op: str, ins: list[str], **attrs: Any) -> Any:
    return helper.make_node(op, ins, ["y"], **attrs)


R = np.random.default_rng(11)


def floats(dtype: Any, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (R.standard_normal(shape) * scale).astype(np.float32).astype(dtype)


def ints(dtype: Any, *shape: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return R.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def nonzero(a: np.ndarray) -> np.ndarray:
    return np.where(a == 0, np.ones_like(a), a)


def binary_cases() -> list[Case]:
    cases = []
    table: dict[str, Reference] = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                                   "Max": np.maximum, "Min": np.minimum}
    for t in (np.float16, BF16):
        a, b = floats(t, 4, 19), floats(t, 4, 19)
        for op, fn in {**table, "Div": np.divide}.items():
            cases.append(Case(f"{op.lower()}_{np.dtype(t).name}", [node(op, ["a", "b"])],
                              {"a": a, "b": nonzero(b)}, fn))
        cases.append(Case(f"less_{np.dtype(t).name}", [node("Less", ["a", "b"])],
                          {"a": a, "b": b}, np.less, np.bool_))
        cases.append(Case(f"exp_{np.dtype(t).name}", [node("Exp", ["a"])], {"a": a},
                          lambda x: np.exp(x.astype(np.float32)).astype(x.dtype)))
        cases.append(Case(f"sigmoid_{np.dtype(t).name}", [node("Sigmoid", ["a"])], {"a": a},
                          lambda x: (1 / (1 + np.exp(-x.astype(np.float32)))).astype(x.dtype),
                          exact=False))
    for t in (np.int16, np.uint16, np.uint32, np.uint64):
        a, b = ints(t, 4, 19), ints(t, 4, 19)
        name = np.dtype(t).name
        for op, fn in table.items():
            cases.append(Case(f"{op.lower()}_{name}", [node(op, ["a", "b"])], {"a": a, "b": b},
                              fn))
        cases.append(Case(f"div_{name}", [node("Div", ["a", "b"])], {"a": a, "b": nonzero(b)},
                          _int_div))
        cases.append(Case(f"mod_{name}", [node("Mod", ["a", "b"], fmod=0)],
                          {"a": a, "b": nonzero(b)}, np.mod))
        for op, fn in (("Less", np.less), ("GreaterOrEqual", np.greater_equal),
                       ("Equal", np.equal)):
            cases.append(Case(f"{op.lower()}_{name}", [node(op, ["a", "b"])],
                              {"a": a, "b": b}, fn, np.bool_))
    return cases


def _int_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer Div truncates toward zero (like C and ONNX Runtime; numpy floors)."""
    q = np.abs(x.astype(object)) // np.abs(y.astype(object))
    return np.where((x < 0) != (y < 0), -q, q).astype(x.dtype)


# Values every cast sees: specials, halfway points of f16 and bf16, large and tiny values.
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 1 + 2**-11, 1 + 3 * 2**-11,
                    1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11 + 2**-40, 65504.0, 65520.0, 7e4,
                    3e38, 1e-8, 6e-8, -3e-5, 100.25, 255.0, 127.0, np.inf, -np.inf, np.nan],
                   np.float64)
FLOAT_TYPES = (np.float64, np.float32, np.float16, BF16)
INT_TYPES = (np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8)


def cast_source(src: Any, dst: Any) -> np.ndarray:
    """Values of ``src`` that ``dst`` represents without overflow (float -> int casts
    out of range are undefined in ONNX)."""
    if src is np.bool_:
        return np.array([True, False, True, True, False, False, True, False])
    if src in INT_TYPES:
        return np.concatenate([ints(src, 12), np.array([0, 1, 100], src)])
    with np.errstate(over="ignore", invalid="ignore"):
        values = SPECIAL.astype(src)
        if dst in INT_TYPES:
            info = np.iinfo(dst)
            wide = values.astype(np.float64)
            values = values[np.isfinite(wide) & (wide >= info.min) & (wide < min(
                info.max, 2**62))]
    return values


def numpy_cast(x: np.ndarray, dst: Any) -> np.ndarray:
    if dst is np.bool_:
        return x.astype(np.float64) != 0 if x.dtype == BF16 else x.astype(np.bool_)
    if x.dtype == BF16 and dst in INT_TYPES:
        x = x.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dst)


def cast_cases() -> list[Case]:
    cases = []
    types = (*FLOAT_TYPES, *INT_TYPES, np.bool_)
    for src in types:
        for dst in types:
            if src is dst or not ({src, dst} & {np.float16, BF16, np.int16, np.uint16,
                                                 np.uint32, np.uint64}):
                continue
            x = cast_source(src, dst)
            cases.append(Case(f"cast_{np.dtype(src).name}_{np.dtype(dst).name}",
                              [node("Cast", ["a"], to=ONNX_TYPES[dst])], {"a": x},
                              lambda a, dst=dst: numpy_cast(a, dst), dst))
    return cases


def _softmax(x: np.ndarray) -> np.ndarray:
    w = x.astype(np.float32)
    e = np.exp(w - w.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def _layernorm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    w = x.astype(np.float32)
    mu = w.mean(axis=-1, keepdims=True)
    var = ((w - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (w - mu) / np.sqrt(var + 1e-5) * scale.astype(np.float32) + bias.astype(np.float32)
    return y.astype(x.dtype)


def accumulating_cases() -> list[Case]:
    cases = []
    for t in (np.float16, BF16):
        name = np.dtype(t).name
        x = floats(t, 3, 64, 5)
        axes = {"axes": np.array([1], np.int64)}
        for op, fn in (("ReduceSum", np.sum), ("ReduceMean", np.mean), ("ReduceMax", np.max),
                       ("ReduceL2", lambda v, **k: np.sqrt(np.sum(v * v, **k)))):
            cases.append(Case(f"{op.lower()}_{name}", [node(op, ["a", "axes"])], {"a": x},
                              lambda a, fn=fn: fn(a.astype(np.float32), axis=1,
                                                  keepdims=True).astype(a.dtype),
                              consts=axes, exact=False))
        cases.append(Case(f"softmax_{name}", [node("Softmax", ["a"])],
                          {"a": floats(t, 4, 33, scale=3.0)}, _softmax, exact=False))
        cases.append(Case(f"layernorm_{name}", [node("LayerNormalization", ["a", "s", "b"])],
                          {"a": floats(t, 4, 48)},
                          lambda a, t=t: _layernorm(a, s16[t], b16[t]),
                          consts={"s": s16[t], "b": b16[t]}, exact=False))
        cases.append(Case(f"matmul_{name}", [node("MatMul", ["a", "b"])],
                          {"a": floats(t, 2, 5, 40), "b": floats(t, 40, 24)},
                          lambda a, b: np.matmul(a.astype(np.float32), b.astype(np.float32)
                                                 ).astype(a.dtype), exact=False))
        cases.append(Case(f"matmul_const_{name}", [node("MatMul", ["a", "w"])],
                          {"a": floats(t, 5, 40)},
                          lambda a, t=t: np.matmul(a.astype(np.float32), w16[t].astype(
                              np.float32)).astype(a.dtype),
                          consts={"w": w16[t]}, exact=False))
    for t in (np.uint8, np.int32, np.uint32, np.int16):
        x = ints(t, 3, 7, 5)
        axes = {"axes": np.array([1], np.int64)}
        for op, fn in (("ReduceMax", np.max), ("ReduceMin", np.min), ("ReduceSum", np.sum)):
            # Sums of small values: ORT and numpy disagree on what overflow gives.
            data = x % 64 if op == "ReduceSum" else x
            cases.append(Case(f"{op.lower()}_{np.dtype(t).name}", [node(op, ["a", "axes"])],
                              {"a": data}, lambda a, fn=fn: fn(a, axis=1, keepdims=True
                                                               ).astype(a.dtype), consts=axes))
    flags = R.integers(0, 2, size=(3, 4, 5)).astype(np.bool_)
    for op, fn in (("ReduceMax", np.any), ("ReduceMin", np.all)):
        cases.append(Case(f"{op.lower()}_bool", [node(op, ["a", "axes"])], {"a": flags},
                          lambda a, fn=fn: fn(a, axis=2, keepdims=True),
                          consts={"axes": np.array([2], np.int64)}))
    cases.append(Case("maxpool_uint8", [node("MaxPool", ["a"], kernel_shape=[2, 2])],
                      {"a": ints(np.uint8, 1, 2, 6, 6)}, _maxpool2))
    return cases


def _maxpool2(a: np.ndarray) -> np.ndarray:
    n, c, h, w = a.shape
    windows = np.lib.stride_tricks.sliding_window_view(a, (2, 2), axis=(2, 3))
    return windows.max(axis=(4, 5)).reshape(n, c, h - 1, w - 1)


s16 = {t: (1 + floats(t, 48) * 0.1).astype(t) for t in (np.float16, BF16)}
b16 = {t: floats(t, 48) for t in (np.float16, BF16)}
w16 = {t: floats(t, 40, 24) for t in (np.float16, BF16)}
CASES = binary_cases() + cast_cases() + accumulating_cases()


def build_model(case: Case) -> Any:
    inputs = [helper.make_tensor_value_info(n, ONNX_TYPES[a.dtype.type], list(a.shape))
              for n, a in case.inputs.items()]
    first = next(iter(case.inputs.values())).dtype.type
    out = helper.make_tensor_value_info("y", ONNX_TYPES[case.out_type or first], None)
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in case.consts.items()]
    graph = helper.make_graph(case.nodes, case.name, inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def ort_session(model: Any) -> Any | None:
    try:
        return ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    except Exception:  # no CPU kernel for this op and dtype
        return None


def check(got: np.ndarray, expected: np.ndarray, case: Case, what: str) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, what
    if case.exact or expected.dtype.type not in TOLERANCE:
        if expected.dtype.type in (*FLOAT_TYPES, np.float16, BF16):  # NaN equals NaN
            got, expected = got.astype(np.float64), expected.astype(np.float64)
        np.testing.assert_array_equal(got, expected, err_msg=what)
        return
    rtol, atol = TOLERANCE[expected.dtype.type]
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32),
                               rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dtype_case(case: Case, tmp_path: Path) -> None:
    model = build_model(case)
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    compiled = irkit.runtime.load(artifact.save(tmp_path / "artifact"), threads=1,
                                  reject_nonfinite=False)  # the cases hold NaN and inf
    got = compiled(**case.inputs)["y"]
    with np.errstate(all="ignore"):
        expected = np.asarray(case.reference(*case.inputs.values()))
    check(got, expected.astype(case.out_type or expected.dtype), case, f"{case.name} vs numpy")
    if case.name.startswith("cast_") or any(a.dtype == BF16 for a in case.inputs.values()):
        return  # ORT's casts saturate differently; its Python API takes no bfloat16 arrays
    session = ort_session(model)
    if session is not None:
        check(got, session.run(["y"], case.inputs)[0], case, f"{case.name} vs onnxruntime")


def test_bf16_rounding_is_nearest_even_and_keeps_nan(tmp_path: Path) -> None:
    # Every f32 bit pattern class near bf16 halfway points, plus NaN payloads and overflow.
    base = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F808001, 0x7F7FFFFF, 0x7F7F8000,
                     0x00008000, 0x00018000, 0x7FC00001, 0xFF800001, 0x80000001],
                    np.uint32).view(np.float32)
    case = Case("bf16_round", [node("Cast", ["a"], to=TensorProto.BFLOAT16)], {"a": base},
                lambda a: a.astype(BF16), BF16)
    artifact = irkit.compile(irkit.load_model(build_model(case)), target="llvm")
    got = irkit.runtime.load(artifact.save(tmp_path / "a"), threads=1,
                              reject_nonfinite=False)(a=base)["y"]
    with np.errstate(invalid="ignore"):
        expected = base.astype(BF16)
    finite = ~np.isnan(expected.astype(np.float32))
    assert np.array_equal(got.view(np.uint16)[finite], expected.view(np.uint16)[finite])
    assert np.isnan(got.astype(np.float32)[~finite]).all()


def test_constant_folding_wraps_to_the_type() -> None:
    assert simplify_expr(Binary("add", Const(250, "u8"), Const(10, "u8"))) == Const(4, "u8")
    assert simplify_expr(Binary("mul", Const(2**31, "u32"), Const(2, "u32"))) == Const(0, "u32")
    assert simplify_expr(Binary("add", Const(32767, "i16"), Const(1, "i16"))) == Const(
        -32768, "i16")
    assert simplify_expr(Unary("neg", Const(1, "u16"))) == Const(65535, "u16")
    assert simplify_expr(Cast("u8", Const(-1, "i32"))) == Const(255, "u8")
    # 16-bit float arithmetic is left to the backend, which rounds each result.
    half = Binary("add", Const(0.1, "f16"), Const(0.2, "f16"))
    assert simplify_expr(half) == half


@pytest.mark.parametrize("dst", [np.float16, BF16], ids=["f16", "bf16"])
def test_f64_to_16_bit_rounds_once(dst: Any, tmp_path: Path) -> None:
    # Just above a halfway point: rounding through f32 would land on it and round to even.
    ulp = 2**-10 if dst is np.float16 else 2**-7
    x = np.array([1 + ulp / 2 + 2**-40, -(1 + ulp / 2 + 2**-40), 1 + ulp / 2], np.float64)
    case = Case("f64_round", [node("Cast", ["a"], to=ONNX_TYPES[dst])], {"a": x},
                lambda a: a, dst)
    artifact = irkit.compile(irkit.load_model(build_model(case)), target="llvm")
    got = irkit.runtime.load(artifact.save(tmp_path / "a"), threads=1,
                              reject_nonfinite=False)(a=x)["y"]
    assert got.astype(np.float64).tolist() == [1 + ulp, -(1 + ulp), 1.0]
