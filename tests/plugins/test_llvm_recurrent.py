"""Differential tests of unrolled recurrent ops and control flow (irkit/lower/unroll.py):
RNN/GRU/LSTM in every direction and both layouts, Scan, Loop and If, compiled by the llvm
backend with a symbolic batch, run at batch 1 and 7 against ONNX Runtime (fp32: rtol 1e-4,
atol 1e-5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
import irkit.runtime  # noqa: E402
from irkit.errors import IrkitError  # noqa: E402
from irkit.lower.unroll import MAX_STEPS  # noqa: E402

BATCHES = (1, 7)
RTOL, ATOL = 1e-4, 1e-5
F = np.float32
R = np.random.default_rng(11)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


@dataclass
class Case:
    name: str
    nodes: list[Any]
    inputs: dict[str, tuple[Any, ...]]  # name -> shape with "N" (fp32)
    outputs: dict[str, tuple[Any, ...] | None]  # name -> shape (None: left to inference)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 22
    types: dict[str, int] = field(default_factory=dict)  # non-fp32 inputs: TensorProto type
    reference: list[Any] | None = None  # nodes ONNX Runtime runs instead (it lacks layout=1)


def w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (R.standard_normal(shape) * scale).astype(F)


def recurrent(op: str, direction: str, layout: int, *, seq: int = 5, inp: int = 4,
              hidden: int = 3, initial: bool = True, **attrs: Any) -> Case:
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = ("N", seq, inp) if layout else (seq, "N", inp)
    state = ("N", dirs, hidden) if layout else (dirs, "N", hidden)
    consts = {"W": w(dirs, g * hidden, inp), "R": w(dirs, g * hidden, hidden),
              "B": w(dirs, 2 * g * hidden)}
    inputs: dict[str, tuple[Any, ...]] = {"X": x_shape}
    names = ["X", "W", "R", "B", "", "h0" if initial else ""]
    if initial:
        inputs["h0"] = state
    outs: dict[str, tuple[Any, ...] | None] = {
        "Y": ("N", seq, dirs, hidden) if layout else (seq, dirs, "N", hidden), "Y_h": state}
    if op == "LSTM":
        names.append("c0" if initial else "")
        if initial:
            inputs["c0"] = state
        outs["Y_c"] = state
        if attrs.pop("peepholes", False):
            names.append("P")
            consts["P"] = w(dirs, 3 * hidden)
    node = helper.make_node(op, names, list(outs), hidden_size=hidden, direction=direction,
                            layout=layout, **attrs)
    label = f"{op.lower()}_{direction}_layout{layout}{'' if initial else '_zero_state'}"
    extra = "".join(f"_{k}" for k in attrs)
    reference = None
    if layout:  # the same node at layout 0 between transposes
        def t(src: str, dst: str, perm: list[int]) -> Any:
            return helper.make_node("Transpose", [src], [dst], perm=perm)

        pre = [t(n, f"{n}_t", [1, 0, 2]) for n in names if n in inputs]
        inner = helper.make_node(op, [f"{n}_t" if n in inputs else n for n in names],
                                 [f"{n}_t" for n in outs], hidden_size=hidden,
                                 direction=direction, **attrs)
        post = [t(f"{n}_t", n, [2, 0, 1, 3] if n == "Y" else [1, 0, 2]) for n in outs]
        reference = [*pre, inner, *post]
    return Case(label + extra, [node], inputs, outs, consts, reference=reference)


def scan_cumsum() -> Case:
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["row_out"])],
        "body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("row_out", TensorProto.FLOAT, ["N", 3])])
    node = helper.make_node("Scan", ["init", "x"], ["total", "cumsum"], body=body,
                            num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1])
    return Case("scan_cumsum", [node], {"init": ("N", 3), "x": ("N", 6, 3)},
                {"total": ("N", 3), "cumsum": ("N", 6, 3)}, opset=17)


def scan_reverse() -> Case:
    body = helper.make_graph(
        [helper.make_node("Mul", ["s_in", "a"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["s_out"]),
         helper.make_node("Tanh", ["s_out"], ["y"])],
        "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    node = helper.make_node("Scan", ["s0", "xa", "xb"], ["s", "ys"], body=body,
                            num_scan_inputs=2, scan_input_axes=[0, 1],
                            scan_input_directions=[1, 0], scan_output_axes=[-1],
                            scan_output_directions=[1])
    return Case("scan_reverse_axes", [node], {"s0": ("N", 4), "xa": (5, "N", 4),
                                              "xb": ("N", 5, 4)},
                {"s": ("N", 4), "ys": ("N", 4, 5)}, opset=17)


def loop_const_trip() -> Case:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["y_in", "fi"], ["scaled"]),
         helper.make_node("Add", ["scaled", "x"], ["y_out"]),
         helper.make_node("Identity", ["y_out"], ["trace"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("trace", TensorProto.FLOAT, ["N", 2])])
    node = helper.make_node("Loop", ["M", "", "x"], ["y", "traces"], body=body)
    return Case("loop_const_trip", [node], {"x": ("N", 2)},
                {"y": ("N", 2), "traces": (4, "N", 2)}, {"M": np.array(4, np.int64)}, opset=17)


def if_const() -> Case:
    """The condition is computed from a static shape, so only one branch is compiled."""
    def branch(op: str) -> Any:
        return helper.make_graph([helper.make_node(op, ["x"], ["out"])], op, [],
                                 [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                ["N", 5])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"], start=1),
             helper.make_node("Equal", ["shape", "five"], ["eq"]),
             helper.make_node("Squeeze", ["eq"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("Sigmoid"),
                              else_branch=branch("Neg"))]
    return Case("if_const", nodes, {"x": ("N", 5)}, {"y": ("N", 5)},
                {"five": np.array([5], np.int64)}, opset=17)


def if_runtime() -> Case:
    """A run-time condition: both small branches run and Where picks."""
    def branch(op: str) -> Any:
        return helper.make_graph([helper.make_node(op, ["x", "x"], ["out"])], op, [],
                                 [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                [2, 5])])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=branch("Add"),
                              else_branch=branch("Mul"))]
    return Case("if_runtime", nodes, {"x": (2, 5), "flag": ()}, {"y": (2, 5)}, opset=17,
                types={"flag": TensorProto.BOOL})


CASES = [
    *[recurrent(op, d, layout) for op in ("RNN", "GRU", "LSTM")
      for d in ("forward", "reverse", "bidirectional") for layout in (0, 1)],
    recurrent("RNN", "forward", 0, initial=False),
    recurrent("GRU", "bidirectional", 1, initial=False),
    recurrent("LSTM", "reverse", 0, initial=False),
    recurrent("GRU", "forward", 0, linear_before_reset=1),
    recurrent("GRU", "bidirectional", 1, initial=False, linear_before_reset=1),
    recurrent("LSTM", "bidirectional", 0, peepholes=True),
    recurrent("LSTM", "forward", 1, initial=False, peepholes=True, clip=0.7),
    recurrent("LSTM", "bidirectional", 0, peepholes=True, clip=0.7),
    recurrent("GRU", "reverse", 0, clip=0.7),
    recurrent("LSTM", "forward", 0, input_forget=1),
    recurrent("RNN", "bidirectional", 0, activations=["LeakyRelu", "Tanh"],
              activation_alpha=[0.3]),
    recurrent("GRU", "forward", 0, activations=["HardSigmoid", "Softsign"],
              activation_alpha=[0.3], activation_beta=[0.4]),
    scan_cumsum(), scan_reverse(), loop_const_trip(), if_const(), if_runtime(),
]


def build_model(case: Case, reference: bool = False) -> Any:
    inputs = [helper.make_tensor_value_info(name, case.types.get(name, TensorProto.FLOAT),
                                            list(shape))
              for name, shape in case.inputs.items()]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in case.outputs.items()]
    inits = [numpy_helper.from_array(a, n) for n, a in case.consts.items()]
    nodes = case.reference if reference and case.reference is not None else case.nodes
    graph = helper.make_graph(nodes, case.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(case: Case, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in case.inputs.items():
        dims = tuple(batch if d == "N" else d for d in shape)
        if case.types.get(name) == TensorProto.BOOL:
            out[name] = np.array(seed % 2 == 1)
        else:
            out[name] = rng.standard_normal(dims).astype(F)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_unrolled_matches_onnxruntime(case: Case, tmp_path: Path) -> None:
    model = build_model(case)
    artifact = irkit.compile(irkit.load_model(model), target="llvm")
    compiled = irkit.runtime.load(artifact.save(tmp_path / "artifact"), threads=1)
    session = ort.InferenceSession(build_model(case, reference=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = list(case.outputs)
    for batch in BATCHES:
        inputs = feeds(case, batch, seed=batch)
        expected = dict(zip(names, session.run(names, inputs)))
        got = compiled(**inputs)
        for name in names:
            assert got[name].shape == expected[name].shape, (name, batch)
            np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{case.name} output {name} at batch {batch}")


def test_if_runtime_takes_both_branches(tmp_path: Path) -> None:
    case = if_runtime()
    model = build_model(case)
    compiled = irkit.runtime.load(irkit.compile(irkit.load_model(model), target="llvm")
                                  .save(tmp_path / "artifact"), threads=1)
    x = np.arange(10, dtype=F).reshape(2, 5)
    np.testing.assert_array_equal(compiled(x=x, flag=np.array(True))["y"], x + x)
    np.testing.assert_array_equal(compiled(x=x, flag=np.array(False))["y"], x * x)


def test_refused_nodes_stay_unsupported() -> None:
    """A run-time sequence_lens is neither unrolled nor lowered."""
    lens = recurrent("GRU", "forward", 0)
    lens.nodes[0].input[4] = "lens"
    lens.inputs["lens"] = ("N",)
    lens.types["lens"] = TensorProto.INT32
    with pytest.raises(IrkitError, match="GRU sequence_lens"):
        irkit.compile(irkit.load_model(build_model(lens)), target="llvm")


def test_longer_than_max_steps_runs_the_time_loop_kernel(tmp_path: Path) -> None:
    """A sequence longer than MAX_STEPS is not unrolled: the node runs as one kernel with
    a time loop (irkit/lower/recurrent.py), as for a run-time sequence length."""
    case = recurrent("RNN", "forward", 0, seq=MAX_STEPS + 1)
    test_unrolled_matches_onnxruntime(case, tmp_path)
