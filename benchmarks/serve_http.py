"""HTTP serving benchmark: irkit's OIP v2 server vs. the bare ASGI stack, batching vs. not.

    python benchmarks/serve_http.py [--seconds 0.5] [--rounds 5] [--clients 1,16,64]
                                    [--http auto|httptools|h11] [--loop auto|uvloop|asyncio]
                                    [--processes 1,2] [--servers LABEL,...]
                                    [--client auto|h2load|python]

Each server runs in its own subprocess (HttpAdapter on uvicorn, one event loop, one
inference thread, the model on 1 intra-op thread). The load generator is ``h2load --h1``
(Debian's ``nghttp2-client``, C; ``--client auto`` picks it when it is on PATH): one
keep-alive connection per client, each sending one request after another for
``--seconds`` after a short warm-up. Without it (``--client python``) this process is the
load generator: the same connections on one event loop (uvloop when installed) speaking
raw HTTP/1.1, which costs more CPU per request on the cores the servers share. The
request bodies are the same either way. Servers measured in the same run, all with the
same uvicorn settings:

- ``constant``: HttpAdapter itself whose infer handler reads the body and answers a
  precomputed response (same server, same dispatch to the infer route, same body
  reading): the ceiling of the stack;
- ``irkit b=32``: HttpAdapter with dynamic batching (max_batch=32, max_delay_ms=2);
- ``irkit b=1``: HttpAdapter with max_batch=1 (no batching);
- ``irkit b=32 p=2`` (with ``--processes 1,2``): ``irkit b=32`` with ``processes=2``, two
  server processes on one port (SO_REUSEPORT), each with its own model and batcher; its
  CPU time counts both children, its rows per call comes from the merged /metrics.

Models: the digits MLP (x f32[1,64] as JSON, floats with 9 significant digits;
``specs/models/digits_mlp.onnx`` if present, else a seeded MLP of the same shape) and a
512x512 GEMM (x f32[1,512], binary tensor extension both ways). The table gives
requests/s, p50/p99 latency, the mean rows per model call (from the server's /metrics)
and the ratios the targets are stated in. Windows are interleaved round-robin, the
servers compared at one point back to back; req/s is the median window and each ratio
the median of the per-round ratios, so bursts of other load on a shared machine move
single windows, not the result. req/cpu-s (requests per server CPU-second) is the
same comparison by CPU cost, which other load disturbs less; ``srv us`` and ``cli us``
are the server's (all its processes) and the load generator's CPU per request. For
``p=2`` the summary adds how the kernel spread the requests over the processes (their
``process`` label on /metrics) and the most the CPUs allow: one process is bound by the
core its event loop thread runs on, N processes by every CPU, which the load generator
shares (cpus / (server + client CPU per request)).

CPUs: with ``--server-cpus auto`` (the default), ``--processes`` up to N, N physical cores
and at least N + 1 CPUs, every server is pinned to one CPU on each of N physical
cores (never two SMT siblings) and the load generator to the CPUs of the other cores (the
servers' siblings when there are none), so ``p=2`` against ``p=1`` asks whether two
processes use two cores, not how the load generator competes with them. With fewer CPUs
(or ``--server-cpus none``) everything shares every CPU, as above.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIGITS_ONNX = REPO / "specs" / "models" / "digits_mlp.onnx"
WARMUP = 0.2  # seconds of load before each measured window


# ------------------------------------------------------------------------------ models


def mlp_onnx_bytes(seed: int = 0) -> bytes:
    """A seeded 64-32-10 ReLU MLP with the digits model's signature."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w0": rng.standard_normal((64, 32)).astype(np.float32) * 0.2,
        "b0": rng.standard_normal(32).astype(np.float32) * 0.1,
        "w1": rng.standard_normal((32, 10)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(10).astype(np.float32) * 0.1,
    }
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w0", "b0"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w1", "b1"], ["logits"]),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, n) for n, a in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gemm_onnx_bytes(size: int = 512, seed: int = 1) -> bytes:
    from irkit.testing.onnx_models import gemm_model

    return gemm_model(size, seed).SerializeToString()


