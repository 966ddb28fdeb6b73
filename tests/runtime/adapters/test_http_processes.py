"""``processes = 2``: two real uvicorn servers on one port (SO_REUSEPORT) in a supervised
process tree; answers equal the in-process model's, /metrics counts every request once
across both, a SIGKILLed server is replaced, SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import irkit.runtime

pytestmark = [pytest.mark.slow, pytest.mark.service]

SERVER = textwrap.dedent(
    """
    import sys
    import irkit.runtime
    from irkit.runtime.adapters.http import HttpAdapter

    artifact, port = sys.argv[1:3]
    HttpAdapter(irkit.runtime.load(artifact), port=int(port), processes=2, max_batch=8).serve()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def wait_until(check, seconds: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s: {check}")


def requests_by_process(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "irkit_requests_total" and sample.labels["outcome"] == "ok":
                process = sample.labels["process"]
                counts[process] = counts.get(process, 0.0) + sample.value
    return counts


def test_two_processes_share_the_port(tmp_path: Path, digits_dir: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, str(script), str(digits_dir), str(port)],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: len(children(process.pid)) == 2
                   and httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200)
        model = irkit.runtime.load(digits_dir)
        x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
        expected = model.run({"x": x})["logits"]
        for i in range(len(x)):  # a new connection per request: the kernel spreads them
            body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                "data": x[i].tolist()}]}  # fmt: skip
            with httpx.Client(timeout=10) as client:
                answer = client.post(f"{url}/v2/models/digits/infer", json=body)
            assert answer.status_code == 200, answer.text
            got = np.asarray(answer.json()["outputs"][0]["data"], np.float32)
            np.testing.assert_array_equal(got, expected[i])  # exact: same model, same row
        # Every child's count within 1 s; each request counted once, by one process.
        wait_until(lambda: sum(requests_by_process(url).values()) == len(x), 10)
        counts = requests_by_process(url)
        assert set(counts) == {"0", "1"} and min(counts.values()) >= 1, counts

        victim = children(process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(process.pid)) == 2 and victim not in
                   children(process.pid))
        wait_until(lambda: all(httpx.get(f"{url}/v2/health/ready", timeout=5).status_code
                               == 200 for _ in range(6)))
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
