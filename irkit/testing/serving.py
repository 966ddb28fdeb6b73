"""An HTTP and a gRPC frontend over one model repository, in a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
from typing import Any

from irkit.runtime.adapters.frontend import serve_frontends
from irkit.runtime.adapters.grpc import GrpcAdapter
from irkit.runtime.adapters.http import HttpAdapter
from irkit.runtime.adapters.repository import Batching, ModelRepository


def repo_of(*models: Any, **batching: Any) -> ModelRepository:
    """A repository serving each model under its name, every one batched as ``batching``
    (``Batching``'s fields) says."""
    repository = ModelRepository(label="http+grpc")
    for model in models:
        repository.add_model(model.name, model, batching=Batching(**batching))
    return repository


class Served:
    """An HTTP and a gRPC frontend over one repository on free ports, run by
    ``serve_frontends`` in a thread: ``Served(repo).start()``, then ``.stop()``."""

    def __init__(self, repository: ModelRepository, **grpc_options: Any) -> None:
        self.repository = repository
        self.http = HttpAdapter(None, repository=repository, port=0)
        self.grpc = GrpcAdapter(None, repository=repository, port=0, **grpc_options)
        self.thread = threading.Thread(target=serve_frontends, args=([self.http, self.grpc],),
                                       daemon=True)  # fmt: skip

    def start(self, wait_ready: bool = True) -> Served:
        self.thread.start()
        if not (self.http.started.wait(20) and self.grpc.started.wait(20)):
            raise RuntimeError("the HTTP and gRPC servers did not start within 20 s")
        if wait_ready and not self.repository.ready.wait(20):
            raise RuntimeError("the models did not become ready within 20 s")
        return self

    def stop(self) -> None:
        self.grpc.stop()  # ends serve_frontends, which stops the HTTP server too
        self.thread.join(30)
        if self.thread.is_alive():
            raise RuntimeError("the servers did not stop within 30 s")
