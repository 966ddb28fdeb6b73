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
- SETTINGS_MAX_CONCURRENT_STREAMS (128 by default) is advertised and enforced: a HEADERS
  opening one stream more is refused with RST_STREAM REFUSED_STREAM (the client may retry);
- flow control both ways: a 16 MiB stream window and a 1 GiB connection window are
  advertised and given back as data is consumed (buffered into a unary request, or taken
  by a streaming handler: a handler that stops reading stops its client); DATA beyond a
  granted window is a FLOW_CONTROL_ERROR (RST_STREAM for a stream's, GOAWAY for the
  connection's). Responses respect the peer's windows and SETTINGS_MAX_FRAME_SIZE, wait
  in the stream for WINDOW_UPDATE, and reading pauses while the transport's write buffer
  is full. Calls still waiting for window when ``stop``'s grace ends get trailers
  UNAVAILABLE (or RST_STREAM CANCEL when part of a message went out).

gRPC on top: 5-byte length-prefixed messages, gzip-compressed ones too (``grpc-encoding:
gzip``; the decompressed size counts against ``max_message_bytes``; another encoding is
UNIMPLEMENTED; answers go uncompressed, with ``grpc-accept-encoding: identity,gzip``), a
request that is not POST gets ``:status 405``, one whose content-type is not
application/grpc ``:status 415``, ``grpc-timeout`` -> deadline (DEADLINE_EXCEEDED), a
client's RST_STREAM cancels the handler task, an unknown method is UNIMPLEMENTED, a
message over ``max_message_bytes`` RESOURCE_EXHAUSTED; unary-unary and stream-stream
methods. The handlers are grpc.aio-style coroutines ``handler(request, context)`` (async
generators over a request iterator for streams); ``Context`` offers what they use of
grpc.aio's ``ServicerContext``: ``time_remaining``, ``set_trailing_metadata`` and ``abort``.
The bytes written and the handler-facing types are in ``h2wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from hpack import Decoder
from hpack.exceptions import HPACKError

from .h2wire import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONNECTION_WINDOW,
    CONTINUATION,
    DATA,
    DEADLINE_EXCEEDED,
    DEFAULT_WINDOW,
    ENCODINGS,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL,
    INTERNAL_ERROR,
    MAX_FRAME,
    MAX_HEADER_BLOCK,
    MAX_STREAMS,
    MAX_WINDOW,
    NO_ERROR,
    OK,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESOURCE_EXHAUSTED,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    STATUS_405,
    STATUS_415,
    STREAM_WINDOW,
    UNAVAILABLE,
    UNIMPLEMENTED,
    UNKNOWN,
    WINDOW_UPDATE,
    Context,
    GrpcAbort,
    Method,
    ProtocolError,
    frame,
    gunzip,
    parse_timeout,
    rest_of_message,
    trailer_block,
)

__all__ = ["Context", "GrpcAbort", "H2GrpcServer", "Method"]

log = logging.getLogger(__name__)


