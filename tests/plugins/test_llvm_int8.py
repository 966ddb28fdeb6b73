"""The optimization passes end to end on the llvm backend: fused irkit ops, static and
dynamic int8 (against the reference decomposition and, for digits, task accuracy),
and the host's int8 instruction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

import irkit
import irkit.runtime

ROOT = Path(__file__).resolve().parents[2]
STATIC = "fuse,quantize{mode=static,per_channel=true}"


def compile_load(graph: Any, tmp_path: Path, arch: str = "native") -> Any:
    art = irkit.compile(graph, target="llvm", threads=1, arch=arch)
    return irkit.runtime.load(art.save(tmp_path / "m"), threads=1)


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    from irkit.testing.models import ensure_digits_models

    models = ensure_digits_models()
    ev = np.load(ROOT / "specs" / "data" / "digits_eval.npz")
    cal = np.load(ROOT / "specs" / "data" / "digits_calib.npz")
    return {"models": models, "eval": ev, "calib": cal}


@pytest.mark.parametrize("arch", ["native", "x86-64-v3"])
@pytest.mark.parametrize(("kind", "key"), [("mlp", "x"), ("cnn", "x_img")])
def test_digits_fused_and_static_int8(digits: dict[str, Any], tmp_path: Path, kind: str,
                                      key: str, arch: str) -> None:
    """fp32, fused and static int8 artifacts of the trained digits models, compiled for
    this CPU and for x86-64-v3 (7-bit weights multiplied with vpmaddubsw): int8 keeps
    task accuracy within 1 point of fp32 on the 360 eval images."""
    graph = irkit.load_model(str(digits["models"] / f"digits_{kind}.onnx"))
    name = graph.inputs[0].name
    x_eval = digits["eval"][key].astype(np.float32)
    labels = digits["eval"]["y"]
    fp32 = compile_load(graph, tmp_path / "fp32", arch)
    acc_fp32 = np.mean(next(iter(fp32(**{name: x_eval}).values())).argmax(-1) == labels)

    fused = irkit.optimize(graph, "fuse")
    assert any(n.domain == "irkit" for n in fused.nodes)
    fused_c = compile_load(fused, tmp_path / "fused", arch)
    calib = [{name: digits["calib"][key].astype(np.float32)}]
    q = irkit.optimize(graph, STATIC, calibration=calib, target=arch)
    assert {n.op for n in q.nodes if n.domain == "irkit"} <= {"QLinearMatMulInt8",
                                                              "QLinearConvInt8"}
    q_c = compile_load(q, tmp_path / "int8", arch)
    for batch in (1, 7, 64):
        x = np.resize(x_eval, (batch, *x_eval.shape[1:]))
        want = next(iter(irkit.evaluate(graph, {name: x}).values()))
        np.testing.assert_allclose(next(iter(fused_c(**{name: x}).values())), want,
                                   rtol=1e-4, atol=1e-4)
        ref = next(iter(irkit.evaluate(q, {name: x}).values()))
        got = next(iter(q_c(**{name: x}).values()))
        # Hidden activations can round to neighbouring bytes (see tests/lower/
        # test_quantized.py): logits of size ~10-20 stay within 0.1, and on average
        # within 1% of the largest logit.
        np.testing.assert_allclose(got, ref, atol=0.1)
        assert np.mean(np.abs(got - ref)) <= 0.01 * np.abs(ref).max()
    acc_q = np.mean(next(iter(q_c(**{name: x_eval}).values())).argmax(-1) == labels)
    assert abs(acc_q - acc_fp32) <= 0.01, (acc_q, acc_fp32)


def test_transformer_fused_and_dynamic_int8(transformer_onnx: Path, tmp_path: Path) -> None:
    graph = irkit.load_model(str(transformer_onnx))
    fused = irkit.optimize(graph, "simplify,fuse")
    dyn = irkit.optimize(fused, "quantize{per_channel=true}")
    assert any(n.op == "DynamicQuantMatMulInt8" for n in dyn.nodes)
    x = np.random.default_rng(0).standard_normal((3, 64, 128)).astype(np.float32)
    want = next(iter(irkit.evaluate(graph, {"x": x}).values()))
    got_fused = next(iter(compile_load(fused, tmp_path / "f")(x=x).values()))
    np.testing.assert_allclose(got_fused, want, rtol=1e-4, atol=1e-4)
    got = next(iter(compile_load(dyn, tmp_path / "d")(x=x).values()))
    ref = next(iter(irkit.evaluate(dyn, {"x": x}).values()))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-2
    assert np.abs(got - want).max() / np.abs(want).max() < 5e-2


@pytest.mark.parametrize("weights", ["full", "reduced", "narrow"])
@pytest.mark.parametrize("arch,kernel", [
    ("x86-64-v3", "vpmaddubsw"), ("x86-64-v4", "vpmaddubsw"), ("x86-64-v2", "vpmaddubsw"),
    ("x86-64-v3-vnni", "vpdpbusd"), ("x86-64-v4-vnni", "vpdpbusd"), ("x86-64", "widen")])
def test_int8_gemm_instruction_follows_the_target(arch: str, kernel: str, weights: str
                                                  ) -> None:
    """The int8 microkernel is vpdpbusd on targets with VNNI at its width, vpmaddubsw +
    vpmaddwd on other x86 targets with SSSE3/AVX2/AVX-512BW (full-range weights as two
    7-bit halves, so twice the multiplies; 6-bit weights two words per vpmaddwd, their
    int16 pair sums added with vpaddw), and the widening expansion on the x86-64
    baseline — whatever the build host has. The manifest names the kernel per node."""
    import llvmlite.binding as llvm
    from onnx import TensorProto, helper, numpy_helper

    from irkit.lower import lower_graph
    from irkit.plugins.llvm.codegen import translate_program
    from irkit.plugins.llvm.emit import emit_object, target_machine
    from irkit.runtime.program import programs
    from irkit.target import get_target

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 17)])
    q = irkit.optimize(irkit.load_model(model),
                       f"quantize{{per_channel=true,weight_range={weights}}}")
    target = get_target(arch)
    module = translate_program(lower_graph(q, target).program, target)
    asm = target_machine(target).emit_assembly(
        llvm.parse_assembly(emit_object(module, target).optimized_ir))
    assert target.int8_dot() == kernel
    assert ("vpdpbusd" in asm) == (kernel == "vpdpbusd")
    assert ("pmaddubsw" in asm) == (kernel == "vpmaddubsw")
    assert ("zmm" in asm) == (target.vector_bits == 512)
    chosen = programs(irkit.compile(q, target="llvm", arch=arch).entry)[0].info
    (note,) = chosen["kernels_chosen"].values()
    assert note.startswith(f"int8 {kernel}") and note.endswith(f"on {arch}")
    if kernel == "vpmaddubsw":
        assert ("x2" in note) == (weights == "full")
        assert ("pairs" in note) == (weights == "narrow") == ("paddw" in asm)


@pytest.mark.parametrize(("weights", "arch", "vec"), [
    *((w, a, v) for w in ("full", "reduced")
      for a in ("x86-64", "x86-64-v3", "x86-64-v4", "x86-64-v4-vnni") for v in (8, 16)),
    ("narrow", "x86-64-v3", 8)])
def test_int8_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str,
                          vec: int, weights: str) -> None:
    """Every int8 kernel (the widening expansion, vpmaddubsw with 7-bit weights, with
    8-bit weights in two halves or with 6-bit weights two words at a time, VNNI) and 8- and 16-lane tiles give the same results as
    the reference int32 arithmetic (static int8 MLP, cols 19 and 45 so panels are
    partial). The int32 accumulation is exact on every target — vpmaddubsw's int16 pair
    sums cannot saturate with weights within [-64, 64] — so only the final float rescale
    may round differently, which the tolerance covers."""
    from irkit.runtime.hostcpu import host
    from irkit.target import get_target

    missing = host().missing(get_target(arch).requirements())
    if missing:
        pytest.skip(f"this CPU cannot run {arch} code (lacks {', '.join(missing)})")
    sys_path = str(ROOT / "tests" / "lower")
    monkeypatch.syspath_prepend(sys_path)
    from test_quantized import CALIB, mlp_model  # type: ignore[import-not-found]

    pipeline = STATIC.replace("per_channel=true", f"per_channel=true,weight_range={weights}")
    graph = irkit.optimize(irkit.load_model(mlp_model()), pipeline, calibration=CALIB)
    art = irkit.compile(graph, target="llvm", threads=1, vec=vec, arch=arch)
    model = irkit.runtime.load(art.save(tmp_path / "m"), threads=1)
    x = np.clip(np.random.default_rng(4).standard_normal((33, 70)) * 1.5, -5.9, 5.9
                ).astype(np.float32)
    got, ref = model(x=x)["y"], irkit.evaluate(graph, {"x": x})["y"]
    assert np.mean(np.abs(got - ref) <= 1e-5 * np.abs(ref).max() + 1e-6) >= 0.9
    np.testing.assert_allclose(got, ref, atol=0.1)


def _conv_model(one_d: bool) -> Any:
    """A 1-D model (Conv1d 4->8 k3, Relu, Conv1d 8->5 k3) or a MobileNet-style 2-D one
    (Conv 3x3 4->8, Relu, depthwise 3x3 group=8, grouped 1x1 group=2 8->6, Conv 1x1 6->5)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    k = [3] if one_d else [3, 3]
    convs = ([("c0", 8, 4, 1, k), ("c1", 5, 8, 1, k)] if one_d else
             [("c0", 8, 4, 1, k), ("dw", 8, 1, 8, k), ("gr", 6, 4, 2, [1, 1]),
              ("pw", 5, 6, 1, [1, 1])])
    nodes, inits, x = [], [], "x"
    for name, cout, cin_g, group, kernel in convs:
        w = (rng.standard_normal((cout, cin_g, *kernel)) / np.sqrt(cin_g * 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}_w"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1,
                                          f"{name}_b")]
        pads = [(s - 1) // 2 for s in kernel] * 2
        nodes += [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"],
                                   name=name, group=group, pads=pads),
                  helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"])]
        x = f"{name}_r"
    nodes[-1] = helper.make_node("Identity", [f"{convs[-1][0]}_y"], ["y"])
    spatial = [30] if one_d else [10, 10]
    return helper.make_model(helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, *spatial])], inits),
        opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("one_d", [False, True], ids=["depthwise-grouped", "conv1d"])
