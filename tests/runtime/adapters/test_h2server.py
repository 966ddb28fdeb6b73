"""irkit's own gRPC transport (``runtime/adapters/h2server.py``) from a raw-socket HTTP/2
client: what tritonclient never sends (a bad preface, tiny DATA frames, CONTINUATION,
a small receive window, RST_STREAM, too many streams, DATA beyond a window, GET, gzip)
must still be answered per RFC 9113 and gRPC's PROTOCOL-HTTP2.md. The limits are tested
on an ``H2GrpcServer`` of its own (``toy``: small windows, two bytes-in, bytes-out methods)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from irkit.runtime.adapters import h2server
from irkit.runtime.adapters.h2server import Context, H2GrpcServer, Method
from irkit.runtime.adapters.h2wire import gunzip
from irkit.runtime.adapters.oip import inference_pb2 as pb
from irkit.runtime.adapters.repository import Batching, ModelRepository
from irkit.testing.serving import Served

hpack = pytest.importorskip("hpack")

pytestmark = pytest.mark.service

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 6, 7, 8, 9  # fmt: skip
INFER = "/inference.GRPCInferenceService/ModelInfer"
ECHO, HOLD = "/t.Toy/Echo", "/t.Toy/Hold"
FLOW_CONTROL_ERROR, REFUSED_STREAM, CANCEL = 3, 7, 8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload))[1:] + bytes((kind, flags)) + \
        struct.pack(">L", stream) + payload  # fmt: skip


class RawClient:
    """A blocking HTTP/2 client on one socket: send frames, read frames, decode headers."""

    def __init__(self, port: int, settings: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.pending = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def headers(self, path: str, method: str = "POST", content_type: str = "application/grpc",
                extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                                    (":authority", "localhost"), ("te", "trailers"),
                                    ("content-type", content_type), *extra])  # fmt: skip

    def read(self, timeout: float = 5.0) -> tuple[int, int, int, bytes] | None:
        """The next frame (type, flags, stream, payload); None on EOF or timeout."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.pending) >= 9:
                length = int.from_bytes(self.pending[:3], "big")
                if len(self.pending) >= 9 + length:
                    head, self.pending = self.pending[:9 + length], self.pending[9 + length:]
                    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                    return head[3], head[4], stream, head[9:]
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.pending += chunk

    def response(self, stream: int) -> tuple[bytes, dict[str, str]]:
        """Read until ``stream`` ends: (DATA payload, headers and trailers)."""
        data, headers = b"", {}
        while (got := self.read()) is not None:
            kind, flags, sid, payload = got
            if sid != stream:
                continue
            if kind == DATA:
                data += payload
            elif kind == HEADERS:
                headers.update(self.decoder.decode(payload))
            if flags & 1 and kind in (DATA, HEADERS):
                return data, headers
        raise AssertionError(f"stream {stream} did not end")

    def frames(self, timeout: float = 0.3) -> list[tuple[int, int, int, bytes]]:
        """Every frame until the server goes quiet for ``timeout`` s or closes."""
        got = []
        while (one := self.read(timeout)) is not None:
            got.append(one)
        return got

    def until(self, done: Callable[[list[tuple[int, int, int, bytes]]], bool],
              ) -> list[tuple[int, int, int, bytes]]:
        """Every frame until ``done(frames so far)`` (within 5 s of quiet)."""
        got: list[tuple[int, int, int, bytes]] = []
        while not done(got):
            one = self.read()
            assert one is not None, f"the server went quiet or closed after {got}"
            got.append(one)
        return got

    def close(self) -> None:
        self.sock.close()


def infer_message(model: str, x: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    message = request.SerializeToString()
    return b"\0" + len(message).to_bytes(4, "big") + message


def output(data: bytes) -> np.ndarray:
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5
    response = pb.ModelInferResponse.FromString(data[5:])
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
        tuple(response.outputs[0].shape))


@pytest.fixture
def served(serve: Callable[..., Served], digits_model: Any, gated: Any) -> Served:
    repository = ModelRepository(label="h2")
    repository.add_model("digits", digits_model, batching=Batching(max_delay_ms=1.0))
    return serve(repository)


