"""int8 and sparse kernels of the llvm backend against ``irkit.evaluate`` of the same
graph (the irkit ops' reference decomposition), at batch 1, 7 and 64.

Tolerance for int8: the accumulators are exact int32, so an output differs from the
reference only by float rounding of the rescale (1e-5 relative) — except where
``x / scale`` of one input lies within an ulp of a rounding boundary and the two sides
round it to neighbouring bytes. Each output may then move by one quantization step of
one input times that input's weight: ``x_scale * max|w|`` per flip. We allow one flip
per output element and require 99% of the elements of a one-layer graph to be within
1e-5 relative (90% for two layers: a flip in a hidden activation, which the two sides
compute with different float summation orders, moves a whole output row).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

BATCHES = (1, 7, 64)


def _model(nodes: list[Any], inits: dict[str, np.ndarray], x_shape: list[Any],
           y_shape: list[Any]) -> Any:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model(k: int = 70, hidden: int = 45, out: int = 19, residual: bool = False) -> Any:
    """MatMul+bias+relu, then Gemm(transB); K and widths not multiples of 4 or 16."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((k, hidden)) * 0.2, "b0": rng.standard_normal(hidden),
             "w1": rng.standard_normal((out, hidden)) * 0.2, "b1": rng.standard_normal(out)}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]),
             helper.make_node("Add", ["h0", "b0"], ["h1"])]
    last = "h1"
    if residual:
        inits["wr"] = rng.standard_normal((hidden, hidden)) * 0.2
        nodes += [helper.make_node("MatMul", ["h1", "wr"], ["r0"]),
                  helper.make_node("Add", ["r0", "h1"], ["r1"])]
        last = "r1"
    nodes += [helper.make_node("Relu", [last], ["h2"]),
              helper.make_node("Gemm", ["h2", "w1", "b1"], ["y"], transB=1)]
    return _model(nodes, inits, ["N", k], ["N", out])


def conv_model(cin: int, stride: int = 1, pad: int = 1, size: int = 9, kernel: int = 3,
               cout: int = 12) -> Any:
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((cout, cin, kernel, kernel)) * 0.3,
             "b": rng.standard_normal(cout)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4,
                              strides=[stride] * 2),
             helper.make_node("Relu", ["c"], ["y"])]
    out = (size + 2 * pad - kernel) // stride + 1
    return _model(nodes, inits, ["N", cin, size, size], ["N", cout, out, out])


def compile_llvm(graph: Any, tmp_path: Path, arch: str = "native") -> Any:
    art = irkit.compile(graph, target="llvm", threads=1, arch=arch)
    return irkit.runtime.load(art.save(tmp_path / "m"), threads=1)


def quantized_ops(graph: Any) -> list[Any]:
    return [n for n in graph.nodes if n.domain == "irkit"]


def flip_tolerance(graph: Any) -> float:
    """x_scale * max|w_q * w_scale| over the int8 ops (dynamic: bound the scale by the
    inputs' range, |x| < 6 here)."""
    tol = 0.0
    for node in quantized_ops(graph):
        consts = [v.const if v is not None and v.const is not None else None
                  for v in node.inputs]
        if node.op == "DynamicQuantMatMulInt8":
            x_scale, w_q, w_scale = 12.0 / 255, consts[1], consts[2]
        else:
            x_scale, w_q, w_scale = float(consts[1]), consts[3], consts[4]
        w = np.abs(w_q.astype(np.float32)) * np.max(w_scale)
        tol = max(tol, x_scale * float(w.max()))
    return tol


def check(graph: Any, tmp_path: Path, shape: tuple[int, ...], flips: float = 1.0,
          exact: float = 0.99, arch: str = "native", compiled: Any = None) -> int:
    compiled = compiled or compile_llvm(graph, tmp_path, arch)
    tol = flip_tolerance(graph) * flips
    checked = 0
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        x = np.clip(x * 1.5, -5.9, 5.9)
        want = irkit.evaluate(graph, {"x": x})["y"]
        got = compiled(x=x)["y"]
        assert got.shape == want.shape
        err = np.abs(got - want)
        scale = max(float(np.abs(want).max()), 1e-6)
        assert err.max() <= tol + 1e-5 * scale, f"batch {batch}: {err.max()} > {tol}"
        close = np.mean(err <= 1e-5 * scale + 1e-6)
        assert close >= exact, f"batch {batch}: only {close:.3f} of outputs exact"
        checked += 1
    return checked


