"""Round trips of real models: ONNX -> Graph -> text -> Graph -> ONNX, numerically equal.

Each model is imported, printed, parsed back with ``graph.weights()``, exported with
``irkit.to_onnx`` (which runs ``onnx.checker.check_model(full_check=True)``) and evaluated;
the outputs must equal ONNX Runtime on the original file within ``ATOL``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

import irkit
from irkit.interop.onnx_import import load_onnx
from irkit.ir import DType, Graph, parse_graph, print_graph, verify

ATOL = 1e-5
RTOL = 1e-5


def run_ort(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime at the optimization level ``irkit.evaluate`` uses, so that different
    fusions (which move results by ~1e-5 on MiniLM) do not blur the comparison."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def round_trip(path: Path) -> tuple[Graph, Graph, onnx.ModelProto]:
    """(imported graph, graph parsed back from its text, exported model)."""
    graph = load_onnx(path)
    verify(graph)
    text = print_graph(graph)
    parsed = parse_graph(text, graph.weights())
    verify(parsed)
    assert print_graph(parsed) == text
    exported = irkit.to_onnx(parsed)  # check=True: full ONNX checker
    assert [i.name for i in exported.graph.input] == [v.name for v in graph.inputs]
    assert [o.name for o in exported.graph.output] == [v.name for v in graph.outputs]
    return graph, parsed, exported


def assert_matches_ort(
    path: Path, parsed: Graph, exported: onnx.ModelProto, feeds: dict[str, np.ndarray],
    atol: float = ATOL, rtol: float = RTOL,
) -> None:
    want = run_ort(path, feeds)
    got = irkit.evaluate(parsed, feeds)
    assert got.keys() == want.keys()
    again = run_ort(exported, feeds)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(got[name], expected, atol=atol, rtol=rtol, err_msg=name)
        np.testing.assert_allclose(again[name], expected, atol=atol, rtol=rtol, err_msg=name)


def check_drawing(graph: Graph) -> None:
    nxg = graph.to_networkx()
    kinds = [data["kind"] for _, data in nxg.nodes(data=True)]
    assert kinds.count("op") == len(graph.nodes)
    assert kinds.count("input") == len(graph.inputs)
    assert kinds.count("const") == len(graph.constants)
    assert kinds.count("output") == len({v.name for v in graph.outputs})
    # one edge per (producer, consumer) pair of the top-level graph
    expected_edges = set()
    for i, node in enumerate(graph.nodes):
        for value in node.inputs:
            if value is not None and value.producer is None:
                prefix = "input" if value in graph.inputs else "const"
                expected_edges.add((f"{prefix}:{value.name}", f"node:{i}"))
            elif value is not None and value.producer in graph.nodes:
                expected_edges.add((f"node:{graph.nodes.index(value.producer)}", f"node:{i}"))
    for value in graph.outputs:
        source = (f"node:{graph.nodes.index(value.producer)}" if value.producer is not None
                  else f"input:{value.name}")
        expected_edges.add((source, f"output:{value.name}"))
    assert set(nxg.edges) == expected_edges
    assert nxg.number_of_edges() == len(expected_edges)
    check_dot(graph.to_dot(), nxg.number_of_nodes(), nxg.number_of_edges())


_DOT_NODE = re.compile(r'^  n(\d+) \[label="(?:[^"\\]|\\.)*", shape=(box|ellipse|note)\];$')
_DOT_EDGE = re.compile(r'^  n(\d+) -> n(\d+) \[label="(?:[^"\\]|\\.)*"\];$')


def check_dot(dot: str, nodes: int, edges: int) -> None:
    """A basic DOT syntax check: header, one statement per line, balanced braces."""
    lines = dot.splitlines()
    assert re.match(r'^digraph "(?:[^"\\]|\\.)*" \{$', lines[0])
    assert lines[-1] == "}" and dot.endswith("}\n")
    body = [line for line in lines[1:-1] if line not in ("  rankdir=TB;", "  node [fontsize=10];")]
    node_ids = {int(m.group(1)) for line in body if (m := _DOT_NODE.match(line))}
    edge_lines = [m for line in body if (m := _DOT_EDGE.match(line))]
    assert len(node_ids) == nodes
    assert len(edge_lines) == edges
    assert len(body) == nodes + edges, [b for b in body if not (_DOT_NODE.match(b)
                                                               or _DOT_EDGE.match(b))]
    for edge in edge_lines:
        assert {int(edge.group(1)), int(edge.group(2))} <= node_ids
    assert dot.count("{") == dot.count("}")


# -- digits MLP and CNN ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_eval(digits_models: Path) -> np.ndarray:
    data = np.load(digits_models.parent / "data" / "digits_eval.npz")
    return data["x"][:32].astype(np.float32)


def test_digits_mlp_round_trip(digits_models: Path, digits_eval: np.ndarray) -> None:
    path = digits_models / "digits_mlp.onnx"
    graph, parsed, exported = round_trip(path)
    assert graph.inputs[0].shape[0] == "N"
    assert {"Gemm"} <= {n.op for n in graph.nodes}
    x = digits_eval.reshape(len(digits_eval), -1)
    assert_matches_ort(path, parsed, exported, {graph.inputs[0].name: x})
    check_drawing(graph)


def test_digits_cnn_round_trip(digits_models: Path, digits_eval: np.ndarray) -> None:
    path = digits_models / "digits_cnn.onnx"
    graph, parsed, exported = round_trip(path)
    ops = {n.op for n in graph.nodes}
    assert {"Conv", "Relu"} <= ops
    shape = [d if isinstance(d, int) else len(digits_eval) for d in graph.inputs[0].shape]
    x = digits_eval.reshape(shape)
    assert_matches_ort(path, parsed, exported, {graph.inputs[0].name: x})
    check_drawing(graph)


# -- small torch models exported here ------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-style CNN with BatchNorm statistics, exported with dynamo (batch dim N)."""
    torch = pytest.importorskip("torch")
    from irkit.testing.models import export_onnx, make_resnet_cnn

    model = make_resnet_cnn(width=8)
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("cnn") / "resnet.onnx"
    return export_onnx(model, (example,), path, input_names=["image"], output_names=["logits"])


