"""gRPC vs HTTP serving benchmark: irkit's Open Inference Protocol v2 on both transports.

    python benchmarks/serve_grpc.py [--seconds 0.5] [--rounds 5] [--clients 1,16,64]
                                    [--models digits,gemm512] [--client auto|h2load|python]
                                    [--no-stream]

Each server runs in its own subprocess with the same model and batching settings
(max_batch=32, max_delay_ms=2, one inference thread):

- ``http``: ``HttpAdapter`` (uvicorn, httptools, uvloop);
- ``grpc``: ``GrpcAdapter`` on irkit's own HTTP/2 transport (``server = "irkit"``, the
  default; uvloop), unary ModelInfer: the criterion's row;
- ``grpc (grpcio)``: the same adapter on grpcio's asyncio server (``server = "grpcio"``),
  for comparison;
- ``grpc const``: the ``grpc`` server whose ModelInfer answers a precomputed response
  without decoding, batching or running anything: the ceiling of the transport itself
  (as ``serve_http.py``'s constant server is for HTTP);
- ``grpc stream``: the ``grpc`` server's ModelStreamInfer (one long-lived stream per
  client, one request in flight on each), which clients use for throughput.

Both protocols carry binary tensors: HTTP with Triton's binary tensor extension both ways,
gRPC with ``raw_input_contents`` / ``raw_output_contents`` as tritonclient sends them.

Load generator: ``h2load`` (Debian's ``nghttp2-client``; HTTP/1.1 with ``--h1``, gRPC as
HTTP/2 POSTs of a length-prefixed ModelInferRequest serialized once), one connection per
client, each sending one request after another: the same C client for both protocols, no
client library on either side (HTTP/2 framing costs h2load itself about twice what
HTTP/1.1 does per request: the ``client us`` column). h2load cannot stream, so the
``grpc stream`` rows come from a Python ``grpc.aio`` client writing pre-serialized bytes
(one channel, connection and stream per client). Without h2load (``--client python``)
the unary clients are Python too: raw HTTP/1.1 on asyncio (as ``serve_http.py``) and a
``grpc.aio`` channel sending pre-serialized bytes, which costs far more client CPU per
request than the HTTP one on a small machine. Before timing, one request of each load
generator is checked on every server, and ``tritonclient.grpc`` and
``tritonclient.http`` (if installed) must get the same outputs from the two protocols.
Each window runs ``--seconds`` after a short warm-up; failures are the server's non-ok
requests (its ``irkit_requests_total``), since h2load sees gRPC errors only in trailers.

The table gives requests/s (median window), p50/p99 latency over all windows, mean rows
per model call, server CPU and load generator CPU per request, and per (model, clients)
the gRPC/HTTP ratio of requests/s and of requests per server CPU-second, each the median
of per-round ratios of back-to-back windows (other load on a shared machine moves single
windows, not these). Below the table, per model at the most clients: the gRPC/HTTP
ratio against the target, and the server CPU per request of HTTP, gRPC on either
transport and the irkit transport answering a constant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_http import (
    WARMUP,
    Point,
    build_models,
    client_cpu,
    paired_ratio,
    pick_client,
    run_h2load,
    run_load,
)

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
GRPCIO = "grpc (grpcio)"
KINDS = ("http", "grpc", GRPCIO, "grpc const")  # one server process each
STREAM = "grpc stream"  # the "grpc" server's ModelStreamInfer, driven by a Python client


GrpcPoint = Point  # the load generator's CPU per request is a Point's too (client_us)


# ----------------------------------------------------------------------------- servers


def serve(kind: str, artifact: str, max_batch: int, port_file: str) -> None:
    """Run one server; write "port metrics_port" to ``port_file`` once it is ready."""
    import threading

    import irkit.runtime
    from irkit.runtime.adapters.grpc import GrpcAdapter
    from irkit.runtime.adapters.http import HttpAdapter

    options = {"port": 0, "max_batch": max_batch, "max_delay_ms": 2.0, "max_queue": 4096}
    model = irkit.runtime.load(artifact)
    if kind == "http":
        adapter: Any = HttpAdapter(model, **options)
    else:
        adapter = GrpcAdapter(model, server="grpcio" if kind == GRPCIO else "irkit", **options)
        if kind == "grpc const":
            _answer_constant(adapter, model)

    def announce() -> None:
        from prometheus_client import start_http_server

        adapter.ready.wait(60)
        adapter.started.wait(60)
        metrics_port = adapter.port
        if kind != "http":  # the registry over a plain HTTP exporter of its own
            server, _ = start_http_server(0, "127.0.0.1", registry=adapter.repository.registry)
            metrics_port = server.server_port
        Path(port_file).write_text(f"{adapter.port} {metrics_port}")

    threading.Thread(target=announce, daemon=True).start()
    adapter.serve()


def _answer_constant(adapter: Any, model: Any) -> None:
    """Make ``adapter``'s ModelInfer answer one precomputed response (the stack alone)."""
    from irkit.runtime.adapters import grpc as grpc_adapter
    from irkit.runtime.adapters.grpc_codec import encode_infer_response

    spec = model.inputs[0]
    result = model.run({spec.name: np.zeros((1, *spec.shape[1:]), spec.dtype)})
    response = encode_infer_response(model.name, "1", result)

    class Constant(grpc_adapter._Servicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return response

    grpc_adapter._Servicer = Constant  # type: ignore[misc]


class Server:
    """A server subprocess; ``port`` once it is ready."""

    def __init__(self, kind: str, artifact: Path, max_batch: int) -> None:
        self.kind = kind
        self.port_file = Path(tempfile.mkstemp(prefix="irkit-bench-port-")[1])
        self.port_file.write_text("")
        command = [sys.executable, __file__, "--serve", kind, "--artifact", str(artifact),
                   "--max-batch", str(max_batch), "--port-file", str(self.port_file)]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 60
        while not self.port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.02)
        port, metrics = self.port_file.read_text().split()
        self.port, self.metrics_port = int(port), int(metrics)

    def stats(self) -> tuple[float, float, float]:
        """(rows, model calls, non-ok requests) so far, from the server's registry."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        rows = calls = failed = 0.0
        for line in urllib.request.urlopen(url).read().decode().splitlines():
            value = line.rsplit(" ", 1)[-1]
            if line.startswith("irkit_batch_size_sum"):
                rows += float(value)
            elif line.startswith("irkit_batch_size_count"):
                calls += float(value)
            elif line.startswith("irkit_requests_total") and not any(
                    f'outcome="{o}"' in line for o in ("ok", "cancelled")):
                failed += float(value)
        return rows, calls, failed

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.port_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------ requests


def _input(model: str) -> np.ndarray:
    width = 64 if model == "digits" else 512
    return np.random.default_rng(3).standard_normal((1, width)).astype("<f4")


def http_body(model: str) -> tuple[bytes, int]:
    """An infer body with binary tensors both ways, and its JSON header's length."""
    raw = _input(model).tobytes()
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, len(raw) // 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw)}}],
         "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    return header + raw, len(header)


