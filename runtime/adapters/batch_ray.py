"""Ray engine of the batch adapter: ``serve batch { engine = "ray" }``.

The shards, chunks and bytes are the local engine's; only the model calls move. This
process plans the chunks of every unfinished shard (``chunk_rows`` rows, starting at
``shard_start + k*chunk_rows`` as the local engine does) and sends them to
``concurrency`` Ray actors (``ChunkRunner``, each asking for ``num_cpus``/``num_gpus``),
started before anything else so that they load while the chunks are planned: each actor
loads the artifact once (``irkit.runtime.load``, which verifies every file's sha256 on
that worker), opens the input itself and returns each chunk's row numbers, outputs and
bad rows. The chunks of one parquet row group go to one actor (each group read once). This
process writes them, in row order, through the local engine's ``ShardBuilder`` — the
same shard files, errors files and manifest, so the output is byte-identical to
``engine = "local"`` and resuming (after a kill, on either engine) works the same way.

Plain Ray actors rather than a Ray Data pipeline: on a running 2-CPU Ray, a Ray Data
``map_batches`` with an actor pool took 5-8 s before its first constructor ran (and
``import ray.data`` 1-2 s in the driver), against under 1 s for two actors here — more
than the whole job's gain at 1M rows. ``ChunkRunner`` still is a Ray Data callable class
(``__call__`` takes a batch of ``start``/``stop`` columns) for pipelines of one's own.

Where things must be: the input path must be readable by the workers (a shared path:
always so for ``address = "local"``). The artifact is read from its path too, unless
``ship_artifact`` (the default when joining a cluster) sends it through the job's Ray
runtime environment (``working_dir``); each worker checks that the manifest it loaded is
the driver's. ``address``: ``"local"`` starts Ray in this process (``ray_cpus`` CPUs) and
stops it afterwards; ``"auto"``, ``"host:port"`` or ``"ray://host:10001"`` join a running
cluster. A model error on a worker fails the run with the same message as the local engine
(the rows named); finished shards stay and a rerun resumes. Progress on stderr: rows, rows/s
and the workers that answered in the last 10 s; a summary line at the end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch_files import open_input
from .batch_readers import Chunk, Reader

if TYPE_CHECKING:
    from .batch import BatchAdapter

__all__ = ["ChunkRunner", "check_ray_options", "plan_chunks", "plan_runs", "run_on_ray"]

log = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("engine 'ray' needs Ray: pip install 'irkit[ray]'") from None
    return ray


def check_ray_options(adapter: BatchAdapter) -> None:
    """Refuse what the Ray engine cannot do, before anything runs."""
    options = adapter.ray
    if getattr(adapter.model, "path", None) is None or not hasattr(adapter.model, "manifest"):
        raise ValueError("engine 'ray' runs an artifact on the workers: give a model loaded "
                         "with irkit.runtime.load (it has no artifact directory)")  # fmt: skip
    if options["concurrency"] < 1:
        raise ValueError("concurrency must be >= 1")
    if options["num_cpus"] < 0 or (options["num_gpus"] or 0) < 0:
        raise ValueError("num_cpus and num_gpus must be >= 0")
    if options["threads"] < 0:
        raise ValueError("threads must be >= 0")
    if options["ray_cpus"] is not None and options["address"] != "local":
        raise ValueError("ray_cpus sizes a local Ray (address 'local'); a cluster has its own")
    _import_ray()


def plan_chunks(
    total_rows: int, shard_rows: int, chunk_rows: int, done: set[int]
) -> list[dict[str, int]]:
    """(shard, start, stop) of every chunk of the shards not in ``done``, in row order."""
    items = []
    for shard in range(-(-total_rows // shard_rows)):
        if shard in done:
            continue
        end = min((shard + 1) * shard_rows, total_rows)
        for start in range(shard * shard_rows, end, chunk_rows):
            items.append({"shard": shard, "start": start, "stop": min(start + chunk_rows, end)})
    return items


class ChunkRunner:
    """The Ray Data callable class: one per actor, the artifact loaded once."""

    def __init__(
        self, artifact: str | None, manifest_sha256: str, threads: int, files: list[str],
        fmt: str, input_name: Any, reject: bool, outputs: list[str],
    ) -> None:  # fmt: skip
        from irkit.runtime.model import load

        options = {"threads": threads} if threads else {}
        # verifies every sha256; rows with NaN/inf reach the model only when not rejected
        self.model = load(artifact or os.getcwd(), reject_nonfinite=reject, **options)
        if _digest(self.model) != manifest_sha256:
            raise RuntimeError(f"worker {os.getpid()} loaded another artifact than the driver")
        self.reader: Reader = open_input([Path(f) for f in files], fmt, self.model.inputs,
                                         input_name, reject)  # fmt: skip
        self.outputs = outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's form: a batch of ``start``/``stop`` rows -> ``start``, ``payload``."""
        payloads = [self.run_chunk(int(start), int(stop))
                    for start, stop in zip(batch["start"], batch["stop"])]
        return {"start": batch["start"], "payload": np.array(payloads, dtype=object)}

    def run_chunk(self, start: int, stop: int) -> bytes:
        """Rows [start, stop) read and run: ``encode_result``'s bytes."""
        began = time.perf_counter()
        result = self._run(start, stop)
        result["seconds"] = time.perf_counter() - began
        result["done"] = time.time()  # when the worker finished it (its clock)
        return encode_result(result)

    def _run(self, start: int, stop: int) -> dict[str, Any]:
        result: dict[str, Any] = {"start": start, "pid": os.getpid()}
        chunk = self.reader.read(start, stop)
        if chunk is None:
            result["failed"] = f"rows [{start}, {stop}) are past the end of the input"
            return result
        outputs = None
        if len(chunk.rows):
            try:
                produced = self.model.run(chunk.inputs)
                outputs = {name: produced[name] for name in self.outputs}
            except Exception as exc:
                result["failed"] = f"model {self.model.name!r} failed on rows " \
                    f"[{chunk.start}, {chunk.stop}): {exc}"
                return result
        result["chunk"] = Chunk(chunk.start, chunk.stop, chunk.rows, {}, chunk.errors)
        result["outputs"] = outputs
        return result