def test_torch_resnet_cnn_round_trip(torch_cnn_onnx: Path) -> None:
    graph, parsed, exported = round_trip(torch_cnn_onnx)
    assert graph.inputs[0].shape == ("N", 3, 32, 32)
    assert sum(n.op == "Conv" for n in graph.nodes) >= 7
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert_matches_ort(torch_cnn_onnx, parsed, exported, {"image": x})
    check_drawing(graph)


@pytest.fixture(scope="module")
def transformer64_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nn.TransformerEncoder, d_model=64, 4 heads, 2 layers, input x f32[N,16,64]."""
    torch = pytest.importorskip("torch")
    from irkit.testing.models import export_onnx, make_transformer_encoder

    model = make_transformer_encoder(d_model=64, nhead=4, layers=2, seq=16)
    example = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("transformer64") / "transformer.onnx"
    return export_onnx(model, (example,), path, input_names=["x"], output_names=["y"])


def test_transformer_encoder_round_trip(transformer64_onnx: Path) -> None:
    graph, parsed, exported = round_trip(transformer64_onnx)
    assert graph.inputs[0].shape == ("N", 16, 64)
    ops = {n.op for n in graph.nodes}
    assert {"MatMul", "Softmax"} <= ops or "Attention" in ops, ops
    x = np.random.default_rng(3).standard_normal((3, 16, 64)).astype(np.float32)
    assert_matches_ort(transformer64_onnx, parsed, exported, {"x": x})
    check_drawing(graph)


def test_transformer_text_is_stable_and_clone_identical(transformer64_onnx: Path) -> None:
    graph = load_onnx(transformer64_onnx)
    text = print_graph(graph)
    assert print_graph(graph.clone()) == text
    weights = graph.weights()
    assert sum(a.size for a in weights.values()) > 2 * 4 * 64 * 64  # attention + FFN weights
    twice = print_graph(parse_graph(print_graph(parse_graph(text, weights)), weights))
    assert twice == text


# -- all-MiniLM-L6-v2 ------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_round_trip(minilm_onnx: Path) -> None:
    from irkit.testing.models import minilm_example_inputs

    graph, parsed, exported = round_trip(minilm_onnx)
    assert [v.name for v in graph.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert graph.inputs[0].shape == ("N", "S")
    assert graph.outputs[0].shape == ("N", "S", 384)
    inputs = minilm_example_inputs()
    feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
    assert_matches_ort(minilm_onnx, parsed, exported, feeds)
    check_drawing(graph)
    # and against the PyTorch model itself (a different kernel library: looser)
    import torch

    from irkit.testing.models import make_minilm_encoder

    with torch.no_grad():
        expected = make_minilm_encoder()(*(inputs[n] for n in feeds)).numpy()
    got = irkit.evaluate(parsed, feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# -- golden IR files through ONNX ----------------------------------------------------------------
GOLDEN_DIR = Path(__file__).parents[1] / "ir" / "golden"
# Golden files made only of valid standard-ONNX nodes: exporting them and importing the
# result prints the same text. (Others use custom domains, attributes ONNX rejects, unknown
# ranks the checker refuses on graph inputs, or types ONNX cannot store for omitted outputs.)
ONNX_EXACT = [
    "cnn_fragment.ir",
    "if_subgraphs.ir",
    "no_opset_header_nested.ir",
    "node_names.ir",
    "omitted_optional_inputs.ir",
    "scan_body.ir",
    "tensor_literals.ir",
]
_EXTERNAL_CONST = re.compile(r"^\s*const @(\S+): (\w+)\[([0-9,]*)\]$", re.MULTILINE)


def golden_graph(name: str) -> tuple[str, Graph]:
    text = (GOLDEN_DIR / name).read_text()
    weights = {}
    for match in _EXTERNAL_CONST.finditer(text):
        name, dtype, dims = match.groups()
        shape = tuple(int(d) for d in dims.split(","))
        values = (np.arange(int(np.prod(shape))) % 5 - 2) / 8
        weights[name] = values.astype(DType.from_short(dtype).numpy).reshape(shape)
    return text, parse_graph(text, weights)


def test_golden_files_survive_onnx_export_and_import() -> None:
    checked = 0
    for name in ONNX_EXACT:
        text, graph = golden_graph(name)
        model = irkit.to_onnx(graph)
        back = load_onnx(model)
        verify(back)
        assert print_graph(back) == text, name
        np.testing.assert_equal(back.weights(), graph.weights())
        checked += 1
    assert checked == 7


def test_golden_if_evaluates_both_branches() -> None:
    _, graph = golden_graph("if_subgraphs.ir")
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    bias = np.array([1, 2, 3, 4], np.float32)
    then = irkit.evaluate(graph, {"cond": np.array(True), "x": x})["out"]
    other = irkit.evaluate(graph, {"cond": np.array(False), "x": x})["out"]
    np.testing.assert_allclose(then, (x + bias) * 2, atol=ATOL, rtol=0)
    np.testing.assert_allclose(other, x * x - bias, atol=ATOL, rtol=0)


def test_golden_loop_and_scan_evaluate() -> None:
    _, loop = golden_graph("loop_body.ir")
    init = np.array([1.0, -1.0, 0.0], np.float32)
    step = np.array([0.5, 1.0, 2.0], np.float32)
    out = irkit.evaluate(loop, {"trip": np.array(4, np.int64), "init": init})
    np.testing.assert_allclose(out["final"], init + 4 * step, atol=ATOL, rtol=0)
    expected = init + np.arange(1, 5, dtype=np.float32)[:, None] * step
    np.testing.assert_allclose(out["partials"], expected, atol=ATOL, rtol=0)

    _, scan = golden_graph("scan_body.ir")
    xs = np.random.default_rng(5).standard_normal((6, 2)).astype(np.float32)
    init2 = np.array([10.0, -10.0], np.float32)
    out = irkit.evaluate(scan, {"init": init2, "xs": xs})
    np.testing.assert_allclose(out["sums"], init2 + np.cumsum(xs, axis=0), atol=ATOL, rtol=0)
    np.testing.assert_allclose(out["total"], init2 + xs.sum(axis=0), atol=ATOL, rtol=0)


def test_golden_split_with_omitted_output_evaluates() -> None:
    _, graph = golden_graph("split_omitted_output.ir")
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    out = irkit.evaluate(graph, {"x": x})
    np.testing.assert_array_equal(out["first"], x[:, :2])
    np.testing.assert_array_equal(out["last"], x[:, 6:])
    model = irkit.to_onnx(graph)
    assert list(model.graph.node[0].output) == ["first", "", "last"]


def test_trailing_omitted_optional_outputs_evaluate() -> None:
    text = """graph bn(%x: f32[2,3]) -> (%y: f32[2,3], %m: f32[2,3]) {
  const @scale: f32[3] = [1.0, 2.0, 3.0]
  const @bias: f32[3] = [0.0, 0.0, 1.0]
  const @var: f32[3] = [1.0, 4.0, 0.25]
  %y, _, _ = BatchNormalization(%x, @scale, @bias, @bias, @var) {epsilon=0.0} : f32[2,3], ?, ?
  %m, _ = Dropout(%y) : f32[2,3], ?
}
"""
    graph = parse_graph(text)
    assert print_graph(graph) == text
    x = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    scale, bias, var = (graph.constants[n].const for n in ("scale", "bias", "var"))
    expected = (x - bias) / np.sqrt(var) * scale + bias
    out = irkit.evaluate(graph, {"x": x})
    np.testing.assert_allclose(out["y"], expected, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out["m"], expected, atol=ATOL, rtol=RTOL)


def test_golden_irkit_domain_op_exports_as_its_decomposition() -> None:
    _, graph = golden_graph("mlp_irkit_domain.ir")
    model = irkit.to_onnx(graph)
    assert all(node.domain == "" for node in model.graph.node)
    assert [o.domain for o in model.opset_import] == [""]
    assert graph.nodes[0].domain == "irkit"  # the graph itself is not changed
    w = graph.weights()
    x = np.random.default_rng(11).standard_normal((3, 4)).astype(np.float32)
    expected = np.maximum(x @ w["w0"] + w["b0"], 0) @ w["w1"].T + w["b1"]
    np.testing.assert_allclose(irkit.evaluate(graph, {"x": x})["y"], expected,
                               atol=ATOL, rtol=RTOL)
