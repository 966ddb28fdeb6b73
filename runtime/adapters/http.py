"""HTTP adapter: the Open Inference Protocol v2 (KServe/Triton) over uvicorn + Starlette.

Endpoints (``/v2/models/{m}/versions/{v}/...`` forms are accepted wherever ``{m}`` is)::

    GET  /v2                                   server metadata (name, version, extensions)
    GET  /v2/health/live                       200 once the server runs
    GET  /v2/health/ready                      200 while every required model is ready,
                                               else 503
    GET  /v2/models/{m}                        model metadata (ready versions, inputs/outputs,
                                               -1 for variable dims)
    GET  /v2/models/{m}/ready                  200 while the model (version) takes requests
    GET  /v2/models/{m}/config                 Triton's model configuration: max_batch_size,
                                               dims, TYPE_* datatypes, dynamic_batching
                                               (``extensions``)
    GET  /v2/models[/{m}]/stats                Triton's statistics of a model (every model):
                                               success/fail, queue, compute, batch sizes
    POST /v2/models/{m}/infer                  inference
    POST /v2/repository/index                  every model and version with state, reason
                                               (body ``{"ready": true}``: ready ones only)
    POST /v2/repository/models/{m}/load        load / reload a model (needs
    POST /v2/repository/models/{m}/unload      ``allow_model_control``, else 403)
    GET  /metrics                              Prometheus text (this server's own registry)
    GET  /demo/                                the browser demo of models with a wasm build
                                               (``add_demo``; see ``demo``)

Infer requests are v2 JSON (``inputs``: name, shape, datatype, data flat or nested;
optional ``id``, ``outputs`` to select outputs) or Triton's binary tensor extension: the
``Inference-Header-Content-Length`` header gives the JSON header's length, inputs with
``parameters.binary_data_size`` take their bytes (little-endian, row-major) in order from
the rest of the body, and outputs with ``parameters.binary_data: true`` (or every output
when the request's ``parameters.binary_data_output`` is true) come back the same way.

Errors are ``{"error": "..."}`` with the status of ``common.AdapterError``: 400 bad input
(decoding, then ``model.validate``, whose message names the input), 403 model control
disabled, 404 unknown model or version, 405 infer with a method other than POST, 413 body
over ``max_payload_bytes`` (checked on Content-Length before reading and again while
streaming), 429 queue full (with ``Retry-After``), 503 not ready, 504 timeout. Requests
uvicorn's parser refuses (a bad request line, ``Content-Length: abc``, a bad chunk size)
get a JSON 400 too, and their connection is closed (``http_protocol``).

The models are those of a ``repository.ModelRepository`` (see ``frontend``): one model
given as ``HttpAdapter(model, **options)``, a directory of versions
(``model_repository``), or a repository shared with the grpc adapter. Requests go through
each model version's ``batcher.DynamicBatcher``; the model runs in its worker threads, and
each finished batch comes back to the event loop in one wakeup (``frontend.LoopBridge``).
``serve()`` blocks until SIGINT/SIGTERM or ``stop()``; uvicorn then stops accepting,
lets in-flight requests finish, and the batchers drain before ``serve()`` returns.

The infer route is the hot path: ``HttpAdapter.app`` answers it as a plain ASGI handler
(``handle_infer``) and passes everything else to a Starlette app. Starlette's routing,
middleware and Request/Response objects cost more per request than the whole v2 codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import uvicorn
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from irkit.runtime.options import Option

from .common import (
    TRIM_AFTER_BYTES,
    AdapterError,
    BadInput,
    NotReady,
    PayloadTooLarge,
    ServableModel,
    datatype_of,
    decode_tensor,
    dumps,
    error_body,
    release_memory,
    stop_on_signals,
    tensor_json,
)
from .demo import DemoSite
from .frontend import SHARED_OPTIONS, Frontend, LoopBridge, check_control_parameters
from .http_protocol import protocol_class
from .repository import ModelRepository

__all__ = [
    "HttpAdapter",
    "InferRequest",
    "encode_infer_response",
    "infer_route",
    "parse_infer_request",
    "send_response",
]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]

JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
HEADER_LENGTH = b"inference-header-content-length"


# ----------------------------------------------------------------------- protocol codec


class InferRequest:
    """A decoded infer request: input arrays, which outputs to return and how."""

    def __init__(
        self, inputs: dict[str, np.ndarray], outputs: dict[str, bool] | None, request_id: Any
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs  # output name -> binary?; None = all, as JSON
        self.request_id = request_id


def _binary_flag(params: Any, key: str, where: str) -> bool:
    if params is None:
        return False
    if not isinstance(params, Mapping):
        raise BadInput(f"{where}: 'parameters' must be an object")
    flag = params.get(key, False)
    if not isinstance(flag, bool):
        raise BadInput(f"{where}: parameter {key!r} must be true or false")
    return flag


MAX_JSON_DEPTH = 512
"""Most levels of arrays and objects a request body may nest (a valid request needs 4 plus
the rank of nested ``data``). orjson 3.8 overflows its stack (SIGSEGV) somewhere past
50,000 levels, and ``json.loads`` raises RecursionError, so depth is checked first."""

_BRACKETS = np.zeros(256, np.int8)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1


def json_depth_exceeds(text: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets in ``text`` nest past ``limit`` (brackets inside strings count
    too, which can only overstate the depth of a request's few short strings).

    Free for bodies with at most ``limit`` opening brackets; otherwise one vectorised pass.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    steps = _BRACKETS[np.frombuffer(text, np.uint8)]
    steps = steps[steps != 0]
    return bool(np.cumsum(steps, dtype=np.int64).max() > limit)


def _loads(text: bytes) -> Any:
    """JSON as ``json.loads`` reads it, through orjson (5x faster) when that can."""
    if json_depth_exceeds(text):
        raise BadInput(f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # NaN/Infinity, integers over 64 bits, lone surrogates: json takes them
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"malformed JSON: {exc}") from None
    except RecursionError:  # orjson stops at 1,024 levels; json.loads recurses
        raise BadInput("malformed JSON: nested too deeply") from None


def parse_infer_request(
    body: bytes, header_length: int | None, output_names: list[str]
) -> InferRequest:
    """Decode a v2 infer body (JSON, or JSON header + binary tensors); BadInput on errors."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadInput(f"Inference-Header-Content-Length {header_length} exceeds the body")
    split = len(body) if header_length is None else header_length
    binary = memoryview(body)[split:]
    doc = _loads(body if split == len(body) else body[:split])
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadInput("request must be a JSON object with an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for obj in doc["inputs"]:
        raw = None
        params = obj.get("parameters") if isinstance(obj, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        name = obj.get("name") if isinstance(obj, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadInput(f"input {name!r}: binary_data_size must be an int >= 0")
            if offset + size > len(binary):
                raise BadInput(f"input {name!r}: binary data ends after {len(binary)} bytes")
            raw = binary[offset : offset + size]
            offset += size
        array = decode_tensor(obj, raw)
        if name in inputs:
            raise BadInput(f"input {name!r} is given twice")
        inputs[str(name)] = array
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    binary_all = _binary_flag(doc.get("parameters"), "binary_data_output", "request")
    outputs: dict[str, bool] | None = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise BadInput("'outputs' must be a list")
        outputs = {}
        for obj in doc["outputs"]:
            name = obj.get("name") if isinstance(obj, dict) else None
            if name not in output_names:
                raise BadInput(f"requested output {name!r} is not one of {output_names}")
            where = f"output {name!r}"
            params = obj.get("parameters")
            outputs[name] = binary_all or _binary_flag(params, "binary_data", where)
    elif binary_all:
        outputs = dict.fromkeys(output_names, True)
    return InferRequest(inputs, outputs, doc.get("id"))


# dtypes orjson writes straight from a numpy array (float32 as its shortest exact form)
_ORJSON_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16,
              np.int32, np.int64, np.float32, np.float64)
)  # fmt: skip


def _tensor_json(name: str, array: np.ndarray) -> bytes:
    """``common.tensor_json`` as bytes; orjson writes the numbers when it writes them alike.

    orjson writes NaN/Inf as null (numbers never contain "null"), so those arrays, and
    float16 ones, which it does not take, go through ``tensor_json``.
    """
    if array.dtype in _ORJSON_DTYPES:
        data = orjson.dumps(array.ravel(), option=orjson.OPT_SERIALIZE_NUMPY)
        if b"null" not in data:
            head = orjson.dumps(
                {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
            )
            return head[:-1] + b',"data":' + data + b"}"
    return tensor_json(name, array).encode()


def encode_infer_response(
    model_name: str,
    model_version: str,
    result: Mapping[str, np.ndarray],
    selection: Mapping[str, bool] | None,
    request_id: Any = None,
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    chosen = selection if selection is not None else dict.fromkeys(result, False)
    outputs: list[bytes] = []
    blobs: list[bytes] = []
    for name, binary in chosen.items():
        array = result[name]
        if not binary:
            outputs.append(_tensor_json(name, array))
            continue
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        meta = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape),
                "parameters": {"binary_data_size": len(data)}}  # fmt: skip
        outputs.append(orjson.dumps(meta))
        blobs.append(data)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    # orjson would write a NaN id as null and refuses integers over 64 bits
    text = orjson.dumps(head) if isinstance(request_id, str | None) else dumps(head)
    header = text[:-1] + b',"outputs":[' + b",".join(outputs) + b"]}"
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


# ------------------------------------------------------------------------ raw ASGI


def infer_route(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) when ``path`` is an infer URL, else None.

    ``/v2/models/{m}/infer`` and ``/v2/models/{m}/versions/{v}/infer``, where a segment is
    anything but empty or ``/`` (as Starlette's ``{param}`` matches).
    """
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


async def send_response(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Headers = ()
) -> None:
    """Send a whole response (Content-Length, Content-Type, then ``headers``)."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", content_type),
                    *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Server(uvicorn.Server):
    """uvicorn without re-raising the captured signal after shutdown: serve() returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with stop_on_signals(lambda signum: self.handle_exit(signum, None)):
            yield


class HttpAdapter(Frontend):
    """Serve a model, or a model repository, over HTTP with dynamic batching (module doc)."""

    name = "http"
    network_options: dict[str, Option] = {
        "host": Option(str, "127.0.0.1", "address to bind"),
        "port": Option(int, 8080, "TCP port; 0 picks a free one (see .port after start)"),
        "max_payload_bytes": Option(int, 64 << 20, "larger request bodies get 413"),
        "log_level": Option(str, "warning", "uvicorn log level",
                            choices=("critical", "error", "warning", "info", "debug")),
        "access_log": Option(bool, False, "one line per request (uvicorn's access log)"),
        "http": Option(str, "auto", "uvicorn HTTP parser (auto: httptools if installed)",
                       choices=("auto", "httptools", "h11")),
        "loop": Option(str, "auto", "event loop (auto: uvloop if installed)",
                       choices=("auto", "uvloop", "asyncio")),
        "processes": Option(int, 1, "server processes on the port (SO_REUSEPORT), each with "
                            "its own models and batchers; one that dies is restarted"),
    }  # fmt: skip
    options: dict[str, Option] = {**network_options, **SHARED_OPTIONS}

    def __init__(
        self,
        model: ServableModel | None,
        *,
        repository: ModelRepository | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, repository=repository, **options)
        config = self.config
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.max_payload_bytes: int = config["max_payload_bytes"]
        self.log_level: str = config["log_level"]
        self.access_log: bool = config["access_log"]
        self.http: str = config["http"]
        self.loop: str = config["loop"]
        self.processes: int = config["processes"]
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        self.reuse_port = False  # set in the children of serve_http_processes
        self.shared_metrics: Any = None  # ditto: /metrics answers for every process
        self._given = (model, options)
        self._server: _Server | None = None
        self._bridge: LoopBridge | None = None
        self._stop_requested = False
        self.demo = DemoSite()
        self._starlette = self._build_app()

    def add_demo(self, model: str, artifact_dir: Any) -> str | None:
        """Show ``model`` at ``/demo/``, running the wasm artifact in ``artifact_dir`` in
        the browser (and ``/v2/models/{model}/infer`` where it cannot); returns why a
        model the page cannot feed was left out."""
        return self.demo.add(model, artifact_dir)

    # -------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app served: infer URLs go to ``handle_infer``, the rest to Starlette."""
        if scope["type"] == "http":
            route = infer_route(scope["path"])
            if route is not None:
                if scope["method"] == "POST":
                    await self.handle_infer(scope, receive, send, *route)
                else:
                    body = dumps({"error": "Method Not Allowed"})
                    await send_response(send, 405, body, JSON_TYPE, [(b"allow", b"POST")])
                return
        await self._starlette(scope, receive, send)

    def bind(self) -> socket.socket:
        """The listening socket (``port`` 0 picks a free port and updates ``self.port``)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say so,
        # and without it a response's two writes wait ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"http: cannot listen on {self.host}:{self.port}: {exc.strerror}") \
                from None
        self.port = sock.getsockname()[1]
        # Listen now: the lifespan (and ``started``) runs before uvicorn's own listen, and a
        # client that connected in between was refused (seen on a loaded machine).
        sock.listen(2048)
        return sock

    def serve(self, sock: socket.socket | None = None) -> None:
        """Run the server until SIGINT/SIGTERM or ``stop()``; returns after a clean drain.

        ``sock``: an already bound listening socket to serve on (default: ``bind()``).
        With ``processes`` > 1 this process supervises that many servers on the port
        (``http_processes``), each loading the model from its artifact again.
        """
        if self.processes > 1:
            self._serve_processes()
            return
        sock = sock if sock is not None else self.bind()
        config = uvicorn.Config(
            self.app,
            interface="asgi3",  # a bound method: uvicorn's guess would say ASGI 2
            http=protocol_class(self.http),  # uvicorn's parsers, JSON 400s (http_protocol)
            loop=self.loop,
            log_level=self.log_level,
            access_log=self.access_log,
            lifespan="on",
            timeout_graceful_shutdown=30,
            # nothing here reads the client address: skip X-Forwarded-* handling per request
            proxy_headers=False,
        )
        self._server = _Server(config)
        log.info("http: listening on %s (Open Inference Protocol v2: POST "
                 "%s/v2/models/<model>/infer; health %s/v2/health/ready)", self.url, self.url,
                 self.url)
        if self._stop_requested:
            self._server.should_exit = True
        try:
            self._server.run(sockets=[sock])
        finally:
            sock.close()

    def _serve_processes(self) -> None:
        from .http_processes import serve_http_processes
        from .processes import child_model

        model, options = self._given
        if not self.owns_repository or getattr(model, "path", None) is None:
            raise ValueError("processes > 1 serves a model loaded from an artifact directory "
                             "(each process loads it again); for a model repository or "
                             "several models use `irkit serve`")  # fmt: skip
        assert model is not None

        def build() -> list[HttpAdapter]:
            return [HttpAdapter(child_model(model), **{**options, "processes": 1})]

        def announce(port: int) -> None:
            self.port = port
            self.started.set()

        serve_http_processes(build, self.processes, self.host, self.port, on_port=announce)

    def stop(self) -> None:
        """Ask a running ``serve()`` to shut down gracefully (thread-safe)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._bridge = LoopBridge(asyncio.get_running_loop())
        if self.owns_repository:
            self.repository.start()  # loads and warms up in a thread of its own
        self.started.set()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests.
            if self.owns_repository:
                await asyncio.get_running_loop().run_in_executor(None, self.repository.stop)
            self.started.clear()

    def _build_app(self) -> Starlette:
        """Every endpoint but infer (which ``app`` answers before Starlette sees it)."""
        routes = [
            Route("/v2", self.server_metadata_endpoint),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready_endpoint),
            Route("/metrics", self.metrics_endpoint),
            Route("/v2/repository/index", self.index_endpoint, methods=["POST", "GET"]),
            Route("/v2/repository/models/{model}/load", self.load_endpoint, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload_endpoint,
                  methods=["POST"]),
            Route("/v2/models/stats", self.statistics_endpoint),  # before /v2/models/{model}
        ]  # fmt: skip
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(base, self.model_metadata_endpoint),
                Route(base + "/ready", self.ready_endpoint),
                Route(base + "/config", self.model_config_endpoint),
                Route(base + "/stats", self.statistics_endpoint),
            ]
        routes += self.demo.routes()
        return Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_exception},
        )

    # -------------------------------------------------------------------- endpoints

    @staticmethod
    def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return Response(dumps(doc), status, headers, media_type="application/json")

    @staticmethod
    def _retry_after(exc: AdapterError) -> str | None:
        retry_after = getattr(exc, "retry_after", None)
        return None if retry_after is None else str(max(1, round(retry_after)))

    def _error(self, exc: AdapterError) -> Response:
        retry_after = self._retry_after(exc)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return self._json(error_body(exc), exc.status, headers)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)

    async def server_metadata_endpoint(self, request: Request) -> Response:
        return self._json(self.server_metadata())

    async def live(self, request: Request) -> Response:
        return self._json({"live": True})

    async def ready_endpoint(self, request: Request) -> Response:
        model = request.path_params.get("model")
        if model is None:
            if self.ready.is_set():
                return self._json({"ready": True})
            return self._error(NotReady(self.not_ready_reason()))
        try:
            self.repository.route(model, request.path_params.get("version"))
        except AdapterError as exc:
            return self._error(exc)
        return self._json({"name": model, "ready": True})

    def _model_doc(self, request: Request, build: Any) -> Response:
        """``build(model, version)`` of the request's path as JSON, or its AdapterError."""
        try:
            doc = build(request.path_params.get("model"), request.path_params.get("version"))
        except AdapterError as exc:
            return self._error(exc)
        return self._json(doc)

    async def model_metadata_endpoint(self, request: Request) -> Response:
        return self._model_doc(request, self.model_metadata)

    async def model_config_endpoint(self, request: Request) -> Response:
        return self._model_doc(request, self.model_config)

    async def statistics_endpoint(self, request: Request) -> Response:
        return self._model_doc(request, self.model_statistics)

    async def metrics_endpoint(self, request: Request) -> Response:
        if self.shared_metrics is not None:  # one of several processes: answer for all
            return Response(self.shared_metrics.render(), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(self.repository.registry), media_type=CONTENT_TYPE_LATEST)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        if not body.strip():
            return {}
        doc = _loads(body)
        if not isinstance(doc, dict):
            raise BadInput("request body must be a JSON object")
        return doc

    async def index_endpoint(self, request: Request) -> Response:
        try:
            doc = await self._json_body(request) if request.method == "POST" else {}
            ready = doc.get("ready", False)
            if not isinstance(ready, bool):
                raise BadInput("'ready' must be true or false")
        except AdapterError as exc:
            return self._error(exc)
        return self._json(self.repository.index(ready_only=ready))

    async def _control(self, request: Request, action: str) -> Response:
        try:
            doc = await self._json_body(request)
            check_control_parameters(doc.get("parameters"), action)
            call = self.repository.load if action == "load" else self.repository.unload
            await asyncio.get_running_loop().run_in_executor(None, call,
                                                             request.path_params["model"])
        except AdapterError as exc:
            return self._error(exc)
        return self._json({})

    async def load_endpoint(self, request: Request) -> Response:
        return await self._control(request, "load")

    async def unload_endpoint(self, request: Request) -> Response:
        return await self._control(request, "unload")

    # ------------------------------------------------------------------------ infer

    async def handle_infer(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        """ASGI handler of ``POST /v2/models/{model}[/versions/{version}]/infer``."""
        started = time.perf_counter()
        outcome = "error"
        size = [0]  # the request body's length, set once it is read
        try:
            body, content_type, headers = await self._infer(scope, receive, model, version, size)
            status = 200
            outcome = "ok"
        except AdapterError as exc:
            outcome = exc.outcome
            status, body, content_type = exc.status, dumps(error_body(exc)), JSON_TYPE
            retry_after = self._retry_after(exc)
            headers = [(b"retry-after", retry_after.encode())] if retry_after is not None else []
        except _ClientGone:
            return  # nobody to answer; counted as an error below
        except Exception as exc:  # a bug: still answer in the protocol's error form
            log.exception("infer failed")
            status, content_type, headers = 500, JSON_TYPE, []
            body = dumps(error_body(AdapterError(f"internal error: {exc}")))
        finally:
            self.request_metrics(model).observe_request(outcome, time.perf_counter() - started)
        await send_response(send, status, body, content_type, headers)
        if max(size[0], len(body)) >= TRIM_AFTER_BYTES:
            del body
            await asyncio.to_thread(release_memory)  # RSS back to what it was before

    async def _infer(
        self, scope: Scope, receive: Receive, model: str, version: str | None, size: list[int]
    ) -> tuple[bytes, bytes, Headers]:
        served = self.repository.route(model, version)  # 404 / 503 before reading the body
        self._arriving += 1  # tells the batchers a request is on its way
        try:
            body, header_length = await self.read_body(scope, receive)
            size[0] = len(body)
            try:
                split = int(header_length) if header_length is not None else None
            except ValueError:
                raise BadInput(f"bad Inference-Header-Content-Length {header_length!r}") from None
            decoded = parse_infer_request(body, split, served.output_names)
        finally:
            self._arriving -= 1  # before submit: the batcher may flush when it hits 0
        bridge = self._bridge
        assert bridge is not None
        served, result = await self.infer(bridge, model, version, decoded.inputs)
        payload, split_at = encode_infer_response(
            model, served.version, result, decoded.outputs, decoded.request_id
        )
        if split_at is None:
            return payload, JSON_TYPE, ()
        return payload, BINARY_TYPE, [(HEADER_LENGTH, b"%d" % split_at)]

    async def read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, str | None]:
        """The request body (413 past ``max_payload_bytes``) and the binary-header length.

        The second item is the raw ``Inference-Header-Content-Length`` header, if any.
        """
        limit = self.max_payload_bytes
        declared = header_length = None
        for name, value in scope["headers"]:  # ASGI servers give lower-case names
            if name == b"content-length" and declared is None:
                declared = value.decode("latin-1")
            elif name == HEADER_LENGTH and header_length is None:
                header_length = value.decode("latin-1")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise BadInput(f"bad Content-Length {declared!r}") from None
            if length > limit:
                raise PayloadTooLarge(
                    f"payload of {length} bytes exceeds max_payload_bytes={limit}"
                )
        message = await receive()
        body: bytes = message.get("body", b"")
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if not message.get("more_body", False) and len(body) <= limit:
            return body, header_length  # the common case: the whole body in one message
        chunks = [body]
        received = len(body)
        while True:
            if received > limit:
                raise PayloadTooLarge(
                    f"payload exceeds max_payload_bytes={limit} (streamed {received} bytes)"
                )
            if not message.get("more_body", False):
                return b"".join(chunks), header_length
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            chunks.append(chunk)
            received += len(chunk)
