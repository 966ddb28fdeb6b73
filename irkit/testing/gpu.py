"""What the CUDA tests need and whether this machine has it: numba-cuda with the CUDA
13.0 NVVM (to compile PTX, no GPU needed), ``ptxas`` (to assemble PTX for sm_90) and a
GPU (only for the checks that run on one)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sysconfig
from pathlib import Path

SWEEP_VARIABLE = "IRKIT_FULL_SWEEPS"


def full_sweeps() -> bool:
    """Whether ``IRKIT_FULL_SWEEPS=1`` asks for the long GPU and numba sweeps (every op
    case on numba and in the CUDA simulator, ptxas on every built-in model, the ResNet
    CNN in the simulator), which CI leaves out for time."""
    import os

    return os.environ.get(SWEEP_VARIABLE, "") not in ("", "0")


@functools.cache
def ptx_toolchain_missing() -> str | None:
    """Why numba-cuda cannot compile PTX here, or None when it can."""
    try:
        from numba import cuda, types
    except ImportError as exc:
        return f"numba-cuda is not installed ({exc}); pip install 'irkit[cuda]'"

    def probe(out: object, n: object) -> None:  # a one-line kernel
        i: int = cuda.grid(1)  # type: ignore[call-arg]
        if i < n:  # type: ignore[operator]
            out[i] = 1.0  # type: ignore[index]

    try:
        cuda.compile_ptx(probe, (types.CPointer(types.float32), types.int64), cc=(9, 0))
    except Exception as exc:
        return f"numba-cuda cannot compile PTX: {type(exc).__name__}: {exc}"
    return None


@functools.cache
def ptxas() -> str | None:
    """The ``ptxas`` assembler: on PATH, or the one pip's ``nvidia-cuda-nvcc`` installs."""
    found = shutil.which("ptxas")
    if found:
        return found
    site = Path(sysconfig.get_paths()["purelib"])
    for candidate in (site / "nvidia" / "cu13" / "bin" / "ptxas",
                      site / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"):
        if candidate.is_file():
            return str(candidate)
    return None


def assemble(ptx: bytes | str, arch: str = "sm_90", workdir: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    """``ptxas -arch=<arch>`` on ``ptx`` (the object is thrown away)."""
    tool = ptxas()
    if tool is None:
        raise FileNotFoundError("ptxas not found (pip install 'irkit[cuda]')")
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_bytes(ptx.encode() if isinstance(ptx, str) else ptx)
        return subprocess.run([tool, f"-arch={arch}", str(source), "-o",
                               str(Path(tmp) / "kernel.cubin")],
                              capture_output=True, text=True, check=False, timeout=300)


def ptxas_refusals(files: dict[str, bytes], arch: str = "sm_90",
                   workdir: Path | None = None) -> list[str]:
    """``ptxas -arch=<arch>`` on every ``.ptx`` file of an artifact's ``files``: one line
    per file it refuses (empty when it accepts them all); raises when there are none."""
    ptx = sorted(name for name in files if name.endswith(".ptx"))
    if not ptx:
        raise ValueError("the artifact holds no .ptx files")
    refused = []
    for name in ptx:
        result = assemble(files[name], arch, workdir)
        if result.returncode != 0:
            refused.append(f"{name}: {result.stderr.strip()[-1000:]}")
        elif f".target {arch}".encode() not in files[name]:
            refused.append(f"{name}: not PTX for {arch}")
    return refused


@functools.cache
def gpu_missing() -> str | None:
    """Why no CUDA GPU can run kernels here, or None when one can."""
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba-cuda is not installed ({exc})"
    try:
        if not cuda.is_available():
            return "numba-cuda finds no CUDA driver or GPU on this machine"
        major, minor = cuda.get_current_device().compute_capability
    except Exception as exc:
        return f"CUDA is not usable: {type(exc).__name__}: {exc}"
    if (major, minor) < (9, 0):
        return f"the GPU is sm_{major}{minor}; the cuda backend's PTX needs sm_90 or newer"
    return None


__all__ = ["SWEEP_VARIABLE", "assemble", "full_sweeps", "gpu_missing", "ptx_toolchain_missing",
           "ptxas", "ptxas_refusals"]
