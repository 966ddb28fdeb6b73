"""Differential tests on real models: optimized outputs against ``irkit.evaluate`` of the
unoptimized model, with each pass's stated tolerance.

Stated tolerances (digits eval set, 360 samples):
- fold/dce/cse/shapes/simplify/fuse: rel. L2 error <= 1e-5 (float reassociation only).
- quantize (int8): rel. error <= 0.02 (0.1 with the entropy calibrator, which clips
  outliers on purpose) and accuracy within 1 point of fp32.
- prune unstructured 30%: rel. error <= 0.15, accuracy within 3 points (no fine-tuning).
- prune structured: shapes shrink as asked; accuracy reported, not bounded (no fine-tuning).
- lowrank{error_budget=e}: every factorized weight within e (relative Frobenius).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import irkit
from irkit.ir import Graph
from irkit.passes.manager import evaluate_graph

DATA = Path(__file__).resolve().parents[2] / "specs" / "data"


@pytest.fixture(scope="module")
def digits(digits_models: Path) -> dict[str, Any]:
    eval_set = np.load(DATA / "digits_eval.npz")
    calib = np.load(DATA / "digits_calib.npz")
    out: dict[str, Any] = {}
    for kind, key in (("mlp", "x"), ("cnn", "x_img")):
        graph = irkit.load_model(str(digits_models / f"digits_{kind}.onnx"))
        name = graph.inputs[0].name
        out[kind] = {
            "graph": graph,
            "eval": {name: eval_set[key]},
            "labels": eval_set["y"],
            "calibration": [{name: calib[key][i:i + 32]} for i in range(0, 128, 32)],
        }
    return out


def _optimize(model: dict[str, Any], pipeline: str) -> Graph:
    return irkit.optimize(model["graph"], pipeline, calibration=model["calibration"],
                          eval_data=model["eval"], labels=model["labels"])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("pipeline", ["simplify", "fuse", "fold,cse,dce,shapes"])
def test_exact_passes(digits: dict[str, Any], kind: str, pipeline: str) -> None:
    out = _optimize(digits[kind], pipeline)
    for report in out.history:
        assert report.rel_error <= 1e-5, report
        assert report.accuracy == report.baseline_accuracy


def test_fuse_shrinks_the_cnn(digits: dict[str, Any]) -> None:
    out = _optimize(digits["cnn"], "fuse")
    ops = [n.qualified_op for n in out.nodes]
    assert ops == ["irkit.ConvBiasAct", "irkit.ConvBiasActPool", "Flatten", "Gemm"]
    assert out.history[0].details["fused"] == {"conv_bn": 2, "conv_epilogue": 2,
                                               "conv_pool": 1}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("pipeline", [
    "fuse,quantize{mode=static,per_channel=true}",
    "fuse,quantize{mode=static,per_channel=true,format=qdq}",
    "quantize{mode=static,calibrator=percentile,symmetric=true}",
    "fuse,quantize{mode=static,calibrator=entropy,per_channel=true}",
    "quantize",
    "quantize{format=qdq,per_channel=true}",
])
def test_int8_within_tolerance(digits: dict[str, Any], kind: str, pipeline: str) -> None:
    out = _optimize(digits[kind], pipeline)
    report = out.history[-1]
    assert report.details["quantized"] >= 1
    assert report.bytes_after < 0.6 * report.bytes_before or "format=qdq" in pipeline \
        or kind == "cnn"  # dynamic mode leaves the CNN's convs in float
    tolerance = 0.1 if "entropy" in pipeline else 0.02  # entropy clips outliers on purpose
    assert report.rel_error <= tolerance, report
    assert report.accuracy >= report.baseline_accuracy - 0.01, report


def test_quantize_exclusions(digits: dict[str, Any]) -> None:
    model = digits["cnn"]
    out = _optimize(model, "fuse,quantize{mode=static,exclude=[Gemm,/0/Conv]}")
    ops = sorted(n.qualified_op for n in out.nodes)
    assert ops.count("irkit.QLinearConvInt8") == 1 and "Gemm" in ops


def test_qdq_runs_on_ort_int8_kernels(digits: dict[str, Any], tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    kernels = {}
    for kind in ("mlp", "cnn"):
        out = _optimize(digits[kind], "fuse,quantize{mode=static,per_channel=true,format=qdq}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(tmp_path / f"{kind}.onnx")
        ort.InferenceSession(irkit.to_onnx(out).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        kernels[kind] = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert {"QLinearMatMul", "QGemm"} <= kernels["mlp"]
    assert {"QLinearConv", "QGemm"} <= kernels["cnn"]
    assert "Conv" not in kernels["cnn"] and "MatMul" not in kernels["mlp"]


def test_unstructured_prune(digits: dict[str, Any]) -> None:
    for kind in ("mlp", "cnn"):
        out = _optimize(digits[kind], "prune{sparsity=0.3}")
        report = out.history[-1]
        assert report.rel_error <= 0.15 and report.accuracy >= report.baseline_accuracy - 0.03
        sparsity = out.meta["sparsity"]
        assert sparsity and all(abs(v - 0.3) < 0.01 for v in sparsity.values())
        for name in sparsity:
            weights = out.constants[name].const
            assert weights is not None
            assert abs(np.mean(weights == 0) - 0.3) < 0.01


def test_structured_prune_shrinks_shapes(digits: dict[str, Any]) -> None:
    mlp = _optimize(digits["mlp"], "prune{mode=structured,sparsity=0.5,compensate=false}")
    assert mlp.history[-1].details["channels"] == {"/0/Gemm": [128, 64]}
    assert mlp.history[-1].params_after < 0.51 * mlp.history[-1].params_before
    cnn = _optimize(digits["cnn"], "fuse,prune{mode=structured,sparsity=0.25}")
    shapes = {n.op: n.outputs[0].shape for n in cnn.nodes}
    # conv1 16 -> 12 channels, conv2 (pooled by irkit.ConvBiasActPool) 32 -> 24
    assert shapes["ConvBiasAct"][1] == 12 and shapes["ConvBiasActPool"][1] == 24
    assert shapes["Flatten"] == ("N", 384)
    report = cnn.history[-1]
    assert report.accuracy is not None and report.rel_error is not None


@pytest.mark.parametrize(("kind", "floor"), [("mlp", 0.94), ("cnn", 0.8)])
def test_data_aware_structured_prune(digits: dict[str, Any], kind: str, floor: float) -> None:
    """With calibration data, ranking by forwarded activation and folding removed channels'
    means into the consumers' biases keeps most of the accuracy at 50% channels."""
    accuracy = {}
    for variant in ("criterion=activation", "criterion=activation,compensate=false",
                    "compensate=false"):
        out = _optimize(digits[kind],
                        f"fuse{{epilogues=false}},prune{{mode=structured,sparsity=0.5,{variant}}}")
        accuracy[variant] = out.history[-1].accuracy
        assert out.history[-1].params_after < 0.55 * out.history[-1].params_before
    assert accuracy["criterion=activation"] >= floor
    assert accuracy["criterion=activation"] > accuracy["criterion=activation,compensate=false"]
    assert accuracy["criterion=activation"] > accuracy["compensate=false"]


