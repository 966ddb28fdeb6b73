"""Low-bit types (irkit.lower.lowbit) through the llvm backend and the kernel IR
interpreter: every code widened, floats narrowed with ONNX's rounding and saturation
(``ml_dtypes``, ``onnx.numpy_helper.saturate_cast`` and ``to_float8e8m0`` are the
references), int4
block-quantized weights dequantized into a MatMul (``onnx.reference``: ORT cannot return
int4 arrays to numpy)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from irkit.testing.op_cases import KIR, LLVM_NATIVE, KernelTarget, compile_and_load  # noqa: E402

FLOATS = {
    TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
    TensorProto.FLOAT4E2M1: ml_dtypes.float4_e2m1fn,
}
INTS = {TensorProto.INT4: ml_dtypes.int4, TensorProto.UINT4: ml_dtypes.uint4,
        TensorProto.INT2: ml_dtypes.int2, TensorProto.UINT2: ml_dtypes.uint2}
TARGETS = [pytest.param(LLVM_NATIVE, id="llvm"), pytest.param(KIR, id="kir")]


def probe_values(dtype: type) -> np.ndarray:
    """Every finite value of ``dtype``, the midpoints between neighbours (ties), points
    just off them, out-of-range values, ±inf, NaN and ±0, in f32."""
    grid = np.arange(256, dtype=np.uint16).astype(np.uint8)
    bits = 4 if dtype is ml_dtypes.float4_e2m1fn else 8
    values = (grid & ((1 << bits) - 1)).view(dtype).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2
    big = float(ml_dtypes.finfo(dtype).max)
    extra = [np.inf, -np.inf, np.nan, 0.0, -0.0, big * 1.06, big * 1.2, -big * 1.2, 1e30,
             1e-30, -1e-30, float(ml_dtypes.finfo(dtype).smallest_subnormal) / 2]
    out = np.concatenate([finite, mids, mids * (1 + 2**-20), mids * (1 - 2**-20), extra])
    return out.astype(np.float32)


def same_codes(got: np.ndarray, want: np.ndarray, where: str) -> None:
    """Equal values (NaN equal to any NaN), and equal codes wherever ``want`` is not NaN
    (so -0 is told from 0)."""
    g, w = got.astype(np.float32), want.astype(np.float32)
    nan = np.isnan(w)
    np.testing.assert_array_equal(np.isnan(g), nan, err_msg=where)
    np.testing.assert_array_equal(got.view(np.uint8)[~nan], want.view(np.uint8)[~nan],
                                  err_msg=where)


@pytest.mark.parametrize("target", TARGETS)
def test_float_narrowing_rounds_and_saturates_like_ml_dtypes(target: KernelTarget,
                                                             tmp_path: Path) -> None:
    """One graph: each float8/float4 type from its own probe values, with and without
    saturation (float4e2m1 always saturates)."""
    nodes, inputs, outputs, feeds, wants = [], [], [], {}, {}
    for to, dtype in FLOATS.items():
        name = TensorProto.DataType.Name(to).lower()
        x = probe_values(dtype)
        feeds[name] = x
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [x.size]))
        for saturate in ([1] if to == TensorProto.FLOAT4E2M1 else [1, 0]):
            out = f"{name}_sat{saturate}"
            nodes.append(helper.make_node("Cast", [name], [out], to=to, saturate=saturate))
            outputs.append(helper.make_tensor_value_info(out, to, [x.size]))
            wants[out] = numpy_helper.saturate_cast(x, dtype) if saturate else x.astype(dtype)
    graph = helper.make_graph(nodes, "narrow", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    got = compile_and_load(model, tmp_path, target=target)(**feeds)
    for out, want in wants.items():
        assert got[out].dtype == want.dtype, out
        same_codes(got[out], want, out)


@pytest.mark.parametrize("target", TARGETS)
def test_e8m0_narrowing_matches_onnx_in_every_round_mode(target: KernelTarget,
                                                         tmp_path: Path) -> None:
    """Every power of two f32 has, random magnitudes over its whole range, subnormals,
    ties of the nearest mode and specials; codes equal ``onnx.numpy_helper.to_float8e8m0``."""
    rng = np.random.default_rng(2)
    x = np.concatenate([
        np.ldexp(np.float32(1), np.arange(-149, 128)).astype(np.float32),
        (rng.normal(size=600) * 2.0 ** rng.integers(-140, 120, 600)).astype(np.float32),
        np.array([0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1.5, 3.0, 1.4999, 2**-127,
                  1.5 * 2**-127, 1e-45], np.float32)]).astype(np.float32)
    nodes, outputs, wants = [], [], {}
    for mode in ("up", "down", "nearest"):
        for saturate in (1, 0):
            out = f"{mode}_{saturate}"
            nodes.append(helper.make_node("Cast", ["x"], [out], to=TensorProto.FLOAT8E8M0,
                                          saturate=saturate, round_mode=mode))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT8E8M0, [x.size]))
            wants[out] = numpy_helper.to_float8e8m0(x, saturate=bool(saturate), round_mode=mode)
    graph = helper.make_graph(nodes, "e8m0",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                              outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])
    got = compile_and_load(model, tmp_path, target=target)(x=x)
    for out, want in wants.items():
        np.testing.assert_array_equal(got[out].view(np.uint8), want.view(np.uint8), err_msg=out)


@pytest.mark.parametrize("target", TARGETS)
def test_every_code_widens_exactly(target: KernelTarget, tmp_path: Path) -> None:
    for k, (code, dtype) in enumerate({**FLOATS, **INTS}.items()):
        bits = 8 if code in FLOATS and code != TensorProto.FLOAT4E2M1 else (
            2 if dtype in (ml_dtypes.int2, ml_dtypes.uint2) else 4)
        x = np.arange(1 << bits, dtype=np.uint8).view(dtype)
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "widen",
            [helper.make_tensor_value_info("x", code, [x.size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        got = compile_and_load(model, tmp_path / str(k), target=target)(x=x)["y"]
        np.testing.assert_array_equal(got, x.astype(np.float32))


@pytest.mark.parametrize("target", TARGETS)
def test_int4_block_dequantized_matmul_matches_onnx_reference(target: KernelTarget,
                                                              tmp_path: Path) -> None:
    """x @ DequantizeLinear(w_int4, scales per block of 16 rows), and the weights
    quantized by QuantizeLinear to int4 at run time: both against onnx.reference."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    k, n, block = 64, 24, 16
    w = rng.integers(-8, 8, (k, n)).astype(ml_dtypes.int4)
    scale = rng.uniform(0.01, 0.1, (k // block, n)).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0, block_size=block),
        helper.make_node("MatMul", ["x", "wf"], ["y"]),
        helper.make_node("QuantizeLinear", ["x", "qs"], ["q"], axis=0,
                         output_dtype=TensorProto.INT4),
    ]
    graph = helper.make_graph(
        nodes, "int4_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n]),
         helper.make_tensor_value_info("q", TensorProto.INT4, [3, k])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.array([0.05, 0.2, 0.5], np.float32), "qs")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    x = rng.normal(size=(3, k)).astype(np.float32)
    want_y, want_q = ReferenceEvaluator(model).run(None, {"x": x})
    got = compile_and_load(model, tmp_path, target=target)(x=x)
    np.testing.assert_allclose(got["y"], want_y, rtol=1e-5, atol=1e-5)
    assert got["q"].dtype == np.dtype(ml_dtypes.int4)
    np.testing.assert_array_equal(got["q"].astype(np.int8), want_q.astype(np.int8))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("wtype", [TensorProto.INT4, TensorProto.UINT4], ids=["int4", "uint4"])
def test_packed_int4_matmul_matches_onnx_reference(target: KernelTarget, wtype: int,
                                                   tmp_path: Path) -> None:
    """MatMul by DequantizeLinear(const 4-bit W, block scales, zero points) takes the
    packed kernel (irkit.lower.int4_matmul); rows 1 and 5 through a symbolic batch dim."""
    from onnx.reference import ReferenceEvaluator

    from irkit.lower.int4_matmul import matches

    rng = np.random.default_rng(1)
    k, n, block = 64, 48, 32
    dtype = INTS[wtype]
    lo, hi = (-8, 8) if wtype == TensorProto.INT4 else (0, 16)
    w = rng.integers(lo, hi, (k, n)).astype(dtype)
    zero = rng.integers(lo, hi, (k // block, n)).astype(dtype)
    scale = rng.uniform(0.01, 0.1, (k // block, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0,
                          block_size=block),
         helper.make_node("MatMul", ["x", "wf"], ["y"])], "int4_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(zero, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    from irkit import api

    assert matches(api.load_model(model).nodes[1])
    compiled = compile_and_load(model, tmp_path, target=target)
    for rows in (1, 5):
        x = rng.normal(size=(rows, 2, k)).astype(np.float32)
        (want,) = ReferenceEvaluator(model).run(None, {"x": x})
        np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_int4_matmul_tiles_row_blocks_and_tiny_scales(target: KernelTarget,
                                                      tmp_path: Path) -> None:
    """The tiled kernel's edges: 84 columns (a last column tile partly filled, down to a
    partial vector, with 8 and 16 lanes), uint4 without zero points (no zero-point term),
    rows 1, 3 and 7 (the 1- and 3-row forms and a block of 4); and the same weights with
    one block's scales below TINY_SCALE, which unpacks every nibble by shifts instead of
    masking it in place. Against onnx.reference, rtol and atol 1e-5."""
    from onnx.reference import ReferenceEvaluator

    from irkit.lower.int4_matmul import TINY_SCALE

    rng = np.random.default_rng(2)
    k, n, block = 128, 84, 64
    w = rng.integers(0, 16, (k, n)).astype(ml_dtypes.uint4)
    normal = rng.uniform(0.01, 0.1, (k // block, n)).astype(np.float32)
    tiny = normal.copy()
    tiny[1] = TINY_SCALE / 4
    for name, scale in (("masked", normal), ("shifted", tiny)):
        graph = helper.make_graph(
            [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0,
                              block_size=block),
             helper.make_node("MatMul", ["x", "wf"], ["y"])], "int4_tiles",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        compiled = compile_and_load(model, tmp_path / name, target=target)
        for rows in (1, 3, 7):
            x = rng.normal(size=(rows, k)).astype(np.float32)
            (want,) = ReferenceEvaluator(model).run(None, {"x": x})
            np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}, {rows} rows")


def test_arithmetic_on_low_bit_values_is_refused(tmp_path: Path) -> None:
    from irkit import api
    from irkit.errors import IrkitError

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "neg",
        [helper.make_tensor_value_info("x", TensorProto.INT4, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT4, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(IrkitError, match="low-bit"):
        api.compile(api.load_model(model), target="llvm")