class _Stream:
    __slots__ = ("body", "closed", "context", "credit", "encoding", "ended", "id", "method",
                 "outbox", "partial", "pending", "queue", "recv_window", "send_window",
                 "sent_headers", "task", "timer", "trailers_out")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
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
        self.partial = 0  # bytes of a message sent in part that are still in the outbox
        self.recv_window = recv_window  # what the client may still send
        self.credit = 0  # consumed DATA bytes not yet given back by a WINDOW_UPDATE
        self.pending = 0  # wire bytes of queued requests the handler has not taken yet
        self.encoding = ""  # the request's grpc-encoding
        self.queue: asyncio.Queue[Any] | None = None  # (message, wire size) of a stream
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
        self.header_cache: dict[bytes, tuple[str, str, str, str, str]] = {}
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self.peer_window = DEFAULT_WINDOW  # peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = 16384  # peer's SETTINGS_MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW  # connection send window
        self.recv_window = server.connection_window  # what the client may still send
        self.credit = 0  # consumed DATA bytes not yet given back by a WINDOW_UPDATE
        self.half_window = server.connection_window >> 1
        self.blocked: dict[int, _Stream] = {}  # streams with data waiting for window
        self.going_away = False
        self.closed = False
        self.write_paused = False

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.connections.add(self)
        server = self.server
        settings = struct.pack(">HLHLHLHL", 0x3, server.max_concurrent_streams,
                               0x4, server.stream_window, 0x5, MAX_FRAME,
                               0x6, MAX_HEADER_BLOCK)  # fmt: skip
        out = frame(SETTINGS, 0, 0, settings)
        if server.connection_window > DEFAULT_WINDOW:  # (an increment of 0 is an error)
            increment = server.connection_window - DEFAULT_WINDOW
            out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", increment))
        transport.write(out)  # type: ignore[attr-defined]

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
        self.transport.write(frame(GOAWAY, 0, 0, payload))
        self.closed = True
        self.transport.close()

    def go_away(self) -> None:
        """Graceful: no new streams; the ones below ``last_stream`` finish."""
        if not self.going_away and not self.closed and self.transport is not None:
            self.going_away = True
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream,
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
        except ProtocolError as exc:
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
            raise ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.continuation[2].extend(payload)
            if len(self.continuation[2]) > MAX_HEADER_BLOCK:
                raise ProtocolError(PROTOCOL_ERROR, "header block too large")
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
                raise ProtocolError(FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR,
                                    "bad PING")  # fmt: skip
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "bad RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.closed = True
                self.blocked.pop(stream_id, None)
                self._release(stream)
                self._cancel(stream)
                self._maybe_close()
        elif kind == GOAWAY:
            self.going_away = True
            self._maybe_close()
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown types: ignored

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == 0x4:  # INITIAL_WINDOW_SIZE
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:  # MAX_FRAME_SIZE
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_frame = value
            elif key == 0x2 and value > 1:  # ENABLE_PUSH
                raise ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = struct.unpack(">L", payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
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
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise ProtocolError(PROTOCOL_ERROR, "HEADERS without a pad length")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        if not flags & END_HEADERS:
            self.continuation = (stream_id, flags, bytearray(block))
            return
        self._header_block(stream_id, flags, block)

    def _decode(self, block: bytes) -> tuple[str, str, str, str, str]:
        """A header block's ``(:method, :path, content-type, grpc-timeout, grpc-encoding)``
        ("" if absent)."""
        cache = self.header_cache
        cached = cache.get(block)
        if cached is not None:
            return cached
        table = self.decoder.header_table
        entries = table.dynamic_entries
        count, first, maxsize = len(entries), entries[0] if entries else None, table.maxsize
        method = path = content_type = timeout = encoding = ""
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
            elif name == "grpc-encoding":
                encoding = value
        parsed = (method, path, content_type, timeout, encoding)
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
        if self.going_away or len(self.streams) >= self.server.max_concurrent_streams:
            # RFC 9113 5.1.2: a HEADERS that exceeds the advertised concurrent stream limit
            # is a stream error of type PROTOCOL_ERROR or REFUSED_STREAM; REFUSED_STREAM
            # says the call was not processed, so the client may retry it (8.7)
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">L", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self.peer_window, self.server.stream_window)
        stream.ended = bool(flags & END_STREAM)
        self.streams[stream_id] = stream
        method, path, content_type, timeout, encoding = headers
        if method != "POST":  # PROTOCOL-HTTP2.md: "Only POST can be used for gRPC calls"
            self._respond_status(stream, INTERNAL, f"method {method or '(none)'} is not "
                                 "allowed: gRPC calls are POST", http=STATUS_405)  # fmt: skip
            return
        if not content_type.startswith("application/grpc"):
            # PROTOCOL-HTTP2.md: "gRPC servers SHOULD respond with HTTP status of 415
            # (Unsupported Media Type)", so that no HTTP client reads it as a success
            self._respond_status(stream, UNIMPLEMENTED, "not a gRPC call: content-type "
                                 f"{content_type or '(none)'}", http=STATUS_415)  # fmt: skip
            return
        if encoding and encoding not in ENCODINGS:
            # compression.md: a message in an encoding the server lacks is UNIMPLEMENTED
            # (the response's grpc-accept-encoding names those it has)
            self._respond_status(stream, UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not "
                                 f"supported (supported: {', '.join(ENCODINGS)})")  # fmt: skip
            return
        stream.encoding = encoding
        rpc = self.server.methods.get(path)
        if rpc is None:
            self._respond_status(stream, UNIMPLEMENTED, f"method {path} is not implemented")
            return
        deadline = None
        if timeout:
            seconds = parse_timeout(timeout)
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
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:  # RFC 9113 6.9.1: beyond the window granted to the client
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            if stream is None and stream_id > self.last_stream:
                raise ProtocolError(PROTOCOL_ERROR, "DATA on an idle stream")
            self._consume(None, size)  # a stream we answered or reset: the data is dropped
            return
        stream.recv_window -= size
        if stream.recv_window < 0:  # RFC 9113 6.9.1, for the stream: a stream error
            self._consume(None, size)
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ProtocolError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            payload = payload[1:size - payload[0]]
        body = stream.body
        if (flags & END_STREAM and not body and stream.queue is None
                and stream.method is not None and len(payload) >= 5 and payload[0] == 0
                and int.from_bytes(payload[1:5], "big") == len(payload) - 5
                and len(payload) - 5 <= self.server.max_message_bytes):
            # the usual unary request: one DATA frame holding exactly one message
            stream.ended = True
            self._consume(None, size)
            stream.task = self.loop.create_task(
                self._run_unary(stream, stream.method, payload[5:]))
            return
        body += payload
        end = bool(flags & END_STREAM)
        if stream.queue is not None:  # queued messages count as consumed once taken
            stream.ended |= end
            self._consume(stream, size - self._feed(stream, end))
            return
        # a unary request's bytes are consumed into its body (at most max_message_bytes)
        self._consume(None if end else stream, size)
        if len(body) > self.server.max_message_bytes + 5:
            self._too_large(stream)
            return
        if end:
            self._end_of_request(stream)

    def _consume(self, stream: _Stream | None, size: int) -> None:
        """``size`` DATA bytes were consumed (negative: bytes given back already went into
        requests queued for a handler): give them back to the client's connection window
        and, with ``stream``, its stream window, by a WINDOW_UPDATE once half a window is
        owed (RFC 9113 6.9)."""
        self.credit += size
        if self.credit > self.half_window:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.credit)))
            self.recv_window += self.credit
            self.credit = 0
        if stream is not None and not stream.ended and not stream.closed:
            stream.credit += size
            if stream.credit > self.server.stream_window >> 1:
                self._write(frame(WINDOW_UPDATE, 0, stream.id,
                                  struct.pack(">L", stream.credit)))  # fmt: skip
                stream.recv_window += stream.credit
                stream.credit = 0

    def _release(self, stream: _Stream) -> None:
        """The stream ended: requests its handler will not take no longer hold window."""
        if stream.pending:
            self._consume(None, stream.pending)
            stream.pending = 0

    def _too_large(self, stream: _Stream) -> None:
        limit = self.server.max_message_bytes
        self._respond_status(stream, RESOURCE_EXHAUSTED,
                             f"received a message larger than max ({limit} bytes)")
        self._cancel(stream)

    # ----------------------------------------------------------------------- calls

    def _messages(self, stream: _Stream, final: bool) -> list[tuple[bytes, int]] | None:
        """The complete messages in the stream's body (removed from it), each with its size
        on the wire; None after answering the call with an error (a message too large,
        truncated or not decompressible)."""
        body, messages, pos = stream.body, [], 0
        while len(body) - pos >= 5:
            flag = body[pos]
            length = int.from_bytes(body[pos + 1:pos + 5], "big")
            if length > self.server.max_message_bytes:
                self._too_large(stream)
                return None
            if len(body) - pos - 5 < length:
                break
            message = bytes(body[pos + 5:pos + 5 + length])
            if flag:
                decompressed = self._decompress(stream, flag, message)
                if decompressed is None:
                    return None
                message = decompressed
            messages.append((message, 5 + length))
            pos += 5 + length
        del body[:pos]
        if final and body:
            self._respond_status(stream, INTERNAL, "the request ends inside a message")
            self._cancel(stream)
            return None
        return messages

    def _decompress(self, stream: _Stream, flag: int, data: bytes) -> bytes | None:
        """A compressed message (flag 1) in the call's grpc-encoding, gzip (checked at its
        HEADERS); None after answering the call with an error."""
        try:
            if flag != 1 or stream.encoding in ("", "identity"):
                raise GrpcAbort(INTERNAL, f"a message with compressed flag {flag} and "
                                f"grpc-encoding {stream.encoding or '(none)'}")  # fmt: skip
            return gunzip(data, self.server.max_message_bytes)
        except GrpcAbort as exc:
            self._refuse(stream, exc.code, exc.message)
            return None

    def _refuse(self, stream: _Stream, code: int, message: str) -> None:
        """End the call with ``code`` and stop its handler."""
        self._respond_status(stream, code, message)
        self._cancel(stream)

    def _feed(self, stream: _Stream, final: bool) -> int:
        """Queue the stream's complete request messages for its handler (then None when
        ``final``); returns their wire size, which stays withheld from the client's windows
        until the handler takes them."""
        messages = self._messages(stream, final)
        queue = stream.queue
        if messages is None or queue is None:
            return 0
        wire = 0
        for item in messages:
            queue.put_nowait(item)
            wire += item[1]
        if final:
            queue.put_nowait(None)
        stream.pending += wire
        return wire

    def _end_of_request(self, stream: _Stream) -> None:
        stream.ended = True
        if stream.method is None:
            return  # answered already (an error)
        if stream.queue is not None:  # (the request's trailers ended it)
            self._consume(None, -self._feed(stream, final=True))
            return
        messages = self._messages(stream, final=True)
        if messages is None:
            return
        if len(messages) != 1:
            self._respond_status(stream, UNIMPLEMENTED if len(messages) > 1 else INTERNAL,
                                 f"a unary call needs one request message, got "
                                 f"{len(messages)}")  # fmt: skip
            return
        stream.task = self.loop.create_task(
            self._run_unary(stream, stream.method, messages[0][0]))

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
        self._respond(stream, payload, trailer_block(OK, "", context.trailers))

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
            while (item := await queue.get()) is not None:
                message, wire = item
                if not stream.closed:  # taken: the client may send as much again
                    stream.pending -= wire
                    self._consume(stream, wire)
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
        self._finish(stream, trailer_block(OK, "", context.trailers))

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
        trailers = trailer_block(code, message, extra)
        if not stream.sent_headers and not stream.outbox:
            stream.sent_headers = True
            block = http + RESPONSE_HEADERS[1:] + trailers
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
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
            self._write(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
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
            self._write(frame(DATA, 0, stream.id, bytes(outbox[:size])))
            stream.partial = rest_of_message(outbox, stream.partial, size)
            del outbox[:size]
            self.send_window -= size
            stream.send_window -= size
        self.blocked.pop(stream.id, None)
        if stream.trailers_out is not None:
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id,
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
            self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">L", NO_ERROR)))
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._release(stream)
        self._maybe_close()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">L", code)))
        stream.closed = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._release(stream)
        self._cancel(stream)
        self._maybe_close()

    def _abandon(self, stream: _Stream) -> None:
        """End a call still running (or waiting for the client's window) when ``stop``'s
        grace ends: trailers UNAVAILABLE, which are not flow-controlled, after the whole
        messages sent so far (the unsent ones are dropped); when part of a message went
        out, trailers would read as a truncated message, so RST_STREAM CANCEL instead
        (gRPC clients report CANCELLED)."""
        if stream.partial:
            self._reset(stream, CANCEL)
            return
        stream.outbox.clear()
        self._respond_status(stream, UNAVAILABLE, "the server is stopping")
        self._cancel(stream)

    def _maybe_close(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()


class H2GrpcServer:
    """The gRPC server: ``methods`` by path (``/package.Service/Method``); ``on_call(path)``
    runs when a call's HEADERS arrive (before its request message). Each connection takes
    up to ``max_concurrent_streams`` calls at once and grants the client windows of
    ``stream_window`` bytes per stream and ``connection_window`` in all (RFC 9113 6.9)."""

    def __init__(self, methods: dict[str, Method], *, max_message_bytes: int,
                 on_call: Callable[[str], None] = lambda path: None,
                 max_concurrent_streams: int = MAX_STREAMS, stream_window: int = STREAM_WINDOW,
                 connection_window: int = CONNECTION_WINDOW) -> None:
        if max_concurrent_streams < 1:
            raise ValueError(f"max_concurrent_streams must be >= 1, got {max_concurrent_streams}")
        for name, window in (("stream_window", stream_window),
                             ("connection_window", connection_window)):
            if not DEFAULT_WINDOW <= window <= MAX_WINDOW:  # (a client may use 65,535 at once)
                raise ValueError(f"{name} must be in [{DEFAULT_WINDOW}, {MAX_WINDOW}], got {window}")
        self.methods = methods
        self.max_message_bytes = max_message_bytes
        self.on_call = on_call
        self.max_concurrent_streams = max_concurrent_streams
        self.stream_window, self.connection_window = stream_window, connection_window
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
                connection._abandon(stream)
            if connection.transport is not None:
                connection.transport.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
