"""Tampered artifacts: each case changes a saved artifact the way an attacker or a broken
copy would, and ``check_tampered`` loads and runs it in a forked child, so a hang or a
crash in native code is seen as such instead of taking the caller down.

A case passes when loading raises :class:`irkit.runtime.ArtifactError` naming the file or
field, or the model loads and still answers exactly as the untouched artifact did. A
hang (a FIFO opened for reading), a signal (SIGSEGV), another exception, or different
output (NaN from weights read past their end) fails it.

Manifest edits are re-hashed consistently (``manifest_sha256`` and the ``files`` table),
as anyone can: the hash catches accidents, not attackers (see ``irkit sign``).
"""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing
import os
import random
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.artifact import MANIFEST_NAME, manifest_digest, sha256_file

Tamper = Callable[[Path], None]


def _rewrite(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    for relpath in list(data.get("files", {})) if isinstance(data.get("files"), dict) else []:
        full = directory / relpath
        if full.is_file() and not full.is_symlink():
            data["files"][relpath] = sha256_file(full)
    data["manifest_sha256"] = manifest_digest(data)
    path.write_text(json.dumps(data))


def _segment(data: dict[str, Any]) -> dict[str, Any]:
    segment: dict[str, Any] = data["entry"]["variants"][0]["segments"][0]
    return segment


def _set_field(key: str, value: Any) -> Tamper:
    def tamper(directory: Path) -> None:
        _rewrite(directory, lambda data: _segment(data).__setitem__(key, copy.deepcopy(value)))
    return tamper


def _replace_with_fifo(relpath: str) -> Tamper:
    def tamper(directory: Path) -> None:
        (directory / relpath).unlink()
        os.mkfifo(directory / relpath)
    return tamper


def _replace_with_socket(relpath: str) -> Tamper:
    def tamper(directory: Path) -> None:
        (directory / relpath).unlink()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(directory / relpath))
        sock.close()
    return tamper


def _replace_with_directory(relpath: str) -> Tamper:
    def tamper(directory: Path) -> None:
        (directory / relpath).unlink()
        (directory / relpath).mkdir()
    return tamper


def _resize(relpath: str, delta: int) -> Tamper:
    """``relpath`` cut or padded by ``delta`` bytes, its hash updated to match."""
    def tamper(directory: Path) -> None:
        path = directory / relpath
        data = path.read_bytes()
        path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
        _rewrite(directory, lambda _: None)
    return tamper


def _edit_field(key: str, edit: Callable[[Any], Any]) -> Tamper:
    """The segment's ``key`` replaced by ``edit(its value)``, consistently re-hashed."""
    def tamper(directory: Path) -> None:
        def change(data: dict[str, Any]) -> None:
            _segment(data)[key] = edit(copy.deepcopy(_segment(data)[key]))
        _rewrite(directory, change)
    return tamper


def _other_weights(relpath: str) -> Tamper:
    """``relpath`` replaced by other bytes of the same size, its hash updated."""
    def tamper(directory: Path) -> None:
        path = directory / relpath
        path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))
        _rewrite(directory, lambda _: None)
    return tamper


def _nested_manifest(depth: int) -> Tamper:
    def tamper(directory: Path) -> None:
        path = directory / MANIFEST_NAME
        text = path.read_text()
        path.write_text(text.replace('"report": [', '"report": [' + "[" * depth + "]" * depth
                                     + ",", 1))
    return tamper


