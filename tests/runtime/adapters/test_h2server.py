"""irkit's own gRPC transport (``runtime/adapters/h2server.py``) from a raw-socket HTTP/2
client: what tritonclient never sends (a bad preface, tiny DATA frames, CONTINUATION,
a small receive window, RST_STREAM) must still be answered per RFC 9113 and gRPC."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from irkit.runtime.adapters.oip import inference_pb2 as pb
from irkit.runtime.adapters.repository import Batching, ModelRepository
from irkit.testing.serving import Served

hpack = pytest.importorskip("hpack")

pytestmark = pytest.mark.service

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 6, 7, 8, 9  # fmt: skip
INFER = "/inference.GRPCInferenceService/ModelInfer"


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

    def headers(self, path: str) -> bytes:
        return self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", "localhost"), ("te", "trailers"),
                                    ("content-type", "application/grpc")])  # fmt: skip

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
