"""An int4 block-quantized MLP against the same MLP in fp32, on the llvm backend.

    python benchmarks/bench_int4.py [--arch x86-64-v3] [--rounds 100]
        [--shapes 512x2048,1024x4096,2048x8192,4096x4096] [--blocks 32,64,128]
        [--batch 1] [--clock cpu|wall]

Each shape ``KxH`` is the MLP K-H-K: ``MatMul(x, DequantizeLinear(W1, s1, axis=0,
block_size)) -> Relu -> MatMul(., DequantizeLinear(W2, s2))`` with int4 weights (the
layout of int4-quantized LLM weights); the fp32 model has the dequantized weights as
constants, so both compute the same function. Both are compiled for ``--arch`` and loaded
with one thread; they take turns call by call and the medians are printed (other
processes' load hits both alike). ``--clock cpu`` (the default) times the process's CPU
time, which a busy machine disturbs less than the wall clock.
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


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def measure(k: int, hidden: int, block: int, batch: int, arch: str, rounds: int,
            clock: str) -> dict[str, float]:
    """Median seconds per call of the int4 and fp32 MLPs, and their largest difference."""
    x = np.random.default_rng(1).normal(size=(batch, k)).astype(np.float32)
    now = CLOCKS[clock]
    runners: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models(k, hidden, block):
            artifact = api.compile(api.load_model(model), target="llvm", arch=arch)
            path = artifact.save(Path(tmp) / model.graph.name)
            runners[model.graph.name] = irkit.runtime.load(path, threads=1)
        outs = {name: run(x=x)["y"] for name, run in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                start = now()
                run(x=x)
                times[name].append(now() - start)
    return {"int4": statistics.median(times["int4_mlp"]),
            "fp32": statistics.median(times["fp32_mlp"]),
            "diff": float(np.abs(outs["int4_mlp"] - outs["fp32_mlp"]).max())}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="x86-64-v3", help="target preset (default x86-64-v3)")
    parser.add_argument("--rounds", type=int, default=100, help="timed calls per model")
    parser.add_argument("--shapes", default="512x2048,1024x4096,2048x8192,4096x4096",
                        help="comma-separated KxH: MLP K-H-K (input and output width K)")
    parser.add_argument("--blocks", default="32,64,128",
                        help="comma-separated rows per quantization block")
    parser.add_argument("--batch", default="1", help="comma-separated rows of x")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="process CPU time (default) or wall-clock time")
    args = parser.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
        blocks, batches = _ints(args.blocks), _ints(args.batch)
    except ValueError:
        parser.error("--shapes takes KxH,KxH...; --blocks and --batch comma-separated ints")
    for shape in shapes:
        if len(shape) != 2 or min(shape) <= 0:
            parser.error(f"bad shape {shape}: KxH, both positive")
        for block in blocks:
            if block <= 0 or shape[0] % block or shape[1] % block:
                parser.error(f"block {block} must divide {shape[0]} and {shape[1]}")
    if args.rounds <= 0 or not batches or min(batches) <= 0:
        parser.error("--rounds and --batch must be positive")
    print(f"{args.arch}, 1 thread, median {args.clock} time of {args.rounds} calls each")
    print(f"{'MLP':>16} {'block':>5} {'batch':>5} {'fp32 ms':>9} {'int4 ms':>9} "
          f"{'speedup':>7} {'max|diff|':>9}")
    for k, hidden in shapes:
        for block in blocks:
            for batch in batches:
                r = measure(k, hidden, block, batch, args.arch, args.rounds, args.clock)
                print(f"{f'{k}-{hidden}-{k}':>16} {block:>5} {batch:>5} "
                      f"{r['fp32'] * 1e3:9.3f} {r['int4'] * 1e3:9.3f} "
                      f"{r['fp32'] / r['int4']:6.2f}x {r['diff']:9.2g}", flush=True)


if __name__ == "__main__":
    main()