def test_activation_criterion_needs_calibration(digits: dict[str, Any]) -> None:
    from irkit.passes.manager import PassError

    with pytest.raises(PassError, match="needs calibration"):
        irkit.optimize(digits["mlp"]["graph"], "prune{mode=structured,criterion=activation}")


@pytest.mark.parametrize("budget", [0.2, 0.4])
def test_lowrank_error_budget(digits: dict[str, Any], budget: float) -> None:
    out = _optimize(digits["mlp"], f"lowrank{{error_budget={budget},min_saving=0.0}}")
    layers = out.history[-1].details["layers"]
    assert layers
    for layer in layers.values():
        assert layer["criterion"] == "output"  # calibration given: output error is bounded
        assert layer["bounded_rel_error"] <= budget + 1e-6
        assert layer["macs_after"] <= layer["macs_before"]
    weight_only = _optimize(digits["mlp"], f"lowrank{{error_budget={budget},min_saving=0.0,"
                                           "whiten=false}")
    for layer in weight_only.history[-1].details["layers"].values():
        assert layer["criterion"] == "weight"
        assert layer["weight_rel_error"] <= budget + 1e-6
    x = digits["mlp"]["eval"]
    assert set(evaluate_graph(out, x)) == {"logits"}


def test_lowrank_keeps_a_low_rank_layer_exactly() -> None:
    from irkit.ir import parse_graph

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 3)) @ rng.standard_normal((3, 48))).astype(np.float32)
    graph = parse_graph("""graph g(%x: f32[N,64]) -> (%y: f32[N,48]) {
  const @w: f32[64,48]
  %y = MatMul(%x, @w) : f32[N,48]
}""", {"w": w})
    x = {"x": rng.standard_normal((10, 64)).astype(np.float32)}
    out = irkit.optimize(graph, "lowrank{energy=0.9999}", eval_data=x)
    assert out.history[0].details["layers"]["y"]["rank"] == 3
    assert out.history[0].rel_error < 1e-5