def test_bad_preface_gets_goaway_and_close(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.grpc.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while chunk := sock.recv(65536):  # the server closes: EOF, not a hang
        received += chunk
    sock.close()
    frames = []
    while received:
        length = int.from_bytes(received[:3], "big")
        frames.append((received[3], received[9:9 + length]))
        received = received[9 + length:]
    goaway = [payload for kind, payload in frames if kind == GOAWAY]
    assert goaway and struct.unpack(">LL", goaway[0][:8])[1] == 1  # PROTOCOL_ERROR
    client = RawClient(served.grpc.port)
    client.sock.sendall(frame(DATA, 0, 1, bytes(16385)))  # over SETTINGS_MAX_FRAME_SIZE
    codes = []
    while (got := client.read()) is not None:
        if got[0] == GOAWAY:
            codes.append(struct.unpack(">LL", got[3][:8])[1])
    assert codes == [6]  # FRAME_SIZE_ERROR, then the server closed (read() saw EOF)
    client.close()


def test_random_frames_never_break_the_server(served: Served, digits_model: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Garbage frames after a valid preface: each connection is answered or closed with
    GOAWAY, no handler or parser traceback is logged, and the server keeps serving."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        client = RawClient(served.grpc.port)
        junk = b"".join(frame(int(rng.integers(0, 11)), int(rng.integers(0, 256)),
                              int(rng.integers(0, 6)),
                              rng.bytes(int(rng.integers(0, 40))))
                        for _ in range(int(rng.integers(1, 6))))  # fmt: skip
        client.sock.sendall(junk + frame(PING, 0, 0, b"pingpong"))
        while (got := client.read(timeout=2)) is not None and got[:2] != (PING, 1):
            pass  # until the PING's ACK (still open) or EOF (closed after a GOAWAY)
        client.close()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    client = RawClient(served.grpc.port)
    x = np.ones((1, 64), np.float32)
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(INFER))
                        + frame(DATA, 1, 1, infer_message("digits", x)))  # fmt: skip
    data, headers = client.response(1)
    assert headers["grpc-status"] == "0" and output(data).shape == (1, 10)
    client.close()


def test_split_request_continuation_and_unknown_method(served: Served,
                                                       digits_model: Any) -> None:
    client = RawClient(served.grpc.port)
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    block = client.headers(INFER)
    client.sock.sendall(frame(HEADERS, 0, 1, block[:5]) + frame(CONTINUATION, 0, 1, block[5:9])
                        + frame(CONTINUATION, 4, 1, block[9:]))  # END_HEADERS on the last
    body = infer_message("digits", x)
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
    for chunk in chunks[:-1]:  # one padded frame among 7-byte ones
        client.sock.sendall(frame(DATA, 0x8, 1, b"\x03" + chunk + b"\0\0\0") if chunk is chunks[3]
                            else frame(DATA, 0, 1, chunk))  # fmt: skip
    client.sock.sendall(frame(DATA, 1, 1, chunks[-1]))  # END_STREAM
    data, headers = client.response(1)
    assert headers[":status"] == "200" and headers["grpc-status"] == "0"
    np.testing.assert_allclose(output(data), digits_model.run({"x": x})["logits"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    client.sock.sendall(frame(HEADERS, 5, 3, client.headers("/inference.GRPCInferenceService/No")))
    data, headers = client.response(3)
    assert not data and headers["grpc-status"] == "12"  # UNIMPLEMENTED, trailers-only
    client.sock.sendall(frame(PING, 0, 0, b"12345678"))
    while (got := client.read()) is not None and got[0] != PING:
        pass
    assert got == (PING, 1, 0, b"12345678")
    client.close()


def test_response_larger_than_the_window_waits_for_window_update(
        serve: Callable[..., Served], gemm_dir: Any) -> None:
    import irkit.runtime

    model = irkit.runtime.load(gemm_dir)
    repository = ModelRepository(label="h2")
    repository.add_model("gemm512", model, batching=Batching(max_delay_ms=1.0))
    served = serve(repository)
    client = RawClient(served.grpc.port, settings=struct.pack(">HL", 0x4, 1000))
    x = np.random.default_rng(6).standard_normal((8, 512)).astype(np.float32)
    body = infer_message("gemm512", x)  # 16 KiB: two frames of at most 16384 bytes
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(INFER)) + frame(DATA, 0, 1, body[:9000])
                        + frame(DATA, 1, 1, body[9000:]))  # fmt: skip
    data, ended = b"", False
    while (got := client.read(timeout=0.5)) is not None:  # until the server goes quiet
        kind, flags, _, payload = got
        data += payload if kind == DATA else b""
        ended |= kind == HEADERS and bool(flags & 1)
    assert len(data) == 1000 and not ended, "the server overran the client's stream window"
    client.sock.sendall(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 1 << 20)))
    rest, headers = client.response(1)
    assert headers["grpc-status"] == "0"
    np.testing.assert_allclose(output(data + rest), model.run({"x": x})["y"],
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    client.close()


def test_client_rst_stream_cancels_the_call(serve: Callable[..., Served], digits_model: Any,
                                            gated: Any) -> None:
    slow = gated(digits_model, gate_run=True)
    repository = ModelRepository(label="h2")
    repository.add_model("digits", slow, batching=Batching(max_batch=1, max_delay_ms=1.0))
    served = serve(repository)
    client = RawClient(served.grpc.port)
    x = np.ones((1, 64), np.float32)
    request = frame(DATA, 1, 1, infer_message("digits", x))
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(INFER)) + request)
    assert slow.running.wait(10)
    client.sock.sendall(frame(RST_STREAM, 0, 1, struct.pack(">L", 8)))  # CANCEL
    series = 'irkit_requests_total{adapter="grpc",model="digits",outcome="cancelled"} '
    deadline, text = time.monotonic() + 10, ""
    while series not in text and time.monotonic() < deadline:
        text = httpx.get(f"{served.http.url}/metrics").text
        time.sleep(0.02)
    assert series + "1.0" in text
    slow.run_gate.set()
    client.sock.sendall(frame(HEADERS, 4, 3, client.headers(INFER))
                        + frame(DATA, 1, 3, infer_message("digits", x)))  # fmt: skip
    data, headers = client.response(3)  # the connection still serves
    assert headers["grpc-status"] == "0" and output(data).shape == (1, 10)
    client.close()