CALIB = [{"x": np.clip(np.random.default_rng(9).standard_normal((32, 70)) * 1.5, -5.9, 5.9)
          .astype(np.float32)}]


@pytest.mark.parametrize("symmetric", [False, True])
def test_static_matmul(tmp_path: Path, symmetric: bool) -> None:
    graph = irkit.load_model(mlp_model())
    q = irkit.optimize(graph, f"fuse,quantize{{mode=static,per_channel=true,"
                              f"symmetric={str(symmetric).lower()}}}", calibration=CALIB)
    assert [n.op for n in quantized_ops(q)] == ["QLinearMatMulInt8"] * 2
    assert check(q, tmp_path, (70,), exact=0.9) == 3


def test_static_matmul_per_tensor_with_residual(tmp_path: Path) -> None:
    graph = irkit.load_model(mlp_model(residual=True))
    q = irkit.optimize(graph, "fuse,quantize{mode=static}", calibration=CALIB)
    assert len(quantized_ops(q)) == 3
    assert check(q, tmp_path, (70,), flips=2.0, exact=0.9) == 3


def test_dynamic_matmul(tmp_path: Path) -> None:
    graph = irkit.load_model(mlp_model())
    q = irkit.optimize(graph, "fuse,quantize{per_channel=true}")
    assert [n.op for n in quantized_ops(q)] == ["DynamicQuantMatMulInt8"] * 2
    assert check(q, tmp_path, (70,), exact=0.9) == 3


@pytest.mark.parametrize("arch", ["native", "x86-64-v3"])
@pytest.mark.parametrize(("cin", "stride", "pad", "size", "kernel"), [
    (8, 1, 1, 9, 3), (6, 2, 1, 9, 3), (5, 1, 0, 9, 3),  # panels of any pixels
    (16, 1, 1, 8, 3),  # panels of whole output rows (digits CNN)
    (4, 1, 1, 32, 3),  # panels inside one output row
    # Few input channels: kernel rows as words (tap layout), any stride, 3 or 5 wide;
    # planar bytes for 1 channel or 3x3, channels interleaved for 2-3 channels at 5x5.
    (1, 1, 1, 9, 3), (3, 2, 1, 16, 3), (1, 2, 2, 13, 5), (2, 1, 0, 9, 5), (3, 1, 2, 7, 5),
    (3, 2, 2, 16, 5),
])
def test_static_conv(tmp_path: Path, cin: int, stride: int, pad: int, size: int, kernel: int,
                     arch: str) -> None:
    """cin >= 4: four channels per int8 word; cin < 4: four bytes of a kernel row per word.
    Compiled for this CPU and for x86-64-v3 (vpmaddubsw): the int32 accumulation is
    exact on both, so the tolerance is one quantization step of the output."""
    graph = irkit.load_model(conv_model(cin, stride, pad, size, kernel))
    calib = [{"x": np.random.default_rng(3).standard_normal((16, cin, size, size))
              .astype(np.float32) * 1.5}]
    q = irkit.optimize(graph, "fuse,quantize{mode=static,per_channel=true}", calibration=calib,
                       target=arch)
    assert [n.op for n in quantized_ops(q)] == ["QLinearConvInt8"]
    assert check(q, tmp_path, (cin, size, size), arch=arch) == 3


