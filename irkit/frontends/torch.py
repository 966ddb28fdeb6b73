"""PyTorch frontend: an ``nn.Module`` (or a ``"pkg.module:factory"`` string) -> irkit Graph.

Capture (``capture="export"``, the default): ``torch.export.export`` with the batch dim
of every input dynamic (``torch.export.Dim("N")``), then ``run_decompositions()`` to core
ATen, with torch's reference decompositions added for the core ops irkit does not map
("fallback"). Each ATen node is then lowered through the table in ``torch_ops``;
parameters and buffers become constants named after the module's state-dict keys, and
graph inputs take the names of ``forward``'s arguments. Every ATen op the table cannot
map is collected, and one ``UnsupportedOpsError`` lists them all with their source lines.

``capture="onnx"`` goes through ``torch.onnx.export(dynamo=True)`` and the ONNX frontend.

``python -m irkit.frontends.torch --coverage`` prints the core-ATen coverage table.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from irkit.errors import IrkitError, ModelLoadError
from irkit.ir import Graph

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
BATCH_DIM = "N"


class TorchFrontend:
    """Frontend plugin ``torch``: loads ``torch.nn.Module`` objects and factory strings."""

    name = "torch"

    def __init__(self) -> None:
        if importlib.util.find_spec("torch") is None:
            raise IrkitError("the torch frontend needs torch: pip install 'irkit[torch]'")

    def can_load(self, source: Any) -> bool:
        if isinstance(source, str):
            return bool(FACTORY_RE.match(source)) and not source.endswith(".onnx")
        torch = sys.modules.get("torch")  # a Module can only exist once torch is imported
        return torch is not None and isinstance(source, torch.nn.Module)

    def load(self, source: Any, **options: Any) -> Graph:
        return load_torch(source, **options)


def load_torch(
    source: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    dynamic_shapes: Any = None,
    capture: str = "export",
    opset: int | None = None,
    output_names: Sequence[str] | None = None,
    name: str | None = None,
) -> Graph:
    """Capture ``source`` (put in eval mode) and lower it to an irkit Graph.

    ``example_inputs``: a tuple of tensors (or a dict keyed by forward's argument names);
    a factory string may return ``(module, example_inputs)`` instead. With
    ``dynamic_batch`` dim 0 of every tensor input is the symbol ``"N"`` (give the example a
    batch of 2 or more: torch specializes size-1 dims). ``dynamic_axes`` names more
    dynamic dims per input, ``{"x": {0: "N", 1: "S"}}`` (a batch and a sequence length;
    one name is one size wherever it appears); inputs it does not name keep the batch
    rule. ``dynamic_shapes`` overrides both with torch.export's own spec. ``opset`` defaults to 17, or 20 when the model has a
    GELU (so it stays one ``Gelu`` node); below 20 GELU is decomposed.
    """
    import torch

    module, args, kwargs, factory_axes = _resolve_source(source, example_inputs)
    dynamic_axes = dynamic_axes if dynamic_axes is not None else factory_axes
    graph_name = name or _graph_name(module)
    if capture not in ("export", "onnx"):
        raise IrkitError(f"capture must be 'export' or 'onnx', not {capture!r}")
    arg_names = forward_arg_names(module, len(args))
    spec = dynamic_shapes
    if spec is None and (dynamic_batch or dynamic_axes):
        spec = _batch_dynamic_shapes(module, args, kwargs, arg_names, dynamic_batch,
                                     dynamic_axes or {})
    if capture == "onnx":
        return _load_via_onnx(module, args, kwargs, spec, opset)
    from irkit.frontends.torch_rnn import recurrences_as_one_op

    try:
        with torch.no_grad(), warnings.catch_warnings(), recurrences_as_one_op(module):
            # torch's own pytree deprecation notice, raised inside torch.export
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
            program = torch.export.export(
                module.eval(), tuple(args), kwargs or None, dynamic_shapes=spec
            )
            program = program.run_decompositions(decomposition_table())
    except Exception as exc:  # torch raises many kinds; name the module and the cause
        raise ModelLoadError(
            f"torch.export could not capture {graph_name}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    from irkit.frontends.torch_convert import convert_program

    return convert_program(
        program,
        graph_name,
        opset=opset,
        output_names=output_names,
        dim_names=_dim_names(spec, arg_names, kwargs),
    )


def resolve_module(source: Any) -> tuple[Any, Any]:
    """``(module, the factory's example inputs or None)`` for an ``nn.Module`` or a
    ``"pkg.module:factory"`` string; ModelLoadError when it names no module."""
    module, factory_inputs, _ = resolve_factory(source)
    return module, factory_inputs


def resolve_factory(source: Any) -> tuple[Any, Any, Any]:
    """``resolve_module`` plus the factory's dynamic axes: a factory returns a module,
    ``(module, example_inputs)`` or ``(module, example_inputs, dynamic_axes)``."""
    import torch

    module, factory_inputs, factory_axes = source, None, None
    if isinstance(source, str):
        module_name, _, attr = source.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(f"{source}: cannot import {module_name!r}: {exc}") from None
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ModelLoadError(f"{source}: {module_name!r} has no {attr!r}")
        module = (
            target() if callable(target) and not isinstance(target, torch.nn.Module) else target
        )
        if isinstance(module, tuple) and len(module) == 2:
            module, factory_inputs = module
        elif isinstance(module, tuple) and len(module) == 3:
            module, factory_inputs, factory_axes = module
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{source!r} is not a torch.nn.Module (got {type(module).__name__})")
    return module, factory_inputs, factory_axes


def _resolve_source(
    source: Any, example_inputs: Any
) -> tuple[Any, tuple[Any, ...], dict[str, Any], Any]:
    import torch

    module, factory_inputs, factory_axes = resolve_factory(source)
    example_inputs = example_inputs if example_inputs is not None else factory_inputs
    if example_inputs is None:
        raise ModelLoadError(
            f"loading {_graph_name(module)} from torch needs example_inputs=(tensor, …)"
        )
    if isinstance(example_inputs, Mapping):
        return module, (), dict(example_inputs), factory_axes
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    return module, tuple(example_inputs), {}, factory_axes


def _graph_name(module: Any) -> str:
    return re.sub(r"\W", "_", type(module).__name__) or "torch_model"


def forward_arg_names(module: Any, count: int) -> list[str]:
    """The names of ``forward``'s first ``count`` positional parameters."""
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _batch_dynamic_shapes(
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arg_names: list[str],
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Any:
    """torch.export's dynamic_shapes: the axes ``dynamic_axes`` names for an input, else
    (with ``dynamic_batch``) dim 0 of every tensor input as ``Dim("N")``."""
    import torch

    axes = dict(dynamic_axes or {})
    names = list(kwargs) if kwargs else arg_names
    unknown = [name for name in axes if name not in names]
    if unknown:
        raise IrkitError(f"dynamic_axes names {', '.join(map(repr, unknown))}, not an input "
                         f"of forward ({', '.join(names)})")
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if not isinstance(name, str) or not name.isidentifier():
            raise IrkitError(f"dynamic_axes: a dim name must be an identifier, not {name!r}")
        return dims.setdefault(name, torch.export.Dim(name))

    def spec(value: Any, name: str | None = None) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        if name in axes:
            result = {}
            for axis, dim_name in dict(axes[name]).items():
                if not isinstance(axis, int) or not -value.dim() <= axis < value.dim():
                    raise IrkitError(f"dynamic_axes[{name!r}]: axis {axis!r} is out of range "
                                     f"for a rank-{value.dim()} input")
                result[axis % value.dim()] = dim(dim_name)
            return result or None
        return {0: dim(BATCH_DIM)} if dynamic_batch else None

    if kwargs:
        return {key: spec(value, key) for key, value in kwargs.items()}
    params = list(inspect.signature(module.forward).parameters.values())
    for position, param in enumerate(params):
        if param.kind is param.VAR_POSITIONAL:  # forward(self, *args): one nested tuple
            head = tuple(spec(value, name) for value, name in zip(args[:position], names))
            return (*head, tuple(spec(value) for value in args[position:]))
    return tuple(spec(value, name) for value, name in zip(args, names))


def _dim_names(
    spec: Any, arg_names: list[str], kwargs: dict[str, Any]
) -> dict[str, dict[int, str]]:
    """Input name -> {axis: name} from a dynamic_shapes spec of ``torch.export.Dim``s."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        per_input = dict(spec)
    else:
        names = arg_names if not kwargs else list(kwargs)
        per_input = dict(zip(names, spec))
    result: dict[str, dict[int, str]] = {}
    for input_name, axes in per_input.items():
        if isinstance(axes, Mapping):
            result[input_name] = {
                int(axis): dim.__name__ for axis, dim in axes.items() if hasattr(dim, "__name__")
            }
    return result


def decomposition_table() -> dict[Any, Any]:
    """torch.export's default table plus torch's decompositions of core ops not mapped."""
    import torch
    from torch._decomp import get_decompositions

    table = dict(torch.export.default_decompositions())
    table.update(get_decompositions(fallback_ops()))
    return table


def fallback_ops() -> list[Any]:
    """Core ATen ops irkit does not map but torch can decompose into smaller ops."""
    from torch._decomp import decomposition_table as torch_decompositions

    from irkit.frontends.torch_ops import LOWERINGS

    # only aten-to-aten decompositions: torch._refs ones produce prims, which export rejects
    return [
        op
        for op in core_aten_ops()
        if str(op) not in LOWERINGS
        and op in torch_decompositions
        and torch_decompositions[op].__module__.startswith("torch._decomp")
    ]


def core_aten_ops() -> list[Any]:
    """Every ATen overload tagged ``core`` (the op set torch.export decomposes to)."""
    import torch

    ops = []
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        overloads = getattr(packet, "overloads", None)
        if packet is None or overloads is None:
            continue
        for overload in overloads():
            op = getattr(packet, overload)
            if torch.Tag.core in getattr(op, "tags", ()):
                ops.append(op)
    return sorted(ops, key=str)


def _load_via_onnx(
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spec: Any,
    opset: int | None,
) -> Graph:
    import torch

    from irkit.interop.onnx_import import load_onnx

    names = forward_arg_names(module, len(args))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            tuple(args),
            kwargs=kwargs or None,
            dynamo=True,
            opset_version=max(opset or 18, 18),
            input_names=names or None,
            dynamic_shapes=spec,
            verbose=False,
        )
    if program is None:
        raise ModelLoadError(f"torch.onnx.export returned nothing for {_graph_name(module)}")
    return load_onnx(program.model_proto)


# -- the coverage table ---------------------------------------------------------------------
def coverage_table() -> list[tuple[str, str]]:
    """(core ATen op, "mapped" | "fallback" | "unsupported") for every core ATen op,
    plus the non-core ops the table maps (they survive export's decompositions)."""
    from irkit.frontends.torch_ops import LOWERINGS

    fallback = {str(op) for op in fallback_ops()}
    core = {str(op) for op in core_aten_ops()}
    rows = []
    for op in sorted(core | set(LOWERINGS)):
        status = "mapped" if op in LOWERINGS else "fallback" if op in fallback else "unsupported"
        rows.append((op, status))
    return rows


def format_coverage(rows: Sequence[tuple[str, str]]) -> str:
    counts = {s: sum(1 for _, st in rows if st == s) for s in ("mapped", "fallback", "unsupported")}
    from irkit.frontends.torch_ops import LOWERINGS

    def via(op: str, status: str) -> str:
        if status == "mapped":
            return LOWERINGS[op].__name__
        return "torch._decomp, then the table" if status == "fallback" else ""

    width = max(len(op) for op, _ in rows)
    lines = [f"{'ATen op':<{width}}  {'status':<11}  via", f"{'-' * width}  {'-' * 11}  ---"]
    lines += [f"{op:<{width}}  {status:<11}  {via(op, status)}".rstrip() for op, status in rows]
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines.append(f"{len(rows)} ops: {summary}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m irkit.frontends.torch")
    parser.add_argument("--coverage", action="store_true", help="print the ATen coverage table")
    parser.add_argument("--status", choices=["mapped", "fallback", "unsupported"])
    args = parser.parse_args(argv)
    if not args.coverage:
        parser.print_help()
        return 0
    rows = coverage_table()
    if args.status:
        rows = [r for r in rows if r[1] == args.status]
    print(format_coverage(rows))
    return 0


__all__ = ["TorchFrontend", "coverage_table", "forward_arg_names", "load_torch"]

if __name__ == "__main__":
    sys.exit(main())
