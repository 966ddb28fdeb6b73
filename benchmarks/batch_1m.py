"""Batch adapter benchmark: 1,000,000 digits rows from parquet, killed halfway and resumed.

    python benchmarks/batch_1m.py [--rows 1000000] [--chunk-rows 8192] [--shard-rows 100000]

Generates a parquet file of ``--rows`` rows x 64 float32 columns (row groups of 65,536
rows, as a Spark or pandas export would have), then, each in its own subprocess:

1. ``in-memory``: the baseline: read the whole table into one array, run the model over
   it in ``chunk_rows`` slices; no output files.
2. ``clean``: ``BatchAdapter`` parquet -> parquet, uninterrupted.
3. ``killed``: the same into another directory, SIGKILLed once half the shards exist;
4. ``resumed``: run again on that directory: it skips the finished shards.

Every shard, errors file and manifest of ``resumed`` must be byte-identical to ``clean``.
Peak RSS is the process's high-water mark during the run (``/proc/self/status`` VmHWM,
reset just before the run), and growth is that minus RSS before the run (after imports
and model load).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_http import build_models

RUNNER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import pyarrow.parquet as pq
    import tqdm  # imported before the baseline: library code is not data
    import irkit.runtime
    from irkit.runtime.adapters.batch import BatchAdapter

    mode, artifact, source, output, chunk, shard = sys.argv[1:7]
    model = irkit.runtime.load(artifact, threads=1)

    def status_mb(key):
        with open("/proc/self/status") as handle:
            return next(int(l.split()[1]) for l in handle if l.startswith(key)) / 1024

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    before = status_mb("VmRSS")
    start = time.perf_counter()
    skipped = 0
    if mode == "in-memory":
        table = pq.read_table(source)
        x = np.column_stack([c.to_numpy() for c in table.columns])
        del table
        outputs = [model.run({"x": x[i : i + int(chunk)]})["logits"]
                   for i in range(0, len(x), int(chunk))]
        rows = len(np.concatenate(outputs))
    else:
        summary = BatchAdapter(model, input=source, output=output, chunk_rows=int(chunk),
                               shard_rows=int(shard), progress=False).serve()
        rows, skipped = summary.rows, summary.skipped_shards
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mb": status_mb("VmHWM"),
                      "before_mb": before, "skipped": skipped}))
    """
)


def make_input(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    # digits-like features: 0..16 intensities, as float32
    with pq.ParquetWriter(path, pa.schema([(f"c{i}", pa.float32()) for i in range(64)])) as out:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            block = rng.integers(0, 17, size=(n, 64)).astype(np.float32)
            out.write_table(pa.table({f"c{i}": block[:, i] for i in range(64)}))


def run(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(process: subprocess.Popen[str]) -> dict[str, float]:
    stdout, stderr = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    return json.loads(stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="irkit-batch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        artifact = str(build_models(tmp)["digits"])
        source = tmp / "digits_1m.parquet"
        make_input(source, args.rows)
        size_mb = source.stat().st_size / 2**20
        sizes = [str(args.chunk_rows), str(args.shard_rows)]
        results = {
            "in-memory": finish(run(["in-memory", artifact, str(source), "-", *sizes])),
            "clean": finish(run(["batch", artifact, str(source), str(tmp / "clean.parquet"), *sizes])),
        }  # fmt: skip

        resumed = tmp / "resumed.parquet"
        shards = -(-args.rows // args.shard_rows)
        process = run(["batch", artifact, str(source), str(resumed), *sizes])
        killed_at = 0
        while process.poll() is None:
            try:
                done = len(json.loads((resumed / "manifest.json").read_text())["shards"])
            except (FileNotFoundError, ValueError):
                done = 0
            if done >= shards // 2:
                process.send_signal(signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.01)
        process.wait()
        results["resumed"] = finish(run(["batch", artifact, str(source), str(resumed), *sizes]))

        clean_files = sorted(p.name for p in (tmp / "clean.parquet").iterdir())
        resumed_files = sorted(p.name for p in resumed.iterdir())
        identical = clean_files == resumed_files and all(
            (tmp / "clean.parquet" / name).read_bytes() == (resumed / name).read_bytes()
            for name in clean_files
        )

    base = results["in-memory"]
    print(f"\n{args.rows:,} rows x 64 float32 (parquet {size_mb:.0f} MB), digits MLP (ort, 1 "
          f"thread), chunk_rows={args.chunk_rows}, shard_rows={args.shard_rows}\n")  # fmt: skip
    print(f"{'run':10} {'seconds':>8} {'rows/s':>10} {'peak RSS MB':>11} {'growth MB':>9} "
          f"{'skipped':>7} {'vs in-memory':>12}")  # fmt: skip
    for name, r in results.items():
        rate = r["rows"] / r["seconds"] if name != "resumed" else (
            (args.rows - r["skipped"] * args.shard_rows) / r["seconds"])  # fmt: skip
        ratio = base["seconds"] / r["seconds"] if name == "clean" else float("nan")
        print(f"{name:10} {r['seconds']:8.2f} {rate:10,.0f} {r['peak_mb']:11.0f} "
              f"{r['peak_mb'] - r['before_mb']:9.0f} {int(r['skipped']):7d} "
              f"{'' if ratio != ratio else f'{ratio:.2f}x':>12}")  # fmt: skip
    print(
        f"\nkilled (SIGKILL) after {killed_at}/{shards} shards; resumed run skipped "
        f"{int(results['resumed']['skipped'])} verified shards"
    )
    print(
        f"resumed output byte-identical to the clean run: {identical} "
        f"({len(clean_files)} files: shards, errors, manifest)"
    )
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