def message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes((compressed,)) + len(payload).to_bytes(4, "big") + payload


def request(stream: int, body: bytes) -> bytes:
    """``body`` as DATA frames of at most 16,384 bytes, the last with END_STREAM."""
    chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    return b"".join(frame(DATA, int(i == len(chunks) - 1), stream, chunk)
                    for i, chunk in enumerate(chunks))  # fmt: skip


class Toy:
    """An ``H2GrpcServer`` alone on its own event loop (a thread), serving ``Echo`` (unary:
    answers its request) and ``Hold`` (streaming: reads nothing until ``release()``, then
    echoes each request)."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: H2GrpcServer = self.call(self._build(options))
        self.port: int = self.call(self.server.start("127.0.0.1", 0))

    async def _build(self, options: dict[str, Any]) -> H2GrpcServer:
        self.gate = asyncio.Event()

        async def echo(request: bytes, context: Context) -> bytes:
            return request

        async def hold(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            await self.gate.wait()
            async for request in requests:
                yield request

        methods = {ECHO: Method(echo, bytes, bytes), HOLD: Method(hold, bytes, bytes, True)}
        options.setdefault("max_message_bytes", 4 << 20)
        return H2GrpcServer(methods, **options)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def close(self) -> None:
        self.release()
        self.call(self.server.stop(0.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def toy() -> Iterator[Callable[..., Toy]]:
    made: list[Toy] = []

    def make(**options: Any) -> Toy:
        made.append(Toy(**options))
        return made[-1]

    yield make
    for server in made:
        server.close()


def rst_codes(frames: list[tuple[int, int, int, bytes]], stream: int) -> list[int]:
    return [struct.unpack(">L", p)[0] for k, _, s, p in frames if k == RST_STREAM and s == stream]


def echo_ok(client: RawClient, stream: int, payload: bytes) -> None:
    client.sock.sendall(frame(HEADERS, 4, stream, client.headers(ECHO))
                        + frame(DATA, 1, stream, message(payload)))  # fmt: skip
    data, headers = client.response(stream)
    assert headers["grpc-status"] == "0" and data == message(payload)


def test_max_concurrent_streams_is_advertised_and_refuses_one_more(
        toy: Callable[..., Toy]) -> None:
    server = toy(max_concurrent_streams=2)
    client = RawClient(server.port)
    kind, _, _, payload = client.read() or (None, 0, 0, b"")
    settings = dict(struct.unpack_from(">HL", payload, i) for i in range(0, len(payload), 6))
    assert kind == SETTINGS and settings[0x3] == 2  # SETTINGS_MAX_CONCURRENT_STREAMS
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(HOLD))
                        + frame(HEADERS, 4, 3, client.headers(HOLD))  # two open streams
                        + frame(HEADERS, 4, 5, client.headers(ECHO))
                        + frame(DATA, 1, 5, message(b"refused")))  # fmt: skip
    frames = client.until(lambda got: bool(rst_codes(got, 5)))
    assert rst_codes(frames, 5) == [REFUSED_STREAM]  # RFC 9113 5.1.2: retryable (8.7)
    client.sock.sendall(frame(RST_STREAM, 0, 1, struct.pack(">L", CANCEL))  # one closes
                        + frame(HEADERS, 4, 7, client.headers(ECHO))
                        + frame(DATA, 1, 7, message(b"room again")))  # fmt: skip
    frames = client.until(lambda got: any(f[:3] == (HEADERS, 5, 7) for f in got))
    assert not [f for f in frames if f[2] == 5]  # the refused call was not processed
    assert b"".join(p for k, _, s, p in frames if k == DATA and s == 7) == message(b"room again")
    client.close()


def test_data_beyond_a_granted_window_is_flow_control_error(toy: Callable[..., Toy]) -> None:
    """Queued requests hold the window until the handler takes them: a client that sends
    more gets RST_STREAM (stream window) or GOAWAY (connection window) FLOW_CONTROL_ERROR;
    once the handler reads, WINDOW_UPDATEs give the window back."""
    server = toy(stream_window=65535)
    client = RawClient(server.port)
    chunk = message(bytes(16379))  # one whole message a frame: 16,384 bytes
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(HOLD))
                        + b"".join(frame(DATA, 0, 1, chunk) for _ in range(4)))  # fmt: skip
    frames = client.until(lambda got: bool(rst_codes(got, 1)))
    assert rst_codes(frames, 1) == [FLOW_CONTROL_ERROR]  # 65,536 bytes > 65,535
    assert not [f for f in frames if f[0] == WINDOW_UPDATE and f[2] == 1]
    echo_ok(client, 3, b"the connection still serves")
    client.sock.sendall(frame(HEADERS, 4, 5, client.headers(HOLD))
                        + b"".join(frame(DATA, 0, 5, chunk) for _ in range(3)))  # fmt: skip
    assert not [f for f in client.frames() if f[0] == WINDOW_UPDATE and f[2] == 5]
    server.release()  # the handler takes the three messages (and echoes them)
    frames = client.until(
        lambda got: sum(len(p) for k, _, s, p in got if k == DATA and s == 5) >= 3 * len(chunk))
    given = [struct.unpack(">L", p)[0] for k, _, s, p in frames if k == WINDOW_UPDATE and s == 5]
    echoed = b"".join(p for k, _, s, p in frames if k == DATA and s == 5)
    assert given == [2 * 16384] and echoed == 3 * chunk  # given back once half is owed
    client.close()

    server = toy(connection_window=65535, stream_window=1 << 20)
    client = RawClient(server.port)
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(HOLD))
                        + frame(HEADERS, 4, 3, client.headers(HOLD))
                        + b"".join(frame(DATA, 0, 1 + 2 * (i % 2), chunk) for i in range(4)))
    frames = client.until(lambda got: any(f[0] == GOAWAY for f in got))
    goaway = [struct.unpack(">LL", p[:8])[1] for k, _, _, p in frames if k == GOAWAY]
    assert goaway == [FLOW_CONTROL_ERROR] and client.read() is None  # then closed
    client.close()


def gunzip_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the messages the server decompressed (its own gunzip, spied on)."""
    calls: list[int] = []

    def spy(data: bytes, limit: int) -> bytes:
        calls.append(len(data))
        return gunzip(data, limit)

    monkeypatch.setattr(h2server, "gunzip", spy)
    return calls


