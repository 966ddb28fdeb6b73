"""HTTP adapter: the Open Inference Protocol v2 (KServe/Triton) over Starlette + uvicorn.

Endpoints (``/v2/models/{m}/versions/{v}/...`` forms are accepted wherever ``{m}`` is)::

    GET  /v2                         server metadata (name, version, extensions)
    GET  /v2/health/live             200 once the server runs
    GET  /v2/health/ready            200 after the model is loaded and warmed up, else 503
    GET  /v2/models/{m}              model metadata (inputs/outputs, -1 for variable dims)
    GET  /v2/models/{m}/ready        as health/ready, for this model
    POST /v2/models/{m}/infer        inference
    GET  /metrics                    Prometheus text (this server's own registry)

Infer requests are v2 JSON (``inputs``: name, shape, datatype, data flat or nested;
optional ``id``, ``outputs`` to select outputs) or Triton's binary tensor extension: the
``Inference-Header-Content-Length`` header gives the JSON header's length, inputs with
``parameters.binary_data_size`` take their bytes (little-endian, row-major) in order from
the rest of the body, and outputs with ``parameters.binary_data: true`` (or every output
when the request's ``parameters.binary_data_output`` is true) come back the same way.

Errors are ``{"error": "..."}`` with the status of ``common.AdapterError``: 400 bad input
(decoding, then ``model.validate``, whose message names the input), 404 unknown model or
version, 413 body over ``max_payload_bytes`` (checked on Content-Length before reading and
again while streaming), 429 queue full (with ``Retry-After``), 503 not ready, 504 timeout.
Requests go through ``batcher.DynamicBatcher``; the model runs in its worker threads.
``serve()`` blocks until SIGINT/SIGTERM or ``stop()``; uvicorn then stops accepting,
lets in-flight requests finish, and the batcher drains before ``serve()`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import uvicorn
from prometheus_client import Gauge
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from irkit.runtime.options import Option

from .batcher import DynamicBatcher
from .common import (
    AdapterError,
    AdapterMetrics,
    BadInput,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    ServableModel,
    UnknownModel,
    check_inputs,
    datatype_of,
    decode_tensor,
    dumps,
    error_body,
    resolve_options,
    signature_json,
    stop_on_signals,
    tensor_json,
)

__all__ = ["HttpAdapter", "InferRequest", "encode_infer_response", "parse_infer_request"]

log = logging.getLogger(__name__)
HEADER_LENGTH = "inference-header-content-length"


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


def parse_infer_request(
    body: bytes, header_length: int | None, output_names: list[str]
) -> InferRequest:
    """Decode a v2 infer body (JSON, or JSON header + binary tensors); BadInput on errors."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadInput(f"Inference-Header-Content-Length {header_length} exceeds the body")
    split = len(body) if header_length is None else header_length
    binary = memoryview(body)[split:]
    try:
        doc = json.loads(body[:split])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"malformed JSON: {exc}") from None
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


def encode_infer_response(
    model_name: str,
    model_version: str,
    result: Mapping[str, np.ndarray],
    selection: Mapping[str, bool] | None,
    request_id: Any = None,
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    chosen = selection if selection is not None else dict.fromkeys(result, False)
    outputs: list[str] = []
    blobs: list[bytes] = []
    for name, binary in chosen.items():
        array = result[name]
        if not binary:
            outputs.append(tensor_json(name, array))
            continue
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        meta = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape),
                "parameters": {"binary_data_size": len(data)}}  # fmt: skip
        outputs.append(json.dumps(meta, separators=(",", ":")))
        blobs.append(data)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',"outputs":[' + ",".join(outputs) + "]}"
    header = text.encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


# ----------------------------------------------------------------------------- server


