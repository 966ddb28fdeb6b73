"""The batch adapter: every format in and out, errors files, kill + resume, bounded memory."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import irkit.runtime
from irkit.runtime.adapters.batch import BatchAdapter

FORMATS = ("npy", "npz", "csv", "parquet", "jsonl")
ROWS = 2500
NAN_ROW = 11


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    x = np.random.default_rng(7).standard_normal((ROWS, 64)).astype(np.float32)
    x[NAN_ROW, 5] = np.nan
    return x


def write_input(path: Path, x: np.ndarray) -> Path:
    """``x`` in the format named by ``path``'s extension, 64 columns c0..c63."""
    fmt = path.suffix[1:]
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "npz":
        np.savez_compressed(path, x=x)
    elif fmt == "parquet":
        pq.write_table(pa.table({f"c{i}": x[:, i] for i in range(64)}), path, row_group_size=700)
    elif fmt == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"c{i}" for i in range(64)])
            writer.writerows([[repr(float(v)) for v in row] for row in x])
    elif fmt == "jsonl":
        with open(path, "w") as handle:
            for row in x.tolist():
                handle.write(json.dumps({"x": row}) + "\n")
    return path


def read_output(directory: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """(rows, logits, errors) of a finished output directory, checking the manifest."""
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["complete"]
    fmt = manifest["identity"]["output_format"]
    rows, logits = [], []
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if fmt == "npy":
            part = np.load(path)
            rows.append(None)
        elif fmt == "npz":
            with np.load(path) as npz:
                rows.append(npz["row"])
                part = npz["logits"]
        elif fmt == "parquet":
            table = pq.read_table(path)
            rows.append(table.column("row").to_numpy())
            part = np.column_stack([table.column(f"logits_{i}").to_numpy() for i in range(10)])
        elif fmt == "csv":
            with open(path, newline="") as handle:
                records = list(csv.reader(handle))
            assert records[0] == ["row"] + [f"logits_{i}" for i in range(10)]
            data = np.asarray(records[1:], dtype=np.float64)
            rows.append(data[:, 0].astype(np.int64))
            part = data[:, 1:].astype(np.float32)
        else:
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            rows.append(np.asarray([line["row"] for line in lines], np.int64))
            part = np.asarray([line["logits"] for line in lines], np.float32)
        assert len(part) == shard["written"]
        logits.append(part.reshape(-1, 10))
    errors = [json.loads(line) for line in (directory / "errors.jsonl").read_text().splitlines()]
    assert manifest["errors"] == len(errors)
    all_rows = None if fmt == "npy" else np.concatenate(rows)
    return all_rows, np.concatenate(logits), errors  # type: ignore[return-value]


@pytest.mark.parametrize("fmt_in", FORMATS)
def test_every_input_format_gives_the_direct_results(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel, features: np.ndarray, fmt_in: str
) -> None:
    source = write_input(tmp_path / f"in.{fmt_in}", features)
    adapter = BatchAdapter(
        digits_model,
        input=str(source),
        output=str(tmp_path / "out.parquet"),
        chunk_rows=300,
        shard_rows=1000,
        input_name={"x": "x"} if fmt_in in ("jsonl", "npz") else None,
        progress=False,
    )
    summary = adapter.serve()
    assert summary.complete and summary.rows == ROWS and summary.shards == 3
    assert summary.written == ROWS - 1 and summary.errors == 1
    rows, logits, errors = read_output(tmp_path / "out.parquet")
    good = np.delete(np.arange(ROWS), NAN_ROW)
    np.testing.assert_array_equal(rows, good)
    np.testing.assert_allclose(logits, digits_model(x=features[good])["logits"], rtol=1e-6)
    assert errors == [{"row": NAN_ROW, "reason": "NaN or infinity in input 'x'"}]


def test_reject_nonfinite_false_runs_nan_rows_through_the_model(
    tmp_path: Path, digits_dir: Path, features: np.ndarray
) -> None:
    model = irkit.runtime.load(digits_dir)  # its own: the option changes the model it runs
    x = features[:40]
    summary = BatchAdapter(model, input=str(write_input(tmp_path / "in.npy", x)),
                           output=str(tmp_path / "out.npz"), reject_nonfinite=False,
                           progress=False).serve()  # fmt: skip
    assert summary.written == 40 and summary.errors == 0 and not model.reject_nonfinite
    rows, logits, errors = read_output(tmp_path / "out.npz")
    assert rows.tolist() == list(range(40)) and errors == []
    np.testing.assert_allclose(logits, model(x=x)["logits"], rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("fmt_out", FORMATS)
def test_every_output_format_reads_back(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel, features: np.ndarray, fmt_out: str
) -> None:
    source = write_input(tmp_path / "in.npy", features)
    out = tmp_path / f"preds.{fmt_out}"
    summary = BatchAdapter(
        digits_model, input=str(source), output=str(out), chunk_rows=512, shard_rows=2048,
        progress=False,
    ).serve()  # fmt: skip
    assert summary.complete and summary.shards == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "errors.jsonl", "part-00000.errors.jsonl",
         f"part-00000.{fmt_out}", f"part-00001.{fmt_out}"]
    )  # fmt: skip
    rows, logits, errors = read_output(out)
    good = np.delete(np.arange(ROWS), NAN_ROW)
    if rows is not None:
        np.testing.assert_array_equal(rows, good)
    np.testing.assert_allclose(logits, digits_model(x=features[good])["logits"], rtol=1e-6)
    assert [e["row"] for e in errors] == [NAN_ROW]


