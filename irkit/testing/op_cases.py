"""Differential op tests as data: an ``OpCase`` is a small ONNX graph with a symbolic batch.

``build_model`` turns a case into a shape-inferred ONNX model, ``feeds`` draws its seeded
inputs at one batch size, ``compile_and_load`` compiles the model for a
:class:`KernelTarget` (a kernel backend and an arch: llvm for this CPU, llvm for
x86-64-v3, wasm for wasm32-simd or wasm32 run by wasmtime), and ``check_batches`` runs it
at several batch sizes against a reference (ONNX Runtime, or numpy written from the ONNX
spec), asserting every output with ``assert_output``. Tests parametrize over
``KERNEL_TARGETS`` (and ``WASM_TARGETS``) so every case runs on each.

onnx and onnxruntime are imported when a function needs them, so that importing this
module costs numpy only; tests ``pytest.importorskip`` them first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from irkit.testing.models import BATCH_DIM

if TYPE_CHECKING:
    import onnx

    from irkit.runtime import CompiledModel

Shape = tuple[int | str, ...]
"""A shape whose dims are ints or ``BATCH_DIM``."""

Draw = Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]
"""Draws one input's values: ``draw(rng, shape, dtype)``."""

InputSpec = tuple[Shape, Any] | tuple[Shape, Any, Draw]
"""``(shape, dtype)``, drawn by the caller's default, or ``(shape, dtype, draw)``."""

Reference = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
"""The expected outputs, in the case's output order, for one set of inputs."""

# numpy dtype -> ONNX TensorProto element type, for every dtype the op tests use.
ONNX_ELEMENT_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float16): "FLOAT16",
    np.dtype(np.float32): "FLOAT",
    np.dtype(np.float64): "DOUBLE",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class KernelTarget:
    """Where op cases run: a kernel backend, the arch it compiles for and the options
    ``irkit.runtime.load`` gets (``(("device", "simulator"),)`` for the CUDA simulator)."""

    backend: str = "llvm"
    arch: str = "native"
    load: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f"-{value}" for _, value in self.load)
        return f"{self.backend}-{self.arch}{extra}"


LLVM_NATIVE = KernelTarget("llvm", "native")
LLVM_V3 = KernelTarget("llvm", "x86-64-v3")
NUMBA_NATIVE = KernelTarget("numba", "native")
CUDA_SIMULATOR = KernelTarget("cuda", "sm_90", (("device", "simulator"),))
"""The cuda backend's kernels run by numba-cuda's simulator (every thread in Python:
small shapes only)."""
KIR = KernelTarget("kir", "x86-64-v3")
KERNEL_TARGETS: tuple[KernelTarget, ...] = (LLVM_NATIVE, LLVM_V3)
"""Every op case runs on each: the build host's own code, and AVX2 code (x86-64-v3,
what most deployment CPUs run) even on a host with AVX-512. ``KIR`` (the kernel IR
interpreter, the oracle) runs them in ``tests/kir/test_interpret_op_cases.py``;
``NUMBA_NATIVE`` and ``CUDA_SIMULATOR`` run a sample (every case with
``IRKIT_FULL_SWEEPS=1``) in ``tests/plugins/test_numba_ops.py`` and
``test_cuda_simulator.py``."""
WASM_SIMD = KernelTarget("wasm", "wasm32-simd")
WASM_SCALAR = KernelTarget("wasm", "wasm32")
WASM_TARGETS: tuple[KernelTarget, ...] = (WASM_SIMD, WASM_SCALAR)
"""The wasm backend's two builds, run by wasmtime: 128-bit SIMD and scalar code."""


@dataclass
class OpCase:
    """One graph to compile and compare.

    ``inputs`` maps each graph input to its spec (dims may be ``BATCH_DIM``); ``consts``
    become initializers. ``declared`` gives output types (name -> (shape, dtype)) where
    inference cannot know them; the others are left for shape inference. ``reference``
    replaces ONNX Runtime as the source of expected outputs; ``oracle="onnx.reference"``
    takes them from ONNX's own reference implementation instead, for ops whose ONNX
    Runtime results depend on the CPU (its u8 x s8 kernels saturate int16 pair sums on
    x86 CPUs without VNNI, so QLinearConv with full-range int8 weights gives other
    numbers on an AVX2 machine than on an AVX-512 VNNI one).
    """

    name: str
    nodes: list[onnx.NodeProto]
    inputs: dict[str, InputSpec]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("y",)
    opset: int = 18
    declared: dict[str, tuple[tuple[int, ...], Any]] = field(default_factory=dict)
    reference: Reference | None = None
    oracle: str = "onnxruntime"  # or "onnx.reference"


def normal(scale: float = 1.0) -> Draw:
    """Standard normal values times ``scale``."""
    # np.asarray: arithmetic on a 0-d array gives a numpy scalar, which is no array input.
    return lambda rng, shape, dtype: np.asarray(rng.standard_normal(shape) * scale).astype(dtype)


def uniform(low: float, high: float) -> Draw:
    """Values from U(low, high)."""
    return lambda rng, shape, dtype: rng.uniform(low, high, shape).astype(dtype)


def integers(low: int, high: int, *, endpoint: bool = False) -> Draw:
    """Integers in [low, high), or [low, high] with ``endpoint``, cast to the dtype."""
    return lambda rng, shape, dtype: rng.integers(low, high, shape, endpoint=endpoint).astype(dtype)


STANDARD_NORMAL = normal()


