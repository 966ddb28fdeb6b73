"""What fuse and int8 buy on a generated family of models, for native and x86-64-v3 code.

    python benchmarks/bench_family.py                    # 12 CNNs, 2 MLPs, 2 transformers
    python benchmarks/bench_family.py --only cnn --arch x86-64-v3 --rounds 15

The family (``irkit.testing.family``, seeded) has CNNs on 8x8 to 64x64 images with channel
counts that are not powers of two, 1x1/3x3/5x5 convs at stride 1 and 2 with BN, ReLU and
pools, MLPs and small transformer encoders. Each model is compiled by irkit in fp32,
after ``fuse``, after static int8 (``fuse,quantize{mode=static,per_channel=true}``) and
after dynamic int8 (``fuse,quantize{mode=dynamic,per_channel=true}``), for each ``--arch``
(``x86-64-v3`` code runs on AVX2 CPUs, the deployment common case; on an AVX-512 host it
is still AVX2 code), and timed beside ONNX Runtime fp32 and ONNX Runtime int8 (QDQ from
``onnxruntime.quantization``: static per-channel for CNNs and MLPs, dynamic for the
transformers) at batch 64 on one thread, all in one process, in alternating rounds
(medians). The optimized builds time each quantized node against fp32, and each fusion
that changes kernels (conv + pool) against the unfused form, on the target and keep the
faster one (``measure=True``, as a spec build does); ``--force`` quantizes every
candidate and skips the timing. It prints one table and the median and worst of each
ratio column.

Columns: ``fuse x`` = fp32 time / fuse time; ``int8s x`` and ``int8d x`` = fp32 time /
int8 time; ``fp32/ORT`` = irkit fp32 time / ORT fp32 time; ``int8/ORT8`` = irkit int8
static time / ORT int8 time (below 1: irkit is faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import irkit
import irkit.runtime
from irkit.bench import CLOCKS, cpu_description
from irkit.testing.family import ModelSpec, export, family, inputs

CACHE = Path(tempfile.gettempdir()) / "irkit_family_models"
VARIANTS = ("fp32", "fuse", "int8s", "int8d")
PIPELINES = {"fuse": "fuse", "int8s": "fuse,quantize{mode=static,per_channel=true}",
             "int8d": "fuse,quantize{mode=dynamic,per_channel=true}"}


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_int8(spec: ModelSpec, path: Path, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = path.with_name(path.stem + ".int8.onnx")
    if out.exists():
        return out
    if spec.kind == "transformer":
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True)
        return out

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def _irkit_model(graph: Any, arch: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        artifact = irkit.compile(graph, target="llvm", arch=arch, threads=1)
        return irkit.runtime.load(artifact.save(Path(tmp) / "m"), threads=1)


def _medians(calls: dict[str, Callable[[], Any]], rounds: int, budget_s: float,
             stat: str = "median", clock: str = "wall") -> dict[str, float]:
    now = CLOCKS[clock]
    for call in calls.values():
        call()
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s
    for done in range(rounds):
        for name, call in calls.items():
            start = now()
            call()
            samples[name].append(now() - start)
        if done >= 4 and time.perf_counter() > deadline:
            break
    reduce = np.median if stat == "median" else np.min
    return {name: float(reduce(s)) * 1e3 for name, s in samples.items()}


def measure(spec: ModelSpec, arches: list[str], batch: int, rounds: int, force: bool,
            stat: str = "median", clock: str = "wall") -> dict[str, dict[str, Any]]:
    path = export(spec, CACHE / f"{spec.name}.onnx") if not (
        CACHE / f"{spec.name}.onnx").exists() else CACHE / f"{spec.name}.onnx"
    graph = irkit.load_model(str(path))
    calib = inputs(spec, 64, seed=1)
    x = inputs(spec, batch, seed=2)
    calibration = [{"x": calib[i:i + 32]} for i in range(0, 64, 32)]
    calls: dict[str, Callable[[], Any]] = {}
    ort_fp32 = _ort_session(path)
    ort_int8 = _ort_session(_ort_int8(spec, path, calib))
    calls["ort"] = lambda: ort_fp32.run(None, {"x": x})
    calls["ort8"] = lambda: ort_int8.run(None, {"x": x})
    notes: dict[str, str] = {}
    for arch in arches:
        for variant in VARIANTS:
            graph_v = graph
            if variant != "fp32":
                pipeline = PIPELINES[variant]
                if force:
                    pipeline = pipeline.replace("per_channel=true", "per_channel=true,force=true")
                graph_v = irkit.optimize(graph, pipeline, calibration=calibration, target=arch,
                                         measure=not force)
                if variant == "int8s":
                    details = graph_v.history[-1].details
                    kept = [k for k, v in details.get("nodes", {}).items()
                            if v.startswith("kept")]
                    notes[arch] = f"{details.get('quantized', 0)} int8, {len(kept)} kept fp32"
            model = _irkit_model(graph_v, arch)
            calls[f"{arch}:{variant}"] = (lambda m=model: m.run({"x": x}))
    times = _medians(calls, rounds, budget_s=2.0, stat=stat, clock=clock)
    rows = {}
    for arch in arches:
        t = {v: times[f"{arch}:{v}"] for v in VARIANTS}
        rows[arch] = {
            "fp32_ms": t["fp32"], "fuse x": t["fp32"] / t["fuse"],
            "int8s x": t["fp32"] / t["int8s"], "int8d x": t["fp32"] / t["int8d"],
            "fp32/ORT": t["fp32"] / times["ort"], "int8/ORT8": t["int8s"] / times["ort8"],
            "ort_ms": times["ort"], "ort8_ms": times["ort8"], "note": notes.get(arch, ""),
        }
    return rows


COLUMNS = ("fuse x", "int8s x", "int8d x", "fp32/ORT", "int8/ORT8")
HIGHER_IS_BETTER = {"fuse x": True, "int8s x": True, "int8d x": True, "fp32/ORT": False,
                    "int8/ORT8": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="native,x86-64-v3")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="cnn, mlp or transformer")
    parser.add_argument("--force", action="store_true",
                        help="quantize every node and keep every fusion (no timing)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="per-variant statistic over the rounds (min: steadier on a "
                        "shared machine, where other work only adds time)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time, steadier on "
                        "a shared machine (default wall)")
    args = parser.parse_args(argv)
    arches = [a for a in args.arch.split(",") if a]
    specs = [s for s in family(args.seed) if not args.only or s.kind == args.only]
    CACHE.mkdir(parents=True, exist_ok=True)
    print(cpu_description(), flush=True)
    results: list[tuple[ModelSpec, str, dict[str, Any]]] = []
    for spec in specs:
        started = time.perf_counter()
        rows = measure(spec, arches, args.batch, args.rounds, args.force, args.stat, args.clock)
        for arch, row in rows.items():
            results.append((spec, arch, row))
            print(f"  {spec.name} [{arch}]: " + ", ".join(
                f"{c} {row[c]:.2f}" for c in COLUMNS) + f" ({row['note']}; "
                f"{time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    head = (f"{'model':<26} {'arch':<10} {'fp32 ms':>8} {'ORT ms':>8} {'ORT8 ms':>8} "
            + " ".join(f"{c:>9}" for c in COLUMNS))
    print(f"\nbatch {args.batch}, 1 thread, {args.stat} {args.clock} time of {args.rounds} "
          "alternating rounds; "
          f"ratios in the docstring's sense\n{head}\n"
          + "-" * len(head))
    for spec, arch, row in results:
        print(f"{spec.name:<26} {arch:<10} {row['fp32_ms']:>8.3f} {row['ort_ms']:>8.3f} "
              f"{row['ort8_ms']:>8.3f} " + " ".join(f"{row[c]:>9.2f}" for c in COLUMNS))
    for arch in arches:
        for kind in ("cnn", "mlp", "transformer"):
            rows = [row for spec, a, row in results if a == arch and spec.kind == kind]
            if not rows:
                continue
            medians = " ".join(f"{np.median([r[c] for r in rows]):>9.2f}" for c in COLUMNS)
            worst = " ".join(f"{(min if HIGHER_IS_BETTER[c] else max)(r[c] for r in rows):>9.2f}"
                             for c in COLUMNS)
            print(f"{'median ' + kind:<26} {arch:<10} {'':>8} {'':>8} {'':>8} {medians}")
            print(f"{'worst ' + kind:<26} {arch:<10} {'':>8} {'':>8} {'':>8} {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