def test_bad_rows_go_to_the_errors_file(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel
) -> None:
    x = np.random.default_rng(3).standard_normal((40, 64)).astype(np.float32)
    lines = [",".join(repr(float(v)) for v in row) for row in x]  # no header line
    lines[3] = ",".join(lines[3].split(",")[:63])  # 63 fields
    lines[7] = lines[7].replace(lines[7].split(",")[2], "abc", 1)
    lines[9] = lines[9].replace(lines[9].split(",")[0], "inf", 1)
    lines[20] = ""  # an empty record
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    jsonl = [json.dumps(row) for row in x.tolist()]
    jsonl[1] = '{"broken": '
    jsonl[2] = json.dumps(x[2].tolist()[:10])
    jsonl[5] = json.dumps(["a"] * 64)
    (tmp_path / "in.jsonl").write_text("\n".join(jsonl) + "\n")
    expected = {
        "csv": {3: "expected 64 fields, got 63", 7: "column 'c2': 'abc' is not a number",
                9: "NaN or infinity in input 'x'", 20: "expected 64 fields, got 0"},
        "jsonl": {1: "not JSON", 2: "input 'x' needs 64 values, got 10",
                  5: "'x': 'a' is not a number"},
    }  # fmt: skip
    for fmt, reasons in expected.items():
        out = tmp_path / f"out-{fmt}.jsonl"
        summary = BatchAdapter(
            digits_model, input=str(tmp_path / f"in.{fmt}"), output=str(out), chunk_rows=8,
            shard_rows=16, progress=False,
        ).serve()  # fmt: skip
        assert summary.rows == 40 and summary.errors == len(reasons), fmt
        rows, logits, errors = read_output(out)
        assert [e["row"] for e in errors] == sorted(reasons), fmt
        for error in errors:
            assert reasons[error["row"]] in error["reason"], (fmt, error)
        good = [i for i in range(40) if i not in reasons]
        np.testing.assert_array_equal(rows, good)
        np.testing.assert_allclose(logits, digits_model(x=x[good])["logits"], rtol=1e-6)


def test_parquet_nulls_and_list_columns(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel
) -> None:
    x = np.random.default_rng(4).standard_normal((30, 64)).astype(np.float32)
    values = [list(row) for row in x]
    values[4] = None
    values[6] = values[6][:60]
    pq.write_table(pa.table({"id": np.arange(30), "pixels": pa.array(values, pa.list_(pa.float32()))}),
                   tmp_path / "in.parquet")  # fmt: skip
    summary = BatchAdapter(
        digits_model, input=str(tmp_path / "in.parquet"), output=str(tmp_path / "o.parquet"),
        input_name={"x": "pixels"}, progress=False,
    ).serve()  # fmt: skip
    assert summary.errors == 2
    rows, logits, errors = read_output(tmp_path / "o.parquet")
    assert rows.tolist() == [i for i in range(30) if i not in (4, 6)]
    assert [(e["row"], e["reason"]) for e in errors] == [
        (4, "null in column 'pixels'"), (6, "column 'pixels': 60 values, expected 64"),
    ]  # fmt: skip
    good = [i for i in range(30) if i not in (4, 6)]
    np.testing.assert_allclose(logits, digits_model(x=x[good])["logits"], rtol=1e-6)


