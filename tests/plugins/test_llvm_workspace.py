"""The llvm runner's workspace is bounded by the load option ``workspace_keep_mb``: after a
huge direct call (250,000 rows of the 64-32-10 MLP need a 30.5 MiB workspace) it is freed,
so the process's RSS comes back to its level before the call; calls at kept sizes still
take the exact path and give the same answers."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import irkit
import irkit.runtime
from irkit.runtime import ArtifactError

ROWS = 250_000
RSS_TOLERANCE_MIB = 8  # the workspace such a call needs is 30.5 MiB


def rss_mib() -> float:
    """The process's RSS after the C allocator hands back the free memory it keeps: the
    10 MB output array of the huge call comes from malloc, which in a long-lived process
    (a pytest-xdist worker that ran many tests) may keep it cached; the workspace, the
    thing under test, is the runner's own memory map and does not depend on this."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from irkit.testing.onnx_models import mlp_model

    path = tmp_path_factory.mktemp("workspace") / "mlp"
    irkit.compile(irkit.load_model(mlp_model()), "llvm").save(path)
    return path


def test_rss_returns_after_a_huge_direct_call(mlp_dir: Path) -> None:
    x = np.random.default_rng(0).standard_normal((ROWS, 64)).astype(np.float32)
    small = x[:64].copy()
    with irkit.runtime.load(mlp_dir) as model:
        runner = model._runner
        assert runner.workspace_keep_bytes == 16 << 20  # type: ignore[union-attr]
        expected = [model(x=small)["logits"] for _ in range(3)][-1]
        gc.collect()
        before = rss_mib()
        out = model(x=x)["logits"]
        np.testing.assert_allclose(out[:64], expected, rtol=1e-5, atol=1e-5)
        del out
        gc.collect()
        after = rss_mib()
        assert after - before < RSS_TOLERANCE_MIB, (before, after)
        kept = runner.library._workspace.nbytes  # type: ignore[union-attr]
        assert kept <= 64 * 128, kept  # what the 64-row calls need
        # the exact path at the kept size still runs on a workspace large enough
        for _ in range(3):
            np.testing.assert_array_equal(model(x=small)["logits"], expected)


def test_workspace_keep_mb_keeps_a_larger_workspace_and_is_checked(mlp_dir: Path) -> None:
    x = np.zeros((ROWS, 64), np.float32)
    with irkit.runtime.load(mlp_dir, workspace_keep_mb=64) as model:
        model(x=x)
        assert model._runner.library._workspace.nbytes >= ROWS * 128  # type: ignore[union-attr]
    for bad in ("lots", -1, True):
        with pytest.raises(ArtifactError, match="workspace_keep_mb"):
            irkit.runtime.load(mlp_dir, workspace_keep_mb=bad)