def test_int8_conv_code_does_not_grow_with_output_channels(tmp_path: Path) -> None:
    """The blocks of output channels run in a loop: one copy of the microkernel and its
    epilogue (plus one for a last partial block), so a 64-channel conv compiles to no
    more code than a 13-channel one (three blocks of four and one channel); unrolled per
    block (before), the object was 1.9x larger (23.6 vs 12.4 KB) and a stem conv's kernel
    12 KB. Both within one quantization step of the reference."""
    sizes = {}
    for cout in (13, 64):
        graph = irkit.load_model(conv_model(8, size=8, cout=cout))
        calib = [{"x": np.random.default_rng(3).standard_normal((16, 8, 8, 8))
                  .astype(np.float32) * 1.5}]
        q = irkit.optimize(graph, "fuse,quantize{mode=static,per_channel=true,force=true}",
                           calibration=calib, target="x86-64-v3")
        assert [n.op for n in quantized_ops(q)] == ["QLinearConvInt8"]
        art = irkit.compile(q, target="llvm", threads=1, arch="x86-64-v3")
        saved = art.save(tmp_path / str(cout))
        sizes[cout] = sum(f.stat().st_size for f in Path(saved).rglob("model.o"))
        compiled = irkit.runtime.load(saved, threads=1)
        assert check(q, tmp_path, (8, 8, 8), arch="x86-64-v3", compiled=compiled) == 3
    assert 0 < sizes[64] <= 1.25 * sizes[13], sizes


def conv_chain_model(size: int, widths: tuple[int, ...], pads: tuple[int, ...],
                     kernels: tuple[int, ...], pool: bool = False,
                     windows: tuple[str, ...] = ()) -> Any:
    """Convs with ReLU, one after another, on 3 channels: ``widths`` output channels;
    ``windows[i]``: "MaxPool" or "AveragePool" (2x2, stride 2) after conv i, or "";
    ``pool``: then a global average pool, flattened."""
    rng = np.random.default_rng(2)
    nodes, inits, cin, last, out_size = [], {}, 3, "x", size
    for i, (cout, pad, k) in enumerate(zip(widths, pads, kernels)):
        inits[f"w{i}"] = rng.standard_normal((cout, cin, k, k)) * (1.0 / np.sqrt(cin * k * k))
        inits[f"b{i}"] = rng.standard_normal(cout) * 0.1
        out = "y" if i == len(widths) - 1 and not pool else f"a{i}"
        nodes += [helper.make_node("Conv", [last, f"w{i}", f"b{i}"], [f"c{i}"], pads=[pad] * 4),
                  helper.make_node("Relu", [f"c{i}"], [out])]
        cin, last, out_size = cout, out, out_size + 2 * pad - k + 1
        if i < len(windows) and windows[i]:
            window_out = "y" if out == "y" else f"p{i}"
            nodes[-1].output[0] = f"r{i}"
            nodes.append(helper.make_node(windows[i], [f"r{i}"], [window_out],
                                          kernel_shape=[2, 2], strides=[2, 2]))
            last, out_size = window_out, out_size // 2
    if pool:
        nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]),
                  helper.make_node("Flatten", ["g"], ["y"])]
        return _model(nodes, inits, ["N", 3, size, size], ["N", widths[-1]])
    return _model(nodes, inits, ["N", 3, size, size], ["N", widths[-1], out_size, out_size])