def http_request(model: str, port: int) -> bytes:
    """The same as one raw HTTP/1.1 request."""
    body, split = http_body(model)
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {split}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def grpc_request(model: str) -> bytes:
    """A serialized ModelInferRequest with raw_input_contents (as tritonclient sends)."""
    from irkit.runtime.adapters.oip import inference_pb2 as pb

    x = _input(model)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    return request.SerializeToString()


# --------------------------------------------------------------------- load generators


def h2load_load(kind: str, port: int, model: str, clients: int,
                seconds: float) -> list[float]:
    """Latencies (s) of one h2load window: ``clients`` connections, one request each."""
    if kind == "http":
        body, split = http_body(model)
        url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
        headers = {"content-type": "application/octet-stream",
                   "inference-header-content-length": str(split)}  # fmt: skip
    else:
        message = grpc_request(model)
        body = b"\0" + len(message).to_bytes(4, "big") + message  # gRPC framing
        url = f"http://127.0.0.1:{port}{INFER}"
        headers = {"content-type": "application/grpc", "te": "trailers"}
    return run_h2load(url, body, headers, clients, seconds, h1=kind == "http")[0]


async def _grpc_python_load(port: int, request: bytes, clients: int,
                            seconds: float) -> list[float]:
    import grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER)  # bytes in, bytes out: no client-side codec

        async def client(stop_at: float, record_from: float) -> None:
            while (now := time.perf_counter()) < stop_at:
                await call(request)
                if now >= record_from:
                    latencies.append(time.perf_counter() - now)

        start = time.perf_counter()
        await asyncio.gather(*(client(start + WARMUP + seconds, start + WARMUP)
                               for _ in range(clients)))  # fmt: skip
    return latencies


async def _grpc_stream_load(port: int, request: bytes, clients: int,
                            seconds: float) -> list[float]:
    """ModelStreamInfer: one stream per client, each its own connection, writing one
    pre-serialized request and reading its answer before the next."""
    import grpc

    latencies: list[float] = []
    # a channel of its own per client (not one shared subchannel): a connection each, as h2load
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(clients)]  # fmt: skip
    try:
        async def client(channel: Any, stop_at: float, record_from: float) -> None:
            call = channel.stream_stream(STREAM_INFER)()
            while (now := time.perf_counter()) < stop_at:
                await call.write(request)
                answer = await call.read()
                if now >= record_from and answer and not answer.startswith(b"\n"):
                    latencies.append(time.perf_counter() - now)  # field 1: error_message
            await call.done_writing()

        start = time.perf_counter()
        await asyncio.gather(*(client(channel, start + WARMUP + seconds, start + WARMUP)
                               for channel in channels))  # fmt: skip
    finally:
        for channel in channels:
            await channel.close()
    return latencies