def test_large_requests_keep_their_windows_moving_with_grpcio(
        toy: Callable[..., Toy], monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio's client honours the windows: a 3 MB request through 64 KiB windows needs
    the server's WINDOW_UPDATEs as it consumes, plain and gzip-compressed."""
    import grpc

    server = toy(stream_window=65535, connection_window=65535)
    payload = bytes(np.random.default_rng(8).integers(0, 4, 3_000_000, dtype=np.uint8))
    gunzipped = gunzip_calls(monkeypatch)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        echo = channel.unary_unary(ECHO)
        assert echo(payload, timeout=10) == payload
        assert not gunzipped
        assert echo(payload, timeout=10, compression=grpc.Compression.Gzip) == payload
    assert len(gunzipped) == 1 and gunzipped[0] < len(payload) // 2  # it came compressed


def test_not_post_is_405_and_not_grpc_is_415(toy: Callable[..., Toy]) -> None:
    client = RawClient(toy().port)
    client.sock.sendall(frame(HEADERS, 5, 1, client.headers(ECHO, method="GET")))
    data, headers = client.response(1)
    assert (headers[":status"], headers["grpc-status"]) == ("405", "13") and not data
    client.sock.sendall(frame(HEADERS, 4, 3, client.headers(ECHO, content_type="text/json"))
                        + frame(DATA, 1, 3, b"{}"))  # fmt: skip
    data, headers = client.response(3)
    assert (headers[":status"], headers["grpc-status"]) == ("415", "12") and not data
    assert headers["grpc-accept-encoding"] == "identity,gzip"
    client.close()


def test_gzip_messages_are_read_and_limited_when_decompressed(toy: Callable[..., Toy]) -> None:
    client = RawClient(toy(max_message_bytes=1 << 20).port)
    payload = bytes(range(256)) * 64
    gzipped = (("grpc-encoding", "gzip"),)
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(ECHO, extra=gzipped))
                        + frame(DATA, 1, 1, message(gzip.compress(payload), True)))
    data, headers = client.response(1)
    assert headers["grpc-status"] == "0" and data == message(payload)  # answered plain
    bomb = gzip.compress(bytes(8 << 20))  # 8 MiB of zeros in 8 KiB: over the 1 MiB limit
    assert len(bomb) < 16000
    client.sock.sendall(frame(HEADERS, 4, 3, client.headers(ECHO, extra=gzipped))
                        + frame(DATA, 1, 3, message(bomb, True)))  # fmt: skip
    data, headers = client.response(3)
    assert headers["grpc-status"] == "8" and "once decompressed" in headers["grpc-message"]
    client.sock.sendall(frame(HEADERS, 4, 5, client.headers(ECHO, extra=(("grpc-encoding",
                                                                           "snappy"),)))
                        + frame(DATA, 1, 5, message(b"x", True)))  # fmt: skip
    data, headers = client.response(5)
    assert headers["grpc-status"] == "12" and "'snappy'" in headers["grpc-message"]
    assert headers["grpc-accept-encoding"] == "identity,gzip"
    client.sock.sendall(frame(HEADERS, 4, 7, client.headers(ECHO))  # flag 1, no encoding
                        + frame(DATA, 1, 7, message(gzip.compress(payload), True)))
    data, headers = client.response(7)
    assert headers["grpc-status"] == "13" and "compressed flag" in headers["grpc-message"]
    client.close()


