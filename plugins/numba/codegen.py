"""A kernel-IR :class:`~irkit.kir.Program` as one Python module of ``@njit`` functions.

The module (``kernels.py`` in the artifact) reads top to bottom:

- the header line the runtime checks, a docstring, imports, the Numba options;
- the helpers the kernels call (:mod:`.helpers`);
- per kernel ``k_<name>(buffers…, symbols…, start, end)``, and, when its body is an
  independent loop, ``k_<name>_parallel`` with that loop as ``prange`` (``parallel=True``);
- ``views(io…, weights, workspace, dims)``: every global buffer as a typed array (io
  arrays, or slices of the weights blob and of the workspace at the plan's offsets),
  one per type where kernels type the same buffer differently (``b_t`` as u8 bytes,
  ``b_t__i32`` as the words an int8 conv writes into it);
- ``run`` and ``run_parallel``: every kernel in order (serial, or the parallel variants),
  what the runtime calls once per inference;
- ``RUN_SIGNATURE``, ``IO_DTYPES``, ``KERNELS`` (name, buffer positions in ``views``) and
  ``extents(dims)``, read by the loader.

Loops the kernel IR marks independent become ``prange`` only at the top level (where
Numba parallelizes; nested ``prange`` runs serially anyway). Float code gets Numba's
``fastmath`` flags ``contract``, ``nsz`` and ``reassoc`` (the llvm backend's
reassociation and contraction) when the ``fast_math`` option is on, never ``nnan``,
``ninf``, ``arcp`` or ``afn``: kernel IR keeps NaN and infinity semantics and exact
division. With ``NUMBA_DISABLE_JIT=1`` the same module runs as plain Python, which a
debugger steps through line by line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from irkit import __version__
from irkit.kir import Block, Buffer, For, Kernel, Program, Stmt, unroll_loops, verify_kernel
from irkit.kir.nodes import ITEMSIZE
from irkit.kir.simplify import simplify_stmt
from irkit.plugins.numba.helpers import helper_source
from irkit.plugins.numba.pysource import MEMORY, KernelSource, global_buffers, python_name
from irkit.runtime.backends.pysource import source_header

FAST_FLAGS = ("contract", "nsz", "reassoc")


def prepare(kernel: Kernel) -> Kernel:
    """``unroll`` loops expanded and the body simplified; ``vector`` loops stay loops
    (LLVM vectorizes them inside Numba)."""
    body = simplify_stmt(unroll_loops(kernel.body))
    prepared = Kernel(kernel.name, kernel.buffers, body, kernel.locals)
    verify_kernel(prepared)
    return prepared


def top_loop(body: Stmt) -> For | None:
    """The kernel's top-level independent loop (the one ``prange`` runs), if any."""
    if isinstance(body, Block) and len(body.stmts) == 1:
        body = body.stmts[0]
    if isinstance(body, For) and body.is_independent and body.kind != "thread":
        return body
    return None


@dataclass
class KernelFunctions:
    name: str  # Python name of the serial function
    parallel: bool  # whether ``<name>_parallel`` exists
    buffers: tuple[Buffer, ...]
    extent: str  # the top loop's trip count in the symbols ("1" without one)
    source: str


def _array(scope: str, size: int, dtype: str) -> str:
    return f"np.empty({size}, np.{dtype})"


def render_kernel(kernel: Kernel, symbols: Sequence[str]) -> tuple[KernelFunctions, set[str]]:
    """The serial (and parallel) functions of one kernel, and the helpers they use."""
    kernel = prepare(kernel)
    fname = python_name(kernel.name, "k_")
    params = [python_name(b.name, "b_") for b in kernel.buffers] + list(symbols)
    header = f"def {{name}}({', '.join([*params, 'start', 'end'])}):"
    loop = top_loop(kernel.body)
    helpers: set[str] = set()
    texts = []
    for keyword in ("range", "prange") if loop is not None else ("range",):
        src = KernelSource(kernel, symbols)
        if loop is None:
            body = src.block(kernel.body, 1)
            lines = [*("    " + d for d in src.local_declarations(_array)), *body]
        else:
            first = src.expr(loop.start)
            lo, hi = f"{first} + start", f"{first} + end"
            if first == "0":
                lo, hi = "start", "end"
            # Locals are made once per call, or per iteration of a prange loop, where
            # each iteration (thread) needs its own.
            mark = "#locals"
            body = src.loop(loop, 1, keyword, lo, hi, prologue=[mark])
            declarations = src.local_declarations(_array)
            at = body.index("        " + mark)
            inner = ["        " + d for d in declarations] if keyword == "prange" else []
            outer = ["    " + d for d in declarations] if keyword == "range" else []
            lines = [*outer, *body[:at], *inner, *body[at + 1:]]
            if len(lines) == len(outer) + 1:
                lines.append("        pass")
        decorator = "@njit(parallel=True, **_KERNEL)" if keyword == "prange" else \
            "@njit(**_KERNEL)"
        name = fname if keyword == "range" else f"{fname}_parallel"
        texts.append("\n".join([decorator, header.format(name=name), *lines]))
        helpers |= src.helpers
    extent = KernelSource(kernel, symbols).expr(loop.extent) if loop is not None else "1"
    return KernelFunctions(fname, loop is not None, kernel.buffers, extent,
                           "\n\n\n".join(texts)), helpers