def save_artifact(
    directory: Path, name: str, onnx_bytes: bytes, width: int, out: str, out_width: int
) -> Path:
    from irkit.runtime import Artifact, TensorSpec

    return Artifact(
        name=name,
        backend="ort",
        target="cpu",
        inputs=(TensorSpec("x", np.dtype(np.float32), ("N", width)),),
        outputs=(TensorSpec(out, np.dtype(np.float32), ("N", out_width)),),
        files={"model.onnx": onnx_bytes},
        entry={"model": "model.onnx"},
        options={"threads": 1},
    ).save(directory / name)


def build_models(directory: Path) -> dict[str, Path]:
    digits = DIGITS_ONNX.read_bytes() if DIGITS_ONNX.is_file() else mlp_onnx_bytes()
    return {
        "digits": save_artifact(directory, "digits", digits, 64, "logits", 10),
        "gemm512": save_artifact(directory, "gemm512", gemm_onnx_bytes(), 512, "y", 512),
    }


def request_parts(model: str) -> tuple[dict[str, str], bytes]:
    """The headers (without Host and Content-Length) and body of one infer request for
    ``model``: digits as JSON, gemm512 with the binary tensor extension both ways."""
    rng = np.random.default_rng(3)
    if model == "digits":
        x = rng.standard_normal((1, 64)).astype(np.float32)
        # float32 values written with the 9 significant digits that round-trip them
        # (``x.tolist()`` would widen to float64 and write 17, nearly 3x slower to parse)
        data = "[" + ",".join(f"{v:.9g}" for v in x.ravel().tolist()) + "]"
        body = ('{"inputs":[{"name":"x","shape":[1,64],"datatype":"FP32","data":'
                + data + "}]}").encode()  # fmt: skip
        return {"Content-Type": "application/json"}, body
    raw = rng.standard_normal((1, 512)).astype("<f4").tobytes()
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw)}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    return {"Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream"}, header + raw  # fmt: skip


def request_bytes(model: str, port: int) -> bytes:
    """One raw HTTP/1.1 infer request for ``model`` (``request_parts``)."""
    parts, body = request_parts(model)
    headers = {"Host": f"127.0.0.1:{port}", **parts, "Content-Length": str(len(body))}
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode() + b"\r\n" + body


# ----------------------------------------------------------------------------- servers


def _serve_announcing(adapter: Any, port_file: str) -> None:
    """Run ``adapter.serve()``; write its port to ``port_file`` once the model is ready."""
    import threading

    def announce() -> None:
        adapter.ready.wait(60)
        Path(port_file).write_text(str(adapter.port))

    threading.Thread(target=announce, daemon=True).start()
    adapter.serve()


def serve_irkit(
    artifact: str, max_batch: int, port_file: str, stack: dict[str, str], processes: int = 1
) -> None:
    import threading
    import urllib.request

    import irkit.runtime
    from irkit.runtime.adapters.http import HttpAdapter

    adapter = HttpAdapter(irkit.runtime.load(artifact), port=0, max_batch=max_batch,
                          max_delay_ms=2.0, max_queue=4096, processes=processes,
                          **stack)  # fmt: skip
    if processes == 1:
        _serve_announcing(adapter, port_file)
        return

    def announce() -> None:  # every child ready: many ready answers in a row, new connections
        adapter.started.wait(60)
        url = f"http://127.0.0.1:{adapter.port}/v2/health/ready"
        streak = 0
        while streak < 20:
            try:
                streak = streak + 1 if urllib.request.urlopen(url).status == 200 else 0
            except OSError:
                streak = 0
                time.sleep(0.05)
        Path(port_file).write_text(str(adapter.port))

    threading.Thread(target=announce, daemon=True).start()
    adapter.serve()


def serve_constant(artifact: str, port_file: str, stack: dict[str, str]) -> None:
    """The stack alone: HttpAdapter itself (same uvicorn settings, same dispatch to the
    infer handler, same body reading) whose infer handler answers a precomputed response
    instead of decoding, batching, running and encoding."""
    import irkit.runtime
    from irkit.runtime.adapters.http import (
        HttpAdapter,
        encode_infer_response,
        send_response,
    )

    model = irkit.runtime.load(artifact)
    spec = model.inputs[0]
    result = model.run({spec.name: np.zeros((1, *spec.shape[1:]), spec.dtype)})
    binary = model.name != "digits"
    selection = dict.fromkeys(result, True) if binary else None
    payload, split = encode_infer_response(model.name, "1", result, selection)
    headers = [(b"inference-header-content-length", b"%d" % split)] if split is not None else []
    media = b"application/octet-stream" if split is not None else b"application/json"

    class ConstantAdapter(HttpAdapter):
        async def handle_infer(
            self, scope: Any, receive: Any, send: Any, model: str, version: str | None
        ) -> None:
            await self.read_body(scope, receive)
            await send_response(send, 200, payload, media, headers)

    _serve_announcing(ConstantAdapter(model, port=0, **stack), port_file)


