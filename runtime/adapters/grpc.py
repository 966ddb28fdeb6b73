"""gRPC adapter: the Open Inference Protocol v2's ``inference.GRPCInferenceService`` on
irkit's own HTTP/2 transport (default) or grpcio's asyncio server.

Transport (option ``server``): ``"irkit"`` runs ``h2server.H2GrpcServer``, a lean HTTP/2
server written as an ``asyncio.Protocol`` (uvloop's loop when installed): frames parsed
from one buffer, HPACK request headers decoded with the ``hpack`` package, each unary
answer written as one HEADERS + DATA + trailers; answering a constant it costs about a
tenth of grpcio's server CPU per call (25 against 250 us measured). ``"grpcio"`` runs
``grpc.aio.server``. Both serve the same handlers
(``_Servicer`` below, grpc.aio-style coroutines, registered through the generated
``add_GRPCInferenceServiceServicer_to_server``), so behaviour, status codes and metrics
are the same on either.

RPCs (messages in ``oip/inference.proto``, generated into irkit's own modules; other
RPCs of the service, such as shared memory, answer UNIMPLEMENTED)::

    ServerLive, ServerReady            live; ready while every required model is ready
    ModelReady                         a model (version) takes requests (false if unknown)
    ServerMetadata, ModelMetadata      name, version, extensions; ready versions, platform,
                                       inputs/outputs (-1 for variable dims)
    ModelConfig                        Triton's model configuration (``extensions``):
                                       max_batch_size, dims, TYPE_* datatypes, batching
    ModelStatistics                    Triton's statistics of a model (all when no name)
    ModelInfer                         raw_input_contents or typed contents (``grpc_codec``)
    ModelStreamInfer                   a bidirectional stream of infer requests: requests run
                                       concurrently (and batch with every other request);
                                       each answer, or its error_message, carries its id
    RepositoryIndex                    every model and version with state and reason
    RepositoryModelLoad / Unload       need ``allow_model_control`` (PERMISSION_DENIED else)

Errors are gRPC status codes from ``common.AdapterError.grpc_code``: INVALID_ARGUMENT
(bad input), NOT_FOUND (unknown model or version), RESOURCE_EXHAUSTED (queue full, with a
``retry-after`` trailer; or a message over ``max_message_bytes``, refused by grpc itself),
UNAVAILABLE (not ready, unloaded, stopping), DEADLINE_EXCEEDED (``timeout_ms``, or the
client's own deadline, whichever is first), PERMISSION_DENIED (model control disabled),
INTERNAL (the model raised), UNIMPLEMENTED (an RPC irkit does not serve, a message
compressed other than with gzip). In the metrics, a call the client cancelled (or whose
own deadline passed) counts with outcome ``cancelled``.

The models, batchers, metrics and limits are those of a ``repository.ModelRepository``
shared with the http adapter (see ``frontend``): ``GrpcAdapter(model, **options)`` serves
one model (and ``model_repository``), ``GrpcAdapter(None, repository=repo, ...)`` serves
a repository that an ``HttpAdapter`` on another port serves too. ``serve()`` blocks until
SIGINT/SIGTERM or ``stop()``; then the server refuses new RPCs (GOAWAY on the irkit
transport), finishes the in-flight ones (up to ``grace_s``), and the batchers drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from irkit.runtime.options import Option

from .common import AdapterError, ServableModel, UnknownModel, stop_on_signals
from .frontend import SHARED_OPTIONS, Frontend, LoopBridge, check_control_parameters
from .grpc_codec import decode_infer_request, encode_infer_response, encode_raw_response
from .oip import inference_pb2 as pb
from .oip import inference_pb2_grpc as pb_grpc
from .repository import ModelRepository

__all__ = ["GrpcAdapter"]

log = logging.getLogger(__name__)

TensorMetadata = pb.ModelMetadataResponse.TensorMetadata
ModelIndex = pb.RepositoryIndexResponse.ModelIndex
SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"


class Arrivals:
    """ModelInfer RPCs that the server accepted whose request message is still on its way.

    The batchers' ``arrivals`` count for grpc (``DynamicBatcher(arrivals=)``): while a
    request is being received, a worker waits for it (up to ``max_delay_ms``) instead of
    running a batch of one; with nothing on its way, a batch runs at once. The irkit
    transport counts a call when its HEADERS arrive, grpcio when it accepts the RPC. A call
    may be dropped before its handler runs (the client went away), so an RPC counts for
    ``horizon_s`` at most: a lost one can delay batches by no more than that.
    Loop thread: ``accepted``, ``received``; any thread: ``__call__``.
    """

    def __init__(self, horizon_s: float = 0.05) -> None:
        self.horizon_s = horizon_s
        self._times: deque[float] = deque()  # accept times, oldest first

    def accepted(self) -> None:
        now, times = time.monotonic(), self._times
        while times and now - times[0] > self.horizon_s:
            times.popleft()
        times.append(now)

    def received(self) -> None:
        if self._times:
            self._times.popleft()

    def __call__(self) -> int:
        times = self._times
        try:
            newest = times[-1]
        except IndexError:  # empty (or emptied by the loop thread meanwhile)
            return 0
        return len(times) if time.monotonic() - newest < self.horizon_s else 0


class _Handlers(grpc.GenericRpcHandler):
    """The service's method handlers, looked up by method name; notes accepted ModelInfers.

    grpc.aio calls ``service`` when it accepts an RPC, before the request message is read.
    The handlers are deliberately not registered methods: grpc.aio's accept loop waits on
    one pending call per registered method (an ``asyncio.wait`` over all of them for
    every RPC), which costs each RPC more than this one dictionary lookup.
    """

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], arrivals: Arrivals) -> None:
        self.handlers = {f"/{SERVICE}/{name}": handler for name, handler in handlers.items()}
        self.arrivals = arrivals

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == MODEL_INFER:
            self.arrivals.accepted()
        return self.handlers.get(method)


class _CaptureHandlers:
    """Stands in for the server in the generated ``add_..._to_server``: keeps the handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come again in add_registered_method_handlers

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


