"""The batch adapter's Ray engine on a real local Ray cluster (``ray start --head`` on
127.0.0.1, started once for the module and stopped by its pid at the end).

A driver SIGKILLed midway and started again finishes with the local engine's bytes and
every row once. (One test: a Ray driver costs seconds to connect on 2 cores.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import irkit.runtime
from irkit.runtime.adapters.batch import BatchAdapter

ray = pytest.importorskip("ray")


FILES, ROWS_PER_FILE = 4, 1500
NAN_ROW, NULL_ROW, SHORT_ROW = 11, 1500 + 7, 3 * 1500 + 2  # global row numbers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; yields its address.

    Token authentication (on by default since Ray 2.5x) is off for this loopback cluster:
    its token would live in the user's home, shared with any other Ray there.
    """
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for ray start, this process and its drivers
    port = free_port()
    temp = tempfile.mkdtemp(prefix="irk-ray-", dir="/tmp")  # socket paths must stay short
    ray_cli = Path(sys.executable).with_name("ray")  # the CLI beside this interpreter, or
    # the same command as a module where ray comes from outside this environment
    command = [str(ray_cli)] if ray_cli.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    process = subprocess.Popen(
        [*command, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        if list(Path(temp).glob("session_*/sockets/raylet*")):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("ray start did not come up within 90 s")
    try:
        yield address
    finally:
        process.terminate()  # ray start --block stops its node processes on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        with contextlib.suppress(ProcessLookupError):  # stragglers of its own session
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        shutil.rmtree(temp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of 4 parquet files (list column ``x``) with a NaN, a null and a short row."""
    directory = tmp_path_factory.mktemp("parquet")
    x = np.random.default_rng(3).standard_normal((FILES * ROWS_PER_FILE, 64)).astype(np.float32)
    x[NAN_ROW, 5] = np.nan
    for index in range(FILES):
        rows = x[index * ROWS_PER_FILE : (index + 1) * ROWS_PER_FILE].tolist()
        offset = index * ROWS_PER_FILE
        for row in (NULL_ROW, SHORT_ROW):
            if offset <= row < offset + ROWS_PER_FILE:
                rows[row - offset] = None if row == NULL_ROW else rows[row - offset][:63]
        table = pa.table({"x": pa.array(rows, pa.list_(pa.float32()))})
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=400)
    return directory


def written_rows(out: Path) -> np.ndarray:
    return np.concatenate([pq.read_table(p).column("row").to_numpy()
                           for p in sorted(out.glob("part-*.parquet"))])


def assert_same_bytes(reference: Path, other: Path) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in other.iterdir())
    for name in names:
        assert (reference / name).read_bytes() == (other / name).read_bytes(), name


DRIVER = textwrap.dedent(
    """
    import json, sys
    import irkit.runtime
    from irkit.runtime.adapters.batch import BatchAdapter

    artifact, source, output, address, ship = sys.argv[1:6]
    model = irkit.runtime.load(artifact, threads=1)
    summary = BatchAdapter(model, input=source, output=output, engine="ray", address=address,
                           concurrency=2, ship_artifact=ship == "ship", chunk_rows=50,
                           shard_rows=500, progress=False).serve()
    print(json.dumps({"complete": summary.complete, "skipped": summary.skipped_shards}))
    """
)


@pytest.mark.slow
@pytest.mark.service
def test_ray_equals_local_and_resumes_after_sigkill(
    cluster: str, digits_dir: Path, source: Path, tmp_path: Path
) -> None:
    """One driver SIGKILLed midway (the artifact shipped as the job's working_dir), one
    resuming it (the artifact read from its shared path): the output equals the local
    engine's byte for byte, every good row once, the bad ones in errors.jsonl."""
    model = irkit.runtime.load(digits_dir, threads=1)
    reference = tmp_path / "local.parquet"
    summary = BatchAdapter(model, input=str(source), output=str(reference), chunk_rows=50,
                           shard_rows=500, progress=False).serve()  # fmt: skip
    assert summary.complete and summary.errors == 3

    out = tmp_path / "ray.parquet"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    command = [sys.executable, str(script), str(digits_dir), str(source), str(out), cluster]
    process = subprocess.Popen([*command, "ship"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    shards = []
    while time.monotonic() < deadline and not shards:
        assert process.poll() is None, process.communicate()
        try:
            shards = json.loads((out / "manifest.json").read_text())["shards"]
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    manifest = json.loads((out / "manifest.json").read_text())
    total_shards = FILES * ROWS_PER_FILE // 500
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < total_shards

    process = subprocess.run([*command, "shared"], capture_output=True, text=True, timeout=180)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["complete"] and result["skipped"] == len(manifest["shards"])
    assert_same_bytes(reference, out)

    final = json.loads((out / "manifest.json").read_text())
    total = FILES * ROWS_PER_FILE
    assert (final["rows"], final["written"], final["errors"]) == (total, total - 3, 3)
    expected = np.setdiff1d(np.arange(total), [NAN_ROW, NULL_ROW, SHORT_ROW])
    assert written_rows(out).tolist() == expected.tolist()  # every good row exactly once
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [NAN_ROW, NULL_ROW, SHORT_ROW]
    assert errors[1]["reason"] == "part-1.parquet row 7: null in column 'x'"
    first = pq.read_table(source / "part-0.parquet").column("x").to_pylist()[:5]
    direct = model.run({"x": np.asarray(first, np.float32)})["logits"]  # in this process
    got = np.stack([pq.read_table(out / "part-00000.parquet").column(f"logits_{i}")
                    .to_numpy()[:5] for i in range(10)], axis=1)
    np.testing.assert_array_equal(got, direct)  # exact: the same model on the same rows


def test_a_directory_reads_as_one_input(source: Path, digits_dir: Path, tmp_path: Path) -> None:
    """Chunks that span files give the rows and values of the files concatenated."""
    model = irkit.runtime.load(digits_dir, threads=1)
    whole = pa.concat_tables([pq.read_table(p) for p in sorted(source.glob("*.parquet"))])
    pq.write_table(whole, tmp_path / "all.parquet")
    outs = []
    for name, given in (("dir", source), ("one", tmp_path / "all.parquet")):
        out = tmp_path / f"{name}.parquet"
        BatchAdapter(model, input=str(given), output=str(out), chunk_rows=700,
                     shard_rows=2100, progress=False).serve()  # fmt: skip
        outs.append(out)
    for name in sorted(p.name for p in outs[1].glob("part-*.parquet")):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    rows = [json.loads(line)["row"] for line in (outs[0] / "errors.jsonl").read_text().splitlines()]
    assert rows == [NAN_ROW, NULL_ROW, SHORT_ROW]


def test_ray_engine_refuses_what_it_cannot_run(
    digits_dir: Path, source: Path, tmp_path: Path
) -> None:
    model = irkit.runtime.load(digits_dir)

    class Duck:  # a model without an artifact directory
        name, inputs, outputs = model.name, model.inputs, model.outputs

    out = str(tmp_path / "out.parquet")
    with pytest.raises(ValueError, match="artifact"):
        BatchAdapter(Duck(), input=str(source), output=out, engine="ray")  # type: ignore[arg-type]
    csv = tmp_path / "in.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="row count is known"):
        BatchAdapter(model, input=str(csv), output=out, engine="ray", progress=False).serve()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.csv").write_text("1\n")
    (tmp_path / "mixed" / "b.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="mixes formats"):
        BatchAdapter(model, input=str(tmp_path / "mixed"), output=out)
    with pytest.raises(ValueError, match="cannot reach Ray"):  # at once, not Ray's retries
        BatchAdapter(model, input=str(source), output=out, engine="ray",
                     address=f"127.0.0.1:{free_port()}", progress=False).serve()  # fmt: skip
    with pytest.raises(ValueError, match="ray_cpus"):
        BatchAdapter(model, input=str(source), output=out, engine="ray", address="auto",
                     ray_cpus=2)  # fmt: skip


def test_worker_results_travel_without_pickle() -> None:
    """A worker's result crosses to the driver as .npz bytes read with
    allow_pickle=False: rows, errors and outputs (numeric and string) come back equal."""
    from irkit.runtime.adapters.batch_ray import decode_result, encode_result
    from irkit.runtime.adapters.batch_readers import Chunk

    outputs = {"y": np.arange(6, dtype=np.float32).reshape(3, 2),
               "label": np.array(["a", "bc", "d"], dtype=object)}
    sent = {"start": 5, "pid": 12, "outputs": outputs,
            "chunk": Chunk(5, 9, np.array([5, 7, 8]), {}, [(6, "NaN in input 'x'")])}
    payload = encode_result(sent)
    assert b"pickle" not in payload and payload[:2] == b"PK"  # a zip of .npy members
    got = decode_result(payload)
    assert (got["start"], got["pid"]) == (5, 12)
    assert got["chunk"].errors == [(6, "NaN in input 'x'")]
    np.testing.assert_array_equal(got["chunk"].rows, [5, 7, 8])
    np.testing.assert_array_equal(got["outputs"]["y"], outputs["y"])
    assert got["outputs"]["label"].dtype == object
    assert list(got["outputs"]["label"]) == ["a", "bc", "d"]
    assert decode_result(encode_result({"start": 1, "pid": 2, "failed": "boom"})) == {
        "start": 1, "pid": 2, "failed": "boom"}


def test_runs_keep_each_row_group_on_one_actor(tmp_path: Path) -> None:
    """The engine hands each actor runs of whole row groups: every chunk once and in order,
    at least one run per actor, and (each run read by its own reader, as by its own actor)
    a row group is decoded a second time only where a chunk straddles a run boundary."""
    from irkit.runtime import TensorSpec
    from irkit.runtime.adapters.batch_ray import plan_chunks, plan_runs, run_span
    from irkit.runtime.adapters.batch_readers import ParquetReader

    rows, group, chunk, shard = 10_000, 1000, 128, 1250
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({f"c{i}": x[:, i] for i in range(4)}), path, row_group_size=group)
    specs = [TensorSpec("x", np.dtype(np.float32), ("N", 4))]
    reader = ParquetReader(path, specs, None, True)
    items = plan_chunks(rows, shard, chunk, set())
    span = run_span(reader, chunk, runs=8)
    assert span % group == 0 and span == 2 * group  # 10,000/8 rows, in whole row groups
    runs = plan_runs(items, span, at_least=2)
    assert [i for run in runs for i in run] == list(range(len(items)))
    assert all(len({items[i]["start"] // span for i in run}) == 1 for run in runs)
    decodes: list[int] = []  # row groups decoded, over all runs
    for run in runs:
        own = ParquetReader(path, specs, None, True)  # each run on its own actor
        real = own.file.read_row_group
        own.file.read_row_group = lambda i, real=real, **kw: decodes.append(i) or real(i, **kw)
        for i in run:
            got = own.read(items[i]["start"], items[i]["stop"])
            assert got is not None
            np.testing.assert_array_equal(got.inputs["x"], x[items[i]["start"] : items[i]["stop"]])
    assert len(decodes) <= rows // group + len(runs) - 1  # one more per run boundary
    assert len(plan_runs(items[:3], span, at_least=2)) >= 2  # a small input still splits


def test_chunk_runner_ray_data_form(source: Path, digits_dir: Path) -> None:
    """``ChunkRunner`` as a Ray Data callable class (``map_batches`` on a batch of
    ``start``/``stop`` rows), called in this process: each payload is that chunk's rows,
    bad rows and outputs, equal to running the model on the same rows here."""
    from irkit.runtime.adapters.batch_ray import ChunkRunner, _digest, decode_result

    model = irkit.runtime.load(digits_dir, threads=1)
    files = sorted(str(p) for p in source.glob("*.parquet"))
    runner = ChunkRunner(str(digits_dir), _digest(model), 1, files, "parquet", None, True,
                         [spec.name for spec in model.outputs])
    batch = {"start": np.array([0, 1500]), "stop": np.array([50, 1510])}
    out = runner(batch)
    np.testing.assert_array_equal(out["start"], batch["start"])
    first, second = (decode_result(p) for p in out["payload"])
    assert [i for i, _ in first["chunk"].errors] == [NAN_ROW]  # rejected, named, not dropped
    assert [i for i, _ in second["chunk"].errors] == [NULL_ROW]
    x = pq.read_table(source / "part-0.parquet").column("x").to_pylist()[:50]
    good = [i for i in range(50) if i != NAN_ROW]
    expected = model.run({model.inputs[0].name: np.array([x[i] for i in good], np.float32)})
    name = model.outputs[0].name
    np.testing.assert_allclose(first["outputs"][name], expected[name], rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="another artifact"):
        ChunkRunner(str(digits_dir), "0" * 64, 1, files, "parquet", None, True, [name])