def test_schema_mismatch_and_foreign_output_are_refused(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel
) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((4, 65), np.float32))
    with pytest.raises(ValueError, match="does not fit input 'x'"):
        BatchAdapter(digits_model, input=str(tmp_path / "wide.npy"),
                     output=str(tmp_path / "o.npz"), progress=False).serve()  # fmt: skip
    pq.write_table(pa.table({"a": [1.0]}), tmp_path / "in.parquet")
    with pytest.raises(ValueError, match="needs 64 values"):
        BatchAdapter(digits_model, input=str(tmp_path / "in.parquet"),
                     output=str(tmp_path / "p.npz"), progress=False).serve()  # fmt: skip
    np.save(tmp_path / "ok.npy", np.zeros((4, 64), np.float32))
    BatchAdapter(digits_model, input=str(tmp_path / "ok.npy"), output=str(tmp_path / "q.npz"),
                 progress=False).serve()  # fmt: skip
    with pytest.raises(ValueError, match=r"different run \(differs in \['shard_rows'\]\)"):
        BatchAdapter(digits_model, input=str(tmp_path / "ok.npy"), output=str(tmp_path / "q.npz"),
                     shard_rows=2, progress=False).serve()  # fmt: skip
    with pytest.raises(ValueError, match="cannot tell the format"):
        BatchAdapter(digits_model, input=str(tmp_path / "ok.npy"), output=str(tmp_path / "o.bin"))
    # an output directory without an extension takes the input's format
    assert BatchAdapter(digits_model, input=str(tmp_path / "ok.npy"),
                        output=str(tmp_path / "out")).output_format == "npy"


RUNNER = textwrap.dedent(
    """
    import os, sys, time, json
    import pyarrow.parquet, tqdm  # imported before the baseline: their code is not data
    import irkit.runtime
    from irkit.runtime.adapters.batch import BatchAdapter

    artifact, source, output, delay, chunk, shard = sys.argv[1:7]
    model = irkit.runtime.load(artifact, threads=1)

    class Slow:  # slows each model call so the parent can kill the run midway
        name, inputs, outputs = model.name, model.inputs, model.outputs
        def validate(self, inputs): return model.validate(inputs)
        def run(self, inputs):
            time.sleep(float(delay))
            return model.run(inputs)

    def status_kb(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current RSS
    before = status_kb("VmRSS")
    summary = BatchAdapter(Slow(), input=source, output=output, chunk_rows=int(chunk),
                           shard_rows=int(shard), progress=False).serve()
    after = status_kb("VmHWM")  # peak RSS during the run
    print(json.dumps({"before_kb": before, "after_kb": after, "complete": summary.complete,
                      "skipped": summary.skipped_shards}))
    """
)


