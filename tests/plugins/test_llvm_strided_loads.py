"""Vector loops that read every other element (stride-2 Slice, pooling and convolution)
become strided vector loads: two overlapping contiguous loads and a shuffle. They must
give numpy's / ONNX Runtime's values and never read past the last element they need: the
inputs here end exactly at a page followed by an inaccessible guard page, in a child
process, so a read past the end would crash it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import irkit  # noqa: E402
from irkit.kir.printer import print_kernel  # noqa: E402
from irkit.kir.transforms import prepare_kernel  # noqa: E402
from irkit.lower import lower_graph  # noqa: E402
from irkit.testing.op_cases import assert_output, compile_and_load  # noqa: E402

WIDTHS = (31, 32, 33, 64, 75, 100)


def slice_model(width: int, start: int) -> Any:
    """y = x[:, start::2] for x f32[N, width]."""
    consts = {"s": [start], "e": [width], "a": [1], "st": [2]}
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], "every_other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_slice_kernel_uses_strided_vector_loads() -> None:
    program = lower_graph(irkit.load_model(slice_model(75, 1))).program
    text = "\n".join(print_kernel(prepare_kernel(k, 16)) for k in program.kernels)
    assert ": +16 step 2]" in text, text


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("start", [0, 1])
def test_every_other_element_matches_numpy(width: int, start: int, tmp_path: Path) -> None:
    compiled = compile_and_load(slice_model(width, start), tmp_path, threads=1)
    for batch in (1, 3):
        x = np.random.default_rng(width + batch).standard_normal((batch, width)).astype(
            np.float32)
        np.testing.assert_array_equal(compiled(x=x)["y"], x[:, start::2])


GUARDED = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np
    import irkit.runtime

    model = irkit.runtime.load(sys.argv[1], threads=1)
    width, start = int(sys.argv[2]), int(sys.argv[3])
    page = mmap.PAGESIZE
    region = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0  # PROT_NONE
    nbytes = width * 4
    x = np.frombuffer(region, np.float32, count=width, offset=page - nbytes).reshape(1, width)
    x[...] = np.arange(width, dtype=np.float32)
    y = model(x=x)["y"]
    assert (y == x[:, start::2]).all(), (y, x[:, start::2])
    print("ok")
""")


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_past_the_input_is_read(width: int, tmp_path: Path) -> None:
    path = irkit.compile(irkit.load_model(slice_model(width, 1)), target="llvm",
                         threads=1).save(tmp_path / "m")
    done = subprocess.run([sys.executable, "-c", GUARDED, str(path), str(width), "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "group": 4}),
    ("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}),
], ids=["maxpool", "avgpool", "depthwise", "conv"])
def test_stride_two_windows_match_onnxruntime(op: str, attrs: dict[str, Any],
                                              tmp_path: Path) -> None:
    inits = []
    ins = ["x"]
    if op == "Conv":
        shape = (4, 4 // attrs.get("group", 1), 3, 3)
        inits.append(numpy_helper.from_array(
            np.random.default_rng(1).standard_normal(shape).astype(np.float32), "w"))
        ins.append("w")
    graph = helper.make_graph(
        [helper.make_node(op, ins, ["y"], **attrs)], "strided",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 37, 70])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = compile_and_load(model, tmp_path, threads=1)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 37, 70)).astype(
            np.float32)
        assert_output(compiled(x=x)["y"], session.run(None, {"x": x})[0],
                      where=f"{op} batch {batch}", rtol=1e-4, atol=1e-5)
