"""Property test: any graph built through the API prints to text that parses back to a
graph printing the same text (names, dims, attributes and constants drawn at random)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from irkit.ir import Attr, AttrKind, DType, Graph, TensorType, parse_graph, print_graph, verify
from irkit.ir.types import OptionalType, SequenceType, UnknownType

NAME_CHARS = "abcXYZ019_./: \"\\é\n\t"
names = st.text(NAME_CHARS, min_size=1, max_size=8)
ops = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,6}", fullmatch=True)
domains = st.sampled_from(["", "irkit", "com.example", "ai.onnx.ml"])
dims = st.one_of(st.integers(0, 9), st.none(), names)
shapes = st.one_of(st.none(), st.lists(dims, max_size=3).map(tuple))
dtypes = st.sampled_from([DType.FLOAT32, DType.INT64, DType.BOOL, DType.FLOAT16, DType.INT8,
                          DType.STRING, DType.BFLOAT16, DType.UINT8, DType.FLOAT64])
tensor_types = st.builds(TensorType, dtypes, shapes)
value_types = st.one_of(
    tensor_types,
    tensor_types.map(SequenceType),
    tensor_types.map(OptionalType),
    st.just(UnknownType()),
)
float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
small_arrays = hnp.arrays(
    st.sampled_from([np.float32, np.int64, np.bool_, np.float16, np.int8, np.float64]),
    hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
)
attr_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: Attr(AttrKind.INT, v)),
    float32s.map(lambda v: Attr(AttrKind.FLOAT, v)),
    st.text(max_size=6).map(lambda v: Attr(AttrKind.STRING, v)),
    st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(
        lambda v: Attr(AttrKind.INTS, tuple(v))),
    st.lists(float32s, min_size=1, max_size=3).map(lambda v: Attr(AttrKind.FLOATS, tuple(v))),
    st.lists(st.text(max_size=3), min_size=1, max_size=3).map(
        lambda v: Attr(AttrKind.STRINGS, tuple(v))),
    st.sampled_from(["ints", "floats", "strings", "tensors", "graphs", "types"]).map(
        lambda k: Attr(AttrKind(k), ())),
    small_arrays.map(lambda a: Attr(AttrKind.TENSOR, a)),
    value_types.map(lambda t: Attr(AttrKind.TYPE, t)),
)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    # enough for the most a graph below draws: 3 inputs, 2 + 1 constants, 4 nodes x 2 outputs
    value_names = iter(draw(st.lists(names, min_size=14, max_size=14, unique=True)))
    g = Graph(draw(names), opset_imports={"": draw(st.integers(13, 21)), "irkit": 1})
    values = [g.add_input(next(value_names), draw(value_types))
              for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(0, 2))):
        array = draw(small_arrays)
        values.append(g.add_constant(next(value_names), array, exact_name=True))
    if draw(st.booleans()):  # a large constant: printed without values, read from weights
        big = np.arange(20, dtype=np.float32).reshape(4, 5)
        values.append(g.add_constant(next(value_names), big, exact_name=True))
    for _ in range(draw(st.integers(1, 4))):
        inputs = draw(st.lists(st.one_of(st.none(), st.sampled_from(values)), max_size=3))
        attrs = draw(st.dictionaries(names, attr_values, max_size=3))
        out_count = draw(st.integers(1, 2))
        out_names = [None if draw(st.booleans()) and i > 0 else next(value_names)
                     for i in range(out_count)]
        node = g.add_node(draw(ops), inputs, attrs, domain=draw(domains), outputs=out_names,
                          types=[draw(value_types) for _ in out_names],
                          name=draw(st.one_of(st.just(""), names)))
        values.extend(v for v in node.outputs if not v.absent)
    g.set_outputs(draw(st.lists(st.sampled_from(values), min_size=1, max_size=2)))
    verify(g)
    return g


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_printed_text_parses_back_to_the_same_text(graph: Graph) -> None:
    text = print_graph(graph)
    parsed = parse_graph(text, graph.weights())
    verify(parsed)
    assert print_graph(parsed) == text
    assert [v.name for v in parsed.inputs] == [v.name for v in graph.inputs]
    assert [v.name for v in parsed.outputs] == [v.name for v in graph.outputs]
    for name, array in graph.weights().items():
        got = parsed.weights()[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