# --server-cpus: the CPUs every server subprocess (and its children) may run on, and those
# left to the load generator; None: no pinning, everything shares every CPU.
CPU_SPLIT: tuple[set[int], set[int]] | None = None


def physical_cores(
    cpus: list[int], sysfs: Path = Path("/sys/devices/system/cpu")
) -> list[list[int]]:
    """``cpus`` grouped by the physical core they run on (SMT siblings together), in the
    order of each core's first CPU; one group per CPU where sysfs does not say."""
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            key = ((topology / "physical_package_id").read_text().strip(),
                   (topology / "core_id").read_text().strip())  # fmt: skip
        except OSError:
            key = ("cpu", str(cpu))
        cores.setdefault(key, []).append(cpu)
    return list(cores.values())


def split_cpus(
    choice: str, processes: int, allowed: list[int] | None = None,
    sysfs: Path = Path("/sys/devices/system/cpu"),
) -> tuple[set[int], set[int]] | None:  # fmt: skip
    """``--server-cpus``: "none"; a count N (N allowed CPUs for the servers, the rest for
    the load generator); "auto": as many as the most server processes compared, when a
    CPU is left for the load generator, else none.

    The servers get one CPU on each of N physical cores (two SMT siblings would share one
    core's execution units, and two processes would not get two cores' worth); the load
    generator gets the CPUs of the other cores, or the servers' siblings where no other
    core is left.
    """
    allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if choice == "none":
        return None
    count = processes if choice == "auto" else int(choice)
    cores = physical_cores(allowed, sysfs)
    if choice == "auto" and (len(cores) < count or len(allowed) <= count):
        return None
    if not 0 < count < len(allowed) or len(cores) < count:
        raise SystemExit(f"--server-cpus {choice}: {len(allowed)} CPUs on {len(cores)} "
                         f"physical cores allowed here; the servers need {count} cores and "
                         f"the load generator at least one CPU besides")  # fmt: skip
    servers = {core[0] for core in cores[:count]}
    others = {cpu for core in cores[count:] for cpu in core}
    return servers, others or set(allowed) - servers


def _pinned(side: int) -> Any:
    """A ``preexec_fn`` that pins a subprocess to the servers' (0) or the load
    generator's (1) CPUs of ``CPU_SPLIT``, or None without a split."""
    if CPU_SPLIT is None:
        return None
    cpus = CPU_SPLIT[side]
    return lambda: os.sched_setaffinity(0, cpus)