class GrpcAdapter(Frontend):
    """Serve a model, or a model repository, over gRPC with dynamic batching (module doc)."""

    name = "grpc"
    network_options: dict[str, Option] = {
        "host": Option(str, "127.0.0.1", "address to bind"),
        "port": Option(int, 8001, "TCP port; 0 picks a free one (see .port after start)"),
        "max_message_bytes": Option(int, 64 << 20, "larger messages get RESOURCE_EXHAUSTED"),
        "grace_s": Option(float, 30.0, "on stop, how long in-flight RPCs may take to finish"),
        "max_concurrent_streams": Option(int, 128, "calls one connection may have open at "
                                         "once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); "
                                         "clients queue or retry the others"),
        "loop": Option(str, "auto", "event loop (auto: uvloop if installed)",
                       choices=("auto", "uvloop", "asyncio")),
        "server": Option(str, "irkit", "gRPC transport: irkit (its own HTTP/2 server on "
                         "asyncio, h2server) or grpcio (grpc.aio's server)",
                         choices=("irkit", "grpcio")),
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
        self.host: str = self.config["host"]
        self.port: int = self.config["port"]
        self.max_message_bytes: int = self.config["max_message_bytes"]
        self.grace_s: float = self.config["grace_s"]
        self.max_concurrent_streams: int = self.config["max_concurrent_streams"]
        if self.max_concurrent_streams < 1:
            raise ValueError(f"grpc option max_concurrent_streams must be >= 1, got "
                             f"{self.max_concurrent_streams}")  # fmt: skip
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self.bridge: LoopBridge | None = None
        self.arrivals = Arrivals()
        self.repository.add_arrivals(self.arrivals)

    @property
    def address(self) -> str:
        """``host:port`` as grpc clients (tritonclient's ``url``) take it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> None:
        """Run the server until SIGINT/SIGTERM or ``stop()``; returns after a clean drain."""
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            runner.run(self.serve_async())

    def _loop_factory(self) -> Any:
        """uvloop's loop when chosen (or installed, for ``auto``); else asyncio's default.

        grpc.aio runs on either; on uvloop the loop's own overhead per RPC is lower.
        """
        if self.config["loop"] == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            if self.config["loop"] == "uvloop":
                raise ValueError("loop = 'uvloop' but uvloop is not installed") from None
            return None
        return uvloop.new_event_loop

    async def serve_async(self) -> None:
        """``serve`` on the running event loop."""
        loop = asyncio.get_running_loop()
        self._loop, self._stop_event = loop, asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        server: Any
        if self.config["server"] == "grpcio":
            server = self.build_server()
            await server.start()
        else:
            server = await self.start_h2_server()
        self.bridge = LoopBridge(loop)
        if self.owns_repository:
            self.repository.start()
        self.started.set()
        try:
            with stop_on_signals(lambda signum: self.stop()):
                await self._stop_event.wait()
        finally:
            await server.stop(self.grace_s)  # refuse new RPCs, let in-flight ones finish
            if self.owns_repository:
                await loop.run_in_executor(None, self.repository.stop)
            self.started.clear()

    def build_server(self) -> grpc.aio.Server:
        """An asyncio grpc server with the service added and the port bound (not started)."""
        limit = self.max_message_bytes
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared listener
        ])  # fmt: skip
        handlers = {path.rsplit("/", 1)[1]: h for path, h in self.service_methods().items()}
        server.add_generic_rpc_handlers((_Handlers(handlers, self.arrivals),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:
            raise OSError(f"grpc: cannot listen on {host}:{self.port}: {exc}") from None
        if port == 0:
            raise OSError(f"grpc: cannot listen on {host}:{self.port}")
        self.port = port
        log.info("grpc: listening on %s (inference.GRPCInferenceService)", self.address)
        return server

    def service_methods(self, wire: bool = False) -> dict[str, grpc.RpcMethodHandler]:
        """The service's handlers by path (``/inference.GRPCInferenceService/ModelInfer``);
        with ``wire``, ModelInfer may answer already serialized bytes."""
        capture = _CaptureHandlers()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self, wire), capture)
        return {f"/{SERVICE}/{name}": handler for name, handler in capture.handlers.items()}

    async def start_h2_server(self) -> Any:
        """irkit's own transport (``h2server.H2GrpcServer``) serving the same handlers,
        listening."""
        try:
            from .h2server import H2GrpcServer, Method
        except ImportError as exc:  # hpack (the grpc extra) missing
            raise ValueError(f"grpc server = 'irkit' needs the hpack package ({exc}): "
                             "pip install 'irkit[grpc]', or set server = 'grpcio'") from None
        methods = {}
        for path, handler in self.service_methods(wire=True).items():
            streaming = handler.request_streaming
            call = handler.stream_stream if streaming else handler.unary_unary
            methods[path] = Method(call, handler.request_deserializer,
                                   _bytes_or(handler.response_serializer), streaming)  # fmt: skip
        arrivals = self.arrivals

        def on_call(path: str) -> None:
            if path == MODEL_INFER:
                arrivals.accepted()

        server = H2GrpcServer(methods, max_message_bytes=self.max_message_bytes,
                              on_call=on_call,
                              max_concurrent_streams=self.max_concurrent_streams)  # fmt: skip
        try:
            self.port = await server.start(self.host, self.port)
        except OSError as exc:
            raise OSError(f"grpc: cannot listen on {self.address}: {exc}") from None
        log.info("grpc: listening on %s (inference.GRPCInferenceService, irkit transport)",
                 self.address)  # fmt: skip
        return server

    def stop(self) -> None:
        """Ask a running ``serve()`` to shut down gracefully (thread-safe)."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            # RuntimeError: the loop closed meanwhile, serve() has returned
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


def _bytes_or(serialize: Any) -> Any:
    """``serialize``, passing bytes (a response serialized already) through."""

    def serialize_response(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return serialize_response


async def _abort(context: grpc.aio.ServicerContext, exc: AdapterError) -> None:
    """End the RPC with ``exc``'s status code (raises)."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        context.set_trailing_metadata((("retry-after", str(max(1, round(retry_after)))),))
    await context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc) or type(exc).__name__)


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPC handlers; everything model-related goes through the adapter's repository."""

    def __init__(self, adapter: GrpcAdapter, wire: bool = False) -> None:
        self.adapter = adapter
        self.repository = adapter.repository
        self.wire = wire  # ModelInfer may answer serialized bytes (the irkit transport)

    # ------------------------------------------------------------------ health

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.repository.ready.is_set())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            ready = self.adapter.model_ready(request.name, request.version or None)
        except UnknownModel:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.adapter.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            doc = self.adapter.model_metadata(request.name, request.version or None)
        except AdapterError as exc:
            await _abort(context, exc)
        tensors = {key: [TensorMetadata(**t) for t in doc[key]] for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                        platform=doc["platform"], **tensors)  # fmt: skip

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            config = self.adapter.model_config(request.name, request.version or None)
        except AdapterError as exc:
            await _abort(context, exc)
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        try:
            stats = self.adapter.model_statistics(request.name or None, request.version or None)
        except AdapterError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # ------------------------------------------------------------------- infer

    async def _infer(self, request: Any, context: Any, wire: bool = False) -> Any:
        """The ModelInferResponse; with ``wire``, a raw one as its serialized bytes."""
        name, version = request.model_name, request.model_version or None
        served = self.repository.route(name, version)
        decoded = decode_infer_request(request, served.output_names)
        bridge = self.adapter.bridge
        assert bridge is not None
        served, result = await self.adapter.infer(bridge, name, version, decoded.inputs,
                                                  context.time_remaining())  # fmt: skip
        if wire and decoded.raw:
            return encode_raw_response(name, served.version, result, decoded.outputs,
                                       decoded.request_id)  # fmt: skip
        return encode_infer_response(name, served.version, result, decoded.outputs,
                                     decoded.request_id, decoded.raw)  # fmt: skip

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.adapter.arrivals.received()
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._infer(request, context, self.wire)
            outcome = "ok"
            return response
        except AdapterError as exc:
            outcome = exc.outcome
            await _abort(context, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"  # the client went away or its deadline passed
            raise
        except Exception as exc:  # a bug: still answer with a status, not a traceback
            log.exception("infer failed")
            await _abort(context, AdapterError(f"internal error: {exc}"))
        finally:
            self.adapter.request_metrics(request.model_name).observe_request(
                outcome, time.perf_counter() - started)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        answers: asyncio.Queue[Any] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: Any) -> None:
            started = time.perf_counter()
            outcome = "ok"
            try:
                response = pb.ModelStreamInferResponse(
                    infer_response=await self._infer(request, context))
            except AdapterError as exc:
                outcome = exc.outcome
                response = pb.ModelStreamInferResponse(
                    error_message=str(exc),
                    infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                         model_version=request.model_version,
                                                         id=request.id),
                )  # fmt: skip
            self.adapter.request_metrics(request.model_name).observe_request(
                outcome, time.perf_counter() - started)
            answers.put_nowait(response)

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running)
            finally:
                answers.put_nowait(None)  # end of stream

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    # -------------------------------------------------------------- repository

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        rows = self.repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[ModelIndex(**row) for row in rows])

    async def _control(self, request: Any, context: Any, action: str) -> None:
        try:
            check_control_parameters(dict.fromkeys(request.parameters), action)
            call = self.repository.load if action == "load" else self.repository.unload
            await asyncio.get_running_loop().run_in_executor(None, call, request.model_name)
        except AdapterError as exc:
            await _abort(context, exc)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._control(request, context, "load")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._control(request, context, "unload")
        return pb.RepositoryModelUnloadResponse()