KEYS = ("start", "pid", "failed", "seconds", "done")  # a result's scalars (JSON member)


def encode_result(result: dict[str, Any]) -> bytes:
    """A worker's result as ``.npz`` bytes: the arrays (good row indices, outputs) as
    members, everything else as a JSON member. Nothing is pickled: the driver reads it
    back with ``allow_pickle=False`` (string outputs travel as fixed-width unicode)."""
    meta: dict[str, Any] = {k: result[k] for k in KEYS if k in result}
    arrays: dict[str, np.ndarray] = {}
    chunk: Chunk | None = result.get("chunk")
    if chunk is not None:
        meta["chunk"] = {"start": chunk.start, "stop": chunk.stop,
                         "errors": [[int(i), str(msg)] for i, msg in chunk.errors]}
        arrays["rows"] = np.asarray(chunk.rows, np.int64)
    outputs = result.get("outputs")
    if outputs is not None:
        meta["outputs"] = list(outputs)
        meta["object_outputs"] = [k for k, v in outputs.items() if v.dtype == object]
        for k, value in enumerate(outputs.values()):
            arrays[f"out{k}"] = value.astype(str) if value.dtype == object else value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def decode_result(payload: bytes) -> dict[str, Any]:
    """``encode_result``'s bytes back as the worker's result."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        result = {k: meta[k] for k in KEYS if k in meta}
        if "chunk" in meta:
            c = meta["chunk"]
            result["chunk"] = Chunk(c["start"], c["stop"], npz["rows"], {},
                                    [(int(i), msg) for i, msg in c["errors"]])
        if "outputs" in meta:
            result["outputs"] = {
                name: npz[f"out{k}"].astype(object) if name in meta["object_outputs"]
                else npz[f"out{k}"] for k, name in enumerate(meta["outputs"])}
        elif "chunk" in meta:
            result["outputs"] = None
    return result


def _digest(model: Any) -> str:
    from irkit.runtime.artifact import manifest_digest

    return manifest_digest(model.manifest.to_dict())


class _RayRun:
    """Ray started (address 'local') or joined for one run; shut down if we started it."""

    def __init__(self, adapter: BatchAdapter) -> None:
        self.ray = _import_ray()
        self.started = False
        options = adapter.ray
        self.ship = options["ship_artifact"]
        if self.ship is None:
            self.ship = options["address"] != "local" and not self.ray.is_initialized()
        if self.ray.is_initialized():
            if self.ship:
                raise ValueError("ship_artifact: Ray is already initialized in this process, "
                                 "so the artifact cannot join its runtime environment; give "
                                 "the workers a shared path instead (ship_artifact = false)")
            return
        quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                 "include_dashboard": False}  # fmt: skip
        if self.ship:  # a job-level working_dir: every worker starts inside the artifact
            artifact = Path(getattr(adapter.model, "path", "."))  # checked in check_ray_options
            quiet["runtime_env"] = {"working_dir": str(artifact.resolve())}
        _check_reachable(options["address"])
        try:
            if options["address"] == "local":
                self.ray.init(num_cpus=options["ray_cpus"], **quiet)
            else:
                self.ray.init(address=options["address"], **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ValueError(f"cannot start or join Ray at {options['address']!r}: {exc}") \
                from None
        self.started = True

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """A clear error at once for a ``host:port`` nobody listens on (Ray would retry long)."""
    import socket

    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r}: expected 'local', 'auto', 'host:port' or "
                         "'ray://host:10001'")  # fmt: skip
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ValueError(f"cannot reach Ray at {address!r}: {exc}") from None


def run_on_ray(
    adapter: BatchAdapter,
    reader: Reader,
    identity: dict[str, Any],
    shards: dict[int, dict[str, Any]],
    progress: Any,
) -> bool:
    """Run every unfinished shard's chunks on Ray; True when complete, False when stopped."""
    from .batch import ShardBuilder

    total = reader.total_rows
    if total is None:
        raise ValueError(f"engine 'ray' needs an input whose row count is known up front "
                         f"(parquet, npy, npz), not {adapter.input_format}")  # fmt: skip
    items = plan_chunks(total, adapter.shard_rows, adapter.chunk_rows, set(shards))
    if not items:
        return True
    started, epoch = time.perf_counter(), time.time()
    session = _RayRun(adapter)
    rows_done = 0
    seen: dict[int, float] = {}  # worker pid -> last answer
    finished: list[tuple[float, int, int]] = []  # (when a worker finished a chunk, pid, rows)
    busy = 0.0  # seconds the workers spent reading and running chunks
    pool: _ActorPool | None = None
    try:
        runs = 4 * adapter.ray["concurrency"]  # enough to even out a late or slow actor
        span = run_span(reader, adapter.chunk_rows, runs)
        pool = _ActorPool(adapter, session.ray, items, session.ship, span)
        builder: ShardBuilder | None = None
        for index, item in enumerate(items):
            if adapter._stopping:
                break
            result = pool.result(index)
            if result["start"] != item["start"]:
                raise RuntimeError(f"Ray returned rows {result['start']} for {item['start']}")
            if "failed" in result:
                raise RuntimeError(result["failed"])
            if builder is None:
                builder = ShardBuilder(adapter, item["shard"], item["start"])
            chunk: Chunk = result["chunk"]
            builder.add(chunk, result["outputs"])
            rows_done += chunk.stop - chunk.start
            busy += result.get("seconds", 0.0)
            now = time.monotonic()
            seen[result["pid"]] = now
            finished.append((result.get("done", 0.0) - epoch, result["pid"],
                             chunk.stop - chunk.start))  # fmt: skip
            alive = sum(1 for t in seen.values() if now - t < 10)
            progress.set_postfix_str(f"workers={alive}", refresh=False)
            progress.update(chunk.stop - chunk.start)
            if chunk.stop == min((item["shard"] + 1) * adapter.shard_rows, total):
                shards[item["shard"]] = builder.finish()
                builder = None
                adapter._write_manifest(identity, shards, complete=False)
        if builder is not None:
            builder.discard()
        stopped = adapter._stopping
    finally:
        if pool is not None:
            pool.close()
        session.close()
    seconds = time.perf_counter() - started
    adapter.ray_run = {"seconds": seconds, "rows": rows_done, "busy_seconds": busy,
                       **_steady(finished)}  # fmt: skip
    if adapter.progress:
        answered = ", ".join(f"{s:.1f}" for s in adapter.ray_run["first_answers"])
        print(f"ray: {rows_done} rows in {seconds:.1f} s ({rows_done / max(seconds, 1e-9):,.0f} "
              f"rows/s) on {len(seen)} worker(s){', stopped' if stopped else ''}; workers "
              f"finished a first chunk after {answered} s, were busy {busy:.1f} s",
              file=sys.stderr)  # fmt: skip
    return not stopped


