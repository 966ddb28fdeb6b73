"""Serving adapters: run a ``CompiledModel`` over files (batch), HTTP and gRPC (Open
Inference Protocol v2; one model repository behind both, see ``frontend``), Kafka or a
PostgreSQL request queue.

Every adapter follows one plugin contract: a class with ``options`` (option name ->
``irkit.runtime.options.Option``), built as ``Adapter(model, **options)``; ``serve()``
blocks until done or until SIGINT/SIGTERM, finishing the in-flight batch before it
returns. Errors, metrics and tensor encoding are shared: see ``common``; the dynamic
batcher is ``batcher.DynamicBatcher``.

Adapter classes are imported lazily so that ``import irkit.runtime.adapters`` pulls in
neither starlette/uvicorn, grpcio nor pyarrow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ADAPTERS", "get_adapter"]

# name -> "module:Class"; the queue adapters (kafka, postgres) register here too.
ADAPTERS: dict[str, str] = {
    "batch": "irkit.runtime.adapters.batch:BatchAdapter",
    "http": "irkit.runtime.adapters.http:HttpAdapter",
    "grpc": "irkit.runtime.adapters.grpc:GrpcAdapter",
    "kafka": "irkit.runtime.adapters.kafka:KafkaAdapter",
    "postgres": "irkit.runtime.adapters.postgres:PostgresAdapter",
}


def get_adapter(name: str) -> Any:
    """The adapter class registered as ``name`` (imports its module on first use)."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known: {sorted(ADAPTERS)}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(import_module(module_name), class_name)
