"""A kernel-IR :class:`~irkit.kir.Program` as numba-cuda kernels (one Python module).

Each kernel becomes one ``def k_<name>(buffers…, symbols…[, total])`` in one of three
shapes, chosen from the kernel IR alone:

- **template** — the body is ``block`` loops around one ``thread`` loop (the GPU
  templates of :mod:`irkit.lower.gpu`): the block loops are ``blockIdx.x/y/z`` (the
  innermost is x), the thread loop is ``threadIdx.x``, ``shared`` buffers are
  ``cuda.shared.array``, ``Barrier`` is ``cuda.syncthreads()``, ``shfl_xor`` a warp
  shuffle;
- **grid** — the body is an independent loop, perhaps with more independent loops
  nested directly inside whose bounds do not depend on the outer ones: the whole
  rectangle of iterations is flattened onto a 1-D grid (the innermost loop fastest, so
  neighbouring threads touch neighbouring elements), each thread taking iterations a
  grid apart; what is inside runs serially per thread, locals in ``cuda.local.array``;
- **single** — anything else runs on one thread.

Pointers: kernels take every buffer as a typed pointer (``float32*``: the PTX parameter is
one 64-bit address), so the runtime passes device addresses (io arrays, the weights
blob and the workspace at the plan's byte offsets) without array descriptors; the CUDA
simulator gets numpy views of the same layout, one per type where kernels type one
buffer differently (u8 bytes, the i32 words an int8 conv writes). The host-side
functions ``buffers(dims)`` and ``launches(dims, block, max_blocks)`` give both loaders
the buffer table and each kernel's grid, block and extra arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from irkit import __version__
from irkit.kir import Block, Buffer, Expr, For, Kernel, Program, Stmt, Var
from irkit.kir.nodes import ITEMSIZE
from irkit.kir.visit import walk_exprs
from irkit.plugins.numba.codegen import prepare
from irkit.plugins.numba.helpers import helper_source
from irkit.plugins.numba.pysource import (
    MEMORY,
    KernelSource,
    SourceError,
    global_buffers,
    python_name,
)
from irkit.runtime.backends.pysource import source_header

GRID_BLOCK = 256  # threads per block of grid-shaped kernels on a GPU
MAX_THREAD_BLOCK = 1024


class CudaSource(KernelSource):
    """The shared renderer with CUDA's math calls, barrier and warp shuffle."""

    fmod = "_fmod_math"

    def __init__(self, kernel: Kernel, symbols: Sequence[str]) -> None:
        super().__init__(kernel, symbols, calls=_cuda_call)

    def barrier(self) -> str:
        return "cuda.syncthreads()"

    def call(self, fn: str, args: Sequence[Expr], dtype: str, lane: str | None) -> str:
        if fn == "shfl_xor":
            value, mask = (self.expr(a, lane) for a in args)
            self.shuffles = True
            return f"_shfl_xor({value}, {mask})"
        return super().call(fn, args, dtype, lane)

    shuffles = False


SHFL_XOR = '''
if IRKIT_PURE_PYTHON:
    @_device
    def _shfl_xor(value, mask):
        """The value thread ``lane ^ mask`` holds. numba-cuda's simulator has no warp
        shuffles: every thread of the block exchanges through shared memory."""
        exchange = cuda.shared.array(1024, np.float64)
        lane = cuda.threadIdx.x
        cuda.syncthreads()
        exchange[lane] = value
        cuda.syncthreads()
        other = exchange[lane ^ mask]
        cuda.syncthreads()
        return type(value)(other)
else:
    @_device
    def _shfl_xor(value, mask):
        """The value thread ``lane ^ mask`` of the warp holds (all 32 lanes take part)."""
        return cuda.shfl_xor_sync(0xFFFFFFFF, value, mask)
'''


def _cuda_call(fn: str, dtype: str) -> str | None:
    # math.floor/ceil give integers in Numba; round-half-even has no math function.
    helper = {"floor": "_floor", "ceil": "_ceil", "round": "_rint"}.get(fn)
    if helper is None:
        return None
    return f"{helper}({{0}})" if dtype == "f64" else f"np.float32({helper}({{0}}))"


def _unwrap(stmt: Stmt) -> Stmt:
    while isinstance(stmt, Block) and len(stmt.stmts) == 1:
        stmt = stmt.stmts[0]
    return stmt


def template_loops(body: Stmt) -> tuple[list[For], For] | None:
    """``(block loops outermost first, the thread loop)`` of a GPU template kernel."""
    node = _unwrap(body)
    blocks: list[For] = []
    while isinstance(node, For) and node.kind == "block":
        blocks.append(node)
        node = _unwrap(node.body)
    if blocks and isinstance(node, For) and node.kind == "thread":
        return blocks, node
    return None


