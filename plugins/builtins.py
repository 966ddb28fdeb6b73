"""irkit's built-in parts, registered through the same hooks as a third-party plugin.

Targets are ``"module:attr"`` strings, imported only when the part is used.
"""

from __future__ import annotations

from irkit.hookspecs import Register, hookimpl


@hookimpl
def register_frontends(register: Register) -> None:
    register("onnx", "irkit.frontends.onnx:OnnxFrontend")
    register("torch", "irkit.frontends.torch:TorchFrontend")


@hookimpl
def register_passes(register: Register) -> None:
    from irkit.lower.legalize import LEGALIZE_PASSES
    from irkit.passes import BUILTIN_PASSES

    # Passes that train (torch) or time candidates (llvm) sit above irkit.passes.
    compress = {"distill": "irkit.compress.distill:Distill",
                "search": "irkit.compress.search:Search"}
    for name, target in {**BUILTIN_PASSES, **compress, **LEGALIZE_PASSES}.items():
        register(name, target)


@hookimpl
def register_backends(register: Register) -> None:
    register("ort", "irkit.plugins.ort:OrtBackend")
    register("llvm", "irkit.plugins.llvm:LlvmBackend")
    register("wasm", "irkit.plugins.wasm:WasmBackend")
    register("numba", "irkit.plugins.numba:NumbaBackend")
    register("cuda", "irkit.plugins.cuda:CudaBackend")


@hookimpl
def register_adapters(register: Register) -> None:
    register("batch", "irkit.runtime.adapters.batch:BatchAdapter")
    register("http", "irkit.runtime.adapters.http:HttpAdapter")
    register("grpc", "irkit.runtime.adapters.grpc:GrpcAdapter")
    register("kafka", "irkit.runtime.adapters.kafka:KafkaAdapter")
    register("postgres", "irkit.runtime.adapters.postgres:PostgresAdapter")