def tamper_cases() -> dict[str, Tamper]:
    """Every tamper class of issue #21, by name, for a one-segment kernel-program artifact
    with files ``model.o`` and ``weights.bin``.

    The last group edits what only the compiled code knows (the order of its ``io``
    pointers, its ``workspace``, kernels, entry symbols, the input dtypes it reads, its
    weights, the CPU features it needs): the loader catches them by the facts the
    compiler records in the code (:mod:`irkit.runtime.facts`), without a signature."""
    cases: dict[str, Tamper] = {
        "weights-fifo": _replace_with_fifo("weights.bin"),
        "code-fifo": _replace_with_fifo("model.o"),
        "weights-socket": _replace_with_socket("weights.bin"),
        "code-directory": _replace_with_directory("model.o"),
        "manifest-nested-100k": _nested_manifest(100_000),
        "weights-short": _resize("weights.bin", -4),
        "weights-long": _resize("weights.bin", 64),
        "weights-empty": _resize("weights.bin", -(1 << 30)),
        "weights-is-code": _set_field("weights", "model.o"),
        "output-shapes-empty": _set_field("output_shapes", {}),
        "output-shapes-small": _set_field("output_shapes", {"logits": [{"N": 1}, {"": 2}]}),
        "output-shapes-big": _set_field("output_shapes", {"logits": [{"N": 1}, {"": 10**6}]}),
        "input-shapes-wide": _set_field("input_shapes", {"x": [{"N": 1}, {"": 4096}]}),
        "input-shapes-string": _set_field("input_shapes", {"x": "N,64"}),
        "workspace-string": _set_field("workspace", "lots"),
        "workspace-negative": _set_field("workspace", {"N": -128}),
        "workspace-huge": _set_field("workspace", {"N": 2**62}),
        "symbols-int": _set_field("symbols", 3),
        "symbols-extra": _set_field("symbols", ["N", "M"]),
        "guards-string": _set_field("guards", "none"),
        "guards-junk": _set_field("guards", [{"kind": "nope"}]),
        "constraints-junk": _set_field("constraints", [{"size": "x"}]),
        "constraints-never": _set_field("constraints", [{"size": {"": -1}, "why": "t"}]),

        "io-missing": _set_field("io", ["x"]),
        "run-unknown": _set_field("run", "no_such_symbol"),
        "native-unknown": _set_field("native", {"call": "nope", "call_table": "nope"}),
        "kernels-unknown": _set_field("kernels", ["nope"]),
        "output-dtype-int": _set_field("output_dtypes", {"logits": "int8"}),
        "output-dtype-junk": _set_field("output_dtypes", {"logits": "complex1024"}),
        "segments-empty": lambda d: _rewrite(
            d, lambda m: m["entry"]["variants"][0].__setitem__("segments", [])),
        "signature-wide": lambda d: _rewrite(
            d, lambda m: m["signature"]["inputs"][0].__setitem__("shape", ["N", 4096])),
        "signature-dtype": lambda d: _rewrite(
            d, lambda m: m["signature"]["outputs"][0].__setitem__("dtype", "float64")),

        "io-reordered": _edit_field("io", lambda io: io[::-1]),
        "workspace-shrunk": _edit_field("workspace", lambda w: {k: v // 32 for k, v in w.items()}),
        "kernels-reordered": _edit_field("kernels", lambda k: k[::-1]),
        "native-call-is-kernel": lambda d: _rewrite(d, lambda m: _segment(m)["native"].__setitem__(
            "call", _segment(m)["kernels"][0])),
        "weights-other": _other_weights("weights.bin"),
        "requires-nothing": lambda d: _rewrite(
            d, lambda m: m["entry"]["variants"][0]["requires"].__setitem__("features", [])),
        "signature-input-dtype": lambda d: _rewrite(
            d, lambda m: m["signature"]["inputs"][0].__setitem__("dtype", "float16")),
    }
    return cases


def _child(directory: str, x: np.ndarray, queue: Any) -> None:
    from irkit.runtime import ArtifactError, load

    try:
        model = load(directory)
    except ArtifactError as exc:
        queue.put(("refused", str(exc)))
        return
    except BaseException as exc:
        queue.put(("raised", f"load: {type(exc).__name__}: {exc}"[:300]))
        return
    try:
        out = model.run({"x": x})
    except BaseException as exc:
        queue.put(("raised", f"run: {type(exc).__name__}: {exc}"[:300]))
        return
    queue.put(("ran", {k: np.asarray(v).tolist() for k, v in out.items()}))


def check_tampered(directory: Path, x: np.ndarray, expected: dict[str, np.ndarray],
                   timeout: float = 30.0) -> str | None:
    """None if loading ``directory`` is refused with an ArtifactError or the model still
    gives ``expected`` for ``x``; otherwise what went wrong."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(str(directory), x, queue))
    gc.collect()  # the child never collects (destroys) what this process holds
    gc.freeze()
    try:
        process.start()
    finally:
        gc.unfreeze()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return f"hang: no answer within {timeout:.0f} s"
    if queue.empty():
        return f"crash: exit code {process.exitcode}"
    outcome, detail = queue.get()
    if process.exitcode != 0:  # e.g. glibc aborting on a heap the code wrote past
        return f"crash after answering ({outcome}): exit code {process.exitcode}"
    if outcome == "refused":
        return None
    if outcome == "raised":
        return detail
    for name, want in expected.items():
        got = np.asarray(detail.get(name))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            return f"wrong output {name!r}: {str(got.ravel()[:4])[:120]}"
    return None


def tampered_copies(source: Path, workdir: Path,
                    names: list[str] | None = None) -> Iterator[tuple[str, Path]]:
    """``(case name, tampered copy of source)`` for each case (all by default)."""
    for name, tamper in tamper_cases().items():
        if names is not None and name not in names:
            continue
        target = workdir / name
        shutil.copytree(source, target)
        tamper(target)
        yield name, target


def sample_cases(rng: random.Random, k: int) -> list[str]:
    return sorted(rng.sample(sorted(tamper_cases()), k))