class Server:
    """A server subprocess; ``port`` once it is ready."""

    def __init__(
        self, kind: str, artifact: Path, max_batch: int, http: str, loop: str, processes: int = 1
    ) -> None:
        self.processes = processes
        self.port_file = Path(tempfile.mkstemp(prefix="irkit-bench-port-")[1])
        self.port_file.write_text("")
        command = [sys.executable, __file__, "--serve", kind, "--artifact", str(artifact),
                   "--max-batch", str(max_batch), "--port-file", str(self.port_file),
                   "--http", http, "--loop", loop, "--processes", str(processes)]  # fmt: skip
        self.process = subprocess.Popen(command, preexec_fn=_pinned(0))
        deadline = time.monotonic() + 60
        while not self.port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())

    def metrics(self) -> list[str]:
        """The sample lines of the server's /metrics (none if it does not answer)."""
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics").read().decode()
        except OSError:
            return []
        return [line for line in text.splitlines() if not line.startswith("#")]

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the irkit_batch_size histogram; (0, 0) for constant."""
        values: dict[str, float] = {}
        for line in self.metrics():  # several processes: one line each
            if line.startswith(("irkit_batch_size_sum", "irkit_batch_size_count")):
                key = line.split("{")[0]
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return values.get("irkit_batch_size_sum", 0.0), values.get("irkit_batch_size_count", 0.0)

    def requests_by_process(self) -> dict[str, float]:
        """Requests answered so far (any outcome) by each process: its ``process`` label
        on /metrics ("" for a single-process server)."""
        counts: dict[str, float] = {}
        for line in self.metrics():
            if line.startswith("irkit_requests_total{"):
                labels = line[line.index("{") + 1:line.rindex("}")]
                process = next((label.split("=", 1)[1].strip('"')
                                for label in labels.split(",")
                                if label.startswith("process=")), "")  # fmt: skip
                counts[process] = counts.get(process, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    def cpu_seconds(self, main_threads: bool = False) -> float:
        """User + system CPU time the server process and its children have used so far;
        ``main_threads``: only their main threads (where uvicorn's event loop runs)."""
        total, pids = 0.0, [self.process.pid]
        while pids:
            pid = pids.pop()
            stat = f"/proc/{pid}/task/{pid}/stat" if main_threads else f"/proc/{pid}/stat"
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                pids += [int(c) for c in
                         Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.port_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------ load generator


async def _client(port: int, request: bytes, stop_at: float, record_from: float,
                  latencies: list[float], failures: list[int]) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if now >= record_from:
                latencies.append(time.perf_counter() - now)
                if status != 200:
                    failures.append(status)
    finally:
        writer.close()


async def _load(
    port: int, request: bytes, clients: int, seconds: float
) -> tuple[list[float], list[int]]:
    start = time.perf_counter()
    latencies: list[float] = []
    failures: list[int] = []
    await asyncio.gather(*(
        _client(port, request, start + WARMUP + seconds, start + WARMUP, latencies, failures)
        for _ in range(clients)
    ))  # fmt: skip
    return latencies, failures


@dataclass
class Point:
    model: str
    server: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    rows: float = 0.0
    calls: float = 0.0
    # one entry per measured window, in round order: requests/s and requests per server
    # CPU-second (robust to other load on a shared machine)
    window_rps: list[float] = field(default_factory=list)
    window_per_cpu: list[float] = field(default_factory=list)
    # load generator CPU per request (us), one entry per window
    window_client_us: list[float] = field(default_factory=list)
    # server CPU per request (us) of its processes' main threads (the event loops)
    window_loop_us: list[float] = field(default_factory=list)
    # requests answered by each server process (its /metrics ``process`` label; "" for one)
    by_process: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Median over the windows."""
        return float(np.median(self.window_rps))

    @property
    def per_cpu(self) -> float:
        return float(np.median(self.window_per_cpu))

    @property
    def client_us(self) -> float:
        return float(np.median(self.window_client_us))

    @property
    def loop_us(self) -> float:
        return float(np.median(self.window_loop_us))

    @property
    def server_us(self) -> float:
        """Server CPU per request (us), all its processes together."""
        return 1e6 / self.per_cpu

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000, q))

    @property
    def mean_batch(self) -> float:
        return self.rows / self.calls if self.calls else float("nan")


def paired_ratio(a: Point, b: Point, per_cpu: bool = False) -> float:
    """Median over rounds of a/b within each round (the two windows ran back to back)."""
    pairs = zip(a.window_per_cpu, b.window_per_cpu) if per_cpu else zip(a.window_rps,
                                                                           b.window_rps)
    # a window that got no answer at all (the machine starved the client) has no ratio
    ratios = [x / y for x, y in pairs if x > 0 and y > 0]
    return float(np.median(ratios)) if ratios else float("nan")


def run_load(
    port: int, request: bytes, clients: int, seconds: float
) -> tuple[list[float], list[int]]:
    """``_load`` on uvloop when it is installed: less client CPU on a machine it shares."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_load(port, request, clients, seconds))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_load(port, request, clients, seconds))


def run_h2load(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float,
               h1: bool = True) -> tuple[list[float], list[int]]:  # fmt: skip
    """One h2load window (HTTP/1.1 with ``h1``, else HTTP/2): ``clients`` connections,
    each sending ``body`` to ``url`` one request after another for ``seconds`` after
    ``WARMUP`` s. Latencies (s) of the 200 answers, and the other answers' statuses."""
    with tempfile.TemporaryDirectory(prefix="irkit-h2load-") as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        command = ["h2load", "-D", f"{int(seconds * 1000)}ms",
                   "--warm-up-time", f"{int(WARMUP * 1000)}ms", "-c", str(clients), "-m", "1",
                   "-d", str(body_file), "--log-file", str(log_file),
                   *(["--h1"] if h1 else []),
                   *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")),
                   url]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60,
                       preexec_fn=_pinned(1))
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    # a row: start time, status, duration (us); status 0: still unanswered when the window
    # ended (h2load stops at its deadline), not a failure
    latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    return latencies, [int(row[1]) for row in rows if row[1] not in ("200", "0")]


def client_cpu() -> float:
    """CPU seconds of this process and its finished children (h2load runs): the load
    generator's, whichever it is."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def pick_client(choice: str, parser: argparse.ArgumentParser) -> str:
    """``--client``: auto is h2load when it is on PATH, else the Python client."""
    if choice == "auto":
        return "h2load" if shutil.which("h2load") else "python"
    if choice == "h2load" and not shutil.which("h2load"):
        parser.error("h2load is not on PATH (apt-get install nghttp2-client)")
    return choice


def measure(point: Point, server: Server, seconds: float, client: str = "python") -> None:
    """Add one measurement window to ``point``."""
    before = server.batch_stats()
    requests_before = server.requests_by_process()
    cpu_before, client_before = server.cpu_seconds(), client_cpu()
    loop_before = server.cpu_seconds(main_threads=True)
    if client == "h2load":
        headers, body = request_parts(point.model)
        url = f"http://127.0.0.1:{server.port}/v2/models/{point.model}/infer"
        latencies, failures = run_h2load(url, body, headers, point.clients, seconds)
    else:
        request = request_bytes(point.model, server.port)
        latencies, failures = run_load(server.port, request, point.clients, seconds)
    # scale out the un-recorded warm-up share of the CPU time
    cpu = (server.cpu_seconds() - cpu_before) * seconds / (seconds + WARMUP)
    loop = (server.cpu_seconds(main_threads=True) - loop_before) * seconds / (seconds + WARMUP)
    used = (client_cpu() - client_before) * seconds / (seconds + WARMUP)
    if server.processes > 1:  # /metrics has the other processes' figures of <= 1 s ago
        time.sleep(1.1)  # (the next window's "before" is then exact too)
    after = server.batch_stats()
    for process, count in server.requests_by_process().items():
        point.by_process[process] = (point.by_process.get(process, 0.0) + count
                                     - requests_before.get(process, 0.0))  # fmt: skip
    point.window_rps.append(len(latencies) / seconds)
    point.window_per_cpu.append(len(latencies) / cpu if cpu else float("nan"))
    point.window_client_us.append(1e6 * used / max(1, len(latencies)))
    point.window_loop_us.append(1e6 * loop / max(1, len(latencies)))
    point.latencies += latencies
    point.failures += len(failures)
    point.rows += after[0] - before[0]
    point.calls += after[1] - before[1]


SERVERS = [("constant", "constant", 1, 1), ("irkit b=32", "irkit", 32, 1),
           ("irkit b=1", "irkit", 1, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="measured time per window")
    parser.add_argument("--rounds", type=int, default=5, help="windows per point, interleaved")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--models", default="digits,gemm512")
    parser.add_argument("--http", default="auto", choices=("auto", "httptools", "h11"),
                        help="uvicorn HTTP parser of every server (auto: httptools if installed)")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                        help="event loop of every server (auto: uvloop if installed)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--processes", default="1",
                        help="server processes to compare for irkit b=32 (e.g. 1,2)")
    parser.add_argument("--servers", default=None,
                        help="only these servers (labels, comma-separated)")
    parser.add_argument("--client", default="auto", choices=("auto", "h2load", "python"),
                        help="load generator (auto: h2load if on PATH, else Python asyncio)")
    parser.add_argument("--server-cpus", default="auto",
                        help="pin the servers to N CPUs, one per physical core, and the load "
                             "generator to the rest (auto: N = the most --processes, when "
                             "a CPU is left for the load generator; "
                             "none: no pinning)")
    args = parser.parse_args(argv)
    stack = {"http": args.http, "loop": args.loop}
    if args.serve == "irkit":
        serve_irkit(args.artifact, args.max_batch, args.port_file, stack, int(args.processes))
        return 0
    if args.serve == "constant":
        serve_constant(args.artifact, args.port_file, stack)
        return 0

    client = pick_client(args.client, parser)
    clients = [int(c) for c in args.clients.split(",")]
    models = args.models.split(",")
    global CPU_SPLIT
    CPU_SPLIT = split_cpus(args.server_cpus, max(map(int, args.processes.split(","))))
    if CPU_SPLIT is not None:
        os.sched_setaffinity(0, CPU_SPLIT[1])  # the Python client runs here
    servers_run = SERVERS + [(f"irkit b=32 p={n}", "irkit", 32, n)
                             for n in map(int, args.processes.split(",")) if n > 1]
    if args.servers:
        wanted = args.servers.split(",")
        servers_run = [s for s in servers_run if s[0] in wanted]
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="irkit-bench-") as tmp:
        artifacts = build_models(Path(tmp))
        servers: dict[tuple[str, str], Server] = {}
        try:
            for model in models:
                for label, kind, max_batch, processes in servers_run:
                    servers[model, label] = Server(kind, artifacts[model], max_batch,
                                                   processes=processes, **stack)
            points = {
                (model, label, count): Point(model, label, count)
                for model in models for label, *_ in servers_run for count in clients
            }  # fmt: skip
            # Round-robin windows: background load on a shared machine hits every
            # configuration alike instead of whichever happened to run at that moment.
            # The servers compared at one (model, clients) run back to back, in an order
            # reversed every other round; ratios are medians of these paired windows.
            labels = [label for label, *_ in servers_run]
            for round_ in range(args.rounds):
                for model in models:
                    for count in clients:
                        for label in labels[:: -1 if round_ % 2 else 1]:
                            measure(points[model, label, count], servers[model, label],
                                    args.seconds, client)  # fmt: skip
        finally:
            for server in servers.values():
                server.close()
    print_table(list(points.values()), stack, client)
    print(f"\n{os.cpu_count()} CPUs (shared){cpu_split_text()}; {args.rounds} x {args.seconds} s windows per "
          f"point, interleaved; {time.perf_counter() - started:.0f} s total; load average "
          f"(1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")  # fmt: skip
    return 0


def print_table(points: list[Point], stack: dict[str, str], client: str = "python") -> None:
    index = {(p.model, p.server, p.clients): p for p in points}
    print(f"\n{'model':8} {'server':11} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'rows/call':>9} {'fail':>4} {'vs b=1':>7} {'vs const':>8} {'req/cpu-s':>9} "
          f"{'vs b=1':>7} {'vs const':>8} {'srv us':>6} {'cli us':>6}")  # fmt: skip
    for p in points:
        base = index.get((p.model, "irkit b=1", p.clients))
        const = index.get((p.model, "constant", p.clients))
        vs_b1 = base if base is not None and p.server == "irkit b=32" else None
        vs_const = const if const is not None and p.server != "constant" else None
        cells = [
            f"{paired_ratio(p, vs_b1):.2f}x" if vs_b1 else "",
            f"{paired_ratio(p, vs_const):.2f}x" if vs_const else "",
            f"{p.per_cpu:.0f}",
            f"{paired_ratio(p, vs_b1, per_cpu=True):.2f}x" if vs_b1 else "",
            f"{paired_ratio(p, vs_const, per_cpu=True):.2f}x" if vs_const else "",
        ]
        batch = "" if p.server == "constant" else f"{p.mean_batch:.1f}"
        print(f"{p.model:8} {p.server:11} {p.clients:7d} {p.rps:7.0f} {p.percentile_ms(50):7.2f} "
              f"{p.percentile_ms(99):7.2f} {batch:>9} {p.failures:4d} {cells[0]:>7} {cells[1]:>8} "
              f"{cells[2]:>9} {cells[3]:>7} {cells[4]:>8} {p.server_us:6.0f} "
              f"{p.client_us:6.0f}")  # fmt: skip
    print("\nreq/s and req/cpu-s are medians over the windows; a ratio is the median of its "
          "per-round ratios\n(the windows compared ran back to back). srv us: server CPU per "
          "request (every process of it),\ncli us: the load generator's CPU per request "
          "(median windows).")  # fmt: skip
    print("\ntargets at the highest client count (req/s; in brackets per server CPU-second):")
    top = max(p.clients for p in points)
    for model in sorted({p.model for p in points}):
        b32, b1, const = (
            index.get((model, s, top)) for s in ("irkit b=32", "irkit b=1", "constant")
        )
        if b32 and b1:
            ratio = paired_ratio(b32, b1)
            print(f"  {model}: batching {ratio:.2f}x max_batch=1 "
                  f"[{paired_ratio(b32, b1, per_cpu=True):.2f}x] "
                  f"(target >= 1.5x) {'PASS' if ratio >= 1.5 else 'MISS'}")  # fmt: skip
        for p in (q for q in points if q.model == model and q.clients == top
                  and q.server.startswith("irkit b=32 p=")):
            if b32:
                ratio = paired_ratio(p, b32)
                print(f"  {model}: {p.server.split()[-1]} {ratio:.2f}x one process "
                      f"[{paired_ratio(p, b32, per_cpu=True):.2f}x] (target >= 1.6x) "
                      f"{'PASS' if ratio >= 1.6 else 'MISS'}")  # fmt: skip
                print_scale_out(p, b32)
        if b32 and const:
            ratio = paired_ratio(b32, const)
            print(f"  {model}: irkit {ratio:.2f}x the constant handler "
                  f"[{paired_ratio(b32, const, per_cpu=True):.2f}x] (target >= 0.5x) "
                  f"{'PASS' if ratio >= 0.5 else 'MISS'}")  # fmt: skip
    print(f"\nservers: uvicorn with http={_resolved(stack['http'], 'httptools', 'h11')}, "
          f"loop={_resolved(stack['loop'], 'uvloop', 'asyncio')}; load generator: "
          + ("h2load --h1, one connection per client" if client == "h2load" else
             f"Python on {_resolved('auto', 'uvloop', 'asyncio')}"))  # fmt: skip


def print_scale_out(many: Point, one: Point) -> None:
    """Why ``many`` processes gain what they do over ``one``: server and load generator
    CPU per request, and how the kernel spread the requests over the processes."""
    shares = ", ".join(f"process {k} {v / max(1.0, sum(many.by_process.values())):.0%}"
                       for k, v in sorted(many.by_process.items()))  # fmt: skip
    print(f"    server CPU per request {one.server_us:.0f} us (1 process; its event loop "
          f"thread {one.loop_us:.0f} us), {many.server_us:.0f} us ({many.server.split()[-1]}); "
          f"load generator {one.client_us:.0f} / {many.client_us:.0f} us; requests: {shares}")
    # One process is bound by its event loop's thread, one core (1 / loop); N of them by N
    # cores or by all the servers' CPUs: cpus / server, or cpus / (server + client) where
    # the load generator shares them.
    count = int(many.server.split("=")[-1])
    if CPU_SPLIT is not None:
        cpus = len(CPU_SPLIT[0])
        bound = min(count, cpus * one.loop_us / many.server_us)
        print(f"    {cpus} CPUs for the servers alone allow at most {bound:.2f}x "
              f"({cpus} x {one.loop_us:.0f} / {many.server_us:.0f})")
        return
    cpus = os.cpu_count() or 1
    bound = min(count, cpus * one.loop_us / (many.server_us + many.client_us))
    print(f"    {cpus} CPUs shared with the load generator allow at most {bound:.2f}x "
          f"({cpus} x {one.loop_us:.0f} / ({many.server_us:.0f} + {many.client_us:.0f}))")


def cpu_split_text() -> str:
    if CPU_SPLIT is None:
        return ", servers and load generator on the same CPUs"
    return (f", servers pinned to CPUs {sorted(CPU_SPLIT[0])}, load generator to "
            f"{sorted(CPU_SPLIT[1])}")


def _resolved(choice: str, fast: str, fallback: str) -> str:
    """What uvicorn's "auto" picks: the fast module if it imports."""
    if choice != "auto":
        return choice
    try:
        __import__(fast)
    except ImportError:
        return fallback
    return fast


if __name__ == "__main__":
    sys.exit(main())
