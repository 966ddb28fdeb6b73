"""Stock torch sequence modules compiled with llvm keep a dynamic batch *and* sequence
length: one artifact matches torch eager at two batch sizes x two lengths (abs 1e-4).

Covers the ConstantOfShape/Expand of symbolic dims (attention masks), attention's
probabilities x V with a head dim narrower than a GEMM panel, Conv over a symbolic
length, ``nn.LSTM``/``GRU``/``RNN`` as one ONNX node per layer with a run-time time loop,
and the ways to declare the axes (``dynamic_axes``, a factory's third item, a spec's
``inputs`` block)."""

from __future__ import annotations

import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llvmlite")

from torch import nn  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.errors import IrkitError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZES = ((2, 4), (5, 9))  # (batch, sequence length): both differ from the example's (3, 7)
ATOL = 1e-4


class SelfAttention(nn.Module):
    """Sequence-first (torch's default layout): x is [S, N, 32]."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4)

    def forward(self, x: Any) -> Any:
        return self.attn(x, x, x, need_weights=False)[0]


class ConvBlock(nn.Module):
    """Conv1d/BatchNorm/ReLU with a residual add, over a dynamic length."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.conv2, self.bn2 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8)
        for bn in (self.bn1, self.bn2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Any) -> Any:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class BiLSTM(nn.Module):
    """2 layers, bidirectional, seq-first, given initial states, using h_n and c_n."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 12, 2, bidirectional=True)
        self.head = nn.Linear(24, 5)

    def forward(self, x: Any, h0: Any) -> Any:
        out, (hn, cn) = self.lstm(x, (h0, 0.5 * h0))
        return self.head(out) + (hn.sum(0) + cn.mean(0)).mean(-1, keepdim=True)


class Recurrent(nn.Module):
    """``nn.GRU`` / ``nn.RNN``: the output sequence plus the final state."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Any) -> Any:
        out, hn = self.rnn(x)
        return out + hn.mean(0).sum(-1, keepdim=True).unsqueeze(1)


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2)


def _randn(*shape: int) -> Any:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


NS = {0: "N", 1: "S"}
# name: (module factory, inputs for (batch, length), dynamic_axes)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], tuple[Any, ...]],
                       dict[str, dict[int, str]]]] = {
    "encoder": (_encoder, lambda n, s: (_randn(n, s, 32),), {"src": NS}),
    # seq-first, checked on the (cheaper) attention alone: x is [S, N, 32]
    "multihead_attention": (SelfAttention, lambda n, s: (_randn(s, n, 32),),
                            {"x": {0: "S", 1: "N"}}),
    "conv_bn_residual": (ConvBlock, lambda n, s: (_randn(n, 8, s),), {"x": {0: "N", 2: "S"}}),
    "lstm_batch_first": (lambda: nn.LSTM(16, 24, batch_first=True),
                         lambda n, s: (_randn(n, s, 16),), {"input": NS}),
    "lstm_2layer_bidirectional": (BiLSTM, lambda n, s: (_randn(s, n, 16), _randn(4, n, 12)),
                                  {"x": {0: "S", 1: "N"}, "h0": {1: "N"}}),
    "gru_2layer_bidirectional": (
        lambda: Recurrent(nn.GRU(16, 12, 2, batch_first=True, bidirectional=True)),
        lambda n, s: (_randn(n, s, 16),), {"x": NS}),
    "rnn_relu": (lambda: Recurrent(nn.RNN(16, 12, nonlinearity="relu", batch_first=True)),
                 lambda n, s: (_randn(n, s, 16),), {"x": NS}),
}