def grid_loops(body: Stmt) -> list[For]:
    """The independent loops flattened onto the grid, outermost first (may be empty)."""
    node = _unwrap(body)
    chain: list[For] = []
    bound: set[str] = set()
    while isinstance(node, For) and node.is_independent and node.kind not in ("block",
                                                                               "thread"):
        used = {e.name for x in (node.extent, node.start) for e in walk_exprs(x)
                if isinstance(e, Var)}
        if used & bound:
            break
        chain.append(node)
        bound.add(node.var.name)
        node = _unwrap(node.body)
    return chain


@dataclass
class CudaKernel:
    name: str  # the Python function (and, mangled, the PTX entry)
    shape: str  # "template", "grid" or "single"
    buffers: tuple[Buffer, ...]
    extras: tuple[str, ...]  # scalar arguments after the symbols ("total")
    source: str
    launch: list[str]  # host-side lines appending (grid, block, extras) to ``out``


def _array(scope: str, size: int, dtype: str) -> str:
    space = "shared" if scope == "shared" else "local"
    return f"cuda.{space}.array({size}, np.{dtype})"


def render_kernel(kernel: Kernel, symbols: Sequence[str]) -> tuple[CudaKernel, set[str]]:
    kernel = prepare(kernel)
    name = python_name(kernel.name, "k_")
    src = CudaSource(kernel, symbols)
    params = [python_name(b.name, "b_") for b in kernel.buffers] + list(symbols)
    host = CudaSource(kernel, symbols)  # extents for the host-side launch table
    spmd = template_loops(kernel.body)
    chain = grid_loops(kernel.body) if spmd is None else []
    extras: tuple[str, ...] = ()
    if spmd is not None:
        blocks, thread = spmd
        if len(blocks) > 3:
            raise SourceError(f"kernel {kernel.name}: more than 3 block loops")
        threads = thread.extent
        if not hasattr(threads, "value") or not 0 < int(threads.value) <= MAX_THREAD_BLOCK:  # type: ignore[attr-defined]
            raise SourceError(f"kernel {kernel.name}: a thread loop needs a constant "
                              f"extent of 1..{MAX_THREAD_BLOCK}")
        lines = []
        for loop, axis in [*zip(reversed(blocks), "xyz"), (thread, "")]:
            first = src.expr(loop.start)
            index = f"cuda.blockIdx.{axis}" if axis else "cuda.threadIdx.x"
            offset = "" if first == "0" else f"{first} + "
            lines.append(f"{src.bind(loop.var, nonneg=src.is_nonneg(loop.start))} = "
                         f"{offset}np.int64({index})")
        lines += src.stmt(thread.body, 0)
        lines = [*src.local_declarations(_array), *lines]
        grid = [host.expr(loop.extent) for loop in reversed(blocks)]
        grid += ["1"] * (3 - len(grid))
        launch = [f"out.append((({', '.join(grid)}), {int(threads.value)}, ()))"]  # type: ignore[attr-defined]
        shape = "template"
    elif chain:
        extras = ("total",)
        extents = [src.expr(loop.extent) for loop in chain]
        lines = [f"e_{k} = {text}" for k, text in enumerate(extents)]
        lines += ["t = np.int64(cuda.grid(1))", "step = np.int64(cuda.gridsize(1))",
                  "while t < total:", "    rest = t"]
        for k in reversed(range(len(chain))):
            loop = chain[k]
            first = src.expr(loop.start)
            var = src.bind(loop.var, nonneg=src.is_nonneg(loop.start))
            offset = "" if first == "0" else f"{first} + "
            if k:
                lines += [f"    {var} = {offset}rest % e_{k}", f"    rest = rest // e_{k}"]
            else:
                lines.append(f"    {var} = {offset}rest")
        lines += src.block(_unwrap(chain[-1].body), 1)
        lines.append("    t += step")
        lines = [*src.local_declarations(_array), *lines]
        total = " * ".join(f"({host.expr(loop.extent)})" for loop in chain)
        launch = [f"total = {total}",
                  "out.append(((_blocks(total, block, max_blocks), 1, 1), block, (total,)))"]
        shape = "grid"
    else:
        body = src.block(kernel.body, 1)
        lines = [*src.local_declarations(_array), "if cuda.grid(1) == 0:", *body]
        launch = ["out.append(((1, 1, 1), 1, ()))"]
        shape = "single"
    header = f"def {name}({', '.join([*params, *extras])}):"
    source = "\n".join(["@_kernel", header, *("    " + line for line in lines)])
    helpers = set(src.helpers) | ({"_shfl_xor"} if src.shuffles else set())
    return CudaKernel(name, shape, kernel.buffers, extras, source, launch), helpers


