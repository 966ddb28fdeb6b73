"""An int4 block-quantized MLP against the same MLP in fp32, batch 1, on the llvm backend.

    python benchmarks/bench_int4.py [--arch x86-64-v3] [--rounds 200] [--k 1024]
        [--hidden 4096] [--block 32] [--batch 1]

The int4 model is ``MatMul(x, DequantizeLinear(W1, s1, axis=0, block_size)) -> Relu ->
MatMul(., DequantizeLinear(W2, s2))`` with int4 weights (the layout of int4-quantized LLM
weights); the fp32 model has the dequantized weights as constants, so both compute the
same function. Both are compiled for ``--arch`` and loaded with one thread; they take
turns call by call and the medians are printed (other processes' load hits both alike).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import irkit.runtime
from irkit import api


def models(k: int, hidden: int, block: int, seed: int = 0) -> tuple[onnx.ModelProto,
                                                                     onnx.ModelProto]:
    rng = np.random.default_rng(seed)
    w1 = rng.integers(-8, 8, (k, hidden)).astype(ml_dtypes.int4)
    w2 = rng.integers(-8, 8, (hidden, k)).astype(ml_dtypes.int4)
    s1 = rng.uniform(0.001, 0.01, (k // block, hidden)).astype(np.float32)
    s2 = rng.uniform(0.001, 0.01, (hidden // block, k)).astype(np.float32)

    def dequantized(w: np.ndarray, s: np.ndarray) -> np.ndarray:
        return (w.astype(np.float32) * np.repeat(s, block, axis=0)).astype(np.float32)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])
    mlp = [helper.make_node("MatMul", ["x", "f1"], ["a"]),
           helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "f2"], ["y"])]
    int4 = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w1", "s1"], ["f1"], axis=0, block_size=block),
         helper.make_node("DequantizeLinear", ["w2", "s2"], ["f2"], axis=0, block_size=block),
         *mlp], "int4_mlp", [x], [y],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (s1, "s1"), (w2, "w2"),
                                                    (s2, "s2"))])
    fp32 = helper.make_graph(mlp, "fp32_mlp", [x], [y],
                             [numpy_helper.from_array(dequantized(w1, s1), "f1"),
                              numpy_helper.from_array(dequantized(w2, s2), "f2")])
    opset = [helper.make_opsetid("", 23)]
    return helper.make_model(int4, opset_imports=opset), helper.make_model(fp32,
                                                                          opset_imports=opset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="x86-64-v3", help="target preset (default x86-64-v3)")
    parser.add_argument("--rounds", type=int, default=200, help="timed calls per model")
    parser.add_argument("--k", type=int, default=1024, help="input and output width")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden width")
    parser.add_argument("--block", type=int, default=32, help="rows per quantization block")
    parser.add_argument("--batch", type=int, default=1, help="rows of x")
    args = parser.parse_args()
    x = np.random.default_rng(1).normal(size=(args.batch, args.k)).astype(np.float32)
    runners: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models(args.k, args.hidden, args.block):
            artifact = api.compile(api.load_model(model), target="llvm", arch=args.arch)
            path = artifact.save(Path(tmp) / model.graph.name)
            runners[model.graph.name] = irkit.runtime.load(path, threads=1)
        outs = {name: run(x=x)["y"] for name, run in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x=x)
                times[name].append(time.perf_counter() - start)
    int4, fp32 = (statistics.median(times[n]) for n in ("int4_mlp", "fp32_mlp"))
    diff = float(np.abs(outs["int4_mlp"] - outs["fp32_mlp"]).max())
    print(f"MLP {args.k}-{args.hidden}-{args.k}, int4 blocks of {args.block}, batch "
          f"{args.batch}, {args.arch}, 1 thread, median of {args.rounds}")
    print(f"  fp32  {fp32 * 1e3:8.3f} ms")
    print(f"  int4  {int4 * 1e3:8.3f} ms   {fp32 / int4:.2f}x faster   "
          f"max |int4 - fp32| = {diff:.2g}")


if __name__ == "__main__":
    main()
