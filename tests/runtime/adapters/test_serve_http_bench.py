"""``benchmarks/serve_http.py`` with its h2load load generator on ``processes = 2``: both
server processes answer (SO_REUSEPORT spreads the connections), none fails, and the
server's and the load generator's CPU per request are measured. Speed itself is the
benchmark's business, not the test's."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None,
                                reason="h2load (nghttp2-client) is not installed")  # fmt: skip


def _bench() -> ModuleType:
    path = ROOT / "benchmarks" / "serve_http.py"
    spec = importlib.util.spec_from_file_location("serve_http", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_http"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_h2load_drives_both_processes(tmp_path: Path) -> None:
    bench = _bench()
    artifacts = bench.build_models(tmp_path)
    server = bench.Server("irkit", artifacts["digits"], 32, "auto", "auto", processes=2)
    try:
        json_point = bench.Point("digits", "irkit b=32 p=2", 16)
        bench.measure(json_point, server, 0.3, "h2load")
    finally:
        server.close()
    assert json_point.failures == 0
    assert len(json_point.latencies) > 50  # thousands per second even on a busy machine
    assert json_point.mean_batch >= 1.0
    # 16 connections hashed over 2 listeners: all on one has odds 2**-15
    assert sorted(json_point.by_process) == ["0", "1"]
    assert all(count > 0 for count in json_point.by_process.values())
    assert sum(json_point.by_process.values()) >= len(json_point.latencies)
    assert 0 < json_point.loop_us <= json_point.server_us
    assert json_point.client_us > 0


def test_h2load_sends_the_python_clients_request() -> None:
    """The body and headers h2load sends are those of the raw Python request."""
    bench = _bench()
    for model in ("digits", "gemm512"):
        headers, body = bench.request_parts(model)
        raw = bench.request_bytes(model, 8000)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert rest == body
        lines = head.decode().split("\r\n")
        assert lines[0] == f"POST /v2/models/{model}/infer HTTP/1.1"
        assert f"Content-Length: {len(body)}" in lines
        assert all(f"{name}: {value}" in lines for name, value in headers.items())


def _fake_sysfs(root: Path, cores: list[int]) -> Path:
    """A sysfs CPU tree where CPU k sits on physical core ``cores[k]`` of package 0."""
    for cpu, core in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_server_cpus_never_pair_smt_siblings(tmp_path: Path) -> None:
    """Two server processes get CPUs on two physical cores, the load generator the rest."""
    split = _bench().split_cpus
    # 4 CPUs, siblings 0/2 and 1/3 (as many cloud VMs number them): servers 0 and 1,
    # the load generator on their siblings
    smt = _fake_sysfs(tmp_path / "a", [0, 1, 0, 1])
    assert split("auto", 2, [0, 1, 2, 3], smt) == ({0, 1}, {2, 3})
    # 8 CPUs, siblings 0/1, 2/3, ...: servers on cores 0 and 1, h2load on cores 2 and 3
    pairs = _fake_sysfs(tmp_path / "b", [0, 0, 1, 1, 2, 2, 3, 3])
    assert split("auto", 2, list(range(8)), pairs) == ({0, 2}, {4, 5, 6, 7})
    # 2 CPUs: nothing left for the load generator at p=2, so no pinning; p=1 pins
    plain = _fake_sysfs(tmp_path / "c", [0, 1])
    assert split("auto", 2, [0, 1], plain) is None
    assert split("auto", 1, [0, 1], plain) == ({0}, {1})
    # one physical core cannot hold two servers
    with pytest.raises(SystemExit, match="physical cores"):
        split("2", 2, [0, 1, 2], _fake_sysfs(tmp_path / "d", [0, 0, 0]))
