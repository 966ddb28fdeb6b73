"""Every op case of the llvm backend's tests, run on the kernel IR interpreter.

The llvm test modules are loaded as private copies whose ``compile_and_load`` is
:func:`irkit.testing.interpreted.interpret_and_load`, and their own test functions run
unchanged: same graphs, inputs, references (ONNX Runtime or numpy) and tolerances.
Modules that compile through ``irkit.compile`` directly (dtypes, recurrent, empty inputs,
inline math) are replayed here with their own cases, references and checks. Each case
runs twice: kernels as lowered, and in ``prepare_kernel(kernel, 8)`` form (vector loops
as 8-lane vectors), which must mean the same. ``test_case_counts`` pins how many cases
there are, so a case added to an llvm list shows up here.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")  # the llvm test modules import it

from irkit.testing.interpreted import InterpretedModel, interpret_and_load, lower_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FORMS = {"lowered": None, "vector8": 8}

# llvm test module -> (the helper it compiles with, its test functions that compare
# compiled results with a reference).
COMPILE_AND_LOAD = "compile_and_load"  # irkit.testing.op_cases: (model, tmp_path, threads)
COMPILE_LLVM = "compile_llvm"  # tests/lower/test_quantized.py: (graph, tmp_path)
GENERIC: dict[str, tuple[str, tuple[str, ...]]] = {
    "tests/plugins/test_llvm_ops.py": (COMPILE_AND_LOAD, ("test_op_matches_onnxruntime",)),
    "tests/plugins/test_llvm_elementwise_extra.py": (COMPILE_AND_LOAD,
                                                     ("test_op_matches_reference",)),
    "tests/plugins/test_llvm_image.py": (COMPILE_AND_LOAD, (
        "test_op_matches_onnxruntime", "test_dft_runtime_axis_matches_onnxruntime")),
    "tests/plugins/test_llvm_indexing.py": (COMPILE_AND_LOAD, (
        "test_indexing_op_matches_reference", "test_scatter_elements_none",
        "test_runtime_steering_inputs", "test_out_of_range_indices_stay_in_bounds")),
    "tests/plugins/test_llvm_runtime_sizes.py": (COMPILE_AND_LOAD, (
        "test_matches_onnxruntime_and_guards",
        "test_reduction_whose_declared_shape_fits_several_axes",
        "test_two_axis_reduction_choices")),
    "tests/plugins/test_llvm_strided_loads.py": (COMPILE_AND_LOAD, (
        "test_every_other_element_matches_numpy", "test_stride_two_windows_match_onnxruntime")),
    "tests/lower/test_conv_kernels.py": (COMPILE_AND_LOAD, (
        "test_depthwise_matches_onnxruntime", "test_depthwise_with_residual_and_no_bias",
        "test_grouped_conv_with_several_channels_per_group_keeps_the_gemm",
        "test_pointwise_matches_onnxruntime", "test_mobilenet_block_matches_onnxruntime",
        "test_panels_spanning_output_rows")),
    "tests/lower/test_quantized.py": (COMPILE_LLVM, (
        "test_static_matmul", "test_static_matmul_per_tensor_with_residual",
        "test_dynamic_matmul", "test_static_conv", "test_sparse_gemm_chosen_by_sparsity",
        "test_sparse_gemm_deep_k", "test_pruned_matmul_uses_sparse_kernel")),
}


@functools.cache
def load(relative: str) -> ModuleType:
    """A private copy of a test module (its module-level random draws repeat exactly)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_interpreted_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _id(value: Any) -> str:
    return str(getattr(value, "name", value))


# Parameters that choose where the llvm tests compile (a KernelTarget, an arch): the
# interpreter is the same for all of them, so each case runs once, for x86-64-v3.
BACKEND_PARAMETERS = {"target": "x86-64-v3", "arch": "x86-64-v3"}


