"""The shared test models export and agree with torch under ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_digits_models_reach_accuracy(digits_models: Path) -> None:
    data = np.load(digits_models.parent / "data" / "digits_eval.npz")
    calib = np.load(digits_models.parent / "data" / "digits_calib.npz")
    assert data["x"].shape[1:] == (64,) and data["x_img"].shape[1:] == (1, 8, 8)
    assert data["y"].dtype == np.int64 and calib["x"].shape == (128, 64)
    assert data["x"].min() >= 0.0 and data["x"].max() <= 1.0
    for name, key in [("digits_mlp.onnx", "x"), ("digits_cnn.onnx", "x_img")]:
        model = onnx.load(str(digits_models / name))
        assert model.opset_import[0].version == 17
        assert model.graph.input[0].name == "x" and model.graph.output[0].name == "logits"
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        logits = _session(digits_models / name).run(None, {"x": data[key]})[0]
        assert (logits.argmax(1) == data["y"]).mean() > 0.95, name
    cnn_ops = [n.op_type for n in onnx.load(str(digits_models / "digits_cnn.onnx")).graph.node]
    assert cnn_ops.count("BatchNormalization") == 2 and "Identity" not in cnn_ops


def test_digits_assets_are_seeded(tmp_path: Path) -> None:
    from irkit.testing.digits import make_digits_assets

    first = make_digits_assets(tmp_path / "a", epochs_mlp=2, epochs_cnn=1)
    second = make_digits_assets(tmp_path / "b", epochs_mlp=2, epochs_cnn=1)
    assert first.written and second.written
    for rel in ["models/digits_mlp.onnx", "models/digits_cnn.onnx", "data/digits_eval.npz"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not make_digits_assets(tmp_path / "a").written  # present: skipped


def test_transformer_onnx_matches_torch(transformer_onnx: Path) -> None:
    from irkit.testing.models import make_transformer_encoder

    model = make_transformer_encoder()
    session = _session(transformer_onnx)
    for batch in (1, 3):
        x = torch.randn(batch, 64, 128)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_resnet_cnn_exports(tmp_path: Path) -> None:
    from irkit.testing.models import export_onnx, make_resnet_cnn

    model = make_resnet_cnn()
    path = export_onnx(model, (torch.randn(2, 3, 32, 32),), tmp_path / "resnet.onnx")
    x = torch.randn(4, 3, 32, 32)
    (y,) = _session(path).run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_minilm_onnx_matches_torch(minilm_onnx: Path) -> None:
    from irkit.testing.models import load_minilm, make_minilm_encoder, minilm_example_inputs

    tokenizer, bert = load_minilm()
    inputs = minilm_example_inputs(["hello world", "one two three four five six"], tokenizer)
    (hidden,) = _session(minilm_onnx).run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        expected = make_minilm_encoder(bert)(**inputs).numpy()
    np.testing.assert_allclose(hidden, expected, rtol=1e-3, atol=2e-4)
