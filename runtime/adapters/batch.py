"""Batch adapter: run a model over a file, streamed in chunks, into sharded, resumable output.

    BatchAdapter(model, input="digits.parquet", output="out/preds.parquet").serve()

``output`` is a directory; its extension names the output format unless ``output_format``
says otherwise (likewise ``input``/``input_format``; formats: npy npz csv parquet jsonl,
see ``batch_readers``/``batch_writers`` for how rows and columns map to tensors)::

    out/preds.parquet/
      part-00000.parquet            outputs of input rows [0, shard_rows)
      part-00000.errors.jsonl       {"row": 17, "reason": "..."} per bad row of that shard
      ...                           (only for shards that have bad rows)
      errors.jsonl                  every bad row, in row order (written at the end)
      manifest.json                 see below

Streaming: the input is read ``chunk_rows`` rows at a time and each chunk is one model
call, so memory is bounded by a chunk (npy/npz output also keep one shard's outputs,
since their header needs the row count). Chunks start at ``shard_start + k*chunk_rows``,
so a shard's batches, and hence its bytes, do not depend on where a run started.

Resuming: ``manifest.json`` is rewritten (atomically) after every finished shard with
the shard's file name, its input row range, rows written, bad rows and the sha256 of
the shard and its errors file. A shard is written to a temporary name and renamed when
complete, so a killed run leaves only finished shards behind. Running again with the
same input and options skips every shard whose checksums still match and redoes the
rest; a manifest written for a different input or different options is refused (pass
``overwrite=True`` to start over). The final output is byte-identical to an
uninterrupted run.

Bad rows (unparsable, wrong width, null, NaN/inf when ``reject_nonfinite``) never reach
the model and are never dropped silently: each is in the errors files with its row
number and reason, and counted in the manifest. SIGINT/SIGTERM finish the current chunk,
discard the unfinished shard and return; run again to resume. A progress bar with rows/s
goes to stderr (``progress=False`` turns it off).

Input may also be a directory or a glob of parquet/npy/npz files, read as one input in
name order (``batch_files``). ``engine = "ray"`` runs the chunks on a Ray cluster
(``batch_ray``: one model per actor) while this process writes the same shards, errors
files and manifest: the output is byte-identical to ``engine = "local"``, and either
engine resumes the other's output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from irkit.runtime.options import Option

from .batch_files import input_files, open_input
from .batch_readers import FORMATS, Chunk, Reader, infer_format
from .batch_writers import WRITERS, ShardWriter
from .common import (
    AdapterMetrics,
    ServableModel,
    resolve_options,
    set_reject_nonfinite,
    stop_on_signals,
)

__all__ = ["BatchAdapter", "BatchSummary"]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
MANIFEST_FORMAT = "irkit-batch/1"


@dataclass
class BatchSummary:
    """What one ``serve()`` call did."""

    output: str
    complete: bool
    rows: int  # input rows covered by finished shards (good + bad)
    written: int  # rows with outputs
    errors: int  # bad rows
    shards: int  # finished shards
    skipped_shards: int  # shards already done by an earlier run (checksums verified)
    seconds: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class BatchAdapter:
    """Run a model over a file into sharded output with a manifest (see module docstring)."""

    options: dict[str, Option] = {
        "input": Option(Path, None, "input file, or a directory or glob of parquet/npy/npz "
                        "files (in a spec: relative to the spec file)", required=True),
        "output": Option(Path, None, "output directory; its extension names the format "
                         "(in a spec: relative to the spec file)",
                         required=True),
        "input_format": Option(str, None, "input format (default: from the extension)",
                               choices=(*FORMATS, None)),
        "output_format": Option(str, None, "output format (default: from the extension)",
                                choices=(*FORMATS, None)),
        "chunk_rows": Option(int, 8192, "rows read and run per model call"),
        "shard_rows": Option(int, 262144, "input rows per output shard"),
        "input_name": Option((str, dict), None,
                             "input name for all columns / npy, or {input: column(s)}"),
        "outputs": Option(list, None, "model outputs to write (default: all)"),
        "reject_nonfinite": Option(bool, True, "send rows with NaN/inf to the errors file "
                                   "(false: run them through the model)"),
        "progress": Option(bool, True, "progress bar with rows/s on stderr"),
        "overwrite": Option(bool, False, "discard existing output instead of resuming"),
        "engine": Option(str, "local", "where the model runs: this process, or Ray actors",
                         choices=("local", "ray")),
        "address": Option(str, "local", "ray: 'local' starts Ray in this process; 'auto', "
                          "'host:port' or 'ray://host:10001' joins a cluster"),
        "concurrency": Option(int, 2, "ray: actors, each with its own loaded model"),
        "num_cpus": Option(float, 0.5, "ray: CPUs each actor asks for"),
        "num_gpus": Option(float, None, "ray: GPUs each actor asks for (default: 1 for a "
                           "cuda artifact, else 0)"),
        "threads": Option(int, 1, "ray: model threads per actor"),
        "ray_cpus": Option(int, None, "ray, address 'local': CPUs of the local Ray "
                           "(default: all)"),
        "ship_artifact": Option(bool, None, "ray: send the artifact through Ray's runtime "
                                "environment instead of a shared path (default: when "
                                "joining a cluster)"),
    }  # fmt: skip

    def __init__(self, model: ServableModel, **options: Any) -> None:
        config = resolve_options(self.options, options)
        self.model = model
        self.input = Path(config["input"])
        self.output = Path(config["output"])
        self.input_files, self.input_format = input_files(config["input"],
                                                          config["input_format"])
        missing = [f for f in self.input_files if not f.exists()]
        if missing:
            raise ValueError(f"input file not found: {missing[0]}")
        # An output directory without an extension writes shards in the input's format.
        output_format = config["output_format"]
        if output_format is None and not self.output.suffix:
            output_format = self.input_format
        self.output_format = infer_format(self.output, output_format)
        self.chunk_rows: int = config["chunk_rows"]
        self.shard_rows: int = config["shard_rows"]
        if self.chunk_rows < 1 or self.shard_rows < 1:
            raise ValueError("chunk_rows and shard_rows must be >= 1")
        self.input_name = config["input_name"]
        self.reject_nonfinite: bool = config["reject_nonfinite"]
        if not self.reject_nonfinite:  # the model would refuse the whole chunk otherwise
            set_reject_nonfinite(model, False)
        self.progress: bool = config["progress"]
        self.overwrite: bool = config["overwrite"]
        wanted = config["outputs"]
        known = {spec.name: spec for spec in model.outputs}
        if wanted is not None and not set(wanted) <= set(known):
            raise ValueError(f"outputs {sorted(set(wanted) - set(known))} not in {sorted(known)}")
        self.output_specs = [known[n] for n in wanted] if wanted else list(model.outputs)
        self.metrics = AdapterMetrics("batch", model.name)
        self._stopping = False
        self.engine: str = config["engine"]
        # engine 'ray': what the last serve() saw (seconds, rows, when each worker first
        # answered, their busy seconds, rows/s once every worker had answered)
        self.ray_run: dict[str, Any] = {}
        self.ray = {k: config[k] for k in ("address", "concurrency", "num_cpus", "num_gpus",
                                           "threads", "ray_cpus", "ship_artifact")}
        if self.engine == "ray":
            from .batch_ray import check_ray_options

            check_ray_options(self)

    def stop(self) -> None:
        """Finish the current chunk, discard the unfinished shard and return from serve()."""
        self._stopping = True

    # ---------------------------------------------------------------------- manifest

    def _identity(self) -> dict[str, Any]:
        stats = [path.stat() for path in self.input_files]
        several = {"input_files": [p.name for p in self.input_files]} if len(stats) > 1 else {}
        return {
            "model": self.model.name,
            "input": str(self.input.resolve()) if not several else str(self.input.absolute()),
            **several,
            "input_bytes": sum(st.st_size for st in stats),
            "input_mtime_ns": max(st.st_mtime_ns for st in stats),
            "input_format": self.input_format,
            "output_format": self.output_format,
            "input_name": self.input_name,
            "outputs": [spec.name for spec in self.output_specs],
            "chunk_rows": self.chunk_rows,
            "shard_rows": self.shard_rows,
            "reject_nonfinite": self.reject_nonfinite,
        }

    def _finished_shards(self, identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Shards of an earlier run that still verify; refuses a foreign manifest."""
        path = self.output / MANIFEST
        if self.overwrite or not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid manifest ({exc}); use overwrite") from None
        old = manifest.get("identity")
        if manifest.get("format") != MANIFEST_FORMAT or old != identity:
            changed = sorted(k for k in identity if not old or old.get(k) != identity[k])
            raise ValueError(
                f"{self.output} holds output of a different run (differs in {changed}); "
                "choose another output or pass overwrite=True"
            )
        finished = {}
        for shard in manifest.get("shards", []):
            if self._verify(shard):
                finished[shard["index"]] = shard
            else:
                log.warning("shard %s fails its checksum; it will be redone", shard["file"])
        return finished

    def _verify(self, shard: Mapping[str, Any]) -> bool:
        files = [(shard["file"], shard["sha256"])]
        if shard.get("errors_file"):
            files.append((shard["errors_file"], shard["errors_sha256"]))
        for name, digest in files:
            path = self.output / name
            if not path.is_file() or _sha256(path) != digest:
                return False
        return True

    def _write_manifest(
        self, identity: dict[str, Any], shards: dict[int, dict[str, Any]], complete: bool
    ) -> None:
        ordered = [shards[i] for i in sorted(shards)]
        doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "identity": identity,
            "complete": complete,
            "rows": sum(s["rows"][1] - s["rows"][0] for s in ordered),
            "written": sum(s["written"] for s in ordered),
            "errors": sum(s["errors"] for s in ordered),
            "shards": ordered,
        }
        if complete:
            doc["errors_file"] = ERRORS
            doc["errors_sha256"] = _sha256(self.output / ERRORS)
        _write_atomic(self.output / MANIFEST, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def _write_all_errors(self, shards: dict[int, dict[str, Any]]) -> None:
        tmp = self.output / f".{ERRORS}.tmp"
        with open(tmp, "wb") as combined:
            for index in sorted(shards):
                name = shards[index].get("errors_file")
                if name:
                    combined.write((self.output / name).read_bytes())
        os.replace(tmp, self.output / ERRORS)

    # ------------------------------------------------------------------------- run

    def serve(self) -> BatchSummary:
        """Process every unfinished shard; returns early (resumable) on SIGINT/SIGTERM."""
        started = time.perf_counter()
        self._stopping = False
        self.output.mkdir(parents=True, exist_ok=True)
        for stale in self.output.glob(".*.tmp"):
            stale.unlink()
        identity = self._identity()
        shards = self._finished_shards(identity)
        skipped = len(shards)
        if not shards:  # a fresh run: no stale files of an old one may survive
            for old in [*self.output.glob("part-*"), self.output / ERRORS]:
                old.unlink(missing_ok=True)
        reader = open_input(
            self.input_files, self.input_format, self.model.inputs, self.input_name,
            self.reject_nonfinite,
        )  # fmt: skip
        progress = self._progress_bar(reader, shards)
        complete = False
        try:
            with stop_on_signals(lambda signum: self.stop()):
                if self.engine == "ray":
                    from .batch_ray import run_on_ray

                    complete = run_on_ray(self, reader, identity, shards, progress)
                else:
                    complete = self._run_shards(reader, identity, shards, progress)
        finally:
            progress.close()
            reader.close()
        if complete:
            self._write_all_errors(shards)
            self._write_manifest(identity, shards, complete=True)
        ordered = shards.values()
        return BatchSummary(
            output=str(self.output),
            complete=complete,
            rows=sum(s["rows"][1] - s["rows"][0] for s in ordered),
            written=sum(s["written"] for s in ordered),
            errors=sum(s["errors"] for s in ordered),
            shards=len(shards),
            skipped_shards=skipped,
            seconds=time.perf_counter() - started,
        )

    def _progress_bar(self, reader: Reader, shards: Mapping[int, Any]) -> Any:
        from tqdm import tqdm

        done = sum(s["rows"][1] - s["rows"][0] for s in shards.values())
        return tqdm(
            total=reader.total_rows, initial=done, unit="rows", unit_scale=True,
            file=sys.stderr, disable=not self.progress, desc=self.model.name, smoothing=0.1,
        )  # fmt: skip

    def _run_shards(
        self,
        reader: Reader,
        identity: dict[str, Any],
        shards: dict[int, dict[str, Any]],
        progress: Any,
    ) -> bool:
        """True when the input is exhausted; False when stopped."""
        index = 0
        while True:
            start = index * self.shard_rows
            if reader.total_rows is not None and start >= reader.total_rows:
                return True
            shard = shards.get(index)
            if shard is None:
                if self._stopping:
                    return False
                shard = self._run_shard(reader, index, start, progress)
                if shard is None:
                    return not self._stopping  # None: end of input, or stopped
                shards[index] = shard
                self._write_manifest(identity, shards, complete=False)
            if shard["rows"][1] - start < self.shard_rows:
                return True  # a short shard is the last one
            index += 1

    def _run_shard(
        self, reader: Reader, index: int, start: int, progress: Any
    ) -> dict[str, Any] | None:
        shard = ShardBuilder(self, index, start)
        end = start + self.shard_rows
        try:
            while shard.position < end and not self._stopping:
                position = shard.position
                chunk = reader.read(position, min(position + self.chunk_rows, end))
                if chunk is None:
                    break
                outputs = self._infer(chunk.inputs, chunk.start, chunk.stop) \
                    if len(chunk.rows) else None
                shard.add(chunk, outputs)
                progress.update(chunk.stop - chunk.start)
                if chunk.stop - chunk.start < min(self.chunk_rows, end - position):
                    break
            if self._stopping or shard.position == start:
                shard.discard()
                return None
            return shard.finish()
        except BaseException:
            shard.discard()
            raise

    def _infer(self, inputs: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            outputs = self.model.run(inputs)
        except Exception as exc:
            raise RuntimeError(
                f"model {self.model.name!r} failed on rows [{start}, {stop}): {exc}"
            ) from exc
        self.metrics.observe_batch(len(next(iter(inputs.values()))), time.perf_counter() - began)
        return {spec.name: outputs[spec.name] for spec in self.output_specs}


class ShardBuilder:
    """One output shard being written: chunks in row order, then ``finish`` or ``discard``.

    Written to a temporary name; ``finish`` renames it and returns its manifest record
    (file, row range, counts, sha256 of the shard and of its errors file).
    """

    def __init__(self, adapter: BatchAdapter, index: int, start: int) -> None:
        self.adapter = adapter
        self.index = index
        self.start = self.position = start
        self.name = f"part-{index:05d}.{adapter.output_format}"
        self.tmp = adapter.output / f".{self.name}.tmp"
        self.writer: ShardWriter = WRITERS[adapter.output_format](self.tmp, adapter.output_specs)
        self.errors: list[tuple[int, str]] = []
        self.written = 0

    def add(self, chunk: Chunk, outputs: Mapping[str, Any] | None) -> None:
        """The chunk's good rows with their ``outputs`` (None: no good rows), its bad rows."""
        if len(chunk.rows):
            assert outputs is not None
            self.writer.write(chunk.rows, outputs)
            self.written += len(chunk.rows)
        self.errors.extend(chunk.errors)
        self.position = chunk.stop

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def finish(self) -> dict[str, Any]:
        output = self.adapter.output
        self.writer.close()
        os.replace(self.tmp, output / self.name)
        shard: dict[str, Any] = {
            "index": self.index,
            "file": self.name,
            "rows": [self.start, self.position],
            "written": self.written,
            "errors": len(self.errors),
            "sha256": _sha256(output / self.name),
            "errors_file": None,
        }
        if self.errors:
            errors_name = f"part-{self.index:05d}.errors.jsonl"
            lines = "".join(
                json.dumps({"row": row, "reason": reason}) + "\n" for row, reason in self.errors
            )
            _write_atomic(output / errors_name, lines)
            shard["errors_file"] = errors_name
            shard["errors_sha256"] = _sha256(output / errors_name)
        self.adapter.metrics.count("ok", self.written)
        self.adapter.metrics.count("bad_input", len(self.errors))
        return shard


def summary_dict(summary: BatchSummary) -> dict[str, Any]:
    """The summary as a JSON-ready dict (for the CLI)."""
    return asdict(summary)
