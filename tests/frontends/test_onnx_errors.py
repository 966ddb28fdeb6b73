"""ONNX frontend on bad and unusual input: every failure is a clear IrkitError.

Also: older opsets are converted to 13, external data loads, symbolic dims are kept and
model-local functions are inlined.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irkit
from irkit.errors import IrkitError, ModelLoadError, UnsupportedOpsError
from irkit.interop.onnx_import import load_onnx
from irkit.ir import DType, TensorType, verify

RNG = np.random.default_rng(0)
ATOL = 1e-5


def _info(name: str, dims: list[int | str], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def mlp_model(opset: int = 17) -> onnx.ModelProto:
    """x f32[N,4] -> MatMul(w) -> Add(b) -> Relu -> y f32[N,3] (the same weights each call)."""
    rng = np.random.default_rng(42)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
        helper.make_node("Relu", ["hb"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "mlp", [_info("x", ["N", 4])], [_info("y", ["N", 3])],
                              [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.onnx"
    onnx.save_model(mlp_model(), path)
    return path


def expect_load_error(path: Path | str, *fragments: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_onnx(path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# -- unreadable files ----------------------------------------------------------------------
def test_good_file_loads(good_file: Path) -> None:
    graph = load_onnx(good_file)
    verify(graph)
    assert [n.op for n in graph.nodes] == ["MatMul", "Add", "Relu"]
    assert graph.meta["source"] == str(good_file)


def test_truncated_file(good_file: Path, tmp_path: Path) -> None:
    data = good_file.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    expect_load_error(bad, str(bad), "not a valid ONNX model", "truncated or malformed",
                      f"{len(data) // 2} bytes")


def test_every_truncation_point_is_a_load_error(good_file: Path, tmp_path: Path) -> None:
    """Cutting the file anywhere gives ModelLoadError, never a protobuf or KeyError."""
    data = good_file.read_bytes()
    bad = tmp_path / "cut.onnx"
    checked = 0
    for cut in range(0, len(data), 3):
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match=r"cut\.onnx: "):
            load_onnx(bad)
        checked += 1
    assert checked == len(range(0, len(data), 3)) > 50


def test_random_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(1).bytes(300))
    expect_load_error(bad, "random.onnx", "not a valid ONNX model")


def test_zip_file(tmp_path: Path) -> None:
    bad = tmp_path / "archive.onnx"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("model.txt", "not a model " * 20)
    expect_load_error(bad, "archive.onnx", "not a valid ONNX model")


def test_text_file(tmp_path: Path) -> None:
    bad = tmp_path / "text.onnx"
    bad.write_text("graph main(%x: f32[2]) -> (%x: f32[2]) {\n}\n" * 4)
    error = expect_load_error(bad, "text.onnx")
    assert "not a valid ONNX model" in str(error) or "not an ONNX model" in str(error)


def test_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    expect_load_error(bad, "empty.onnx", "not an ONNX model",
                      "no ir_version, graph or opset_import")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    expect_load_error(missing, f"{missing}: no such model file")
    expect_load_error(tmp_path, "no such model file")  # a directory is not a model file


def test_model_proto_without_graph() -> None:
    with pytest.raises(ModelLoadError, match=r"<ModelProto>: not an ONNX model"):
        load_onnx(onnx.ModelProto())


def test_undefined_input_name() -> None:
    model = mlp_model()
    model.graph.node[1].input[0] = "typo"
    with pytest.raises(ModelLoadError, match=r"node Add 'add' reads 'typo', which is not "
                                             r"defined before it"):
        load_onnx(model)


def test_output_never_produced() -> None:
    model = mlp_model()
    model.graph.output.append(_info("ghost", [1]))
    with pytest.raises(ModelLoadError, match=r"graph 'mlp' output 'ghost' is never produced"):
        load_onnx(model)


# -- external data -------------------------------------------------------------------------
def save_external(tmp_path: Path) -> Path:
    path = tmp_path / "external.onnx"
    onnx.save_model(mlp_model(), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").is_file()
    return path


def test_external_data_present_loads(tmp_path: Path) -> None:
    path = save_external(tmp_path)
    reference = mlp_model()
    graph = load_onnx(path)
    for tensor in reference.graph.initializer:
        np.testing.assert_array_equal(graph.constants[tensor.name].const,
                                      numpy_helper.to_array(tensor))
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    got = irkit.evaluate(graph, {"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(reference, {"x": x})[0], atol=ATOL, rtol=0)


def test_external_data_missing(tmp_path: Path) -> None:
    path = save_external(tmp_path)
    (tmp_path / "w.bin").unlink()
    error = expect_load_error(path, "external.onnx: external data file(s) missing",
                              str(tmp_path / "w.bin"), "tensors: w, b")
    assert not isinstance(error, KeyError)


# -- unsupported ops -----------------------------------------------------------------------
def test_unknown_ops_are_reported_together() -> None:
    model = mlp_model()
    model.graph.node.append(helper.make_node("Frobnicate", ["y"], ["z"], name="frob",
                                             domain="com.acme"))
    model.graph.node.append(helper.make_node("NoSuchOp", ["z"], ["q"], name="bogus"))
    model.opset_import.append(helper.make_opsetid("com.acme", 3))
    with pytest.raises(UnsupportedOpsError) as info:
        load_onnx(model)
    message = str(info.value)
    assert "2 op(s) cannot be represented" in message
    assert "Frobnicate (domain 'com.acme', opset 3, node 'frob')" in message
    assert "NoSuchOp (domain 'ai.onnx', opset 17, node 'bogus')" in message
    assert info.value.ops == [
        {"op": "Frobnicate", "domain": "com.acme", "opset": 3, "node": "frob"},
        {"op": "NoSuchOp", "domain": "ai.onnx", "opset": 17, "node": "bogus"},
    ]
    assert isinstance(info.value, IrkitError)


def test_unknown_domain_without_opset_import() -> None:
    model = mlp_model()
    model.graph.node.append(helper.make_node("Thing", ["y"], ["z"], name="t",
                                             domain="org.nowhere"))
    with pytest.raises(UnsupportedOpsError,
                       match=r"Thing \(domain 'org.nowhere', opset None, node 't'\)"):
        load_onnx(model)


def test_unknown_op_inside_a_subgraph_is_found() -> None:
    then_g = helper.make_graph([helper.make_node("Mystery", ["x"], ["t"], name="inner")],
                               "then", [], [_info("t", ["N", 4])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])],
                               "else", [], [_info("e", ["N", 4])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph([node], "g", [_info("c", [], TensorProto.BOOL),
                                            _info("x", ["N", 4])], [_info("y", ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpsError, match=r"Mystery \(domain 'ai.onnx', opset 17, "
                                                  r"node 'inner'\)"):
        load_onnx(model)


# -- conversions ---------------------------------------------------------------------------
def opset11_model() -> onnx.ModelProto:
    """Ops whose signatures changed in opset 13: Squeeze/Unsqueeze axes, ReduceSum axes."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0], name="unsq"),
        helper.make_node("ReduceSum", ["u"], ["r"], axes=[2], keepdims=1, name="rsum"),
        helper.make_node("Squeeze", ["r"], ["s"], axes=[0, 2], name="sq"),
        helper.make_node("Softmax", ["x"], ["p"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "old", [_info("x", [3, 5])],
                              [_info("s", [3]), _info("p", [3, 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)],
                             ir_version=7)


def test_older_opset_is_converted_to_13() -> None:
    model = opset11_model()
    onnx.checker.check_model(model)
    graph = load_onnx(model)
    verify(graph)
    assert graph.opset_imports[""] == 13
    ops = {n.op: n for n in graph.nodes}
    assert "axes" not in ops["Squeeze"].attrs and len(ops["Squeeze"].inputs) == 2
    assert "axes" not in ops["ReduceSum"].attrs and len(ops["ReduceSum"].inputs) == 2
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    got = irkit.evaluate(graph, {"x": x})
    want = run_ort(model, {"x": x})
    np.testing.assert_allclose(got["s"], want[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["p"], want[1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["s"], x.sum(axis=1), atol=ATOL, rtol=0)


def test_symbolic_dims_are_kept() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="tr"),
        helper.make_node("Relu", ["t"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "sym", [_info("x", ["batch", "seq", 8])],
                              [_info("y", ["seq", "batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = load_onnx(model)
    f32 = DType.FLOAT32
    assert g.inputs[0].type == TensorType(f32, ("batch", "seq", 8))
    assert g.nodes[0].output.type == TensorType(f32, ("seq", "batch", 8))
    assert g.outputs[0].type == TensorType(f32, ("seq", "batch", 8))
    # "seq" is a keyword of the text format, so the printer quotes it
    assert 'graph sym(%x: f32[batch,"seq",8]) -> (%y: f32["seq",batch,8])' in g.to_text()
    exported = irkit.to_onnx(g)
    dims = [d.dim_param or d.dim_value for d in exported.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 8]


def model_with_local_function() -> onnx.ModelProto:
    """y = ScaledRelu(x) where local.ScaledRelu(a) = Relu(a) * 2."""
    two = helper.make_node("Constant", [], ["two"],
                           value=numpy_helper.from_array(np.array(2.0, np.float32)))
    function = helper.make_function(
        "local", "ScaledRelu", ["a"], ["out"],
        [two, helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Mul", ["r", "two"], ["out"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    nodes = [helper.make_node("ScaledRelu", ["x"], ["h"], domain="local", name="call0"),
             helper.make_node("ScaledRelu", ["h"], ["y"], domain="local", name="call1")]
    graph = helper.make_graph(nodes, "fn", [_info("x", ["N", 4])], [_info("y", ["N", 4])])
    return helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])


def test_local_functions_are_inlined() -> None:
    model = model_with_local_function()
    onnx.checker.check_model(model)
    graph = load_onnx(model)
    verify(graph)
    assert all(n.domain == "" for n in graph.walk())
    assert sorted(n.op for n in graph.nodes) == ["Mul", "Mul", "Relu", "Relu"]
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    got = irkit.evaluate(graph, {"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, 4 * np.maximum(x, 0), atol=ATOL, rtol=0)


def test_string_initializers_keep_raw_bytes() -> None:
    """ONNX strings need not be UTF-8; they load as bytes, like parsed IR string tensors."""
    words = helper.make_tensor("words", TensorProto.STRING, [3], [b"plain", b"\xff\xfe", b""])
    node = helper.make_node("Identity", ["words"], ["y"], name="ident")
    graph = helper.make_graph([node], "strings", [], [_info("y", [3], TensorProto.STRING)],
                              [words])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = load_onnx(model)
    assert g.constants["words"].const.tolist() == [b"plain", b"\xff\xfe", b""]
    exported = irkit.to_onnx(g)
    assert list(exported.graph.initializer[0].string_data) == [b"plain", b"\xff\xfe", b""]
    # (not evaluated: onnxruntime's Python binding decodes strings as UTF-8)


def test_subgraph_input_shadowing_an_outer_name_is_renamed() -> None:
    """A Loop body input named like an outer value (valid ONNX) reads the body input."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["x", "x"], ["x_out"])],
        "body",
        [_info("i", [], TensorProto.INT64), _info("cond", [], TensorProto.BOOL),
         _info("x", [2])],
        [_info("cond_out", [], TensorProto.BOOL), _info("x_out", [2])],
    )
    loop = helper.make_node("Loop", ["n", "", "x"], ["y"], body=body, name="loop")
    graph = helper.make_graph([loop], "g", [_info("n", [], TensorProto.INT64), _info("x", [2])],
                              [_info("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    g = load_onnx(model)
    verify(g)
    body_g = g.nodes[0].attr("body")
    assert body_g.inputs[2].name == "x_0"
    assert body_g.nodes[1].inputs == (body_g.inputs[2], body_g.inputs[2])
    feeds = {"n": np.array(3, np.int64), "x": np.array([1.0, 2.0], np.float32)}
    got = irkit.evaluate(g, feeds)["y"]
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, [8.0, 16.0], atol=ATOL, rtol=0)


def test_outer_name_reused_inside_a_branch_gets_one_suffix() -> None:
    info = _info
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["h"]),
                                helper.make_node("Abs", ["h"], ["t"])], "then", [],
                               [info("t", [2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [info("e", [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Relu", ["y"], ["h"], name="relu"),
             helper.make_node("Add", ["h", "x"], ["out"])]
    graph = helper.make_graph(nodes, "g", [info("c", [], TensorProto.BOOL), info("x", [2])],
                              [info("out", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = load_onnx(model)
    verify(g)
    assert g.nodes[1].output.name == "h_0"
    x = np.array([1.0, -2.0], np.float32)
    for cond in (True, False):
        feeds = {"c": np.array(cond), "x": x}
        np.testing.assert_allclose(irkit.evaluate(g, feeds)["out"], run_ort(model, feeds)[0],
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_legacy_hardmax_keeps_its_2d_meaning(axis: int) -> None:
    """Opset-11 Hardmax flattens at ``axis`` (ONNX Runtime agrees); the version converter
    alone would turn it into an opset-13 Hardmax along one axis."""
    ort = pytest.importorskip("onnxruntime")
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"], axis=axis)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    x = np.random.default_rng(axis).standard_normal((2, 3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = irkit.evaluate(irkit.load_model(model), {"x": x})
    np.testing.assert_array_equal(got["y"] if isinstance(got, dict) else got[0], want)