class _LoopBridge:
    """Hands batcher results to the event loop with one wakeup per burst of results.

    ``asyncio.wrap_future`` wakes the loop once per request (a self-pipe write and a
    loop iteration each); a batch finishing N requests would pay that N times while the
    loop is busy parsing other requests. Here the first completion schedules one
    delivery and later ones join it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[Future[Any], asyncio.Future[Any]]] = []

    def wrap(self, future: Future[Any]) -> asyncio.Future[Any]:
        """An asyncio future (of this loop) that resolves like ``future``."""
        waiter = self.loop.create_future()
        future.add_done_callback(lambda done: self._completed(done, waiter))
        return waiter

    def _completed(self, future: Future[Any], waiter: asyncio.Future[Any]) -> None:
        with self._lock:
            self._done.append((future, waiter))
            if len(self._done) > 1:
                return  # a delivery is already scheduled
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, waiter in done:
            if waiter.done() or future.cancelled():
                continue  # the request timed out and was cancelled
            error = future.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(future.result())


class _Server(uvicorn.Server):
    """uvicorn without re-raising the captured signal after shutdown: serve() returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with stop_on_signals(lambda signum: self.handle_exit(signum, None)):
            yield


class HttpAdapter:
    """Serve one model over HTTP with dynamic batching (see module docstring)."""

    options: dict[str, Option] = {
        "host": Option(str, "127.0.0.1", "address to bind"),
        "port": Option(int, 8080, "TCP port; 0 picks a free one (see .port after start)"),
        "max_batch": Option(int, 32, "most rows per model call (1 disables batching)"),
        "max_delay_ms": Option(float, 2.0, "longest a request waits for a batch to fill"),
        "max_queue": Option(int, 1024, "requests waiting beyond this are refused with 429"),
        "timeout_ms": Option(float, None, "per-request deadline -> 504 (None: no deadline)"),
        "max_payload_bytes": Option(int, 64 << 20, "larger request bodies get 413"),
        "workers": Option(int, 1, "inference threads"),
        "version": Option(str, "1", "model version reported and accepted in URLs"),
        "log_level": Option(str, "warning", "uvicorn log level",
                            choices=("critical", "error", "warning", "info", "debug")),
    }  # fmt: skip

    def __init__(self, model: ServableModel, **options: Any) -> None:
        config = resolve_options(self.options, options)
        self.model = model
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.max_payload_bytes: int = config["max_payload_bytes"]
        self.version: str = config["version"]
        self.log_level: str = config["log_level"]
        timeout_ms = config["timeout_ms"]
        self.timeout = timeout_ms / 1000.0 if timeout_ms else None
        self.metrics = AdapterMetrics("http", model.name)
        self.batcher = DynamicBatcher(
            model,
            max_batch=config["max_batch"],
            max_delay_ms=config["max_delay_ms"],
            max_queue=config["max_queue"],
            workers=config["workers"],
            timeout_ms=timeout_ms,
            metrics=self.metrics,
            arrivals=lambda: self._arriving,
        )
        self._arriving = 0  # infer requests between arrival and submit (event-loop thread)
        depth = Gauge("irkit_queue_depth", "Requests waiting for a batch.",
                      registry=self.metrics.registry)  # fmt: skip
        depth.set_function(lambda: self.batcher.queue_depth)
        self.output_names = [spec.name for spec in model.outputs]
        self.ready = threading.Event()
        self.started = threading.Event()
        self.warmup_error: BaseException | None = None
        self._server: _Server | None = None
        self._bridge: _LoopBridge | None = None
        self._stop_requested = False
        self.app = self._build_app()

    # -------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve(self) -> None:
        """Run the server until SIGINT/SIGTERM or ``stop()``; returns after a clean drain."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say so,
        # and without it a response's two writes wait ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=30,
        )
        self._server = _Server(config)
        if self._stop_requested:
            self._server.should_exit = True
        try:
            self._server.run(sockets=[sock])
        finally:
            sock.close()

    def stop(self) -> None:
        """Ask a running ``serve()`` to shut down gracefully (thread-safe)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True

    def _warmup(self) -> None:
        try:
            self.model.warmup()
        except BaseException as exc:  # keep serving 503 and say why
            self.warmup_error = exc
            log.error("warmup of model %r failed: %s", self.model.name, exc)
            return
        self.ready.set()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._bridge = _LoopBridge(asyncio.get_running_loop())
        self.batcher.start()
        threading.Thread(target=self._warmup, name="irkit-warmup", daemon=True).start()
        self.started.set()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests.
            self.ready.clear()
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
            self.started.clear()

    def _build_app(self) -> Starlette:
        model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
        # Starlette tries routes in order: infer, the hot path, goes first.
        routes = [Route(base + "/infer", self.infer, methods=["POST"]) for base in model_paths]
        routes += [
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready_endpoint),
            Route("/metrics", self.metrics_endpoint),
        ]
        for base in model_paths:
            routes += [
                Route(base, self.model_metadata),
                Route(base + "/ready", self.ready_endpoint),
            ]
        return Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_exception},
        )

    # -------------------------------------------------------------------- endpoints

    @staticmethod
    def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return Response(dumps(doc), status, headers, media_type="application/json")

    def _error(self, exc: AdapterError) -> Response:
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        return self._json(error_body(exc), exc.status, headers)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)

    def _check_model(self, request: Request) -> None:
        name = request.path_params.get("model")
        if name is not None and name != self.model.name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {self.model.name!r}")
        wanted = request.path_params.get("version")
        if wanted is not None and wanted != self.version:
            raise UnknownModel(
                f"model {self.model.name!r} has no version {wanted!r} (served: {self.version!r})"
            )

    def _check_ready(self) -> None:
        if not self.ready.is_set():
            why = f"warmup failed: {self.warmup_error}" if self.warmup_error else "warming up"
            raise NotReady(f"model {self.model.name!r} is not ready ({why})")

    async def server_metadata(self, request: Request) -> Response:
        try:
            irkit_version = version("irkit")
        except PackageNotFoundError:
            irkit_version = "unknown"
        return self._json(
            {"name": "irkit", "version": irkit_version, "extensions": ["binary_tensor_data"]}
        )

    async def live(self, request: Request) -> Response:
        return self._json({"live": True})

    async def ready_endpoint(self, request: Request) -> Response:
        try:
            self._check_model(request)
            self._check_ready()
        except AdapterError as exc:
            return self._error(exc)
        return self._json({"name": self.model.name, "ready": True})

    async def model_metadata(self, request: Request) -> Response:
        try:
            self._check_model(request)
        except AdapterError as exc:
            return self._error(exc)
        signature = getattr(self.model, "signature", None)
        platform = signature().get("platform", "irkit") if callable(signature) else "irkit"
        return self._json(
            {
                "name": self.model.name,
                "versions": [self.version],
                "platform": platform,
                "inputs": signature_json(self.model.inputs),
                "outputs": signature_json(self.model.outputs),
            }
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._infer(request)
            outcome = "ok"
            return response
        except AdapterError as exc:
            outcome = exc.outcome
            return self._error(exc)
        except Exception as exc:  # a bug: still answer in the protocol's error form
            log.exception("infer failed")
            return self._error(AdapterError(f"internal error: {exc}"))
        finally:
            self.metrics.observe_request(outcome, time.perf_counter() - started)

    async def _infer(self, request: Request) -> Response:
        self._check_model(request)
        self._check_ready()
        self._arriving += 1  # tells the batcher a request is on its way
        try:
            body = await self._read_body(request)
            header_length = request.headers.get(HEADER_LENGTH)
            try:
                split = int(header_length) if header_length is not None else None
            except ValueError:
                raise BadInput(f"bad Inference-Header-Content-Length {header_length!r}") from None
            decoded = parse_infer_request(body, split, self.output_names)
            inputs = check_inputs(self.model, decoded.inputs)
        finally:
            self._arriving -= 1  # before submit: the batcher may flush when it hits 0
        future = self.batcher.submit(inputs)
        assert self._bridge is not None
        try:
            result = await asyncio.wait_for(self._bridge.wrap(future), self.timeout)
        except TimeoutError:
            future.cancel()  # the batcher skips it if it has not started yet
            raise RequestTimeout(
                f"no result within timeout_ms={self.timeout * 1000:g}"  # type: ignore[operator]
            ) from None
        payload, split_at = encode_infer_response(
            self.model.name, self.version, result, decoded.outputs, decoded.request_id
        )
        if split_at is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(split_at)},
        )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_payload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise BadInput(f"bad Content-Length {declared!r}") from None
            if length > limit:
                raise PayloadTooLarge(
                    f"payload of {length} bytes exceeds max_payload_bytes={limit}"
                )
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(
                    f"payload exceeds max_payload_bytes={limit} (streamed {received} bytes)"
                )
            chunks.append(chunk)
        return b"".join(chunks)
