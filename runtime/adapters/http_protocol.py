"""uvicorn's HTTP/1.1 protocols, answering the requests their parsers refuse the way irkit
answers every other error: ``400`` with ``{"error": ...}`` as ``application/json``.

uvicorn parses the request line, headers and body framing (httptools or h11) before any
application sees a request, and answers what it cannot parse (a bad request line,
``Content-Length: abc``, both Content-Length and Transfer-Encoding, a bad chunk size, …)
itself, with a ``text/plain`` 400 from ``send_400_response``. These subclasses override
only that method: the same status, the connection closed as before (the stream cannot be
resynchronized), a JSON body. :func:`protocol_class` is what the adapter hands uvicorn's
``Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

ERROR_BODY = json.dumps({"error": "malformed HTTP request: its request line, headers or "
                                  "body framing cannot be parsed; the connection is closed"}
                        ).encode()


def _httptools_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsJsonErrors(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            content = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                content += [name, b": ", value, b"\r\n"]
            content += [b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(ERROR_BODY),
                        b"connection: close\r\n\r\n", ERROR_BODY]
            self.transport.write(b"".join(content))
            self.transport.close()

    return HttpToolsJsonErrors


def _h11_class() -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11JsonErrors(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                # a response went out already (the app answered before reading a body
                # h11 then refused): uvicorn's own method raises LocalProtocolError here
                self.transport.close()
                return
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", b"%d" % len(ERROR_BODY)), (b"connection", b"close")]
            events: list[Any] = [h11.Response(status_code=400, headers=headers,
                                              reason=b"Bad Request"),
                                 h11.Data(data=ERROR_BODY), h11.EndOfMessage()]
            for event in events:
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return H11JsonErrors


def protocol_class(http: str) -> type[asyncio.Protocol]:
    """The protocol for the adapter's ``http`` option: ``httptools``, ``h11``, or
    ``auto`` (httptools when installed, as uvicorn's own ``auto``)."""
    if http == "h11":
        return _h11_class()
    if http == "httptools":
        return _httptools_class()
    try:
        import httptools  # noqa: F401
    except ImportError:
        return _h11_class()
    return _httptools_class()