def test_transformer_simplify_fuse_quantize(transformer_onnx: Path) -> None:
    graph = irkit.load_model(str(transformer_onnx))
    rng = np.random.default_rng(0)
    x = {"x": rng.standard_normal((2, 64, 128)).astype(np.float32)}
    calibration = [{"x": rng.standard_normal((2, 64, 128)).astype(np.float32)}]
    out = irkit.optimize(graph, "simplify,fuse,quantize{mode=static,per_channel=true}",
                         eval_data=x, calibration=calibration)
    simplify, fuse, quantize = out.history
    assert simplify.rel_error < 1e-5 and fuse.rel_error < 1e-5
    assert fuse.details["fused"]["gelu"] == 2
    assert quantize.details["quantized"] >= 8
    assert quantize.rel_error < 0.05


def test_lowrank_conv_of_exact_low_rank_is_lossless() -> None:
    from irkit.ir import parse_graph

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 2)) @ rng.standard_normal((2, 8 * 9))).reshape(16, 8, 3, 3)
    graph = parse_graph("""graph g(%x: f32[N,8,10,10]) -> (%y: f32[N,16,5,5]) {
  const @w: f32[16,8,3,3]
  const @b: f32[16]
  %y = Conv(%x, @w, @b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]} : f32[N,16,5,5]
}""", {"w": w.astype(np.float32), "b": rng.standard_normal(16).astype(np.float32)})
    x = {"x": rng.standard_normal((2, 8, 10, 10)).astype(np.float32)}
    out = irkit.optimize(graph, "lowrank{energy=0.9999}", eval_data=x)
    assert out.history[0].details["layers"]["y"]["rank"] == 2
    convs = [n for n in out.nodes if n.op == "Conv"]
    assert [c.inputs[1].shape for c in convs] == [(2, 8, 3, 3), (16, 2, 1, 1)]
    assert out.history[0].rel_error < 1e-5


def test_lowrank_shares_factors_of_shared_weights() -> None:
    from irkit.ir import parse_graph

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 32))).astype(np.float32)
    graph = parse_graph("""graph g(%x: f32[N,32]) -> (%y: f32[N,32]) {
  const @w: f32[32,32]
  %h = MatMul(%x, @w) : f32[N,32]
  %y = MatMul(%h, @w) : f32[N,32]
}""", {"w": w})
    out = irkit.optimize(graph, "lowrank")
    assert sorted(out.constants) == ["w_u", "w_v"]
    calibration = [{"x": rng.standard_normal((64, 32)).astype(np.float32)}]
    whitened = irkit.optimize(graph, "lowrank", calibration=calibration)  # fit to both inputs
    assert sorted(whitened.constants) == ["w_u", "w_v"]
    assert whitened.history[0].details["layers"]["y"]["criterion"] == "output"


def test_whitened_lowrank_beats_weight_svd_at_equal_rank(digits: dict[str, Any]) -> None:
    """Held-out (eval set) output error: fitting the calibration activations generalizes."""
    errors = {}
    for whiten in ("true", "false"):
        out = _optimize(digits["mlp"], f"lowrank{{rank=12,min_saving=0.0,whiten={whiten}}}")
        errors[whiten] = out.history[-1].rel_error
        assert out.history[-1].details["layers"]["/0/Gemm"]["rank"] == 12
    assert errors["true"] < 0.75 * errors["false"]
