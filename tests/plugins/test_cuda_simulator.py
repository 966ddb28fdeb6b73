"""Op cases through the cuda backend: compiled to PTX by numba-cuda for sm_90 and run by
numba-cuda's CUDA simulator (every thread in Python, so batches 1 and 2), against the
same references and tolerances as on the CPU backends. CI runs one or two cases per GPU
kernel family (below); ``IRKIT_FULL_SWEEPS=1`` runs every case of the four lists (about
14 minutes on 2 cores; all passed when last run). Needs numba-cuda and the CUDA 13.0
NVVM (the ``cuda`` extra), no GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from irkit.testing.gpu import ptx_toolchain_missing

if ptx_toolchain_missing():
    pytest.skip(str(ptx_toolchain_missing()), allow_module_level=True)

from op_case_suites import params, run_case

from irkit.testing.op_cases import CUDA_SIMULATOR, OpCase

# One or two cases per GPU kernel family. The digits models and the ResNet CNN
# (test_cuda_backend.py) add the implicit-GEMM convolution, pooling and a GEMM epilogue.
SAMPLE = (
    "ops-gelu",                       # elementwise on the grid, erf
    "ops-where_greater",              # broadcasting, compare, bool
    "ops-matmul_batched_runtime",     # shared-memory tiled GEMM, batched, runtime B
    "ops-conv_depthwise_1x1",         # depthwise convolution
    "ops-softmax_last",               # one block per row, warp-shuffle max and sum
    "ops-reduce_sum_nokeep",          # warp-shuffle reduction
    "extra-qlinear_matmul_u8",        # int8 GEMM (the exact int8 dot)
    "indexing-cumsum_excl1_rev1",     # a serial scan inside a grid loop
    "image-gridsample_linear_zeros_align0",  # image ops: gathers at computed positions
)
BATCHES = (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(("suite", "case"), params(SAMPLE))
def test_op_on_cuda_simulator(suite: Any, case: OpCase, tmp_path: Path) -> None:
    run_case(suite, case, CUDA_SIMULATOR, tmp_path, BATCHES)


def test_numba_enable_cudasim_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With NUMBA_ENABLE_CUDASIM=1 numba-cuda has only its simulator: compiling says so
    (not a TypeError from a missing compiler), and loading runs the simulator."""
    import numpy as np
    from numba import config as numba_config
    from onnx import TensorProto, helper

    import irkit
    import irkit.runtime
    from irkit.backend import BackendError

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x_info],
                              [y_info])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "relu.onnx"
    path.write_bytes(model.SerializeToString())
    artifact = irkit.compile(irkit.load_model(str(path)), target="cuda").save(tmp_path / "a")

    monkeypatch.setattr(numba_config, "ENABLE_CUDASIM", 1)
    with pytest.raises(BackendError, match="NUMBA_ENABLE_CUDASIM=1 replaces"):
        irkit.compile(irkit.load_model(str(path)), target="cuda")
    monkeypatch.setattr(numba_config, "ENABLE_CUDASIM", 0)

    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    x = np.array([[-1.0, 0.5, -0.25, 2.0]], np.float32)
    out = irkit.runtime.load(artifact).run({"x": x})["y"]
    np.testing.assert_array_equal(out, np.maximum(x, 0))  # exact: a max with 0


def test_attention_probabilities_times_a_narrow_v_over_a_runtime_length(
        tmp_path: Path) -> None:
    """``P @ V`` of attention, ``[N, 3, S, S] x [N, 3, S, 8]`` with S known at run time:
    lowering pads V's rows to 32 columns, and the GPU GEMM read them 8 apart (a torch
    transformer encoder exported with a dynamic sequence length was off by up to 0.15;
    this product by up to 9): at S = 5 every output was wrong, at S = 1 none."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    import irkit
    import irkit.runtime

    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["p", "v"], ["y"])], "pv",
        [info("p", TensorProto.FLOAT, ["N", 3, "S", "S"]),
         info("v", TensorProto.FLOAT, ["N", 3, "S", 8])],
        [info("y", TensorProto.FLOAT, ["N", 3, "S", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = irkit.runtime.load(irkit.compile(irkit.load_model(model), target="cuda")
                                  .save(tmp_path / "pv"), device="simulator")
    rng = np.random.default_rng(5)
    feeds = {"p": rng.random((1, 3, 5, 5), np.float32),
             "v": rng.standard_normal((1, 3, 5, 8)).astype(np.float32)}
    (want,) = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(compiled(**feeds)["y"], want, rtol=1e-4, atol=1e-5)
    # The same from the command line, which had no way to ask for the simulator.
    from irkit.cli import main

    args = ["run", str(tmp_path / "pv"), "--device", "simulator", "-o", str(tmp_path / "y.npz")]
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["-i", f"{name}={tmp_path / name}.npy"]
    assert main(args) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], want, rtol=1e-4, atol=1e-5)
