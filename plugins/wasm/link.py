"""Link a wasm32 object into a standalone WebAssembly module with ``wasm-ld``.

Both tools come from the ``ziglang`` wheel (``python -m ziglang``), so no emsdk or other
download is needed. Each module is the model's object plus irkit's support library
(``support.zig``: the math functions LLVM leaves as calls, compiler_rt, the allocator),
built once per support source and zig version into a cache directory
(``$IRKIT_CACHE/wasm``, default ``~/.cache/irkit/wasm``). The module imports nothing:
an unresolved symbol is a link error naming it, never an import the loader lacks.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from irkit.backend import BackendError

SUPPORT_SOURCE = "support.zig"
ALLOC_SYMBOL = "irkit_alloc"
RELEASE_SYMBOL = "irkit_release"
# Stack for the kernels' local tiles (allocas); placed first, so an overflow traps.
STACK_BYTES = 1 << 20


@functools.cache
def _zig() -> list[str]:
    """The zig driver of the ziglang wheel: its binary when the package holds one (no
    Python start per link), else ``python -m ziglang``."""
    spec = importlib.util.find_spec("ziglang")
    if spec is None:
        raise BackendError("the wasm backend links with wasm-ld from the ziglang package, "
                           "which is not installed: pip install 'irkit[wasm]'")
    for folder in spec.submodule_search_locations or []:
        binary = Path(folder) / ("zig.exe" if os.name == "nt" else "zig")
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return [sys.executable, "-m", "ziglang"]


def _run(args: Sequence[str], what: str, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run([*_zig(), *args], capture_output=True, text=True,
                                cwd=cwd, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise BackendError(f"{what} failed: {detail}")


def cache_dir() -> Path:
    root = os.environ.get("IRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "irkit")
    return Path(root) / "wasm"


@functools.cache
def zig_version() -> str:
    result = subprocess.run([*_zig(), "version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def support_library() -> Path:
    """The support archive (``libirkit_support-<hash>.a``), built on first use."""
    source = importlib.resources.files("irkit.plugins.wasm").joinpath(SUPPORT_SOURCE)
    text = source.read_bytes()
    key = hashlib.sha256(text + zig_version().encode()).hexdigest()[:16]
    path = cache_dir() / f"libirkit_support-{key}.a"
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: build under the temporary directory instead
        path = Path(tempfile.gettempdir()) / "irkit-wasm" / path.name
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        (Path(tmp) / SUPPORT_SOURCE).write_bytes(text)
        built = Path(tmp) / "libsupport.a"
        _run(["build-lib", "-target", "wasm32-freestanding", "-O", "ReleaseFast",
              "-fcompiler-rt", SUPPORT_SOURCE, f"-femit-bin={built.name}"],
             "building the wasm support library (zig build-lib)", cwd=Path(tmp))
        os.replace(built, path)  # atomic: concurrent builds leave one good file
    return path


def link_module(object_code: bytes, exports: Sequence[str]) -> bytes:
    """The standalone module of ``object_code``: exported memory, the ``exports``, the
    allocator; stripped of names and debug info."""
    support = support_library()
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "model.o"
        out = Path(tmp) / "model.wasm"
        obj.write_bytes(object_code)
        args = ["wasm-ld", "--no-entry", "--strip-all", "--gc-sections", "--stack-first",
                "-z", f"stack-size={STACK_BYTES}", "--export-memory",
                *(f"--export={name}" for name in (*exports, ALLOC_SYMBOL, RELEASE_SYMBOL)),
                "-o", str(out), str(obj), str(support)]
        _run(args, "linking the WebAssembly module (wasm-ld)")
        return out.read_bytes()