def _view_lines(program: Program, buffers: Mapping[str, Buffer],
                io_dtypes: Sequence[str]) -> list[str]:
    """``b_x = …`` for each global buffer (Python name -> buffer as a kernel types it):
    an io argument (viewed as the kernel's type where it differs) or a typed slice of
    the weights or the workspace (byte offsets from the memory plan)."""
    lines = []
    namer = KernelSource(Kernel("views", (), Block(())), program.symbols)
    for name, buf in buffers.items():
        place = program.placements[buf.name]
        if place.kind == "io":
            dtype = MEMORY[buf.dtype]
            view = "" if dtype == io_dtypes[place.index] else f".view(np.{dtype})"
            lines.append(f"{name} = io_{place.index}{view}")
            continue
        nbytes = f"({namer.expr(buf.size)}) * {ITEMSIZE[buf.dtype]}"
        if place.kind == "weights":
            offset, base = str(place.offset_c), "weights"
        else:
            terms = [str(place.offset_c)]
            if place.offset_n:
                terms.append(f"{place.offset_n} * N")
            terms += [" * ".join([str(c), *m]) for m, c in place.offset_terms]
            offset, base = " + ".join(terms), "workspace"
        lines.append(f"{name} = {base}[{offset}:{offset} + {nbytes}]"
                     f".view(np.{MEMORY[buf.dtype]})")
    return lines


def render_module(program: Program, *, fast_math: bool = True, target: str = "native"
                  ) -> str:
    """The Python source of ``program`` (see the module docstring)."""
    symbols = list(program.symbols)
    kernels: list[KernelFunctions] = []
    helpers: set[str] = set()
    for kernel in program.kernels:
        functions, used = render_kernel(kernel, symbols)
        kernels.append(functions)
        helpers |= used
    # One view per (buffer, type): kernels may type the same bytes differently.
    slots = global_buffers(program)
    buffers: dict[str, Buffer] = {}
    for kernel in program.kernels:
        for buf in kernel.buffers:
            buffers.setdefault(slots[buf.name, buf.dtype], buf)
    order = list(buffers)
    io_dtypes = ["uint8"] * len(program.io_order)
    for buf in reversed(buffers.values()):  # an io array has its first kernel's type
        place = program.placements[buf.name]
        if place.kind == "io":
            io_dtypes[place.index] = MEMORY[buf.dtype]
    io_args = [f"io_{i}" for i in range(len(program.io_order))]
    args = ", ".join([*io_args, "weights", "workspace", "dims"])
    dims = [f"{s} = dims[{i}]" for i, s in enumerate(symbols)]
    views = _view_lines(program, buffers, io_dtypes)
    names = order
    flags = "{" + ", ".join(repr(f) for f in FAST_FLAGS) + "}" if fast_math else "False"
    out = [
        source_header("numba"),
        f'"""Numba kernels of program {program.name!r}: {len(kernels)} kernel(s), '
        f"generated by irkit {__version__} for target {target}.",
        "",
        "Do not edit: the artifact's manifest holds this file's sha256, and the runtime",
        "refuses a changed file. run() runs every kernel in order; run_parallel() runs",
        "the prange variants on Numba's threads. views() gives each buffer as an array.",
        "With NUMBA_DISABLE_JIT=1 this module runs as plain Python (a debugger steps",
        'through it)."""',
        "import math",
        "",
        "import numpy as np",
        "from numba import njit, prange",
        "",
        'IRKIT_CACHE = globals().get("IRKIT_CACHE", False)',
        'IRKIT_PURE_PYTHON = globals().get("IRKIT_PURE_PYTHON", False)',
        "_KERNEL = dict(cache=IRKIT_CACHE, nogil=True, error_model=\"numpy\", "
        f"fastmath={flags})",
        "_device = njit(cache=IRKIT_CACHE, nogil=True, error_model=\"numpy\")",
        "",
        "RUN_SIGNATURE = \"void(" + ", ".join(
            [*(f"{d}[::1]" for d in io_dtypes), "uint8[::1]", "uint8[::1]", "int64[::1]"])
        + ")\"",
        f"IO_DTYPES = {tuple(io_dtypes)!r}",
        "KERNELS = (",
        *(f"    ({k.name!r}, {k.parallel}, "
          f"{tuple(order.index(slots[b.name, b.dtype]) for b in k.buffers)!r}),"
          for k in kernels),
        ")",
        helper_source(helpers),
    ]
    for k in kernels:
        out += ["", k.source, ""]
    out += ["", "@njit(**_KERNEL)", f"def views({args}):",
            *("    " + line for line in [*dims, *views]),
            f"    return ({', '.join(names)}{',' if len(names) == 1 else ''})", ""]
    for parallel in (False, True):
        out += ["", "@njit(**_KERNEL)",
                f"def {'run_parallel' if parallel else 'run'}({args}):",
                *("    " + line for line in [*dims, *views])]
        for k in kernels:
            fn = f"{k.name}_parallel" if parallel and k.parallel else k.name
            args_k = [slots[b.name, b.dtype] for b in k.buffers] + symbols
            out.append(f"    {fn}({', '.join([*args_k, '0', k.extent])})")
        out.append("")
    out += ["", "def extents(dims):",
            '    """The trip count of each kernel\'s top loop (1 without one)."""',
            *("    " + line.replace("dims[", "int(dims[").replace("]", "])", 1)
              if "dims[" in line else "    " + line for line in dims),
            f"    return [{', '.join(k.extent for k in kernels)}]", ""]
    return "\n".join(out)


__all__ = ["FAST_FLAGS", "prepare", "render_kernel", "render_module", "top_loop"]
