"""The bytes of irkit's HTTP/2 gRPC transport (``h2server``): frame types, flags, error and
status codes, frame and HPACK encoding of what the server writes (constant response headers,
trailers as literals without indexing), and the gRPC message helpers (``grpc-timeout``,
gzip, message boundaries in an outbox); and what handlers see of a call: ``Method``,
``Context``, ``GrpcAbort``."""

from __future__ import annotations

import struct
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)  # fmt: skip
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, _, _, FRAME_SIZE_ERROR, \
    REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)  # fmt: skip
# gRPC status codes
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14

FRAME_HEAD = struct.Struct(">HBBBL")  # length (16 high + 8 low bits), type, flags, stream
MAX_FRAME = 16384  # what we accept (the default SETTINGS_MAX_FRAME_SIZE; not raised)
STREAM_WINDOW = 1 << 24  # what we advertise per stream
CONNECTION_WINDOW = 1 << 30
DEFAULT_WINDOW = 65535  # RFC 9113 6.9.2: every window's size before SETTINGS/WINDOW_UPDATE
MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS by default
ENCODINGS = ("identity", "gzip")  # grpc-encoding of request messages we can read
MAX_HEADER_BLOCK = 1 << 16  # a larger request header block is a protocol error
MAX_WINDOW = (1 << 31) - 1
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``first``'s high bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (no Huffman)."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


# :status 200 (static index 8), content-type (static 31) as a literal without indexing, and
# the encodings we accept (gRPC's compression.md: a server names them in every response)
RESPONSE_HEADERS = (b"\x88" + b"\x0f\x10" + hpack_int(16, 7, 0) + b"application/grpc"
                    + literal(b"grpc-accept-encoding", ",".join(ENCODINGS).encode()))
STATUS_405 = b"\x08\x03405"  # :status (static 8) as a literal without indexing
STATUS_415 = b"\x08\x03415"
STATUS_OK = literal(b"grpc-status", b"0")
_PERCENT_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


class GrpcAbort(Exception):
    """End the call with gRPC status ``code`` and ``message`` (``Context.abort`` raises it)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Method:
    """One RPC: ``streaming`` (stream-stream) or unary, its (de)serializers and handler."""

    __slots__ = ("deserialize", "handler", "serialize", "streaming")

    def __init__(self, handler: Callable[..., Any], deserialize: Callable[[bytes], Any],
                 serialize: Callable[[Any], bytes], streaming: bool = False) -> None:
        self.handler, self.deserialize, self.serialize = handler, deserialize, serialize
        self.streaming = streaming


class Context:
    """What a handler sees of its call (the part of grpc.aio's ServicerContext irkit uses)."""

    __slots__ = ("deadline", "trailers")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.trailers: tuple[tuple[str, str], ...] = ()

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailers = tuple(metadata)

    async def abort(self, code: Any, details: str = "") -> None:
        """Raise GrpcAbort; ``code`` is an int or a ``grpc.StatusCode``."""
        raise GrpcAbort(code if isinstance(code, int) else code.value[0], details)


def trailer_block(code: int, message: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    if code == OK and not extra:
        return STATUS_OK
    block = literal(b"grpc-status", str(code).encode())
    if message:
        quoted = urllib.parse.quote(message[:4096], safe=_PERCENT_SAFE)
        block += literal(b"grpc-message", quoted.encode())
    for name, value in extra:
        block += literal(name.encode(), str(value).encode())
    return block


def parse_timeout(text: str) -> float | None:
    unit = TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or len(text) > 9:
        return None
    return int(text[:-1]) * unit


def rest_of_message(outbox: bytes | bytearray, rest: int, size: int) -> int:
    """What is left unsent of the message that sending ``outbox[:size]`` cuts (0: the cut
    falls between messages); ``rest``: the same before, for the message ``outbox`` starts
    in. ``outbox`` holds whole 5-byte-prefixed messages after its first ``rest`` bytes."""
    while rest < size:
        rest += 5 + int.from_bytes(outbox[rest + 1:rest + 5], "big")
    return rest - size


class ProtocolError(Exception):
    """A connection error: the connection ends with GOAWAY ``code`` (RFC 9113 5.4.1)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def gunzip(data: bytes, limit: int) -> bytes:
    """A gzip-compressed message (``grpc-encoding: gzip``), decompressed; GrpcAbort if it is
    not valid gzip or decompresses to more than ``limit`` bytes (inflating stops one byte
    past it, so a small bomb costs little)."""
    inflate = zlib.decompressobj(wbits=31)  # 31: gzip's header and trailer
    try:
        message = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise GrpcAbort(INTERNAL, f"cannot decompress a gzip message: {exc}") from None
    if len(message) > limit:
        raise GrpcAbort(RESOURCE_EXHAUSTED, f"received a gzip message larger than max "
                        f"({limit} bytes) once decompressed")  # fmt: skip
    if not inflate.eof or inflate.unused_data:
        raise GrpcAbort(INTERNAL, "a gzip message is truncated or has data after its end")
    return message
