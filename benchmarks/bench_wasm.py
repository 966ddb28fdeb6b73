"""irkit's WebAssembly build against onnxruntime-web, both in node (one thread, SIMD).

    python benchmarks/bench_wasm.py [--models mlp,gemm512,resnet,transformer]
                                    [--batches 1,16] [--repeats 15] [--seconds 1]

Compiles each built-in model (``irkit.bench.builtin_model``) with the wasm backend, writes
the same graph as ONNX for onnxruntime-web, and runs ``benchmarks/wasm/bench.mjs`` under
``node --no-liftoff`` (V8's optimizing compiler for every wasm function of both, then a
warm-up). Prints median latency per call and irkit/ORT-web ratios (below 1: irkit is
faster) by wall clock and by the process's CPU time (steadier on a shared machine), then the size of the digits CNN's module against ORT-web's runtime file.

onnxruntime-web comes from npm: ``npm install --prefix benchmarks/wasm`` (the first run
does it when ``node_modules`` is missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "wasm"
REPO = HERE.parent.parent


def ensure_onnxruntime_web() -> Path:
    package = HERE / "node_modules" / "onnxruntime-web"
    if not package.exists():
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("bench_wasm: npm is not installed (onnxruntime-web comes from npm)")
        subprocess.run([npm, "install", "--prefix", str(HERE), "--no-audit", "--no-fund"],
                       check=True)
    return package


def ort_web_model(data: bytes) -> bytes:
    """The model with an IR version onnxruntime-web reads (1.31 reads up to 13)."""
    import onnx

    model = onnx.load_from_string(data)
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()


def digits_cnn_sizes(out: Path) -> dict[str, int]:
    """Bytes of the digits CNN's modules (without weights) and of ORT-web's wasm file."""
    import irkit

    onnx_path = REPO / "specs" / "models" / "digits_cnn.onnx"
    if not onnx_path.exists():
        sys.exit(f"bench_wasm: {onnx_path} is missing; run python scripts/make_models.py")
    art = irkit.compile(irkit.load_model(onnx_path), target="wasm")
    art.save(out / "digits_cnn")
    sizes = {name: len(data) for name, data in art.files.items() if name.endswith(".wasm")}
    ort_wasm = ensure_onnxruntime_web() / "dist" / "ort-wasm-simd-threaded.wasm"
    sizes["onnxruntime-web: ort-wasm-simd-threaded.wasm"] = ort_wasm.stat().st_size
    weights = [n for n in art.files if n.endswith("weights.bin")]
    sizes["digits_cnn weights.bin"] = len(art.files[weights[0]])
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,gemm512,resnet,transformer")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="warm-up per model")
    parser.add_argument("--arch", default="wasm32-simd,wasm32")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=INT",
                        help="a wasm backend option, e.g. mr=4 (repeatable)")
    args = parser.parse_args(argv)
    node = shutil.which("node")
    if node is None:
        sys.exit("bench_wasm: node is not installed")
    ensure_onnxruntime_web()

    import irkit
    from irkit.bench import builtin_model, cpu_description

    print(cpu_description(), flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases: list[dict[str, Any]] = []
        for name in args.models.split(","):
            graph = builtin_model(name)
            options = {k: int(v) for k, v in (o.split("=", 1) for o in args.option)}
            irkit.compile(graph, target="wasm", arch=args.arch, **options).save(root / name)
            onnx_path = root / f"{name}.onnx"
            onnx_path.write_bytes(ort_web_model(irkit.compile(graph, target="ort")
                                                .files["model.onnx"]))
            spec = graph.inputs[0]
            for batch in batches:
                shape = [batch if isinstance(d, str) else int(d) for d in spec.type.shape]
                cases.append({"model": name, "batch": batch, "artifact": str(root / name),
                              "onnx": str(onnx_path), "input": spec.name, "shape": shape})
        config = root / "config.json"
        config.write_text(json.dumps({"repeats": args.repeats, "seconds": args.seconds,
                                      "cases": cases}))
        rows = []
        proc = subprocess.Popen([node, "--no-liftoff", str(HERE / "bench.mjs"), str(config)],
                                stdout=subprocess.PIPE, text=True, cwd=HERE)
        assert proc.stdout is not None
        for line in proc.stdout:
            row = json.loads(line)
            rows.append(row)
            print(f"  {row['model']:<12} batch {row['batch']:>3} [{row['variant']}]: irkit "
                  f"{row['irkit_ms']:.4f} ms, onnxruntime-web {row['ort_web_ms']:.4f} ms, "
                  f"ratio {row['ratio']:.2f}, CPU-time ratio {row['cpu_ratio']:.2f} "
                  f"(max |diff| {row['max_abs_diff']:.2g})", flush=True)
        if proc.wait() != 0:
            sys.exit(f"bench_wasm: node exited with {proc.returncode}")
        print("\n| model | batch | irkit ms | ORT-web ms | irkit/ORT-web | CPU-time ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['model']} | {row['batch']} | {row['irkit_ms']:.4f} | "
                  f"{row['ort_web_ms']:.4f} | {row['ratio']:.2f} | {row['cpu_ratio']:.2f} |")
        print("\nmodule sizes (bytes):")
        for name, size in digits_cnn_sizes(root).items():
            print(f"  {name}: {size:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