def start_runner(tmp_path: Path, *args: Any) -> subprocess.Popen[str]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_shards(manifest: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= count:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{count} shards not finished within 60 s")


@pytest.mark.slow
@pytest.mark.parametrize("fmt_out", ["parquet", "npz"])
def test_kill_and_resume_gives_identical_output(
    tmp_path: Path, digits_dir: Path, features: np.ndarray, fmt_out: str
) -> None:
    source = write_input(tmp_path / "in.parquet", features)
    reference = tmp_path / f"reference.{fmt_out}"
    resumed = tmp_path / f"resumed.{fmt_out}"
    model = irkit.runtime.load(digits_dir, threads=1)
    BatchAdapter(model, input=str(source), output=str(reference), chunk_rows=100,
                 shard_rows=500, progress=False).serve()  # fmt: skip

    process = start_runner(tmp_path, digits_dir, source, resumed, 0.05, 100, 500)
    wait_for_shards(resumed / "manifest.json", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert not manifest["complete"] and 2 <= len(manifest["shards"]) < 5
    assert not (resumed / "errors.jsonl").exists()
    # Damage one finished shard: the checksum must catch it and the shard be redone.
    damaged = resumed / manifest["shards"][1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")

    summary = BatchAdapter(model, input=str(source), output=str(resumed), chunk_rows=100,
                           shard_rows=500, progress=False).serve()  # fmt: skip
    assert summary.complete and summary.skipped_shards == len(manifest["shards"]) - 1
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    for name in names:
        assert (reference / name).read_bytes() == (resumed / name).read_bytes(), name
    if fmt_out == "npz":  # the zip members carry no timestamps of their own
        assert {i.date_time for i in zipfile.ZipFile(resumed / "part-00000.npz").infolist()} == {
            (1980, 1, 1, 0, 0, 0)
        }


@pytest.mark.slow
def test_sigterm_finishes_the_chunk_and_exits_cleanly(
    tmp_path: Path, digits_dir: Path, features: np.ndarray
) -> None:
    source = write_input(tmp_path / "in.npy", features)
    out = tmp_path / "out.parquet"
    process = start_runner(tmp_path, digits_dir, source, out, 0.05, 100, 500)
    wait_for_shards(out / "manifest.json", 1, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["complete"] is False
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    process = start_runner(tmp_path, digits_dir, source, out, 0, 100, 500)
    stdout, stderr = process.communicate(timeout=60)
    result = json.loads(stdout)
    assert result["complete"] and result["skipped"] >= 1
    assert read_output(out)[0].tolist() == np.delete(np.arange(ROWS), NAN_ROW).tolist()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_input(tmp_path: Path, digits_dir: Path) -> None:
    """RSS growth over a run is the same for 100k and 400k rows (25 vs 100 MB of floats)."""
    rng = np.random.default_rng(0)
    growth_mb = {}
    for rows in (100_000, 400_000):
        table = pa.table({f"c{i}": rng.standard_normal(rows, dtype=np.float32) for i in range(64)})
        source = tmp_path / f"in{rows}.parquet"
        pq.write_table(table, source, row_group_size=50_000)
        del table
        process = start_runner(tmp_path, digits_dir, source, tmp_path / f"out{rows}.parquet",
                               0, 4096, 100_000)  # fmt: skip
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        result = json.loads(stdout)
        assert result["complete"]
        growth_mb[rows] = (result["after_kb"] - result["before_kb"]) / 1024
    print(f"RSS growth: {growth_mb}")
    # Holding the data would add >= 75 MB (the 300k extra rows of float32); allocator and
    # pyarrow caches wobble by ~25 MB between runs.
    assert growth_mb[400_000] < growth_mb[100_000] + 45, growth_mb
    assert growth_mb[400_000] < 200, growth_mb


def test_progress_bar_reports_rows_per_second(
    tmp_path: Path, digits_model: irkit.runtime.CompiledModel, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "in.npy", np.zeros((300, 64), np.float32))
    BatchAdapter(digits_model, input=str(tmp_path / "in.npy"), output=str(tmp_path / "o.npz"),
                 chunk_rows=100).serve()  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "300/300" in captured.err and "rows/s" in captured.err


def test_columns_map_to_several_inputs_and_outputs(
    tmp_path: Path, pair_model: irkit.runtime.CompiledModel
) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    s = rng.standard_normal((50, 3)).astype(np.float32)
    columns = {"id": np.arange(50) * 10, **{f"x{i}": x[:, i] for i in range(4)},
               **{f"s{i}": s[:, i] for i in range(3)}}  # fmt: skip
    pq.write_table(pa.table(columns), tmp_path / "in.parquet")
    with open(tmp_path / "in.jsonl", "w") as handle:
        for xr, sr in zip(x.tolist(), s.tolist()):
            handle.write(json.dumps({"features": xr, "extra": sr}) + "\n")
    want = pair_model(x=x, s=s)
    mappings = {
        "parquet": {"x": [f"x{i}" for i in range(4)], "s": ["s0", "s1", "s2"]},
        "jsonl": {"x": "features", "s": "extra"},
    }
    for fmt, mapping in mappings.items():
        out = tmp_path / f"out-{fmt}.csv"
        summary = BatchAdapter(pair_model, input=str(tmp_path / f"in.{fmt}"), output=str(out),
                               input_name=mapping, chunk_rows=16, progress=False).serve()  # fmt: skip
        assert summary.written == 50 and summary.errors == 0
        with open(out / "part-00000.csv", newline="") as handle:
            records = list(csv.reader(handle))
        assert records[0] == ["row", "y_0", "y_1", "y_2", "label"]
        data = np.asarray(records[1:], dtype=np.float64)
        assert data[:, 0].tolist() == list(range(50))
        np.testing.assert_allclose(data[:, 1:4].astype(np.float32), want["y"], rtol=1e-6)
        assert data[:, 4].astype(np.int64).tolist() == want["label"].tolist()
    with pytest.raises(ValueError, match="input_name maps"):
        BatchAdapter(pair_model, input=str(tmp_path / "in.parquet"),
                     output=str(tmp_path / "bad.npz"), input_name={"x": "x0"}).serve()  # fmt: skip