def stream_load(port: int, model: str, clients: int, seconds: float) -> list[float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_grpc_stream_load(port, grpc_request(model), clients, seconds))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_grpc_stream_load(port, grpc_request(model), clients, seconds))


def python_load(kind: str, port: int, model: str, clients: int,
                seconds: float) -> list[float]:
    if kind == "http":
        return run_load(port, http_request(model, port), clients, seconds)[0]
    return asyncio.run(_grpc_python_load(port, grpc_request(model), clients, seconds))


def measure(point: GrpcPoint, server: Server, seconds: float, client: str) -> None:
    """Add one measurement window to ``point``."""
    before = server.stats()
    cpu_before, client_before = server.cpu_seconds(), client_cpu()
    if point.server == STREAM:
        latencies = stream_load(server.port, point.model, point.clients, seconds)
    else:
        load = h2load_load if client == "h2load" else python_load
        latencies = load(server.kind, server.port, point.model, point.clients, seconds)
    # scale out the un-recorded warm-up share of the CPU time
    cpu = (server.cpu_seconds() - cpu_before) * seconds / (seconds + WARMUP)
    used = (client_cpu() - client_before) * seconds / (seconds + WARMUP)
    after = server.stats()
    point.window_client_us.append(1e6 * used / max(1, len(latencies)))
    point.window_rps.append(len(latencies) / seconds)
    point.window_per_cpu.append(len(latencies) / cpu if cpu else float("nan"))
    point.latencies += latencies
    point.rows += after[0] - before[0]
    point.calls += after[1] - before[1]
    point.failures += int(after[2] - before[2])


def check_servers(servers: dict[tuple[str, str], Server]) -> None:
    """Before anything is timed: the exact request each load generator sends gets an
    answer from every server, and Triton's own clients (``tritonclient.grpc`` and
    ``tritonclient.http``, when installed) get the same outputs from both protocols."""
    import grpc

    from irkit.runtime.adapters.oip import inference_pb2 as pb

    for (model, kind), server in servers.items():
        if kind == "http":
            import urllib.request

            body, split = http_body(model)
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", data=body,
                headers={"Inference-Header-Content-Length": str(split)})  # fmt: skip
            assert urllib.request.urlopen(request).status == 200
            continue
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            answer = pb.ModelInferResponse.FromString(
                channel.unary_unary(INFER)(grpc_request(model)))
        assert len(answer.raw_output_contents) == 1, f"{kind} {model}: no output"
    for model in {m for m, _ in servers}:
        if (model, "http") in servers and (model, "grpc") in servers:
            _check_with_tritonclient(model, servers[model, "http"].port,
                                     servers[model, "grpc"].port)  # fmt: skip


def _check_with_tritonclient(model: str, http_port: int, grpc_port: int) -> None:
    try:
        import tritonclient.grpc as tgrpc
        import tritonclient.http as thttp
    except ImportError:
        return
    x = _input(model)
    grpc_in = tgrpc.InferInput("x", list(x.shape), "FP32")
    grpc_in.set_data_from_numpy(x)
    http_in = thttp.InferInput("x", list(x.shape), "FP32")
    http_in.set_data_from_numpy(x, binary_data=True)
    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    http_client = thttp.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        over_grpc = grpc_client.infer(model, [grpc_in]).get_response()
        over_http = http_client.infer(model, [http_in])
    finally:
        grpc_client.close()
        http_client.close()
    for index, output in enumerate(over_grpc.outputs):
        got = np.frombuffer(over_grpc.raw_output_contents[index], "<f4")
        want = over_http.as_numpy(output.name).ravel()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{model}: gRPC and HTTP answers differ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="measured time per window")
    parser.add_argument("--rounds", type=int, default=5, help="windows per point, interleaved")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--models", default="digits,gemm512")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--client", default="auto", choices=("auto", "h2load", "python"),
                        help="load generator (auto: h2load if on PATH)")
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        help=f"leave out the {STREAM!r} rows (ModelStreamInfer)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.artifact, args.max_batch, args.port_file)
        return 0
    client = pick_client(args.client, parser)

    clients = [int(c) for c in args.clients.split(",")]
    models = args.models.split(",")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="irkit-bench-") as tmp:
        artifacts = build_models(Path(tmp))
        servers: dict[tuple[str, str], Server] = {}
        try:
            for model in models:
                for kind in KINDS:
                    servers[model, kind] = Server(kind, artifacts[model], args.max_batch)
            check_servers(servers)
            kinds = (*KINDS, STREAM) if args.stream else KINDS
            points = {(m, k, c): GrpcPoint(m, k, c) for m in models for k in kinds
                      for c in clients}  # fmt: skip
            # round-robin windows, the servers of one point back to back, in an order
            # reversed every other round (see serve_http.py)
            for round_ in range(args.rounds):
                for model in models:
                    for count in clients:
                        for kind in kinds[:: -1 if round_ % 2 else 1]:
                            server = servers[model, "grpc" if kind == STREAM else kind]
                            measure(points[model, kind, count], server, args.seconds,
                                    client)  # fmt: skip
        finally:
            for server in servers.values():
                server.close()
    print_table(list(points.values()), client)
    print(f"\n{os.cpu_count()} CPUs (shared with the load generator and other work); "
          f"{args.rounds} x {args.seconds} s windows per point, interleaved; "
          f"{time.perf_counter() - started:.0f} s total")  # fmt: skip
    return 0