@pytest.mark.parametrize("arch", ["native", "x86-64-v3"])
@pytest.mark.parametrize(("size", "widths", "pads", "kernels", "pool"), [
    (10, (10, 8, 6), (1, 1, 0), (3, 3, 1), False),  # 10 and 8 wide: panels of whole rows
    (34, (8, 12), (0, 1), (3, 3), True),  # 32 wide: panels inside one row
    (9, (7, 13, 5), (1, 0, 1), (3, 3, 3), True),  # 9 and 7 wide: any pixels, a tail
])
def test_int8_conv_writes_the_next_convs_words(tmp_path: Path, arch: str, size: int,
                                               widths: tuple[int, ...], pads: tuple[int, ...],
                                               kernels: tuple[int, ...], pool: bool) -> None:
    """An int8 conv feeding another stores its requantized output as the next conv's
    four-channel words (no float tensor or quantize kernel between them; channel counts
    not multiples of 4, padded and unpadded consumers) and computes what the reference
    does within one quantization step per layer. Followed by a global average pool, the
    last conv sums its output per channel instead of storing it: equal, to fp32
    rounding, to the unpooled artifact's output averaged by numpy."""
    calib = [{"x": np.random.default_rng(3).standard_normal((16, 3, size, size))
              .astype(np.float32) * 1.5}]

    def build(pooled: bool) -> tuple[Any, Any, list[str]]:
        graph = irkit.load_model(conv_chain_model(size, widths, pads, kernels, pooled))
        # The same weight range for both models (auto may try 6-bit weights on one only).
        wr = ",weight_range=reduced" if arch == "x86-64-v3" else ""
        q = irkit.optimize(graph, "fuse,quantize{mode=static,per_channel=true,force=true"
                           f"{wr}}}", calibration=calib, target=arch)
        assert [n.op for n in quantized_ops(q)] == ["QLinearConvInt8"] * len(widths)
        compiled = compile_llvm(q, tmp_path / f"pool{pooled}", arch)
        kernels_ = programs(compiled.manifest.entry)[0].kernels
        assert not any(k.startswith("quant_nhwc") for k in kernels_), kernels_
        assert any(k.startswith("qconv_pool") for k in kernels_) == pooled, kernels_
        return q, compiled, kernels_

    q, plain, _ = build(False)
    assert check(q, tmp_path, (3, size, size), flips=len(widths), exact=0.9, arch=arch,
                 compiled=plain) == 3
    if pool:
        _, pooled, _ = build(True)
        x = np.random.default_rng(5).standard_normal((9, 3, size, size)).astype(np.float32)
        want = plain(x=x)["y"].mean(axis=(2, 3))
        np.testing.assert_allclose(pooled(x=x)["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["native", "x86-64-v3"])
@pytest.mark.parametrize(("size", "windows", "fused"), [
    (16, ("MaxPool", "AveragePool"), 2),  # 16 wide: a window's rows in two panels; then 8
    (32, ("AveragePool", "MaxPool"), 2),  # 32 wide: panels inside one row; then 16
    (14, ("MaxPool", "AveragePool"), 0),  # 14 and 7 wide: pooled by its own kernel
])
def test_int8_conv_pools_in_its_epilogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         arch: str, size: int, windows: tuple[str, ...],
                                         fused: int) -> None:
    """An int8 conv followed by a 2x2 max or average pool pools in its epilogue (the
    full-resolution output is never written) where a panel is whole output rows or part
    of one row; other widths keep the pool kernel. Within one quantization step per
    layer of the reference (pools spread a byte rounded the other way upstream over
    their window, so fewer outputs are bit-exact than for convs alone), and equal to fp32
    rounding to the same program lowered with separate pool kernels. ``fused`` pools are
    taken by the x86-64-v3 build (16-pixel panels)."""
    from irkit.lower.driver import GraphLowering

    graph = irkit.load_model(conv_chain_model(size, (8, 12, 6), (1, 1, 1), (3, 3, 3),
                                              windows=windows))
    calib = [{"x": np.random.default_rng(3).standard_normal((16, 3, size, size))
              .astype(np.float32) * 1.5}]
    q = irkit.optimize(graph, "fuse,quantize{mode=static,per_channel=true,force=true}",
                       calibration=calib, target=arch)
    assert [n.op for n in quantized_ops(q)] == ["QLinearConvInt8"] * 3
    compiled = compile_llvm(q, tmp_path, arch)
    assert check(q, tmp_path, (3, size, size), flips=3, exact=0.6, arch=arch,
                 compiled=compiled) == 3
    if arch == "x86-64-v3":
        kernels_ = programs(compiled.manifest.entry)[0].kernels
        pool_kernels = [k for k in kernels_ if k.startswith(("maxpool", "averagepool"))]
        assert len(pool_kernels) == len(windows) - fused, kernels_
    monkeypatch.setattr(GraphLowering, "window_pool_of", lambda self, value: None)
    separate = compile_llvm(q, tmp_path / "separate", arch)
    x = np.random.default_rng(6).standard_normal((5, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(compiled(x=x)["y"], separate(x=x)["y"], rtol=1e-5, atol=1e-6)


def _gemm(k: int, n: int, sparsity: float, trans_b: bool) -> Any:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    b = rng.standard_normal(n).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=int(trans_b))
    return _model([node, helper.make_node("Relu", ["g"], ["y"])], {"w": w, "b": b},
                  ["N", k], ["N", n])


@pytest.mark.parametrize(("sparsity", "sparse_kernel"), [(0.9, True), (0.75, True),
                                                         (0.5, False)])
def test_sparse_gemm_chosen_by_sparsity(tmp_path: Path, sparsity: float,
                                        sparse_kernel: bool) -> None:
    graph = irkit.load_model(_gemm(100, 37, sparsity, trans_b=True))
    compiled = compile_llvm(graph, tmp_path)
    kernels = programs(compiled.manifest.entry)[0].kernels
    assert any(k.startswith("spmm") for k in kernels) == sparse_kernel
    for batch in (*BATCHES, 65):
        x = np.random.default_rng(batch).standard_normal((batch, 100)).astype(np.float32)
        want = irkit.evaluate(graph, {"x": x})["y"]
        np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-5, atol=1e-5)


def test_sparse_gemm_deep_k(tmp_path: Path) -> None:
    """K = 2048 shrinks the row block to fit the stack panel; K = 8192 stays dense."""
    for k, sparse_kernel in ((2048, True), (8192, False)):
        graph = irkit.load_model(_gemm(k, 20, 0.9, trans_b=False))
        compiled = compile_llvm(graph, tmp_path / str(k))
        assert any(n.startswith("spmm") for n in programs(compiled.manifest.entry)[0].kernels) \
            == sparse_kernel
        x = np.random.default_rng(k).standard_normal((65, k)).astype(np.float32)
        np.testing.assert_allclose(compiled(x=x)["y"], irkit.evaluate(graph, {"x": x})["y"],
                                   rtol=1e-4, atol=1e-4)


def test_pruned_matmul_uses_sparse_kernel(tmp_path: Path) -> None:
    from irkit.bench import _matmul_onnx

    graph = irkit.optimize(irkit.load_model(_matmul_onnx("N", 128, 96)), "prune{sparsity=0.9}")
    compiled = compile_llvm(graph, tmp_path)
    assert any(k.startswith("spmm") for k in programs(compiled.manifest.entry)[0].kernels)
    x = np.random.default_rng(0).standard_normal((7, 128)).astype(np.float32)
    np.testing.assert_allclose(compiled(x=x)["y"], irkit.evaluate(graph, {"x": x})["y"],
                               rtol=1e-5, atol=1e-5)


def test_auto_weight_range_tries_six_bits_on_the_calibration_data() -> None:
    """On a target that multiplies with vpmaddubsw, static quantize keeps 6-bit weights
    only when the int8 model's calibration outputs stay within narrow_tolerance of fp32's
    (the report gives both measured deviations); VNNI targets keep 8 bits."""
    graph = irkit.load_model(conv_model(8))
    calib = [{"x": np.random.default_rng(3).standard_normal((16, 8, 9, 9))
              .astype(np.float32) * 1.5}]

    def weights(target: str, extra: str = "") -> tuple[int, str]:
        q = irkit.optimize(graph, f"quantize{{mode=static,per_channel=true{extra}}}",
                           calibration=calib, target=target)
        (node,) = quantized_ops(q)
        return int(np.abs(node.inputs[3].const).max()), q.history[-1].details["weight_range"]

    top, note = weights("x86-64-v3")
    assert top == 31 and note.startswith("6-bit [-31, 31] (auto"), note
    found = re.search(r"6-bit weights move the outputs ([\d.]+)% RMS from fp32, 7-bit "
                      r"([\d.]+)%", note)
    assert found is not None, note
    six, seven = float(found[1]), float(found[2])
    assert 0 < seven < six <= 3.0, note
    top, note = weights("x86-64-v3", ",narrow_tolerance=0.0001")
    assert top == 63 and "kept over 6-bit" in note, note
    top, note = weights("x86-64-v4-vnni")
    assert top == 127, note


def test_a_kernel_types_each_buffer_one_way_when_quantizing_a_padded_conv_input() -> None:
    """An int8 conv on 8 channels (a ResNet block's) quantizes its input into four-channel
    words of a zero-point padded image. One kernel once wrote the padding as bytes and
    the pixels as words of the same buffer; the numba and cuda backends give a kernel one
    array per buffer, so they wrote the bytes as words at byte indices, 4x past the image
    (a wrong answer, then heap corruption). Each kernel now types a buffer one way."""
    from irkit.kir import Load, Store
    from irkit.kir.visit import stmt_exprs, walk_exprs, walk_stmts
    from irkit.lower import lower_graph
    from irkit.lower.legalize import legalize

    w = np.random.default_rng(2).standard_normal((4, 8, 3, 3)) / 8.5
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                    helper.make_node("Flatten", ["p"], ["y"])],
                   {"w": w}, ["N", 8, 6, 6], ["N", 4])
    calib = [{"x": np.random.default_rng(3).standard_normal((16, 8, 6, 6)).astype(np.float32)}]
    q = irkit.optimize(irkit.load_model(model),
                       "fuse,quantize{mode=static,per_channel=true,force=true}",
                       calibration=calib)
    kernels = lower_graph(legalize(q)).program.kernels
    assert any(k.name.startswith("quant_nhwc") for k in kernels)  # the path in question
    for kernel in kernels:
        types: dict[str, set[str]] = {}
        for stmt in walk_stmts(kernel.body):
            if isinstance(stmt, Store):
                types.setdefault(stmt.buf.name, set()).add(stmt.buf.dtype)
            for expr in stmt_exprs(stmt):
                for node in walk_exprs(expr):
                    if isinstance(node, Load):
                        types.setdefault(node.buf.name, set()).add(node.buf.dtype)
        mixed = {name: sorted(t) for name, t in types.items() if len(t) > 1}
        assert mixed == {}, kernel.name


