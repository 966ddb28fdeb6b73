"""irkit's own gRPC transport: a lean HTTP/2 server (RFC 9113) on asyncio for gRPC calls.

One ``asyncio.Protocol`` per connection (uvloop's loop when the adapter runs on it) parses
frames from a ``bytearray`` and answers each unary call with one ``transport.write`` of
HEADERS + DATA + trailers. What it does of HTTP/2:

- frames: the connection preface, SETTINGS (+ACK), PING (+ACK), WINDOW_UPDATE,
  HEADERS/CONTINUATION (padding and priority fields skipped), DATA (padding), RST_STREAM,
  GOAWAY, PRIORITY ignored; unknown frame types ignored. A protocol error ends the
  connection with GOAWAY and its error code (PROTOCOL_ERROR, FRAME_SIZE_ERROR,
  COMPRESSION_ERROR, FLOW_CONTROL_ERROR), never with a traceback;
- HPACK: request headers are decoded with the ``hpack`` package (dynamic table, Huffman);
  the fields a call needs of a header block seen before on the connection that left the
  dynamic table as it was (the usual case: a client repeats its calls as indexed fields)
  come from a per-connection cache. Response headers and trailers use no dynamic table: constant
  bytes, and literals without indexing for ``grpc-message`` and ``retry-after``;
- flow control both ways: a 16 MiB stream window and a 1 GiB connection window are
  advertised and replenished as data is consumed (long-lived streams too); responses
  respect the peer's windows and SETTINGS_MAX_FRAME_SIZE, wait in the stream for
  WINDOW_UPDATE, and reading pauses while the transport's write buffer is full.

gRPC on top: 5-byte length-prefixed messages (a compressed one is refused with
UNIMPLEMENTED), ``grpc-timeout`` -> deadline (DEADLINE_EXCEEDED), a client's RST_STREAM
cancels the handler task, an unknown method is UNIMPLEMENTED, a message over
``max_message_bytes`` RESOURCE_EXHAUSTED; unary-unary and stream-stream methods. The
handlers are grpc.aio-style coroutines ``handler(request, context)`` (async generators
over a request iterator for streams); ``Context`` offers what they use of grpc.aio's
``ServicerContext``: ``time_remaining``, ``set_trailing_metadata`` and ``abort``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from hpack import Decoder
from hpack.exceptions import HPACKError

__all__ = ["Context", "GrpcAbort", "H2GrpcServer", "Method"]

log = logging.getLogger(__name__)

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
MAX_HEADER_BLOCK = 1 << 16  # a larger request header block is a protocol error
MAX_WINDOW = (1 << 31) - 1
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
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


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (no Huffman)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


# :status 200 (static index 8) and content-type (static 31) as a literal without indexing
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + _hpack_int(16, 7, 0) + b"application/grpc"
STATUS_OK = _literal(b"grpc-status", b"0")
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


def _trailers(code: int, message: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    if code == OK and not extra:
        return STATUS_OK
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        quoted = urllib.parse.quote(message[:4096], safe=_PERCENT_SAFE)
        block += _literal(b"grpc-message", quoted.encode())
    for name, value in extra:
        block += _literal(name.encode(), str(value).encode())
    return block


def _parse_timeout(text: str) -> float | None:
    unit = TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or len(text) > 9:
        return None
    return int(text[:-1]) * unit


class _Stream:
    __slots__ = ("body", "closed", "context", "ended", "id", "method", "outbox", "queue",
                 "received", "send_window", "sent_headers", "task", "timer", "trailers_out")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.body = bytearray()
        self.method: Method | None = None
        self.context: Context | None = None
        self.ended = False  # the client half-closed
        self.closed = False  # we sent END_STREAM or RST_STREAM
        self.send_window = send_window
        self.outbox = bytearray()  # DATA payload waiting for window
        self.trailers_out: bytes | None = None  # trailers waiting behind the outbox
        self.sent_headers = False
        self.received = 0  # DATA bytes since our last stream WINDOW_UPDATE
        self.queue: asyncio.Queue[Any] | None = None  # requests of a streaming call
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_BLOCK
        self.header_cache: dict[bytes, tuple[str, str, str, str]] = {}
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self.peer_window = 65535  # peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = 16384  # peer's SETTINGS_MAX_FRAME_SIZE
        self.send_window = 65535  # connection send window
        self.received = 0  # DATA bytes since our last connection WINDOW_UPDATE
        self.blocked: dict[int, _Stream] = {}  # streams with data waiting for window
        self.going_away = False
        self.closed = False
        self.write_paused = False

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.connections.add(self)
        settings = struct.pack(">HLHLHL", 0x4, STREAM_WINDOW, 0x5, MAX_FRAME, 0x6,
                               MAX_HEADER_BLOCK)  # fmt: skip
        window = _frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", CONNECTION_WINDOW - 65535))
        transport.write(_frame(SETTINGS, 0, 0, settings) + window)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in self.streams.values():
            self._cancel(stream)
        self.streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # take no new calls until the client reads

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _error(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with ``code``, then close."""
        if self.closed or self.transport is None:
            return
        log.debug("grpc connection error %d: %s", code, message)
        payload = struct.pack(">LL", self.last_stream, code) + message.encode()[:256]
        self.transport.write(_frame(GOAWAY, 0, 0, payload))
        self.closed = True
        self.transport.close()

    def go_away(self) -> None:
        """Graceful: no new streams; the ones below ``last_stream`` finish."""
        if not self.going_away and not self.closed and self.transport is not None:
            self.going_away = True
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream,
                                                                  NO_ERROR)))
            if not self.streams:
                self.transport.close()

    # --------------------------------------------------------------------- frames

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.buffer:  # the rest of a frame came: parse from one bytes object
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        pos, size = 0, len(data)
        if not self.preface:
            if size < 24:
                if not PREFACE.startswith(data):
                    self._error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                else:
                    self.buffer += data
                return
            if data[:24] != PREFACE:
                self._error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self.preface, pos = True, 24
        unpack = FRAME_HEAD.unpack_from
        try:
            while size - pos >= 9 and not self.closed:
                high, low, kind, flags, stream_id = unpack(data, pos)
                length = high << 8 | low
                if length > MAX_FRAME:
                    self._error(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                    return
                end = pos + 9 + length
                if end > size:
                    break
                payload = data[pos + 9:end]
                pos = end
                self._frame(kind, flags, stream_id & MAX_WINDOW, payload)
        except (HPACKError, UnicodeDecodeError) as exc:
            self._error(COMPRESSION_ERROR, f"header block: {exc}")
            return
        except _ProtocolError as exc:
            self._error(exc.code, exc.message)
            return
        except Exception as exc:  # a bug: end the connection, not the server
            log.exception("grpc connection failed")
            self._error(INTERNAL_ERROR, f"internal error: {exc}")
            return
        if pos < size and not self.closed:
            self.buffer += data[pos:]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise _ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream_id:
                raise _ProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.continuation[2].extend(payload)
            if len(self.continuation[2]) > MAX_HEADER_BLOCK:
                raise _ProtocolError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                stream_id, first_flags, block = self.continuation
                self.continuation = None
                self._header_block(stream_id, first_flags, bytes(block))
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ProtocolError(FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR,
                                     "bad PING")  # fmt: skip
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise _ProtocolError(PROTOCOL_ERROR, "bad RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.closed = True
                self.blocked.pop(stream_id, None)
                self._cancel(stream)
                self._maybe_close()
        elif kind == GOAWAY:
            self.going_away = True
            self._maybe_close()
        elif kind == PUSH_PROMISE:
            raise _ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown types: ignored

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ProtocolError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == 0x4:  # INITIAL_WINDOW_SIZE
                if value > MAX_WINDOW:
                    raise _ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:  # MAX_FRAME_SIZE
                if not 16384 <= value <= (1 << 24) - 1:
                    raise _ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_frame = value
            elif key == 0x2 and value > 1:  # ENABLE_PUSH
                raise _ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self._write(_frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = struct.unpack(">L", payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            if increment == 0:
                self._reset(stream, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream, FLOW_CONTROL_ERROR)
                return
            if stream.id in self.blocked:
                self._flush_blocked()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ProtocolError(PROTOCOL_ERROR, "HEADERS without a pad length")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ProtocolError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        if not flags & END_HEADERS:
            self.continuation = (stream_id, flags, bytearray(block))
            return
        self._header_block(stream_id, flags, block)

    def _decode(self, block: bytes) -> tuple[str, str, str, str]:
        """A header block's ``(:method, :path, content-type, grpc-timeout)`` ("" if absent)."""
        cache = self.header_cache
        cached = cache.get(block)
        if cached is not None:
            return cached
        table = self.decoder.header_table
        entries = table.dynamic_entries
        count, first, maxsize = len(entries), entries[0] if entries else None, table.maxsize
        method = path = content_type = timeout = ""
        headers: list[tuple[str, str]] = self.decoder.decode(block)  # type: ignore[assignment]
        for name, value in headers:
            if name == ":path":
                path = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = value
            elif name == ":method":
                method = value
        parsed = (method, path, content_type, timeout)
        if (len(entries) == count and (entries[0] if entries else None) is first
                and table.maxsize == maxsize):
            if len(cache) < 64:
                cache[block] = parsed  # this block reads the table without changing it
        else:
            cache.clear()  # the table changed: cached blocks may decode differently now
        return parsed

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)  # decode even trailers: it updates the HPACK table
        stream = self.streams.get(stream_id)
        if stream is not None or stream_id <= self.last_stream:
            # trailers of a request (end its stream), or headers of a closed stream
            if stream is not None:
                if not flags & END_STREAM:
                    self._reset(stream, PROTOCOL_ERROR)
                    return
                self._end_of_request(stream)
            return
        self.last_stream = stream_id
        if self.going_away:
            self._write(_frame(RST_STREAM, 0, stream_id, struct.pack(">L", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self.peer_window)
        stream.ended = bool(flags & END_STREAM)
        self.streams[stream_id] = stream
        method, path, content_type, timeout = headers
        if method != "POST" or not content_type.startswith("application/grpc"):
            self._respond_status(stream, UNIMPLEMENTED if method == "POST" else INTERNAL,
                                 f"not a gRPC call ({method} {content_type or 'no content-type'})",
                                 http=b"\x08\x03415" if method == "POST" else b"\x88")  # fmt: skip
            return
        rpc = self.server.methods.get(path)
        if rpc is None:
            self._respond_status(stream, UNIMPLEMENTED, f"method {path} is not implemented")
            return
        deadline = None
        if timeout:
            seconds = _parse_timeout(timeout)
            if seconds is None:
                self._respond_status(stream, INTERNAL, f"bad grpc-timeout {timeout!r}")
                return
            deadline = time.monotonic() + seconds
            stream.timer = self.loop.call_later(seconds, self._deadline, stream)
        stream.method = rpc
        stream.context = Context(deadline)
        self.server.on_call(path)
        if rpc.streaming:
            stream.queue = asyncio.Queue()
            stream.task = self.loop.create_task(self._run_streaming(stream, rpc))
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.received += size
        if self.received > CONNECTION_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.received)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            if stream is None and stream_id > self.last_stream:
                raise _ProtocolError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already answered or reset: the data is dropped
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise _ProtocolError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            payload = payload[1:size - payload[0]]
        stream.received += size
        if stream.received > STREAM_WINDOW // 2 and not flags & END_STREAM:
            self._write(_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", stream.received)))
            stream.received = 0
        body = stream.body
        if (flags & END_STREAM and not body and stream.queue is None
                and stream.method is not None and len(payload) >= 5 and payload[0] == 0
                and int.from_bytes(payload[1:5], "big") == len(payload) - 5
                and len(payload) - 5 <= self.server.max_message_bytes):
            # the usual unary request: one DATA frame holding exactly one message
            stream.ended = True
            stream.task = self.loop.create_task(
                self._run_unary(stream, stream.method, payload[5:]))
            return
        body += payload
        if stream.queue is None and len(body) > self.server.max_message_bytes + 5:
            self._too_large(stream)  # (a streaming call's messages are checked one by one)
            return
        if stream.queue is not None:
            self._feed(stream)
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _too_large(self, stream: _Stream) -> None:
        limit = self.server.max_message_bytes
        self._respond_status(stream, RESOURCE_EXHAUSTED,
                             f"received a message larger than max ({limit} bytes)")
        self._cancel(stream)

    # ----------------------------------------------------------------------- calls

    def _messages(self, stream: _Stream, final: bool) -> list[bytes] | None:
        """The complete messages in the stream's body (removed from it); None after
        answering the call with an error (compressed or truncated message)."""
        body, messages, pos = stream.body, [], 0
        while len(body) - pos >= 5:
            length = int.from_bytes(body[pos + 1:pos + 5], "big")
            if body[pos]:
                self._respond_status(stream, UNIMPLEMENTED,
                                     "compressed messages are not supported")  # fmt: skip
                self._cancel(stream)
                return None
            if length > self.server.max_message_bytes:
                self._too_large(stream)
                return None
            if len(body) - pos - 5 < length:
                break
            messages.append(bytes(body[pos + 5:pos + 5 + length]))
            pos += 5 + length
        del body[:pos]
        if final and body:
            self._respond_status(stream, INTERNAL, "the request ends inside a message")
            self._cancel(stream)
            return None
        return messages

    def _feed(self, stream: _Stream) -> None:
        messages = self._messages(stream, final=False)
        assert stream.queue is not None
        for message in messages or ():
            stream.queue.put_nowait(message)

    def _end_of_request(self, stream: _Stream) -> None:
        stream.ended = True
        if stream.method is None:
            return  # answered already (an error)
        if stream.queue is not None:
            messages = self._messages(stream, final=True)
            if messages is not None:
                for message in messages:
                    stream.queue.put_nowait(message)
                stream.queue.put_nowait(None)
            return
        messages = self._messages(stream, final=True)
        if messages is None:
            return
        if len(messages) != 1:
            self._respond_status(stream, UNIMPLEMENTED if len(messages) > 1 else INTERNAL,
                                 f"a unary call needs one request message, got "
                                 f"{len(messages)}")  # fmt: skip
            return
        stream.task = self.loop.create_task(self._run_unary(stream, stream.method, messages[0]))

    async def _run_unary(self, stream: _Stream, rpc: Method, message: bytes) -> None:
        context = stream.context
        assert context is not None
        try:
            request = rpc.deserialize(message)
        except Exception as exc:
            self._respond_status(stream, INTERNAL, f"cannot parse the request: {exc}")
            return
        try:
            response = await rpc.handler(request, context)
            payload = rpc.serialize(response)
        except (Exception, asyncio.CancelledError) as exc:
            self._handler_failed(stream, context, exc)
            return
        self._respond(stream, payload, _trailers(OK, "", context.trailers))

    def _handler_failed(self, stream: _Stream, context: Context, exc: BaseException) -> None:
        """What a handler raised, as the stream's status: an abort's code and message, or
        UNKNOWN (logged with its traceback); a cancelled call gets nothing more."""
        if isinstance(exc, GrpcAbort):
            self._respond_status(stream, exc.code, exc.message, context.trailers)
        elif not isinstance(exc, asyncio.CancelledError):
            log.error("grpc handler failed", exc_info=exc)
            self._respond_status(stream, UNKNOWN, f"handler failed: {exc}")

    async def _run_streaming(self, stream: _Stream, rpc: Method) -> None:
        context = stream.context
        queue = stream.queue
        assert context is not None and queue is not None

        async def requests() -> AsyncIterator[Any]:
            while (message := await queue.get()) is not None:
                try:
                    yield rpc.deserialize(message)
                except Exception as exc:
                    raise GrpcAbort(INTERNAL, f"cannot parse a request: {exc}") from None

        try:
            async for response in rpc.handler(requests(), context):
                self._send_message(stream, rpc.serialize(response))
        except (Exception, asyncio.CancelledError) as exc:
            self._handler_failed(stream, context, exc)
            return
        self._finish(stream, _trailers(OK, "", context.trailers))

    def _deadline(self, stream: _Stream) -> None:
        stream.timer = None
        if not stream.closed:
            self._respond_status(stream, DEADLINE_EXCEEDED, "deadline exceeded")
            self._cancel(stream)

    def _cancel(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # ---------------------------------------------------------------------- output

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _respond_status(self, stream: _Stream, code: int, message: str,
                        extra: Iterable[tuple[str, str]] = (), http: bytes = b"\x88") -> None:
        """End the call with ``code``: trailers-only if nothing was sent yet."""
        if stream.closed:
            return
        trailers = _trailers(code, message, extra)
        if not stream.sent_headers and not stream.outbox:
            stream.sent_headers = True
            block = http + RESPONSE_HEADERS[1:] + trailers
            self._write(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
            self._closed(stream)
        else:
            self._finish(stream, trailers)

    def _respond(self, stream: _Stream, payload: bytes, trailers: bytes) -> None:
        """A unary answer: HEADERS + DATA + trailers in one write when the windows allow."""
        if stream.closed:
            return
        size = len(payload) + 5  # the message: flag byte 0, length, payload
        if (size <= self.send_window and size <= stream.send_window and size <= self.peer_frame
                and not stream.sent_headers):
            self.send_window -= size
            stream.send_window -= size
            stream.sent_headers = True
            sid, pack, tail = stream.id, FRAME_HEAD.pack, len(trailers)
            self._write(b"".join((
                pack(0, len(RESPONSE_HEADERS), HEADERS, END_HEADERS, sid), RESPONSE_HEADERS,
                pack(size >> 8, size & 0xFF, DATA, 0, sid), (size - 5).to_bytes(5, "big"),
                payload, pack(tail >> 8, tail & 0xFF, HEADERS, END_HEADERS | END_STREAM, sid),
                trailers)))  # fmt: skip
            self._closed(stream)
            return
        self._send_message(stream, payload)
        self._finish(stream, trailers)

    def _send_message(self, stream: _Stream, payload: bytes) -> None:
        if stream.closed:
            return
        if not stream.sent_headers:
            stream.sent_headers = True
            self._write(_frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.outbox += len(payload).to_bytes(5, "big")
        stream.outbox += payload
        self._flush(stream)

    def _finish(self, stream: _Stream, trailers: bytes) -> None:
        if stream.closed:
            return
        stream.trailers_out = trailers
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        """Send what the windows allow of the stream's outbox, then its trailers."""
        outbox = stream.outbox
        while outbox:
            size = min(len(outbox), self.send_window, stream.send_window, self.peer_frame)
            if size <= 0:
                self.blocked[stream.id] = stream
                return
            self._write(_frame(DATA, 0, stream.id, bytes(outbox[:size])))
            del outbox[:size]
            self.send_window -= size
            stream.send_window -= size
        self.blocked.pop(stream.id, None)
        if stream.trailers_out is not None:
            self._write(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id,
                               stream.trailers_out))  # fmt: skip
            self._closed(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._flush(stream)

    def _closed(self, stream: _Stream) -> None:
        """We ended the stream; ask the client to stop sending if it has not finished."""
        stream.closed = True
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if not stream.ended:
            self._write(_frame(RST_STREAM, 0, stream.id, struct.pack(">L", NO_ERROR)))
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._maybe_close()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._write(_frame(RST_STREAM, 0, stream.id, struct.pack(">L", code)))
        stream.closed = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._cancel(stream)

    def _maybe_close(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()


class _ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class H2GrpcServer:
    """The gRPC server: ``methods`` by path (``/package.Service/Method``); ``on_call(path)``
    runs when a call's HEADERS arrive (before its request message)."""

    def __init__(self, methods: dict[str, Method], *, max_message_bytes: int,
                 on_call: Callable[[str], None] = lambda path: None) -> None:
        self.methods = methods
        self.max_message_bytes = max_message_bytes
        self.on_call = on_call
        self.connections: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()  # built on the loop that serves
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(lambda: _Connection(self), host, port,
                                                    reuse_address=True)  # fmt: skip
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (GOAWAY), let in-flight ones finish up to ``grace_s``, close."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.go_away()
        deadline = time.monotonic() + grace_s
        while any(c.streams for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            for stream in list(connection.streams.values()):
                connection._respond_status(stream, UNAVAILABLE, "the server is stopping")
                connection._cancel(stream)
            if connection.transport is not None:
                connection.transport.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