def _steady(finished: list[tuple[float, int, int]]) -> dict[str, Any]:
    """When each worker finished its first chunk (seconds from the start), and the rows/s
    from the moment every worker had finished one to the last chunk (the steady state)."""
    first: dict[int, float] = {}
    for done, pid, _ in sorted(finished):
        first.setdefault(pid, done)
    if not first:
        return {"first_answers": [], "steady_seconds": 0.0, "steady_rows_per_s": 0.0}
    up = max(first.values())
    end = max(done for done, _, _ in finished)
    rows = sum(n for done, _, n in finished if done > up)
    return {"first_answers": sorted(first.values()), "steady_seconds": up,
            "steady_rows_per_s": rows / (end - up) if end > up else 0.0}  # fmt: skip


class _ActorPool:
    """``concurrency`` ChunkRunner actors and the chunks sent to them.

    Chunks go out in runs, each run to one actor: the chunks that start in one span of
    ``span`` rows (``run_span``: whole parquet row groups), so that a row group is decoded
    by one actor, not by every actor. Each actor has up to ``AHEAD`` runs queued and gets
    the next run as soon as one of its runs finishes (a slow or late actor does less).
    Results are taken in row order; finished runs waiting for an earlier one are bounded.
    """

    AHEAD = 2

    def __init__(self, adapter: BatchAdapter, ray: Any, items: list[dict[str, int]],
                 ship: bool, span: int) -> None:  # fmt: skip
        options = adapter.ray
        model: Any = adapter.model
        num_gpus = options["num_gpus"]
        if num_gpus is None:
            num_gpus = 1 if getattr(model.manifest, "backend", "") == "cuda" else 0
        self.ray = ray
        self.items = items
        runner = ray.remote(ChunkRunner).options(
            num_cpus=options["num_cpus"], num_gpus=num_gpus, max_restarts=0,
            max_task_retries=0)  # fmt: skip
        kwargs = {
            "artifact": None if ship else str(Path(model.path).resolve()),
            "manifest_sha256": _digest(model),
            "threads": options["threads"],
            "files": [str(p.resolve()) for p in adapter.input_files],
            "fmt": adapter.input_format,
            "input_name": adapter.input_name,
            "reject": adapter.reject_nonfinite,
            "outputs": [spec.name for spec in adapter.output_specs],
        }
        # started first: they load while the runs are planned and the first ones queue
        self.actors = [runner.remote(**kwargs) for _ in range(options["concurrency"])]
        self.runs = plan_runs(items, span, len(self.actors))
        self.last = {run[-1]: k for k, run in enumerate(self.runs)}  # last item -> run
        self.next_run = self.consumed = 0
        self.refs: dict[int, Any] = {}  # item index -> its result's ObjectRef
        self.queued = [0] * len(self.actors)  # runs sent to each actor and not finished
        self.tails: dict[Any, int] = {}  # the ref of a queued run's last chunk -> actor
        self._fill()

    def _fill(self) -> None:
        """Send runs to every actor with fewer than AHEAD queued, the emptiest first; never
        more than 2*AHEAD runs per actor past the first unconsumed one."""
        limit = self.consumed + 2 * self.AHEAD * len(self.actors)
        while self.next_run < min(len(self.runs), limit):
            actor = min(range(len(self.actors)), key=self.queued.__getitem__)
            if self.queued[actor] >= self.AHEAD:
                return
            for index in self.runs[self.next_run]:
                item = self.items[index]
                self.refs[index] = self.actors[actor].run_chunk.remote(item["start"],
                                                                       item["stop"])  # fmt: skip
            self.tails[self.refs[self.runs[self.next_run][-1]]] = actor
            self.queued[actor] += 1
            self.next_run += 1

    def result(self, index: int) -> dict[str, Any]:
        """Item ``index``'s result (waits for it); called in row order. While waiting, an
        actor that finishes its runs gets the next ones at once."""
        ref = self.refs.pop(index)
        while True:
            if self.tails:
                finished, _ = self.ray.wait(list(self.tails), num_returns=len(self.tails),
                                            timeout=0)  # fmt: skip
                for tail in finished:
                    self.queued[self.tails.pop(tail)] -= 1
                self._fill()
            if self.ray.wait([ref], timeout=0)[0]:
                break
            self.ray.wait([ref, *(t for t in self.tails if t is not ref)], num_returns=1)
        try:
            payload = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            raise RuntimeError(f"a Ray worker failed: {exc}") from None
        if index in self.last:
            self.consumed += 1
            self._fill()
        return decode_result(payload)

    def close(self) -> None:
        """Stop the actors (their queued chunks are dropped): a running cluster keeps no
        idle actor holding its CPUs."""
        for actor in self.actors:
            self.ray.kill(actor)