def test_static_int8_leaves_uncovered_convs_in_fp32(tmp_path: Path, one_d: bool) -> None:
    """irkit's int8 Conv kernels are 2-D with group=1: static quantization keeps depthwise,
    grouped and 1-D Convs in fp32 (and says so per node) instead of emitting
    irkit.QLinearConvInt8 nodes that no CPU target compiles (a MobileNetV2 block or a
    Conv1d audio model failed `irkit compile` after `quantize` before). The rest is int8,
    the x86-64-v3 artifact matches the reference within int8 rounding, and fp32 within 5%."""
    graph = irkit.load_model(_conv_model(one_d))
    spatial = (30,) if one_d else (10, 10)
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((16, 4, *spatial)).astype(np.float32)}]
    q = irkit.optimize(graph, STATIC, calibration=calib, target="x86-64-v3")
    int8 = sorted(n.name for n in q.nodes if n.op == "QLinearConvInt8")
    assert int8 == ([] if one_d else ["c0", "pw"])
    (report,) = [r for r in q.history if "quantize" in r.pipeline]
    notes = report.details.get("nodes", {})
    kept = sorted(name for name, note in notes.items() if note.startswith("kept fp32"))
    assert kept == (["c0", "c1"] if one_d else ["dw", "gr"])
    assert ("1-D" in notes["c0"]) if one_d else ("depthwise, group=8" in notes["dw"])
    model = compile_load(q, tmp_path, arch="x86-64-v3")
    x = rng.standard_normal((3, 4, *spatial)).astype(np.float32)
    got = model(x=x)["y"]
    np.testing.assert_allclose(got, irkit.evaluate(q, {"x": x})["y"], rtol=1e-4, atol=1e-4)
    want = irkit.evaluate(graph, {"x": x})["y"]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def _conv_mlp_model() -> Any:
    """Conv 3x3 4->8 + bias, Relu, Flatten, MatMul 288->10, Add bias: f32[N,4,6,6]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("cw", rng.standard_normal((8, 4, 3, 3)) / 6), ("cb", rng.standard_normal(8) * 0.1),
        ("mw", rng.standard_normal((288, 10)) / 17), ("mb", rng.standard_normal(10) * 0.1))]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "mw"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "mb"], ["y"])]
    return helper.make_model(helper.make_graph(
        nodes, "convmlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits),
        opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_model_saved_as_onnx_compiles_to_int8_kernels(tmp_path: Path, mode: str) -> None:
    """An int8 model written as ONNX (`irkit optimize -o`: QDQ form) compiles to the same
    int8 kernels as the in-memory one (the fuse-qdq legalize step), not to fp32 ops
    between QuantizeLinear/DequantizeLinear pairs (a ResNet ran 20x slower that way)."""
    from irkit.runtime.program import programs

    graph = irkit.load_model(_conv_mlp_model())
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((16, 4, 6, 6)).astype(np.float32)}]
    passes = STATIC if mode == "static" else "fuse,quantize{mode=dynamic}"
    q = irkit.optimize(graph, passes, calibration=calib, target="x86-64-v3")
    saved = irkit.load_model(irkit.to_onnx(q))
    assert not any(n.domain == "irkit" for n in saved.nodes)
    assert {"DequantizeLinear", "MatMul"} <= {n.op for n in saved.nodes}
    art = irkit.compile(saved, target="llvm", threads=1, arch="x86-64-v3")
    chosen = programs(art.entry)[0].info.get("kernels_chosen", {})
    int8 = sorted(name for name, note in chosen.items() if note.startswith("int8"))
    assert int8 == (["conv", "y"] if mode == "static" else ["y"]), chosen  # by output
    x = rng.standard_normal((5, 4, 6, 6)).astype(np.float32)
    got = irkit.runtime.load(art.save(tmp_path / "saved"), threads=1)(x=x)["y"]
    want = compile_load(q, tmp_path / "inmem", arch="x86-64-v3")(x=x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnxruntime_qdq_model_compiles_to_int8_kernels(tmp_path: Path) -> None:
    """A QDQ model from onnxruntime.quantization (per-channel int8 weights, uint8
    activations, int32 biases behind DequantizeLinear, Gemm with transB=1) compiles to
    irkit's int8 Conv and GEMM kernels, within int8 rounding of the QDQ reference."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from irkit.runtime.program import programs

    model = _conv_mlp_model()
    graph = model.graph
    fc_w = next(t for t in graph.initializer if t.name == "mw")
    w = onnx.numpy_helper.to_array(fc_w)
    fc_w.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), "mw"))
    del graph.node[3:]
    graph.node.append(onnx.helper.make_node("Gemm", ["f", "mw", "mb"], ["y"], name="fc",
                                            transB=1))
    rng = np.random.default_rng(8)
    batches = [{"x": rng.standard_normal((8, 4, 6, 6)).astype(np.float32)} for _ in range(2)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    fp32_path, qdq_path = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, str(fp32_path))
    quantize_static(str(fp32_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    saved = irkit.load_model(str(qdq_path))
    art = irkit.compile(saved, target="llvm", threads=1, arch="x86-64-v3")
    chosen = programs(art.entry)[0].info.get("kernels_chosen", {})
    assert sum(note.startswith("int8") for note in chosen.values()) == 2, chosen
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    got = irkit.runtime.load(art.save(tmp_path / "art"), threads=1)(x=x)["y"]
    want = irkit.evaluate(saved, {"x": x})["y"]
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


def test_compile_cli_quantizes_for_the_arch_compiled_for(tmp_path: Path) -> None:
    """`irkit compile --arch x86-64-v3 --passes quantize...` picks 7-bit weights for
    x86-64-v3's vpmaddubsw whatever the build host has (it took the host's range: 8-bit
    weights on a VNNI host, which x86-64-v3 code multiplies in two halves)."""
    import json

    import onnx

    from irkit.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(_conv_mlp_model(), str(model))
    out = tmp_path / "art"
    assert main(["compile", str(model), "--arch", "x86-64-v3", "--passes",
                 "quantize{mode=dynamic}", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert "7-bit [-63, 63] (auto: x86-64-v3" in text
    assert "two halves" not in text