def print_table(points: list[GrpcPoint], client: str) -> None:
    index = {(p.model, p.server, p.clients): p for p in points}
    print(f"\n{'model':8} {'server':13} {'clients':>7} {'req/s':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'rows/call':>9} {'fail':>4} {'us cpu/req':>10} {'client us':>9} "
          f"{'vs http':>7} {'per cpu':>7}")  # fmt: skip
    for p in points:
        http = index.get((p.model, "http", p.clients))
        ratio = per_cpu = ""
        if p.server != "http" and http is not None:
            ratio = f"{paired_ratio(p, http):.2f}x"
            per_cpu = f"{paired_ratio(p, http, per_cpu=True):.2f}x"
        batch = f"{p.mean_batch:.1f}" if p.calls else ""
        print(f"{p.model:8} {p.server:13} {p.clients:7d} {p.rps:7.0f} "
              f"{p.percentile_ms(50):7.2f} {p.percentile_ms(99):7.2f} {batch:>9} "
              f"{p.failures:4d} {1e6 / p.per_cpu:10.0f} {p.client_us:9.0f} {ratio:>7} "
              f"{per_cpu:>7}")  # fmt: skip
    print(f"\nload generator: {client} for http and the unary grpc rows (ModelInfer); "
          f"{STREAM}: ModelStreamInfer from\na Python grpc.aio client (h2load cannot "
          "stream), pre-serialized bytes, one stream and connection per client.\n"
          "req/s is the median window; us cpu/req is server CPU per request and client us "
          "the load generator's\nCPU per request (median windows); a ratio is the median "
          "of per-round ratios of back-to-back\nwindows. Binary tensors on both "
          "protocols.")  # fmt: skip
    top = max(p.clients for p in points)
    print(f"\ntarget at {top} clients: gRPC >= HTTP requests/s")
    for model in sorted({p.model for p in points}):
        grpc_point, http_point = index.get((model, "grpc", top)), index.get((model, "http", top))
        const = index.get((model, "grpc const", top))
        if grpc_point and http_point:
            ratio = paired_ratio(grpc_point, http_point)
            per_cpu = paired_ratio(grpc_point, http_point, per_cpu=True)
            verdict = "PASS" if ratio >= 1 else "MISS"
            line = (f"  {model}: gRPC {ratio:.2f}x HTTP [{per_cpu:.2f}x per server "
                    f"CPU-second] {verdict}")
            grpcio = index.get((model, GRPCIO, top))
            if grpcio:
                line += f"; on grpcio {paired_ratio(grpcio, http_point):.2f}x"
            if const:
                line += f"; the transport's ceiling (grpc const) {paired_ratio(const, http_point):.2f}x"
            print(line)
            stream = index.get((model, STREAM, top))
            if stream:
                print(f"    ModelStreamInfer (not the criterion): "
                      f"{paired_ratio(stream, http_point):.2f}x HTTP "
                      f"[{paired_ratio(stream, http_point, per_cpu=True):.2f}x per server "
                      "CPU-second]")  # fmt: skip
            if const and grpcio:
                # server CPU per request: what each request costs the server's process
                http_us, grpc_us, grpcio_us, const_us = (
                    1e6 / p.per_cpu for p in (http_point, grpc_point, grpcio, const))
                print(f"    server CPU per request: HTTP {http_us:.0f} us (whole path, "
                      f"{http_point.mean_batch:.1f} rows per model call), gRPC "
                      f"{grpc_us:.0f} us ({grpc_point.mean_batch:.1f} rows per call), on "
                      f"grpcio {grpcio_us:.0f} us ({grpcio.mean_batch:.1f} rows per call), "
                      f"the irkit transport answering a constant {const_us:.0f} us")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