def _first(result: Any) -> Any:
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("name", list(CASES))
def test_one_llvm_artifact_serves_any_batch_and_length(name: str) -> None:
    factory, make_inputs, axes = CASES[name]
    torch.manual_seed(0)
    module = factory().eval()
    graph = irkit.load_model(module, example_inputs=make_inputs(3, 7), dynamic_axes=axes)
    artifact = irkit.compile(graph, target="llvm")
    with tempfile.TemporaryDirectory() as tmp:
        compiled = irkit.runtime.load(artifact.save(f"{tmp}/art"))
        names = [spec.name for spec in compiled.inputs]
        for batch, length in SIZES:
            inputs = make_inputs(batch, length)
            with torch.no_grad():
                expected = _first(module(*inputs)).numpy()
            got = next(iter(compiled(**{k: v.numpy() for k, v in zip(names, inputs)}).values()))
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_lowering_layout_1_reverse_matches_onnx_reference(op: str) -> None:
    """The llvm kernels on ONNX LSTM / GRU nodes with a batch-major layout (which ONNX
    Runtime refuses), the reverse direction and (GRU) ``linear_before_reset=0`` (torch
    exports 1), against onnx's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from irkit.interop.onnx_import import load_onnx

    rng = np.random.default_rng(0)
    hidden, width, gates = 6, 5, {"LSTM": 4, "GRU": 3}[op]
    weights = [numpy_helper.from_array(
        (0.4 * rng.standard_normal(shape)).astype(np.float32), name)
        for name, shape in (("W", (1, gates * hidden, width)),
                            ("R", (1, gates * hidden, hidden)), ("B", (1, 2 * gates * hidden)))]
    outputs = ["y", "yh", "yc"][:3 if op == "LSTM" else 2]
    inputs = ["x", "W", "R", "B", "", "h0", "h0"][:7 if op == "LSTM" else 6]
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden, direction="reverse",
                            layout=1)
    state = ["N", 1, hidden]
    graph = helper.make_graph(
        [node], "recurrent",
        [helper.make_tensor_value_info("x", 1, ["N", "S", width]),
         helper.make_tensor_value_info("h0", 1, state)],
        [helper.make_tensor_value_info("y", 1, ["N", "S", 1, hidden]),
         *(helper.make_tensor_value_info(name, 1, state) for name in outputs[1:])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    reference = ReferenceEvaluator(model)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = irkit.runtime.load(
            irkit.compile(load_onnx(model), target="llvm").save(f"{tmp}/art"))
        for batch, length in SIZES:
            x = rng.standard_normal((batch, length, width)).astype(np.float32)
            h0 = rng.standard_normal((batch, 1, hidden)).astype(np.float32)
            want = reference.run(None, {"x": x, "h0": h0})
            got = compiled(x=x, h0=h0)
            for key, value in zip(outputs, want):
                np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-5)


def test_spec_inputs_block_declares_the_dynamic_axes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``inputs { x: f32[N, 3, H, W] }`` exports with H and W dynamic (the factory only
    gives an example), so the llvm artifact takes other image sizes."""
    from irkit.builder import load_pipeline_model
    from irkit.spec import parse_spec

    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.torch_models", None)
    spec = tmp_path / "resconv.irk"
    spec.write_text(textwrap.dedent("""
        pipeline resconv {
          model = torch("examples.torch_models:resconv")
          inputs { x: f32[N, 3, H, W] }
          target llvm
        }
    """))
    graph = load_pipeline_model(parse_spec(spec).pipeline())
    assert graph.inputs[0].type.shape == ("N", 3, "H", "W")
    module = __import__("examples.torch_models", fromlist=["resconv"]).resconv()[0]
    compiled = irkit.runtime.load(irkit.compile(graph, target="llvm").save(tmp_path / "art"))
    for shape in ((2, 3, 8, 12), (3, 3, 17, 5)):
        x = _randn(*shape)
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(compiled(x=x.numpy())["output"], expected, rtol=0, atol=ATOL)


def test_bad_dynamic_axes_are_one_clear_error() -> None:
    module = nn.Linear(4, 2)
    with pytest.raises(IrkitError, match="'y', not an input of forward"):
        irkit.load_model(module, example_inputs=(_randn(3, 4),), dynamic_axes={"y": {0: "N"}})
    with pytest.raises(IrkitError, match="axis 2 is out of range"):
        irkit.load_model(module, example_inputs=(_randn(3, 4),), dynamic_axes={"input": {2: "S"}})
