"""A registry built in memory, so spec tests do not depend on which parts exist yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from irkit.plugins import Entry, Registry
from irkit.runtime.options import Option
from irkit.spec import DataRef

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class FakePrune:
    """A pass declared the way real passes are: a frozen dataclass whose fields are options."""

    sparsity: float = 0.5
    structured: bool = False
    criterion: str = "weight"
    calibrate: object = None


@dataclass(frozen=True)
class FakeQuantize:
    mode: Literal["dynamic", "static"] = field(
        default="dynamic", metadata={"choices": ("dynamic", "static")}
    )
    per_channel: bool = False
    calibrate: DataRef | None = None
    method: str = field(default="minmax", metadata={"choices": ("minmax", "percentile", "entropy")})


@dataclass(frozen=True)
class FakeLowrank:
    energy: float = 0.95
    rank: int | None = None


@dataclass(frozen=True)
class FakeFold:
    pass


def _part(**options: Option) -> Any:
    return SimpleNamespace(options=dict(options))


def make_registry() -> Registry:
    reg = Registry()

    def add(kind: str, name: str, target: Any) -> None:
        reg.of(kind)[name] = Entry(kind, name, target, "spec-tests", "tests")

    add("frontends", "onnx", _part())
    add("frontends", "torch", _part(example=Option(object)))
    add("passes", "fold", FakeFold)
    add("passes", "fuse", FakeFold)
    add("passes", "prune", FakePrune)
    add("passes", "quantize", FakeQuantize)
    add("passes", "lowrank", FakeLowrank)
    add("passes", "distill", "irkit.compress.distill:Distill")
    add("passes", "search", "irkit.compress.search:Search")
    add(
        "passes",
        "tag",
        _part(label=Option(str, required=True, doc="a label"), extra=Option(object)),
    )
    # Registered, but its module does not exist: only the name can be checked.
    add("passes", "cse", "irkit_spec_tests_no_such_module:Cse")
    add("backends", "ort", _part(threads=Option(int, 0), providers=Option(list, None)))
    add(
        "backends",
        "llvm",
        _part(
            opt_level=Option(int, 3, choices=(0, 1, 2, 3)),
            fast_math=Option(bool, True),
            cpu=Option(str, "native"),
        ),
    )
    add("backends", "wasm", _part(simd=Option(bool, True)))
    add("backends", "numba", _part(parallel=Option(bool, True)))
    add("backends", "cuda", _part(arch=Option(str, "sm_90")))
    add(
        "adapters",
        "batch",
        _part(
            input=Option(Path, required=True),
            output=Option(Path, required=True),
            chunk_size=Option(int, 1024),
        ),
    )
    add(
        "adapters",
        "http",
        _part(
            host=Option(str, "127.0.0.1"),
            port=Option(int, 8080),
            max_batch=Option(int, 32),
            max_delay_ms=Option(float, 2.0),
            log_level=Option(str, "warning", choices=("error", "warning", "info")),
        ),
    )
    add(
        "adapters",
        "kafka",
        _part(
            brokers=Option(str, "embedded"),
            input_topic=Option(str, required=True),
            output_topic=Option(str, required=True),
            group=Option(str, "irkit"),
            embedded_port=Option(int, 0),
        ),
    )
    add(
        "adapters",
        "postgres",
        _part(
            dsn=Option(str, ""),
            table=Option(str, "irkit_requests"),
            result_table=Option(str, "irkit_results"),
            max_batch=Option(int, 64),
            max_delay_ms=Option(float, 2.0),
            workers=Option(int, 1),
        ),
    )
    return reg