def plan_runs(items: list[dict[str, int]], span: int, at_least: int) -> list[list[int]]:
    """Item indices grouped by the ``span`` of rows their chunk starts in, in order; a
    smaller span while that gives fewer than ``at_least`` runs (so every actor has work)."""
    while True:
        runs: list[list[int]] = []
        for index, item in enumerate(items):
            if runs and items[runs[-1][-1]]["start"] // span == item["start"] // span:
                runs[-1].append(index)
            else:
                runs.append([index])
        if len(runs) >= at_least or span <= 1:
            return runs
        span //= 2


def run_span(reader: Reader, chunk_rows: int, runs: int) -> int:
    """Rows one actor takes at a time: ``1/runs`` of the input, at most 32 chunks (which
    bounds the results waiting to be written in order), in whole parquet row groups.

    A chunk that straddles two row groups makes its actor decode both, so every span
    boundary costs one extra row-group decode: few, long spans keep that small.
    """
    starts = getattr(reader, "group_starts", None)
    group = int(np.max(np.diff(starts))) if starts is not None and len(starts) > 1 else 0
    group = max(group, chunk_rows)
    total = reader.total_rows or 0
    wanted = min(-(-total // max(runs, 1)), 32 * chunk_rows)
    return group * max(1, -(-wanted // group)) if wanted > group else group