def onnx_element_type(dtype: Any) -> int:
    """The ONNX TensorProto element type of a numpy dtype in ``ONNX_ELEMENT_TYPES``."""
    from onnx import TensorProto

    return int(getattr(TensorProto, ONNX_ELEMENT_TYPES[np.dtype(dtype)]))


def node(op: str, ins: list[str], outs: list[str] | None = None, **attrs: Any) -> onnx.NodeProto:
    """An ONNX node of ``op`` whose one output is ``y`` unless ``outs`` names them."""
    from onnx import helper

    return helper.make_node(op, ins, outs or ["y"], **attrs)


def build_model(case: OpCase, *, strict: bool = True) -> onnx.ModelProto:
    """The case's model with inferred shapes; ``strict`` makes inference errors raise."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info(name, onnx_element_type(spec[1]), list(spec[0]))
        for name, spec in case.inputs.items()
    ]
    outputs = []
    for name in case.outputs:
        if name in case.declared:
            shape, dtype = case.declared[name]
            outputs.append(helper.make_tensor_value_info(name, onnx_element_type(dtype), shape))
        else:
            outputs.append(helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None))
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in case.consts.items()]
    graph = helper.make_graph(case.nodes, case.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=strict)


def feeds(
    case: OpCase, batch: int, seed: int, draw: Draw = STANDARD_NORMAL
) -> dict[str, np.ndarray]:
    """The case's inputs at ``batch``, in input order from one generator seeded by ``seed``;
    an input without its own draw uses ``draw``."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, spec in case.inputs.items():
        dims = tuple(batch if d == BATCH_DIM else int(d) for d in spec[0])
        draw_input = spec[2] if len(spec) == 3 else draw
        values[name] = draw_input(rng, dims, np.dtype(spec[1]))
    return values


def compile_and_load(
    model: onnx.ModelProto, tmp_path: Path, threads: int = 1,
    target: KernelTarget = LLVM_NATIVE, **options: Any
) -> CompiledModel:
    """Compile ``model`` for ``target`` (``options`` go to the backend), save it under
    ``tmp_path`` and load it with ``threads`` worker threads."""
    import irkit.runtime
    from irkit import api

    if target.backend == "kir":
        from irkit.testing.interpreted import interpret_and_load

        return interpret_and_load(model, tmp_path, threads, arch=target.arch,
                                  **options)  # type: ignore[return-value]
    artifact = api.compile(api.load_model(model), target=target.backend, arch=target.arch,
                           **options)
    # op cases hold NaN and inf on purpose: they test the backend's arithmetic
    return irkit.runtime.load(artifact.save(tmp_path / "artifact"), threads=threads,
                              reject_nonfinite=False, **dict(target.load))


def onnxruntime_reference(model: onnx.ModelProto, outputs: Sequence[str]) -> Reference:
    """ONNX Runtime (CPU) running ``model``, returning ``outputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return lambda inputs: session.run(list(outputs), inputs)


def spec_reference(model: onnx.ModelProto, outputs: Sequence[str]) -> Reference:
    """ONNX's reference implementation (``onnx.reference``) running ``model``."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    return lambda inputs: list(evaluator.run(list(outputs), inputs))


def reference_for(case: OpCase, model: onnx.ModelProto) -> Reference:
    """The expected outputs of ``case``: its own reference, ONNX's reference
    implementation, or ONNX Runtime (the default), as the case says."""
    if case.reference is not None:
        return case.reference
    if case.oracle == "onnx.reference":
        return spec_reference(model, case.outputs)
    return onnxruntime_reference(model, case.outputs)


def assert_output(
    got: np.ndarray,
    want: np.ndarray,
    *,
    where: str,
    rtol: float,
    atol: float,
    exact_integers: bool = False,
) -> None:
    """Assert ``got`` has ``want``'s shape and dtype and values within rtol/atol (equal
    values, for non-float outputs with ``exact_integers``); ``where`` names the output in
    the messages."""
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    if exact_integers and want.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=where)


def assert_outputs(
    case: OpCase,
    got: dict[str, np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    batch: int | None = None,
    rtol: float,
    atol: float,
    exact_integers: bool = False,
) -> int:
    """``assert_output`` for each of the case's outputs against ``expected`` (in output
    order); returns how many were compared."""
    checked = 0
    for name, want in zip(case.outputs, expected):
        where = f"{case.name} output {name}" + ("" if batch is None else f" at batch {batch}")
        assert_output(
            np.asarray(got[name]),
            np.asarray(want),
            where=where,
            rtol=rtol,
            atol=atol,
            exact_integers=exact_integers,
        )
        checked += 1
    return checked


def check_batches(
    case: OpCase,
    compiled: Callable[..., dict[str, np.ndarray]],
    reference: Reference,
    batches: Sequence[int],
    *,
    rtol: float,
    atol: float,
    draw: Draw = STANDARD_NORMAL,
    exact_integers: bool = False,
) -> int:
    """Run ``compiled`` and ``reference`` on the case's inputs at each batch size (seeded
    by the batch) and ``assert_outputs``; returns how many outputs were compared."""
    checked = 0
    for batch in batches:
        inputs = feeds(case, batch, seed=batch, draw=draw)
        expected = reference(inputs)
        checked += assert_outputs(
            case,
            compiled(**inputs),
            expected,
            batch=batch,
            rtol=rtol,
            atol=atol,
            exact_integers=exact_integers,
        )
    return checked