def _buffer_table(program: Program, buffers: Sequence[Buffer]) -> list[str]:
    """Host-side lines of ``buffers(dims)``: (name, place, index or byte offset, bytes,
    numpy type) for each global buffer."""
    namer = KernelSource(Kernel("buffers", (), Block(())), program.symbols)
    lines = []
    for buf in buffers:
        place = program.placements[buf.name]
        size = f"({namer.expr(buf.size)}) * {ITEMSIZE[buf.dtype]}"
        if place.kind == "io":
            where = str(place.index)
        elif place.kind == "weights":
            where = str(place.offset_c)
        else:
            terms = [str(place.offset_c)]
            if place.offset_n:
                terms.append(f"{place.offset_n} * N")
            terms += [" * ".join([str(c), *m]) for m, c in place.offset_terms]
            where = " + ".join(terms)
        lines.append(f"({buf.name!r}, {place.kind!r}, {where}, {size}, "
                     f"{MEMORY[buf.dtype]!r}),")
    return lines


@dataclass
class CudaModule:
    source: str
    kernels: list[CudaKernel]


def render_module(program: Program, target: str = "sm_90") -> CudaModule:
    """The numba-cuda source of ``program`` (see the module docstring)."""
    symbols = list(program.symbols)
    kernels: list[CudaKernel] = []
    helpers: set[str] = set()
    for kernel in program.kernels:
        rendered, used = render_kernel(kernel, symbols)
        kernels.append(rendered)
        helpers |= used
    # One table entry per (buffer, type): kernels may type the same bytes differently,
    # and the simulator indexes a typed view.
    slots = global_buffers(program)
    buffers: dict[str, Buffer] = {}
    for kernel in program.kernels:
        for buf in kernel.buffers:
            buffers.setdefault(slots[buf.name, buf.dtype], buf)
    order = list(buffers)
    dims = [f"{s} = int(dims[{i}])" for i, s in enumerate(symbols)]
    out = [
        source_header("cuda"),
        f'"""numba-cuda kernels of program {program.name!r}: {len(kernels)} kernel(s), '
        f"generated by irkit {__version__} for {target}.",
        "",
        "Do not edit: the artifact's manifest holds this file's sha256. The PTX files next",
        "to it were compiled from these functions by numba.cuda.compile_ptx; the runtime",
        "launches the PTX on a GPU, or these functions in numba-cuda's simulator.",
        '"""',
        "import math",
        "",
        "import numpy as np",
        "from numba import cuda",
        "",
        'IRKIT_CACHE = globals().get("IRKIT_CACHE", False)',
        'IRKIT_PURE_PYTHON = globals().get("IRKIT_PURE_PYTHON", False)',
        "# Decorators the loader chooses: numba-cuda's (PTX, GPU) or the simulator's.",
        '_kernel = globals().get("IRKIT_KERNEL") or (lambda f: f)',
        '_device = globals().get("IRKIT_DEVICE") or cuda.jit(device=True, inline="always")',
        "",
        "KERNELS = (",
        *(f"    ({k.name!r}, {k.shape!r}, {tuple(order.index(slots[b.name, b.dtype]) for b in k.buffers)!r},"
          f" {len(k.extras)})," for k in kernels),
        ")",
        helper_source(helpers - {"_shfl_xor"}),
        SHFL_XOR if "_shfl_xor" in helpers else "",
    ]
    for k in kernels:
        out += ["", "", k.source]
    out += ["", "", "def buffers(dims):",
            '    """Every global buffer, once per type the kernels give it: (name, "io" |',
            '    "weights" | "workspace", io index or byte offset, bytes, numpy type), in',
            '    the order KERNELS refers to."""',
            *("    " + line for line in dims), "    return [",
            *("        " + line for line in _buffer_table(program, list(buffers.values()))),
            "    ]", "", "",
            "def _blocks(total, block, max_blocks):",
            "    return max(1, min((total + block - 1) // block, max_blocks))", "", "",
            f"def launches(dims, block={GRID_BLOCK}, max_blocks=1 << 20):",
            '    """Per kernel: (grid, threads per block, extra arguments); a grid-shaped',
            "    kernel with nothing to do has total 0 (the loader skips it).\"\"\"",
            *("    " + line for line in dims), "    out = []"]
    for k in kernels:
        out += ["    " + line for line in k.launch]
    out += ["    return out", ""]
    return CudaModule("\n".join(out), kernels)


def kernel_signature(kernel: CudaKernel, symbols: Sequence[str]) -> tuple[object, ...]:
    """The numba-cuda argument types of ``kernel`` for ``compile_ptx``: a typed pointer
    per buffer, int64 per symbol and extra argument."""
    from numba import types

    pointers = [types.CPointer(getattr(types, MEMORY[b.dtype])) for b in kernel.buffers]
    return (*pointers, *([types.int64] * (len(symbols) + len(kernel.extras))))


__all__ = ["CudaKernel", "CudaModule", "kernel_signature", "render_module",
           "template_loops"]
