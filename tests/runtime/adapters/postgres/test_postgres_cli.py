"""``irkit serve SPEC --adapter postgres``: the embedded default with no setup, --init-db."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psycopg
import pytest

from irkit.runtime.adapters.kafka_codec import json_tensors
from irkit.runtime.adapters.postgres_server import EmbeddedPostgres

pytestmark = [pytest.mark.service, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[4]


def _spec(tmp_path: Path, digits_dir: Path, serve: str) -> Path:
    model = tmp_path / "mlp.onnx"
    shutil.copyfile(digits_dir / "model.onnx", model)  # the adapter tests' digits MLP
    spec = tmp_path / "serve.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline digits {{
          model = onnx("{model}")
          inputs {{ x: f32[N, 64] }}
          target ort
          output = "{tmp_path / 'build'}"
          serve postgres {{ {serve} }}
          serve http {{ port = 0 }}
        }}
    """))
    return spec


def test_serve_postgres_with_no_dsn_runs_an_embedded_server(
    tmp_path: Path, digits_dir: Path
) -> None:
    spec = _spec(tmp_path, digits_dir, "max_batch = 8")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "irkit", "serve", str(spec),
                                 "--adapter", "postgres"], stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"connect with: psql '(\S+)'", log_path.read_text())):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        dsn = found.group(1)
        x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while True:  # the schema is made right after the server starts
                try:
                    request_id = conn.execute(
                        "SELECT irkit_submit(%s::jsonb)",
                        (json.dumps({"inputs": json_tensors({"x": x})}),)).fetchone()[0]
                    break
                except psycopg.errors.UndefinedFunction:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            while (row := conn.execute("SELECT outputs_json FROM irkit_results WHERE "
                                       "request_id = %s", (request_id,)).fetchone()) is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        out = row[0]["outputs"][0]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        expected = ort.InferenceSession(str(tmp_path / "mlp.onnx")).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, log_path.read_text()
    with pytest.raises(psycopg.OperationalError):  # the embedded server stopped with it
        psycopg.connect(dsn, connect_timeout=3)


def test_init_db_creates_the_schema_and_exits(tmp_path: Path, digits_dir: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="irkit-pg-cli-"))
    data_dir.chmod(0o755)
    try:
        spec = _spec(tmp_path, digits_dir, f'data_dir = "{data_dir}", table = "jobs", '
                               'result_table = "job_results"')
        for _ in range(2):  # idempotent
            done = subprocess.run([sys.executable, "-m", "irkit", "serve", str(spec),
                                   "--adapter", "postgres", "--init-db"],
                                  capture_output=True, text=True, timeout=300, cwd=REPO)
            assert done.returncode == 0, done.stderr
            assert "serve postgres: schema ready" in done.stderr
        with EmbeddedPostgres(data_dir) as server, psycopg.connect(server.dsn) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public'")}
            assert {"jobs", "job_results", "jobs_counts"} <= tables
        wrong = subprocess.run([sys.executable, "-m", "irkit", "serve", str(spec),
                                "--adapter", "http", "--init-db"],
                               capture_output=True, text=True, timeout=300, cwd=REPO)
        assert wrong.returncode == 2
        assert wrong.stderr.strip() == ("irkit: error: --init-db: adapter 'http' keeps no "
                                        "database (it is for the postgres adapter)")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