def expand(fn: Callable[..., Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, arguments) for every combination of ``fn``'s ``parametrize`` marks."""
    combos: list[tuple[str, dict[str, Any]]] = [("", {})]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if len(names) == 1 and names[0] in BACKEND_PARAMETERS:
            wanted = BACKEND_PARAMETERS[names[0]]
            value = next(v for v in values if getattr(v, "arch", v) == wanted)
            combos = [(prev, {**prev_args, names[0]: value}) for prev, prev_args in combos]
            continue
        ids = mark.kwargs.get("ids")
        grown = []
        for i, value in enumerate(values):
            args = dict(zip(names, (value,) if len(names) == 1 else value))
            label = (ids(value) if callable(ids) else ids[i] if ids is not None
                     else "-".join(_id(v) for v in args.values()))
            grown += [(f"{label}-{prev}" if prev else str(label), {**prev_args, **args})
                      for prev, prev_args in combos]
        combos = grown
    yield from combos


# Cases of more than 10 million multiply-adds take 30-50 s per form in the interpreter (on
# a shared 2-core machine); they run as lowered, and their vector8 form is skipped.
HEAVY = {
    "test_conv_kernels::test_panels_spanning_output_rows[ow48_stride2]":
        "3x96x96 -> 16x48x48 conv at batches 1, 3, 8: 12M multiply-adds",
    "test_quantized::test_sparse_gemm_deep_k": "dense K = 8192 GEMM: 11M multiply-adds",
    "test_quantized::test_static_conv[4-1-1-32-3]":
        "int8 conv 4x32x32 -> 12x32x32 at batches 1, 7, 64: 32M multiply-adds",
}


def generic_items() -> list[Any]:
    items = []
    for relative, (_, functions) in GENERIC.items():
        module = load(relative)
        for name in functions:
            for label, args in expand(getattr(module, name)):
                test_id = f"{Path(relative).stem}::{name}" + (f"[{label}]" if label else "")
                for form in FORMS:
                    skip = HEAVY.get(test_id) if form != "lowered" else None
                    marks = [pytest.mark.skip(reason=f"runs as lowered only: {skip}")] \
                        if skip else []
                    items.append(pytest.param(relative, name, args, form,
                                              id=f"{test_id}-{form}", marks=marks))
    return items


GENERIC_ITEMS = generic_items()


@pytest.mark.slow
@pytest.mark.parametrize(("relative", "function", "args", "form"), GENERIC_ITEMS)
def test_llvm_op_case_on_interpreter(relative: str, function: str, args: dict[str, Any],
                                     form: str, tmp_path: Path) -> None:
    module = load(relative)
    made: list[InterpretedModel] = []

    def interpreted(model: Any, *rest: Any, **options: Any) -> InterpretedModel:
        made.append(interpret_and_load(model, *rest, lanes=FORMS[form], **options))
        return made[-1]

    setattr(module, GENERIC[relative][0], interpreted)  # in this private copy only
    getattr(module, function)(**args, tmp_path=tmp_path)
    calls = sum(m.calls for m in made)
    assert made and calls >= 1, f"{function} ran nothing on the interpreter"


# -- modules that compile through irkit.compile: their cases replayed ----------------------
DTYPES = "tests/plugins/test_llvm_dtypes.py"
RECURRENT = "tests/plugins/test_llvm_recurrent.py"
EMPTY = "tests/plugins/test_llvm_empty_inputs.py"
MATH = "tests/plugins/test_llvm_math.py"


def run_dtype_case(case: Any, lanes: int | None) -> int:
    """test_llvm_dtypes.test_dtype_case: exact against numpy (accumulating ops within
    the module's f16/bf16 tolerances), and against ONNX Runtime where it has a kernel."""
    module = load(DTYPES)
    model = module.build_model(case)
    got = InterpretedModel(lower_model(model), lanes)(**case.inputs)["y"]
    with np.errstate(all="ignore"):
        expected = np.asarray(case.reference(*case.inputs.values()))
    module.check(got, expected.astype(case.out_type or expected.dtype), case,
                 f"{case.name} vs numpy")
    if case.name.startswith("cast_") or any(a.dtype == module.BF16
                                             for a in case.inputs.values()):
        return 1
    session = module.ort_session(model)
    if session is None:
        return 1
    module.check(got, session.run(["y"], case.inputs)[0], case, f"{case.name} vs onnxruntime")
    return 2


def run_recurrent_case(case: Any, lanes: int | None) -> int:
    """test_llvm_recurrent.test_unrolled_matches_onnxruntime (fp32 rtol 1e-4, atol 1e-5)."""
    module = load(RECURRENT)
    compiled = InterpretedModel(lower_model(module.build_model(case)), lanes)
    session = ort.InferenceSession(module.build_model(case, reference=True)
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(case.outputs)
    checked = 0
    for batch in module.BATCHES:
        inputs = module.feeds(case, batch, seed=batch)
        expected = dict(zip(names, session.run(names, inputs)))
        got = compiled(**inputs)
        for name in names:
            assert got[name].shape == expected[name].shape, (name, batch)
            np.testing.assert_allclose(got[name], expected[name], rtol=module.RTOL,
                                       atol=module.ATOL,
                                       err_msg=f"{case.name} output {name} at batch {batch}")
            checked += 1
    return checked


def run_empty_case(name: str, lanes: int | None) -> int:
    """test_llvm_empty_inputs: zero-size inputs, ORT within rtol 1e-6."""
    model = load(EMPTY).CASES[name]
    compiled = InterpretedModel(lower_model(model), lanes)
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        dims = [0 if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        double = vi.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float64 if double else np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = compiled(**feeds)
    for vi, expected in zip(model.graph.output, want):
        assert got[vi.name].shape == expected.shape and got[vi.name].dtype == expected.dtype
        np.testing.assert_allclose(got[vi.name], expected, rtol=1e-6, atol=0)
    return len(want)


def run_math_case(op: str, lanes: int | None) -> int:
    """test_llvm_math.test_inline_math_accuracy's bound (1e-6 + 3e-6 |want|) and specials."""
    module = load(MATH)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(op, ["x"], ["y"])], op,
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N"])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    compiled = InterpretedModel(lower_model(model), lanes)
    x = module.X
    got = compiled(x=x)["y"].astype(np.float64)
    want = module.REFERENCE[op](x.astype(np.float64))
    with np.errstate(over="ignore"):
        finite = np.isfinite(want) & (np.abs(want) < 3e38)
    error = np.abs(got[finite] - want[finite])
    assert np.all(error <= 1e-6 + 3e-6 * np.abs(want[finite])), (op, float(error.max()))
    specials = compiled(x=np.array([np.inf, -np.inf, np.nan], np.float32))["y"]
    expected = module.REFERENCE[op](np.array([np.inf, -np.inf, np.nan]))
    np.testing.assert_allclose(specials[:2], expected[:2], atol=1e-6)
    assert math.isnan(specials[2])
    return 2


def replayed_items() -> list[Any]:
    items = [pytest.param(run_dtype_case, case, 1, id=f"dtypes::{case.name}")
             for case in load(DTYPES).CASES]
    items += [pytest.param(run_recurrent_case, case, 2, id=f"recurrent::{case.name}")
              for case in load(RECURRENT).CASES]
    items += [pytest.param(run_empty_case, name, 1, id=f"empty_inputs::{name}")
              for name in sorted(load(EMPTY).CASES)]
    items += [pytest.param(run_math_case, op, 2, id=f"math::{op}")
              for op in sorted(load(MATH).REFERENCE)]
    return items


REPLAYED_ITEMS = replayed_items()


@pytest.mark.slow
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(("run", "case", "least"), REPLAYED_ITEMS)
def test_replayed_llvm_case_on_interpreter(run: Callable[[Any, int | None], int], case: Any,
                                           least: int, form: str) -> None:
    assert run(case, FORMS[form]) >= least


def test_case_counts() -> None:
    """How many llvm cases run here, per source (the llvm modules pin their lists too),
    and how many runs are skipped."""
    per_source: dict[str, int] = {}
    for item in GENERIC_ITEMS:
        if item.values[3] == "lowered":
            key = f"{Path(item.values[0]).stem}::{item.values[1]}"
            per_source[key] = per_source.get(key, 0) + 1
    for item in REPLAYED_ITEMS:
        key = item.id.split("::")[0]
        per_source[key] = per_source.get(key, 0) + 1
    skipped = [item.id for item in GENERIC_ITEMS if item.marks]
    assert len(skipped) == len(HEAVY) == 3
    assert len(GENERIC_ITEMS) + len(FORMS) * len(REPLAYED_ITEMS) == 2 * 561
    assert per_source == {
        'test_llvm_ops::test_op_matches_onnxruntime': 70,
        'test_llvm_elementwise_extra::test_op_matches_reference': 52,
        'test_llvm_image::test_op_matches_onnxruntime': 43,
        'test_llvm_image::test_dft_runtime_axis_matches_onnxruntime': 1,
        'test_llvm_indexing::test_indexing_op_matches_reference': 47,
        'test_llvm_indexing::test_scatter_elements_none': 1,
        'test_llvm_indexing::test_runtime_steering_inputs': 6,
        'test_llvm_indexing::test_out_of_range_indices_stay_in_bounds': 1,
        'test_llvm_runtime_sizes::test_matches_onnxruntime_and_guards': 18,
        'test_llvm_runtime_sizes::test_reduction_whose_declared_shape_fits_several_axes': 4,
        'test_llvm_runtime_sizes::test_two_axis_reduction_choices': 1,
        'test_llvm_strided_loads::test_every_other_element_matches_numpy': 12,
        'test_llvm_strided_loads::test_stride_two_windows_match_onnxruntime': 4,
        'test_conv_kernels::test_depthwise_matches_onnxruntime': 18,
        'test_conv_kernels::test_depthwise_with_residual_and_no_bias': 1,
        'test_conv_kernels::test_grouped_conv_with_several_channels_per_group_keeps_the_gemm': 1,
        'test_conv_kernels::test_pointwise_matches_onnxruntime': 10,
        'test_conv_kernels::test_mobilenet_block_matches_onnxruntime': 1,
        'test_conv_kernels::test_panels_spanning_output_rows': 5,
        'test_quantized::test_static_matmul': 2,
        'test_quantized::test_static_matmul_per_tensor_with_residual': 1,
        'test_quantized::test_dynamic_matmul': 1,
        'test_quantized::test_static_conv': 11,
        'test_quantized::test_sparse_gemm_chosen_by_sparsity': 3,
        'test_quantized::test_sparse_gemm_deep_k': 1,
        'test_quantized::test_pruned_matmul_uses_sparse_kernel': 1,
        'dtypes': 203,
        'recurrent': 35,
        'empty_inputs': 3,
        'math': 4,
    }
    assert sum(per_source.values()) == 561