def test_tritonclient_gzip_request(served: Served, digits_model: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tgrpc = pytest.importorskip("tritonclient.grpc")
    gunzipped = gunzip_calls(monkeypatch)
    x = np.random.default_rng(9).standard_normal((4, 64)).astype(np.float32)
    client = tgrpc.InferenceServerClient(served.grpc.address)
    inputs = [tgrpc.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer("digits", inputs, compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), digits_model.run({"x": x})["logits"],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert len(gunzipped) == 1  # the request message came gzip-compressed
    client.close()


def test_stop_ends_calls_waiting_for_window(toy: Callable[..., Toy]) -> None:
    """When stop's grace ends, a call whose answer waits for the client's window ends with
    trailers UNAVAILABLE if it stopped between messages, RST_STREAM CANCEL if in one."""
    server = toy()
    client = RawClient(server.port, settings=struct.pack(">HL", 0x4, 0))  # windows of 0
    payload = bytes(40000)
    client.sock.sendall(frame(HEADERS, 4, 1, client.headers(ECHO))
                        + request(1, message(payload))
                        + frame(HEADERS, 4, 3, client.headers(ECHO))
                        + request(3, message(payload))
                        + frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 1000)))  # fmt: skip
    frames = client.until(lambda got: any(f[0] == DATA for f in got)
                          and any(f[0] == HEADERS and f[2] == 3 for f in got))
    assert [len(p) for k, _, s, p in frames if k == DATA] == [1000]  # stream 1's, in part
    server.call(server.server.stop(0.2))
    frames = client.frames(timeout=5)  # until the server closes
    assert rst_codes(frames, 1) == [CANCEL]
    ends = [client.decoder.decode(p) for k, f, s, p in frames if k == HEADERS and s == 3]
    assert len(ends) == 1 and dict(ends[0])["grpc-status"] == "14"  # UNAVAILABLE
    assert not [f for f in frames if f[0] == DATA] and client.read() is None
    client.close()


def test_adapter_option_max_concurrent_streams(serve: Callable[..., Served],
                                               digits_model: Any) -> None:
    from irkit.runtime.adapters.grpc import GrpcAdapter

    repository = ModelRepository(label="h2")
    repository.add_model("digits", digits_model)
    with pytest.raises(ValueError, match="max_concurrent_streams must be >= 1"):
        GrpcAdapter(None, repository=repository, max_concurrent_streams=0)
    client = RawClient(serve(repository, max_concurrent_streams=3).grpc.port)
    kind, _, _, payload = client.read() or (None, 0, 0, b"")
    settings = dict(struct.unpack_from(">HL", payload, i) for i in range(0, len(payload), 6))
    assert kind == SETTINGS and settings[0x3] == 3 and settings[0x4] == 1 << 24
    client.close()
