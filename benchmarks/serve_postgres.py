"""End-to-end throughput of the postgres adapter, next to the Kafka adapter's, same model.

    python benchmarks/serve_postgres.py                   # 5,000 requests per row, 3 repeats
    python benchmarks/serve_postgres.py --requests 5000 --repeats 1 --batches 1,64

One embedded PostgreSQL server (the adapter's own) and one embedded Tansu broker. For each
row the adapter serves in this process and the load runs in a separate process. The
postgres load inserts ``--requests`` single-row requests in the binary form, 100 rows per
INSERT statement (each statement its own transaction), while it polls the results table;
the clock starts at the first insert and stops when the last result is visible to the
load's connection, so the figure is requests/s from insert to committed result. The
``insert only`` row is the same load with no adapter (the ceiling the database and the
load process allow here). ``sync_commit=off`` rows set the workers' ``synchronous_commit``
to off (the load's inserts stay synchronous): a batch's commit then does not wait for its
WAL flush, which is what bounds batch 1 on a disk with slow fsync. Tansu, the kafka rows'
broker, keeps everything in memory. The kafka rows run ``benchmarks/serve_kafka.py``'s binary-form
load (producer with linger.ms = 5, consumer of the results) at the same ``max_batch``.
Every row first sends warm-up requests until results come back. Each figure is the
median over ``--repeats`` runs. The model is ``specs/models/digits_mlp.onnx`` (from
``scripts/make_models.py``) or, when that is missing, a random MLP of the same shape.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_kafka import bench_form, build_model, model_ceiling

from irkit.runtime import load
from irkit.runtime.adapters.kafka_broker import EmbeddedBroker
from irkit.runtime.adapters.postgres import PostgresAdapter
from irkit.runtime.adapters.postgres_schema import Tables, init_schema
from irkit.runtime.adapters.postgres_server import EmbeddedPostgres

CHUNK = 100  # rows per INSERT statement of the load


def run_load(dsn: str, requests: str, results: str, count: int, served: bool,
             outcome: Any) -> None:
    """The load process: insert ``count`` requests, wait until all have results."""
    import psycopg
    from psycopg import sql

    from irkit.runtime.adapters.postgres_schema import fetch_result, submit_binary

    tables = Tables(requests, results)
    rows = np.random.default_rng(1).random((1024, 64), dtype=np.float32) * 16
    payloads = [{"x": rows[i : i + 1]} for i in range(len(rows))]
    with psycopg.connect(dsn, autocommit=True) as conn, \
            psycopg.connect(dsn, autocommit=True) as watcher:
        done = sql.SQL("SELECT count(*) FROM {} WHERE request_id >= %s").format(tables.res)
        if served:  # warm up: connections, prepared statements, the first model calls
            warm = submit_binary(conn, payloads[:50], tables)
            while watcher.execute(done, (warm[0],)).fetchone()[0] < len(warm):
                time.sleep(0.01)
        first: list[int] = []

        def insert() -> None:
            for start in range(0, count, CHUNK):
                chunk = [payloads[i % len(payloads)]
                         for i in range(start, min(start + CHUNK, count))]
                ids = submit_binary(conn, chunk, tables)
                if not first:
                    first.append(ids[0])

        started = time.perf_counter()
        inserter = threading.Thread(target=insert)
        inserter.start()
        if served:
            while not first:
                time.sleep(0.001)
            while watcher.execute(done, (first[0],)).fetchone()[0] < count:
                time.sleep(0.01)
        inserter.join()
        elapsed = time.perf_counter() - started
        checked = True
        if served:  # the results are real logits
            logits = fetch_result(watcher, first[0], tables)
            checked = logits is not None and logits["logits"].shape == (1, 10) and bool(
                np.isfinite(logits["logits"]).all())
    outcome.put({"requests": count, "seconds": elapsed, "checked": checked})


def bench_postgres(dsn: str, model_dir: Path, count: int, max_batch: int | None,
                   workers: int = 1, synchronous_commit: str = "on") -> dict[str, Any]:
    """One row: requests/s with the adapter at ``max_batch`` (None: no adapter)."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    tables = Tables(f"{name}_requests", f"{name}_results")
    with psycopg.connect(dsn, autocommit=True) as conn:
        init_schema(conn, tables)
    adapter = server = None
    if max_batch is not None:
        adapter = PostgresAdapter(load(model_dir), dsn=dsn, table=tables.requests,
                                  result_table=tables.results, max_batch=max_batch,
                                  workers=workers, synchronous_commit=synchronous_commit,
                                  init_db=False)
        server = threading.Thread(target=adapter.serve, name="postgres-adapter")
        server.start()
        assert adapter.ready.wait(60)
    try:
        context = multiprocessing.get_context("spawn")
        outcome = context.Queue()
        process = context.Process(target=run_load, args=(
            dsn, tables.requests, tables.results, count, adapter is not None, outcome))
        process.start()
        try:
            result = outcome.get(timeout=900)
        finally:
            process.join(60)
    finally:
        if adapter is not None and server is not None:
            adapter.stop()
            server.join(60)
    result["per_s"] = result["requests"] / result["seconds"]
    return result


def median_row(label: str, runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {"label": label, "per_s": statistics.median(r[key] for r in runs),
            "spread": (min(r[key] for r in runs), max(r[key] for r in runs)),
            "checked": all(r["checked"] for r in runs),
            "complete": all(r.get("requests", r.get("messages")) == runs[0].get(
                "requests", runs[0].get("messages")) for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--batches", default="1,64", help="max_batch values to measure")
    parser.add_argument("--workers", type=int, default=2,
                        help="also measure the largest batch with this many worker "
                        "processes (1: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-kafka", action="store_true", help="skip the kafka rows")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres() as pg:
        model_dir, origin = build_model(Path(tmp))
        ceiling = model_ceiling(model_dir, max(batches))
        configs: list[tuple[str, int | None, int, str]] = [
            ("insert only (no adapter)", None, 1, "on")]
        for b in batches:
            configs.append((f"postgres max_batch={b}", b, 1, "on"))
            configs.append((f"postgres max_batch={b} sync_commit=off", b, 1, "off"))
        if args.workers > 1:
            configs.append((f"postgres max_batch={max(batches)} workers={args.workers}",
                            max(batches), args.workers, "on"))
        for label, max_batch, workers, sync in configs:
            runs = [bench_postgres(pg.dsn, model_dir, args.requests, max_batch, workers, sync)
                    for _ in range(args.repeats)]
            rows.append(median_row(label, runs, "per_s"))
        if not args.no_kafka:
            with EmbeddedBroker() as broker:
                for b in batches:
                    runs = [bench_form(broker.bootstrap_servers, model_dir, "binary",
                                       args.requests, b, 5.0) for _ in range(args.repeats)]
                    rows.append(median_row(f"kafka max_batch={b} (binary)", runs,
                                           "msg_per_s"))
    print(f"model: {origin}; {args.requests:,} single-row requests per run, median of "
          f"{args.repeats}")
    print(f"model alone at batch {max(batches)}: {ceiling:,.0f} rows/s")
    print(f"{'row':<40} {'requests/s':>11} {'(min..max)':>19}  results checked")
    for row in rows:
        low, high = row["spread"]
        print(f"{row['label']:<40} {row['per_s']:>11,.0f} {f'{low:,.0f}..{high:,.0f}':>19}"
              f"  {row['checked']}")
    return 0 if all(row["checked"] and row["complete"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
