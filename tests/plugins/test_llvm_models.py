"""Whole models through the llvm backend vs ONNX Runtime, plus artifact behaviour:
threads, shared-library emission, unsupported-op errors and ORT fallback, memory plan."""

from __future__ import annotations

import ast
import shutil
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
from irkit.bench import mlp_onnx  # noqa: E402
from irkit.plugins.llvm import LlvmBackendError  # noqa: E402
from irkit.runtime.program import programs  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
ROOT = Path(__file__).resolve().parents[2]


def compile_load(model: Any, tmp_path: Path, threads: int = 1, **options: Any) -> Any:
    artifact = irkit.compile(irkit.load_model(model), target="llvm", **options)
    extra = {"parallel_min_us": 0} if threads > 1 else {}  # split even tiny kernels
    return irkit.runtime.load(artifact.save(tmp_path / "llvm"), threads=threads, **extra)


def check_against_ort(model_path: Any, compiled: Any, batches: tuple[int, ...],
                      rtol: float = RTOL, atol: float = ATOL) -> int:
    proto = onnx.load(str(model_path)) if not hasattr(model_path, "graph") else model_path
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    names = [o.name for o in session.get_outputs()]
    checked = 0
    for batch in batches:
        shape = [batch if not isinstance(d, int) else d for d in inp.shape]
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        expected = session.run(names, {inp.name: x})
        got = compiled(**{inp.name: x})
        for name, want in zip(names, expected):
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol,
                                       err_msg=f"{name} at batch {batch}")
            checked += 1
    return checked


def test_digits_mlp_and_cnn(digits_models: Path, tmp_path: Path) -> None:
    checked = 0
    for name in ("digits_mlp.onnx", "digits_cnn.onnx"):
        compiled = compile_load(digits_models / name, tmp_path / name)
        checked += check_against_ort(digits_models / name, compiled, (1, 7, 64))
    assert checked == 6


def test_transformer_encoder(transformer_onnx: Path, tmp_path: Path) -> None:
    compiled = compile_load(transformer_onnx, tmp_path)
    # Softmax/LayerNorm/GELU over 2 layers accumulate f32 rounding: atol 1e-4 on outputs ~1.
    assert check_against_ort(transformer_onnx, compiled, (1, 7), atol=1e-4) == 2


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from irkit.testing.models import export_onnx, make_resnet_cnn

    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return export_onnx(make_resnet_cnn(), (example,), path)


def test_resnet_cnn(resnet_onnx: Path, tmp_path: Path) -> None:
    compiled = compile_load(resnet_onnx, tmp_path)
    assert check_against_ort(resnet_onnx, compiled, (1, 7, 64)) == 3
    (program,) = programs(compiled.manifest.entry)
    assert any(f.startswith("Conv+") for f in program.info["fused"])
    plan = program.info["memory_plan"]
    assert plan["peak_bytes_at_N64"] < plan["without_reuse_at_N64"]


def test_avx2_width_tiles(resnet_onnx: Path, tmp_path: Path) -> None:
    """8-lane vectors (the AVX2 configuration) with odd tile sizes still match ORT."""
    for k, opts in enumerate([{"vec": 8}, {"vec": 8, "mr": 5, "nr": 24, "conv_mr": 2,
                                           "conv_nr": 40}]):
        compiled = compile_load(resnet_onnx, tmp_path / str(k), **opts)
        assert check_against_ort(resnet_onnx, compiled, (1, 3)) == 2
        mlp = compile_load(mlp_onnx((20, 70, 9)), tmp_path / f"m{k}", **opts)
        assert check_against_ort(mlp_onnx((20, 70, 9)), mlp, (1, 13)) == 2


def test_threads_split_parallel_loops(tmp_path: Path) -> None:
    model = mlp_onnx((32, 96, 64, 10))
    one = compile_load(model, tmp_path / "a", threads=1)
    two = compile_load(model, tmp_path / "b", threads=2)
    x = np.random.default_rng(0).standard_normal((33, 32)).astype(np.float32)
    for _ in range(3):  # the first call measures, the second tries the split, then the plan
        np.testing.assert_allclose(one(x=x)["y"], two(x=x)["y"], rtol=RTOL, atol=ATOL)
    assert all(two._runner._split_plan[(33,)])  # type: ignore[union-attr]
    assert check_against_ort(model, two, (1, 64)) == 2


def test_manifest_records_compile_time_and_plan(tmp_path: Path) -> None:
    compiled = compile_load(mlp_onnx(), tmp_path)
    entry = compiled.manifest.entry
    assert entry["compile_seconds"]["total"] > 0
    (program,) = programs(entry)
    assert program.code == "model.o" and program.kernels
    assert program.info["memory_plan"]["workspace_bytes"]["per_N"] > 0
    assert program.info["fused"] == ["Gemm+Relu", "Gemm+Relu"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler driver")
def test_emit_shared_library_and_header(tmp_path: Path) -> None:
    import ctypes

    artifact = irkit.compile(irkit.load_model(mlp_onnx()), target="llvm", emit="shared")
    path = artifact.save(tmp_path / "shared")
    header = (path / "model.h").read_text()
    assert "_run(void **io" in header
    lib = ctypes.CDLL(str(path / "model.so"))
    assert hasattr(lib, programs(artifact.entry)[0].run)


def unsupported_model() -> Any:
    """Two Det nodes (no llvm lowering; ONNX Runtime has one) between lowerable ops."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    inits = [numpy_helper.from_array(np.array([0, 2, 2], np.int64), "shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["m"]),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
        helper.make_node("Det", ["m"], ["d1"]),
        helper.make_node("Det", ["mt"], ["d2"]),
        helper.make_node("Add", ["d1", "d2"], ["d"]),
        helper.make_node("Unsqueeze", ["d", "axes"], ["du"]),
        helper.make_node("Mul", ["du", "x"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "odd", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_unsupported_ops_named_in_one_error() -> None:
    graph = irkit.load_model(unsupported_model())
    with pytest.raises(LlvmBackendError) as info:
        irkit.compile(graph, target="llvm")
    message = str(info.value)
    assert "Det" in message and "2 node(s)" in message


def test_fallback_ort_runs_unsupported_nodes_per_segment(tmp_path: Path) -> None:
    model = unsupported_model()
    artifact = irkit.compile(irkit.load_model(model), target="llvm", fallback="ort")
    assert artifact.backend == "llvm"
    assert artifact.entry["fallback_ops"] == ["Det"]
    kinds = [s["kind"] for s in artifact.entry["variants"][0]["segments"]]
    assert kinds == ["kernels", "ort", "kernels"]
    compiled = irkit.runtime.load(artifact.save(tmp_path / "fb"), threads=1)
    assert check_against_ort(model, compiled, (1, 7, 64)) == 3


def test_bad_options_rejected() -> None:
    graph = irkit.load_model(mlp_onnx())
    with pytest.raises(LlvmBackendError, match="fallback"):
        irkit.compile(graph, target="llvm", fallback="maybe")
    with pytest.raises(LlvmBackendError, match="threads"):
        irkit.compile(graph, target="llvm", threads=-1)
    with pytest.raises(LlvmBackendError, match="multiple of vec"):
        irkit.compile(graph, target="llvm", nr=20, vec=8)


def test_runtime_loader_imports_no_compiler_module() -> None:
    tree = ast.parse((ROOT / "runtime" / "backends" / "llvm.py").read_text())
    imported = [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for alias in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    irkit_modules = [m for m in imported if m.startswith("irkit")]
    assert irkit_modules and all(m.startswith("irkit.runtime") for m in irkit_modules)