def test_static_quantize_keeps_convs_without_an_int8_kernel_in_fp32(tmp_path: Path) -> None:
    """A Conv1d (an audio classifier's) and a depthwise conv (a MobileNet block's) became
    irkit.QLinearConvInt8, which no backend lowers (2-D, group 1 only): compiling the
    quantized model failed. They stay fp32; the pointwise conv beside them is int8."""
    rng = np.random.default_rng(4)
    depthwise = _model([helper.make_node("Conv", ["x", "wd"], ["d"], group=8, pads=[1] * 4),
                        helper.make_node("Relu", ["d"], ["r"]),
                        helper.make_node("Conv", ["r", "wp"], ["y"])],
                       {"wd": rng.standard_normal((8, 1, 3, 3)) / 3,
                        "wp": rng.standard_normal((6, 8, 1, 1)) / 3},
                       ["N", 8, 6, 6], ["N", 6, 6, 6])
    conv1d = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])],
                    {"w": rng.standard_normal((5, 2, 3)) / 3}, ["N", 2, 16], ["N", 5, 16])
    for model, shape, ops in ((depthwise, (8, 8, 6, 6), ["Conv", "QLinearConvInt8"]),
                              (conv1d, (8, 2, 16), ["Conv"])):
        calib = [{"x": rng.standard_normal(shape).astype(np.float32)}]
        q = irkit.optimize(irkit.load_model(model),
                           "quantize{mode=static,per_channel=true,force=true}",
                           calibration=calib)
        assert sorted(n.op for n in q.nodes if "Conv" in n.op) == ops
        x = rng.standard_normal((2, *shape[1:])).astype(np.float32)
        compiled = irkit.runtime.load(irkit.compile(q, target="llvm", threads=1)
                                      .save(tmp_path / str(len(ops))), threads=1)
        want = irkit.evaluate(q, {"x": x})["y"]
        np.testing.assert_allclose(compiled(x=x)["y"], want, rtol=1e-4, atol=1e-4)
