"""The llvm backend against ONNX Runtime (1 thread unless told), same process, same inputs.

    python benchmarks/bench_llvm.py                      # all built-in models, batch 1 and 64
    python benchmarks/bench_llvm.py --models mlp,gemm512 --batches 1 --threads 1,2
    python benchmarks/bench_llvm.py --arch native,x86-64-v3   # (the default) both side by side

Each model is compiled for every ``--arch`` (``native``: this CPU; ``x86-64-v3``: AVX2 +
FMA, the code that runs on most servers users deploy to) and timed beside ONNX Runtime,
which picks its kernels from the CPU it runs on.

The numba backend's artifact of the same graph is timed in the same rounds (``--also
numba``, the default; ``--also ""`` leaves it out): its column gives its latency and its
ratios to llvm (``/irkit``) and to ONNX Runtime (``/anchor``); its first load, which
compiles the generated source with Numba, is reported once per model.

Prints per-row latencies (medians over rotating rounds), irkit/ORT ratios and a
1024^3 matmul GFLOP/s line beside numpy's (OpenBLAS limited to one thread). Targets
(1 thread): ratio <= 0.8 at batch 1 for mlp and gemm512, <= 1.1 at batch 64 for resnet
and transformer, matmul >= 70% of numpy. ``minilm`` (all-MiniLM-L6-v2, sequence 32)
has no target yet; its rows show where the attention path stands.
"""

from __future__ import annotations

import argparse

from irkit.bench import BUILTIN_MODELS, run_bench

TARGETS = {("mlp", 1): 0.8, ("gemm512", 1): 0.8, ("resnet", 64): 1.1, ("transformer", 64): 1.1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILTIN_MODELS))
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--arch", default="native,x86-64-v3",
                        help="comma-separated targets, one row each (default native,x86-64-v3)")
    parser.add_argument("--also", default="numba",
                        help="other backends timed in the same rounds (default numba)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time, steadier on a "
                             "shared machine (default wall)")
    args = parser.parse_args()
    result = run_bench(
        args.models.split(","),
        batches=tuple(int(b) for b in args.batches.split(",")),
        threads=tuple(int(t) for t in args.threads.split(",")),
        repeats=args.repeats,
        arches=tuple(a for a in args.arch.split(",") if a),
        also=tuple(a for a in args.also.split(",") if a),
        clock=args.clock,
    )
    print("\ntargets (1 thread):")
    for row in result.rows:
        goal = TARGETS.get((row.model, row.batch))
        if goal is not None and row.threads == 1 and row.against == "onnxruntime":
            verdict = "met" if row.ratio <= goal else f"MISSED by {row.ratio / goal - 1:.0%}"
            print(f"  {row.model} [{row.arch}] batch {row.batch}: {row.ratio:.2f} "
                  f"(target <= {goal}) {verdict}")
    if result.matmul:
        share = result.matmul["irkit_gflops"] / result.matmul["numpy_gflops"]
        print(
            f"  matmul 1024^3: {share:.0%} of numpy (target >= 70%) "
            f"{'met' if share >= 0.7 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
