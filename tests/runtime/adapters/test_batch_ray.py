"""The batch adapter's Ray engine on a real local Ray cluster (``ray start --head`` on
127.0.0.1, started once for the module and stopped by its pid at the end).

Outputs are compared with the local engine byte for byte; a driver SIGKILLed midway and
started again finishes with the same bytes and every row once.
"""

from __future__ import annotations

import json
import os
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

pytestmark = [pytest.mark.slow, pytest.mark.service]

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
    ray_cli = Path(sys.executable).with_name("ray")
    process = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
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
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
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


OPTIONS = {"chunk_rows": 250, "shard_rows": 1000, "progress": False}


def written_rows(out: Path) -> np.ndarray:
    return np.concatenate([pq.read_table(p).column("row").to_numpy()
                           for p in sorted(out.glob("part-*.parquet"))])


def assert_same_bytes(reference: Path, other: Path) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in other.iterdir())
    for name in names:
        assert (reference / name).read_bytes() == (other / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path, source: Path) -> Path:
    out = tmp_path_factory.mktemp("local") / "preds.parquet"
    model = irkit.runtime.load(digits_dir, threads=1)
    summary = BatchAdapter(model, input=str(source), output=str(out), **OPTIONS).serve()
    assert summary.complete and summary.errors == 3
    return out


def test_ray_output_equals_the_local_engine(
    cluster: str, digits_dir: Path, source: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.parquet"
    model = irkit.runtime.load(digits_dir, threads=1)
    # Joining a cluster ships the artifact through Ray's runtime environment.
    summary = BatchAdapter(model, input=str(source), output=str(out),
                           engine="ray", address=cluster, concurrency=2, **OPTIONS).serve()
    assert summary.complete and (summary.rows, summary.errors) == (FILES * ROWS_PER_FILE, 3)
    assert_same_bytes(reference, out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [NAN_ROW, NULL_ROW, SHORT_ROW]
    assert errors[1]["reason"] == "part-1.parquet row 7: null in column 'x'"
    written = written_rows(out)  # every good row exactly once
    expected = np.setdiff1d(np.arange(FILES * ROWS_PER_FILE), [NAN_ROW, NULL_ROW, SHORT_ROW])
    assert written.tolist() == expected.tolist()
    first = pq.read_table(source / "part-0.parquet").column("x").to_pylist()[:5]
    direct = model.run({"x": np.asarray(first, np.float32)})  # the model called here
    got = np.stack([pq.read_table(out / "part-00000.parquet").column(f"logits_{i}")
                    .to_numpy()[:5] for i in range(10)], axis=1)
    np.testing.assert_allclose(got, direct["logits"], rtol=0, atol=0)


DRIVER = textwrap.dedent(
    """
    import json, sys
    import irkit.runtime
    from irkit.runtime.adapters.batch import BatchAdapter

    artifact, source, output, address = sys.argv[1:5]
    model = irkit.runtime.load(artifact, threads=1)
    summary = BatchAdapter(model, input=source, output=output, engine="ray", address=address,
                           concurrency=1, ship_artifact=False, chunk_rows=25, shard_rows=500,
                           progress=False).serve()
    print(json.dumps({"complete": summary.complete, "skipped": summary.skipped_shards}))
    """
)


def test_ray_run_killed_midway_resumes_to_identical_output(
    cluster: str, digits_dir: Path, source: Path, tmp_path: Path
) -> None:
    model = irkit.runtime.load(digits_dir, threads=1)
    options = {**OPTIONS, "chunk_rows": 25, "shard_rows": 500}
    reference = tmp_path / "local.parquet"
    pattern = str(source / "part-*.parquet")  # a glob this time
    BatchAdapter(model, input=pattern, output=str(reference), **options).serve()

    out = tmp_path / "ray.parquet"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    command = [sys.executable, str(script), str(digits_dir), pattern, str(out), cluster]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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

    process = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["complete"] and result["skipped"] == len(manifest["shards"])
    assert_same_bytes(reference, out)
    final = json.loads((out / "manifest.json").read_text())
    assert (final["rows"], final["written"], final["errors"]) == (FILES * ROWS_PER_FILE,
                                                                 FILES * ROWS_PER_FILE - 3, 3)
    rows = written_rows(out)
    assert len(np.unique(rows)) == len(rows) == FILES * ROWS_PER_FILE - 3
