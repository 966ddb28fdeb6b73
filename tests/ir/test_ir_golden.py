"""Golden IR text: every file in golden/ parses, verifies and prints back byte for byte.

Constants declared without inline values (``const @w: f32[4,8]``) take their arrays from a
weights dict built here from the declaration (deterministic values of the declared dtype).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from irkit.errors import ParseError
from irkit.ir import (
    AttrKind,
    DType,
    Graph,
    MapType,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    UnknownType,
    parse_graph,
    print_graph,
    verify,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.ir"))
EXPECTED_GOLDEN_COUNT = 15

_EXTERNAL_CONST = re.compile(r"^\s*const @(\S+): (\w+)\[([0-9,]*)\]$", re.MULTILINE)


def weights_for(text: str) -> dict[str, np.ndarray]:
    """Arrays for every constant the text declares without an inline value."""
    weights = {}
    for match in _EXTERNAL_CONST.finditer(text):
        name, dtype, dims = match.groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        count = int(np.prod(shape, dtype=np.int64))
        values = (np.arange(count) % 7 - 3) / 4
        weights[name] = values.astype(DType.from_short(dtype).numpy).reshape(shape)
    return weights


def load_golden(name: str) -> tuple[str, Graph]:
    text = (GOLDEN_DIR / name).read_text()
    return text, parse_graph(text, weights_for(text))


def test_golden_file_count() -> None:
    assert len(GOLDEN_FILES) == EXPECTED_GOLDEN_COUNT, [p.name for p in GOLDEN_FILES]


def test_every_golden_file_round_trips_exactly() -> None:
    checked = []
    for path in GOLDEN_FILES:
        text = path.read_text()
        weights = weights_for(text)
        graph = parse_graph(text, weights)
        verify(graph)
        printed = print_graph(graph)
        assert printed == text, f"{path.name} does not print back as written"
        again = parse_graph(printed, graph.weights())
        assert print_graph(again) == printed, f"{path.name}: printing is not stable"
        for name, array in weights.items():
            np.testing.assert_array_equal(graph.weights()[name], array)
        checked.append(path.name)
    assert len(checked) == EXPECTED_GOLDEN_COUNT


def test_golden_clone_prints_the_same() -> None:
    for path in GOLDEN_FILES:
        text = path.read_text()
        graph = parse_graph(text, weights_for(text))
        copy = graph.clone()
        verify(copy)
        assert print_graph(copy) == text, path.name


def test_mlp_irkit_domain_structure() -> None:
    _, g = load_golden("mlp_irkit_domain.ir")
    assert g.opset_imports == {"": 17, "irkit": 1}
    fc0, gemm = g.nodes
    assert (fc0.domain, fc0.op, fc0.name) == ("irkit", "MatMulBiasAct", "fc0")
    assert fc0.attr("act") == "relu"
    assert gemm.attrs["transB"].kind is AttrKind.INT and gemm.attr("transB") == 1
    assert fc0.output.type == TensorType(DType.FLOAT32, ("N", 8))
    assert gemm.inputs[0] is fc0.output
    assert g.constants["b0"].const[4] == np.float32(1e-05)
    assert g.weights()["w0"].shape == (4, 8)


def test_split_omitted_output_is_absent() -> None:
    _, g = load_golden("split_omitted_output.ir")
    (split,) = g.nodes
    first, middle, last = split.outputs
    assert middle.absent and not first.absent and not last.absent
    assert middle.type == TensorType(DType.FLOAT32, ("N", 4))
    assert g.outputs == (first, last)


def test_omitted_optional_inputs_are_none() -> None:
    _, g = load_golden("omitted_optional_inputs.ir")
    clip, resize, pad = g.nodes
    assert clip.inputs[1] is None and clip.inputs[2] is g.inputs[1]
    assert resize.inputs[1] is None and resize.inputs[2].is_constant
    assert pad.inputs[2] is None and len(pad.inputs) == 3


def test_if_branches_read_outer_values() -> None:
    _, g = load_golden("if_subgraphs.ir")
    x = g.inputs[1]
    scaled, if_node = g.nodes
    then_body, else_body = if_node.attr("then_branch"), if_node.attr("else_branch")
    assert then_body.outer is g and else_body.outer is g
    assert then_body.nodes[0].inputs[0] is x
    assert then_body.nodes[0].inputs[1] is g.constants["bias"]
    assert else_body.nodes[0].inputs[0] is scaled.output
    assert {u.node for u in x.uses} == {scaled, then_body.nodes[0]}
    assert "two" in then_body.constants and "two" in g.weights()


def test_loop_and_scan_bodies() -> None:
    _, g = load_golden("loop_body.ir")
    (loop,) = g.nodes
    body = loop.attr("body")
    assert [v.name for v in body.inputs] == ["i", "cond_in", "acc"]
    assert [v.name for v in body.outputs] == ["cond_out", "acc_next", "scan_out"]
    assert body.nodes[1].inputs[1] is g.constants["step"]
    assert loop.outputs[1].type == TensorType(DType.FLOAT32, (None, 3))

    _, g = load_golden("scan_body.ir")
    (scan,) = g.nodes
    assert scan.attr("num_scan_inputs") == 1
    assert scan.attr("scan_input_axes") == (0,)
    assert scan.attr("body").outer is g


def test_nested_subgraphs_capture_two_levels_up() -> None:
    _, g = load_golden("no_opset_header_nested.ir")
    x = g.inputs[2]
    then_body = g.nodes[0].attr("then_branch")
    inner_if = then_body.nodes[1]
    inner_then = inner_if.attr("then_branch")
    add = inner_then.nodes[0]
    assert add.inputs == (then_body.nodes[0].output, x)
    assert inner_then.outer is then_body and then_body.outer is g


def test_container_types() -> None:
    _, g = load_golden("sequence_optional_map_types.ir")
    types = {v.name: v.type for v in g.inputs + g.outputs}
    f32_n2 = TensorType(DType.FLOAT32, ("N", 2))
    assert types["maybe"] == OptionalType(TensorType(DType.FLOAT32, (4,)))
    assert types["table"] == MapType(DType.INT64, TensorType(DType.FLOAT32, ()))
    assert types["sp"] == SparseTensorType(DType.FLOAT32, (4, 4))
    assert types["seq"] == SequenceType(f32_n2)
    assert types["wrapped"] == OptionalType(SequenceType(f32_n2))
    assert types["probs"] == SequenceType(MapType(DType.INT64, TensorType(DType.FLOAT32, ())))
    assert g.nodes[-1].domain == "ai.onnx.ml"


def test_quoted_names() -> None:
    _, g = load_golden("quoted_names.ir")
    assert g.name == "torch::jit/export"
    assert [v.name for v in g.inputs] == ["input/0", "model::x"]
    assert g.inputs[0].type == TensorType(DType.FLOAT32, ("batch size", 3))
    assert "encoder/layer.0::weight" in g.constants
    assert g.outputs[0].name == "encoder/layer.0/output::0"
    add = g.nodes[1]
    assert add.name == "/encoder/layer.0/Add"
    assert dict((k, a.value) for k, a in add.attrs.items()) == {"my attr": 1, "ns::flag": "on"}
    assert g.nodes[2].output.name == 'with "quotes" and \\ slash'
    assert [n.output.name for n in g.nodes[3:]] == ["0", "1.2"]


def test_dims_and_ranks() -> None:
    _, g = load_golden("dims_and_ranks.ir")
    types = {v.name: v.type for v in g.inputs}
    assert types["symbolic"].shape == ("batch", "seq_len", 768)
    assert types["unknown"].shape == (None, None)
    assert types["mixed"].shape == ("N", None, 4)
    assert types["any_rank"].shape is None and types["any_rank"].rank is None
    assert types["scalar"].shape == () and types["scalar"].is_static
    assert types["untyped"] == UnknownType()
    assert types["keyword_dims"].shape == ("seq", "graph", "_x1")
    assert g.constants["empty"].const.shape == (0, 3)


def test_every_attribute_kind() -> None:
    _, g = load_golden("every_attribute_kind.ir")
    (node,) = g.nodes
    attrs = node.attrs
    kinds = {a.kind for a in attrs.values()}
    assert kinds == set(AttrKind), set(AttrKind) - kinds
    assert node.attr("an_int") == 42 and node.attr("negative") == -7
    assert node.attr("big") == 2**63 - 1
    assert node.attr("small_float") == pytest.approx(1e-05, rel=1e-7)
    assert math.isnan(node.attr("not_a_number"))
    assert node.attr("plus_inf") == math.inf and node.attr("minus_inf") == -math.inf
    assert node.attr("escaped") == 'tab\tnewline\nquote"backslash\\ unicode\u00e9 nul\x00'
    assert node.attr("empty_string") == ""
    np.testing.assert_array_equal(node.attr("tensor"), np.array([[1, 2], [3, 4]], np.float32))
    assert node.attr("int_tensor").dtype == np.int64
    assert node.attr("scalar_tensor").shape == () and node.attr("scalar_tensor") == 0.1
    assert list(node.attr("string_tensor")) == [b"a", b'b"c']
    assert node.attr("graph").outer is g
    assert node.attr("a_type") == SequenceType(TensorType(DType.FLOAT32, ("N", None)))
    assert node.attr("ints") == (1, -2, 3)
    floats = node.attr("floats")
    assert floats[:2] == (0.5, float(np.float32(1e-05))) and math.isnan(floats[2])
    assert node.attr("strings") == ("a", "b,c", "")
    assert [t.dtype for t in node.attr("tensors")] == [np.int32, np.bool_]
    assert [sub.name for sub in node.attr("graphs")] == ["g0", "g1"]
    for empty in ("ints", "floats", "strings", "tensors", "graphs", "types"):
        attr = attrs[f"empty_{empty}"]
        assert attr.kind is AttrKind(empty) and attr.value == ()
    assert g.opset_imports == {"": 17, "custom.ops": 2}
    assert node.domain == "custom.ops" and node.name == "everything"


def test_tensor_literals_of_every_dtype() -> None:
    _, g = load_golden("tensor_literals.ir")
    c = {name: value.const for name, value in g.constants.items()}
    assert c["f16"].dtype == np.float16 and c["f16"][1] == np.float16(-65504)
    assert c["i8"].tolist() == [-128, 0, 127]
    assert c["u64"][0] == np.uint64(2**64 - 1)
    assert c["flags"].tolist() == [[True, False], [False, True]]
    assert c["words"].tolist() == [b"alpha", b"with space", b'quote"d']
    assert c["z"].tolist() == [1 - 2j, 0.5 + 0j]
    assert np.isnan(c["specials"][0]) and np.isinf(c["specials"][1])
    assert np.signbit(c["specials"][3])
    assert DType.from_numpy(c["i4"].dtype) is DType.INT4
    assert [v.name for v in g.outputs][-1] == "big" and c["big"].shape == (20,)


def test_opset_header_is_printed_only_when_not_default() -> None:
    _, g = load_golden("opset_custom_domains.ir")
    assert g.opset_imports == {"": 13, "com.microsoft": 1, "irkit": 1, "org.example.quant": 4}
    assert [n.domain for n in g.nodes] == ["com.microsoft", "irkit", "org.example.quant"]
    _, plain = load_golden("cnn_fragment.ir")
    assert not print_graph(plain).startswith("opset")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = Relu(%z) : f32[2]\n}\n",
         "line 2, column 13: %z is not defined before use"),
        ("graph g(%x: f32[2]) -> (%x: f32[2]) {\n  %x = Relu(%x) : f32[2]\n}\n",
         "value %x is defined twice"),
        ("graph g() -> (@w: f32[20]) {\n  const @w: f32[20]\n}\n",
         "constant @w has no inline value and no entry in weights"),
        ("graph g() -> (@w: f32[3]) {\n  const @w: f32[3] = [1.0, 2.0]\n}\n",
         "2 values given for shape [3]"),
        ("graph g(%x: q9[2]) -> (%x: q9[2]) {\n}\n", "unknown dtype 'q9'"),
        ("graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = Relu(%x) f32[2]\n}\n",
         "line 2, column 17"),
        ("graph g(%x: f32[2]) -> (%y: f32[2], %z: f32[2]) {\n  %y, %z = Split(%x) : f32[2]\n}\n",
         "2 outputs but 1 types"),
    ],
)
def test_parse_errors_name_line_and_problem(text: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_graph(text)
    assert message in str(info.value)


def test_weights_with_the_wrong_shape_are_rejected() -> None:
    text = "graph g() -> (@w: f32[4,5]) {\n  const @w: f32[4,5]\n}\n"
    with pytest.raises(ParseError, match=r"declared f32\[4,5\] but its data is f32\[5, 4\]"):
        parse_graph(text, {"w": np.zeros((5, 4), np.float32)})


def test_graph_and_attribute_names_that_are_not_identifiers_are_quoted() -> None:
    """Value names may start with a digit; graph and attribute names are quoted instead."""
    text = (
        'graph "0.x."(%0: f32[2]) -> (%y: f32[2]) {\n'
        '  %y = Relu(%0) {"1st"=1, "a.b"=2, plain=3} : f32[2]\n'
        "}\n"
    )
    graph = parse_graph(text)
    assert graph.name == "0.x." and list(graph.nodes[0].attrs) == ["1st", "a.b", "plain"]
    assert print_graph(graph) == text
