"""The llvm object uses only 64-bit relocations (large code model).

With 32-bit PC-relative relocations, the in-process JIT linker aborts the whole process
(RuntimeDyldELF: ``isInt<32>(RealOffset)``) once sections land more than 2 GiB apart,
which happens in long-lived processes with big heaps: the suite reproduced it by loading
MiniLM after the HTTP and Kafka tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import irkit

pytest.importorskip("llvmlite")


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_object_has_no_32_bit_pc_relative_relocations(digits_models: Path,
                                                      tmp_path: Path) -> None:
    graph = irkit.load_model(digits_models / "digits_cnn.onnx")
    path = irkit.compile(graph, target="llvm").save(tmp_path / "cnn")
    listing = subprocess.run(["readelf", "-r", str(path / "model.o")], capture_output=True,
                             text=True, check=True).stdout
    types = [line.split()[2] for line in listing.splitlines() if " R_X86_64_" in line]
    assert types, listing
    narrow = [t for t in types if t in ("R_X86_64_PC32", "R_X86_64_PLT32", "R_X86_64_32",
                                        "R_X86_64_32S", "R_X86_64_GOTPCREL")]
    assert not narrow, listing
