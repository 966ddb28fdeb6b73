"""An HTTP and a gRPC frontend over one model repository, in a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
from typing import Any

from irkit.runtime.adapters.frontend import serve_frontends
from irkit.runtime.adapters.grpc import GrpcAdapter
from irkit.runtime.adapters.http import HttpAdapter
from irkit.runtime.adapters.repository import ModelRepository


class Served:
    """An HTTP and a gRPC frontend over one repository, running in a thread."""

    def __init__(self, repository: ModelRepository, **grpc_options: Any) -> None:
        self.repository = repository
        self.http = HttpAdapter(None, repository=repository, port=0)
        self.grpc = GrpcAdapter(None, repository=repository, port=0, **grpc_options)
        self.thread = threading.Thread(target=serve_frontends, args=([self.http, self.grpc],),
                                       daemon=True)  # fmt: skip

    def start(self, wait_ready: bool = True) -> Served:
        self.thread.start()
        assert self.http.started.wait(20) and self.grpc.started.wait(20), "did not start"
        if wait_ready:
            assert self.repository.ready.wait(20), "models did not become ready"
        return self

    def stop(self) -> None:
        self.grpc.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not stop"
