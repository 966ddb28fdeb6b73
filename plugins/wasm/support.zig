//! irkit's WebAssembly support library, linked into every model module by wasm-ld.
//!
//! - The math functions LLVM calls for kernel-IR math it does not inline (pow, asin,
//!   atanh, ... for f32 and f64). Zig's compiler_rt, built into the same archive
//!   (`-fcompiler-rt`), supplies sin, cos, tan, exp, log, fmod, fma, fmin, fmax and
//!   memcpy/memset; so a model module imports nothing.
//! - A stack-like allocator over the module's linear memory, for the loaders' buffers:
//!   `irkit_alloc(bytes)` returns a 64-byte aligned block (0 when memory cannot grow) and
//!   `irkit_release(ptr)` frees that block and every block allocated after it.
const std = @import("std");
const math = std.math;

export fn powf(x: f32, y: f32) f32 {
    return math.pow(f32, x, y);
}
export fn pow(x: f64, y: f64) f64 {
    return math.pow(f64, x, y);
}
export fn asinf(x: f32) f32 {
    return math.asin(x);
}
export fn asin(x: f64) f64 {
    return math.asin(x);
}
export fn acosf(x: f32) f32 {
    return math.acos(x);
}
export fn acos(x: f64) f64 {
    return math.acos(x);
}
export fn atanf(x: f32) f32 {
    return math.atan(x);
}
export fn atan(x: f64) f64 {
    return math.atan(x);
}
export fn sinhf(x: f32) f32 {
    return math.sinh(x);
}
export fn sinh(x: f64) f64 {
    return math.sinh(x);
}
export fn coshf(x: f32) f32 {
    return math.cosh(x);
}
export fn cosh(x: f64) f64 {
    return math.cosh(x);
}
export fn tanhf(x: f32) f32 {
    return math.tanh(x);
}
export fn tanh(x: f64) f64 {
    return math.tanh(x);
}
export fn asinhf(x: f32) f32 {
    return math.asinh(x);
}
export fn asinh(x: f64) f64 {
    return math.asinh(x);
}
export fn acoshf(x: f32) f32 {
    return math.acosh(x);
}
export fn acosh(x: f64) f64 {
    return math.acosh(x);
}
export fn atanhf(x: f32) f32 {
    return math.atanh(x);
}
export fn atanh(x: f64) f64 {
    return math.atanh(x);
}

extern var __heap_base: u8;
var top: usize = 0;

fn heapBase() usize {
    return @intFromPtr(&__heap_base);
}

export fn irkit_alloc(bytes: usize) usize {
    if (top == 0) top = heapBase();
    const start = (top + 63) & ~@as(usize, 63);
    if (bytes > std.math.maxInt(usize) - start) return 0;
    const end = start + bytes;
    const have = @wasmMemorySize(0) * 65536;
    if (end > have) {
        const pages = (end - have + 65535) / 65536;
        if (@wasmMemoryGrow(0, pages) < 0) return 0;
    }
    top = end;
    return start;
}

export fn irkit_release(ptr: usize) void {
    if (ptr >= heapBase() and ptr < top) top = ptr;
}
