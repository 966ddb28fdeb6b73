"""Lowering state: buffers, weights, emitted kernels, and materialization of refs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Buffer,
    Const,
    Expr,
    For,
    Kernel,
    Load,
    Stmt,
    Store,
    Var,
    simplify_expr,
)
from irkit.kir.visit import walk_exprs
from irkit.lower.tensor import (
    NUMPY_DTYPES,
    Index,
    TensorRef,
    buffer_ref,
    flat_index,
    product,
)
from irkit.target import Target, get_target

# An inline ref is materialized once the expression it recomputes per element is this big.
MAX_INLINE_COST = 48


def expr_cost(expr: Expr) -> int:
    return sum(1 for _ in walk_exprs(expr))


@dataclass
class Tiles:
    """GEMM template parameters (tunable)."""

    mr: int = 6
    nr: int = 16
    vec: int = 8
    conv_mr: int = 4  # convolutions: few rows (output channels), many columns (pixels)
    conv_nr: int = 32
    # "gemm": convolutions through the GEMM template (im2col panels); "direct": as a plain
    # loop nest (irkit.lower.windows), for backends whose compile time grows quickly with
    # the code's size (numba: the panel-packing code of a strided conv takes minutes).
    conv: str = "gemm"

    # Other (conv_mr, conv_nr) shapes as good for the registers; a convolution takes the
    # one whose panel of pixels lines up with its output rows (see ``for_conv``).
    conv_alternatives: tuple[tuple[int, int], ...] = ()

    def for_conv(self, out_width: int | None = None, pixels: int | None = None) -> Tiles:
        """The conv tile: of ``(conv_mr, conv_nr)`` and the alternatives, the ones that
        waste the least of their panels on the ``pixels`` output pixels (within 3%: the
        last panel computes all ``nr`` columns, so a 12x12 map's 144 pixels fill 3 panels
        of 48 but take 3 of 64, a third more work); of those, given ``out_width``, the
        one whose ``nr`` pixels touch the fewest output rows per pixel — a panel packs one
        copy segment per (channel, tap, output row), so on a 32-wide map 16 pixels (half a
        row) pack in half the segments per pixel of 24 pixels (which straddle rows).
        Ties keep the default."""
        options = [(self.conv_mr, self.conv_nr), *self.conv_alternatives]
        if pixels:
            def computed_per_pixel(shape: tuple[int, int]) -> float:
                return -(-pixels // shape[1]) * shape[1] / pixels

            least = min(computed_per_pixel(o) for o in options)
            options = [o for o in options if computed_per_pixel(o) <= least * 1.03]
        if out_width:
            def segments_per_pixel(shape: tuple[int, int]) -> float:
                width = shape[1]
                if out_width % width == 0:
                    return 1 / width
                if width % out_width == 0:
                    return 1 / out_width
                return 1 / out_width + 1 / width

            options = [min(options, key=segments_per_pixel)]
        mr, nr = options[0]
        return Tiles(mr, nr, self.vec, mr, nr, self.conv)

    @classmethod
    def for_target(cls, target: Target, mr: int = 0, nr: int = 0, vec: int = 0,
                   conv_mr: int = 0, conv_nr: int = 0) -> Tiles:
        """The CPU register-tile sizes for ``target``; a 0 picks the default.

        ``vec`` is the target's f32 lanes (16 with AVX-512, 8 with AVX2, 4 with 128-bit
        SIMD). An ``mr`` x ``v``-vector tile holds ``mr * v`` accumulators, ``v`` B-row
        vectors and one A broadcast in registers: with 32 vector registers (AVX-512, NEON)
        an 8 x 2-vector GEMM tile and a 4 x 4-vector conv tile; with 16 (AVX2) 6 x 2 and
        4 x 3 (16 registers: 3 x 4 needed 17, and LLVM kept an accumulator on the stack,
        which made a 36-channel 6x6 conv 3.5x slower than with 4 x 3).
        """
        from irkit.lower.tensor import LoweringError

        vec = vec or target.f32_lanes
        many = target.vector_registers >= 32
        mr = mr or (8 if many else 6)
        # With 32 registers a 4 x 3-vector conv tile too: its 48-pixel panels fit maps of
        # 12, 24 or 48 pixels a row that 64-pixel panels would pad or straddle.
        alternatives: tuple[tuple[int, int], ...] = () if conv_mr or conv_nr else (
            ((8, 2 * vec), (4, 3 * vec)) if many else ((6, 2 * vec),))
        conv_mr = conv_mr or 4
        nr = nr or 2 * vec
        conv_nr = conv_nr or (4 if many else 3) * vec
        for name, width in (("nr", nr), ("conv_nr", conv_nr)):
            if width % vec:
                raise LoweringError(f"{name}={width} must be a multiple of vec={vec}")
        return cls(mr=mr, nr=nr, vec=vec, conv_mr=conv_mr, conv_nr=conv_nr,
                   conv_alternatives=alternatives)


@dataclass
class LoweringContext:
    name: str
    tiles: Tiles = field(default_factory=Tiles)
    # What the code is for: lowering rules ask it (int8 kernels, vector width), never
    # the build host.
    target: Target = field(default_factory=lambda: get_target("x86-64-v3"))
    kernels: list[Kernel] = field(default_factory=list)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    io: dict[str, Buffer] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    # Sizes that must be >= 0 at run time for the code to stay in bounds (``S <= 512`` for
    # a slice of 512 position ids), each with the reason; the runtime checks them.
    constraints: list[tuple[Expr, str]] = field(default_factory=list)
    # Graph inputs whose values set output sizes, checked before each call
    # (irkit.runtime.guards); ``inputs`` names the graph's input buffers.
    guards: list[dict[str, Any]] = field(default_factory=list)
    inputs: set[str] = field(default_factory=set)
    # Node name -> the kernel a template chose for it and why (reported in the manifest).
    kernel_notes: dict[str, str] = field(default_factory=dict)
    # int8 node -> the input its producer's epilogue already writes: the u8 bytes of a
    # QLinearMatMulInt8 (irkit.lower.quantized), the word layout of a QLinearConvInt8
    # (irkit.lower.quantized_conv.input_sink).
    int8_inputs: dict[Node, Any] = field(default_factory=dict)
    # Whether a kernel reads the per-call key of unseeded random ops (the symbol
    # irkit.lower.random_ops.CALL_KEY, which the runtime sets before each call).
    call_key: bool = False
    _const_buffers: dict[int, Buffer] = field(default_factory=dict)
    _counter: int = 0
    _keep_alive: list[np.ndarray] = field(default_factory=list)

    def fresh(self, hint: str) -> str:
        self._counter += 1
        clean = "".join(c if c.isalnum() else "_" for c in hint)[:24] or "t"
        return f"{clean}_{self._counter}"

    def var(self, hint: str) -> Var:
        return Var(self.fresh(hint))

    def require_nonnegative(self, size: Expr, why: str) -> None:
        """Record that ``size`` (a polynomial in the symbols) must be >= 0 at run time;
        a negative constant is a compile-time error."""
        from irkit.lower.tensor import LoweringError

        size = simplify_expr(size)
        if isinstance(size, Const):
            if size.value < 0:
                raise LoweringError(why)
            return
        from irkit.lower.symbolic import to_poly

        if all(c >= 0 for c in to_poly(size).values()):
            return  # holds for every binding (symbols are >= 0)
        self.constraints.append((size, why))

    def shape_guard(self, node: Any, kind: str, inputs: dict[str, TensorRef | None],
                    in_shape: Sequence[Expr], out_shapes: Sequence[Sequence[Expr]],
                    attrs: dict[str, Any] | None = None) -> None:
        """Build ``node`` for its declared output shapes although some of ``inputs`` (sizes
        like axes, pads or K) are only known at run time: each must be a graph input, and
        the runtime checks before every call that its values give ``out_shapes``."""
        from irkit.lower.tensor import LoweringError, static

        names: dict[str, str] = {}
        consts: dict[str, list[int]] = {}
        for role, ref in inputs.items():
            if ref is None:
                continue
            if ref.const is not None:
                consts[role] = [int(v) for v in np.asarray(ref.const).reshape(-1)]
                continue
            name = next((n for n, b in self.io.items()
                         if b is ref.buffer and n in self.inputs), None)
            if name is None:
                raise LoweringError(
                    f"{node.op}'s {role} is computed at run time; output sizes may come "
                    "from constants, shapes, or graph inputs (checked before each call)")
            names[role] = name
        if not names:
            return
        self.guards.append({
            "op": kind, "node": node.describe(), "inputs": names, "consts": consts,
            "in_shape": [static(d, f"{node.op} input dim") for d in in_shape],
            "out_shapes": [[static(d, f"{node.op} output dim") for d in s] for s in out_shapes],
            "attrs": dict(attrs or {}),
        })

    # -- buffers ---------------------------------------------------------------------
    def new_buffer(self, hint: str, dtype: str, size: Expr) -> Buffer:
        buf = Buffer(self.fresh(hint), dtype, simplify_expr(size))
        self.buffers[buf.name] = buf
        return buf

    def io_buffer(self, name: str, dtype: str, size: Expr) -> Buffer:
        buf = Buffer(self.fresh(name), dtype, simplify_expr(size))
        self.io[name] = buf
        self.buffers[buf.name] = buf
        return buf

    def weight_buffer(self, array: np.ndarray, dtype: str, hint: str = "w") -> Buffer:
        """A global buffer holding ``array`` (deduplicated by identity)."""
        key = id(array)
        found = self._const_buffers.get(key)
        if found is not None:
            return found
        data: np.ndarray = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype]).reshape(-1)
        buf = Buffer(self.fresh(hint), dtype, Const(max(data.size, 1)))
        self.buffers[buf.name] = buf
        self.weights[buf.name] = data
        self._const_buffers[key] = buf
        self._keep_alive.append(array)  # ids stay unique while the array lives
        return buf

    def const_ref(self, array: Any, dtype: str) -> TensorRef:
        """A ref to compile-time data: scalars read as literals, arrays from weights."""
        array = np.asarray(array)
        shape = tuple(Const(int(d)) for d in array.shape)
        if array.size == 1:
            scalar = array.reshape(-1)[0].item()
            literal = Const(bool(scalar) if dtype == "bool" else scalar, dtype)
            if dtype in ("f32", "f64", "f16", "bf16"):
                literal = Const(float(np.asarray(scalar, NUMPY_DTYPES[dtype])), dtype)
            elif dtype != "bool":
                literal = Const(int(scalar), dtype)
            return TensorRef(shape, dtype, lambda idx: literal, const=array)
        holder: dict[str, Buffer] = {}
        small_int = array.dtype.kind in "iu" and array.size <= 64

        def read(idx: Index) -> Expr:
            consts = [i for i in idx if isinstance(i, Const)]
            if small_int and len(consts) == len(idx):
                # Shape-like constants fold where they are read.
                return Const(int(array[tuple(int(i.value) for i in consts)]), dtype)
            if "buf" not in holder:
                holder["buf"] = self.weight_buffer(array, dtype)
            return Load(holder["buf"], flat_index(idx, shape))

        return TensorRef(shape, dtype, read, const=array)

    # -- kernels ---------------------------------------------------------------------
    def add_kernel(self, hint: str, body: Stmt, locals_: Sequence[Buffer] = ()) -> None:
        used: dict[str, Buffer] = {}
        local_names = {b.name for b in locals_}
        from irkit.kir.visit import stmt_exprs, walk_stmts

        for stmt in walk_stmts(body):
            if isinstance(stmt, Store) and stmt.buf.name not in local_names:
                used[stmt.buf.name] = stmt.buf
            for e in stmt_exprs(stmt):
                for node in walk_exprs(e):
                    if isinstance(node, Load) and node.buf.name not in local_names:
                        used[node.buf.name] = node.buf
        name = self.fresh(hint)
        self.kernels.append(Kernel(name, tuple(used.values()), body, tuple(locals_)))

    def loop_nest(self, shape: Sequence[Expr], body_fn: Any, hint: str = "i",
                  parallel: bool = True) -> Stmt:
        """Nested loops over ``shape`` (outermost parallel) around ``body_fn(index)``.

        With ``parallel`` every loop of the nest is marked independent (``body_fn``
        writes a distinct place per index; a GPU runs the whole nest as threads); without
        it (scatters with repeated indices) none is."""
        vars_ = [self.var(f"{hint}{k}") for k in range(len(shape))]
        stmt: Stmt = body_fn(tuple(vars_))
        for k in reversed(range(len(shape))):
            kind = "parallel" if (k == 0 and parallel) else "serial"
            if k == len(shape) - 1 and k > 0:
                kind = "vector"  # contiguous innermost dim (left serial if it is not)
            stmt = For(vars_[k], shape[k], stmt, kind, independent=parallel)
        return stmt

    def materialize(self, ref: TensorRef, hint: str = "t", target: Buffer | None = None
                    ) -> TensorRef:
        """A contiguous buffer holding ``ref`` (``target`` if given), emitting a copy or
        compute kernel when needed."""
        if ref.buffer is not None and (target is None or target is ref.buffer):
            return ref
        size = product(ref.shape)
        buf = target or self.new_buffer(hint, ref.dtype, size)
        if not ref.shape:
            body: Stmt = Store(buf, Const(0), ref.read(()))
        else:
            body = self.loop_nest(ref.shape, lambda idx: Store(buf, flat_index(idx, ref.shape),
                                                              ref.read(idx)))
        self.add_kernel(hint, body)
        return buffer_ref(buf, ref.shape)
