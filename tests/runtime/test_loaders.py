"""The loader registry: built-ins, register_loader, entry points, and clear failures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from irkit.runtime import (
    Artifact,
    ArtifactError,
    Manifest,
    TensorSpec,
    get_loader,
    known_loaders,
    load,
    register_loader,
)
from irkit.runtime.artifact import load_npz, npz_bytes, read_verified
from irkit.runtime.backends import ort as ort_loader
from irkit.runtime.loaders import BUILTIN_LOADERS, unregister_loader


class AffineRunner:
    """A real (tiny) backend: y = x @ W + b in numpy, weights from the artifact's npz.

    Not thread-safe on purpose: it records how many calls overlap, so the test can check
    that CompiledModel serializes runners that do not declare ``thread_safe``.
    """

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weight = weights["W"]
        self.bias = weights["b"]
        self.active = 0
        self.max_active = 0
        self.calls = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(0.001)
        result = inputs["x"] @ self.weight + self.bias
        self.calls += 1
        self.active -= 1
        return {"y": result}


def load_affine(artifact_dir: Path, manifest: Manifest, **options: object) -> AffineRunner:
    assert options == {}
    return AffineRunner(load_npz(read_verified(artifact_dir, manifest, manifest.entry["weights"])))


@pytest.fixture
def affine_backend() -> Iterator[str]:
    register_loader("test-affine", load_affine, source="tests")
    yield "test-affine"
    unregister_loader("test-affine")


def affine_artifact(backend: str) -> Artifact:
    rng = np.random.default_rng(7)
    weights = {"W": rng.standard_normal((4, 2)).astype(np.float32), "b": np.float32([1, -1])}
    return Artifact(
        "affine", backend, "numpy",
        (TensorSpec("x", np.dtype("float32"), ("N", 4)),),
        (TensorSpec("y", np.dtype("float32"), ("N", 2)),),
        files={"weights.npz": npz_bytes(weights)}, entry={"weights": "weights.npz"},
    )


def test_builtins_are_known_without_being_imported() -> None:
    assert {"ort", "llvm", "numba", "wasm"} <= set(known_loaders())
    assert BUILTIN_LOADERS["ort"] == "irkit.runtime.backends.ort:load"
    assert get_loader("ort") is ort_loader.load


def test_unknown_backend_names_it_and_the_known_ones(mlp_artifact: Artifact, tmp_path: Path) -> None:
    mlp_artifact.backend = "tpu9000"
    path = mlp_artifact.save(tmp_path / "a")
    with pytest.raises(ArtifactError) as info:
        load(path)
    message = str(info.value)
    assert "no runtime loader for backend 'tpu9000'" in message
    assert "ort" in message and "llvm" in message


def test_registered_loader_runs_and_is_serialized(affine_backend: str, tmp_path: Path) -> None:
    artifact = affine_artifact(affine_backend)
    model = load(artifact.save(tmp_path / "affine"))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    weights = load_npz(artifact.files["weights.npz"])
    np.testing.assert_allclose(model(x=x)["y"], x @ weights["W"] + weights["b"], rtol=1e-6)

    threads = [threading.Thread(target=lambda: [model(x=x) for _ in range(10)]) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner = model._runner
    assert isinstance(runner, AffineRunner)
    assert runner.calls == 61
    assert runner.max_active == 1


def test_duplicate_registration_names_both(affine_backend: str) -> None:
    register_loader(affine_backend, load_affine, source="tests")  # same target: no-op
    with pytest.raises(ArtifactError) as info:
        register_loader(affine_backend, "somewhere.else:load", source="other plugin")
    message = str(info.value)
    assert "registered twice" in message
    assert "test_loaders:load_affine (from tests)" in message
    assert "somewhere.else:load (from other plugin)" in message
    register_loader(affine_backend, "somewhere.else:load", replace=True)
    with pytest.raises(ArtifactError, match="could not be imported: No module named 'somewhere'"):
        get_loader(affine_backend)


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="must look like"):
        register_loader("x", "no_colon")
    with pytest.raises(TypeError, match="must be callable"):
        register_loader("x", 42)  # type: ignore[arg-type]


def test_loader_returning_no_runner(tmp_path: Path) -> None:
    register_loader("test-broken", lambda directory, manifest: object())
    try:
        with pytest.raises(ArtifactError, match="returned object, which has no run"):
            load(affine_artifact("test-broken").save(tmp_path / "b"))
    finally:
        unregister_loader("test-broken")


def test_entry_point_group_adds_a_backend(tmp_path: Path) -> None:
    """A distribution declaring an ``irkit.runtime`` entry point is found, in a fresh process."""
    site = tmp_path / "site"
    (site / "thirdparty_loader-1.0.dist-info").mkdir(parents=True)
    (site / "thirdparty_loader-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-loader\nVersion: 1.0\n"
    )
    (site / "thirdparty_loader-1.0.dist-info" / "entry_points.txt").write_text(
        "[irkit.runtime]\ndoubler = thirdparty_loader:load\n"
    )
    (site / "thirdparty_loader.py").write_text(textwrap.dedent("""
        class Doubler:
            thread_safe = True
            def run(self, inputs):
                return {"y": inputs["x"] * 2}

        def load(artifact_dir, manifest):
            return Doubler()
    """))
    artifact = Artifact(
        "double", "doubler", "any",
        (TensorSpec("x", np.dtype("int32"), (None,)),),
        (TensorSpec("y", np.dtype("int32"), (None,)),),
    )
    path = artifact.save(tmp_path / "double")
    script = textwrap.dedent(f"""
        import json, numpy as np, irkit.runtime as rt
        m = rt.load({str(path)!r})
        print(json.dumps({{"known": rt.known_loaders(), "y": m(x=np.arange(3, dtype=np.int32))["y"].tolist()}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["y"] == [0, 2, 4]
    assert "doubler" in result["known"] and "ort" in result["known"]


class FixedRunner:
    """A backend that returns whatever it was built with: used to show output checking."""

    thread_safe = True

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.outputs


def fixed_model(tmp_path: Path, out_spec: TensorSpec, produced: dict[str, np.ndarray]) -> Any:
    register_loader("test-fixed", lambda directory, manifest: FixedRunner(produced), replace=True)
    artifact = Artifact(
        "fixed", "test-fixed", "any",
        (TensorSpec("x", np.dtype("float32"), ("N", 2)),), (out_spec,),
    )
    return load(artifact.save(tmp_path / "fixed"))


def test_backend_outputs_are_checked_against_the_signature(tmp_path: Path) -> None:
    x = np.zeros((3, 2), np.float32)
    try:
        spec = TensorSpec("y", np.dtype("float32"), ("N", "M", None))
        model = fixed_model(tmp_path, spec, {"y": np.ones((3, 7, 2), np.float32)})
        assert model(x=x)["y"].shape == (3, 7, 2)  # M and ? are whatever the backend says

        model = fixed_model(tmp_path, spec, {"y": np.ones((3, 7, 2), np.float64)})
        with pytest.raises(ArtifactError) as info:
            model(x=x)
        assert str(info.value) == (
            "backend 'test-fixed' produced output 'y' of model 'fixed' as float64[3,7,2], "
            "but the signature says float32[N,M,?] with N=3"
        )
        model = fixed_model(tmp_path, spec, {"y": np.ones((4, 7, 2), np.float32)})
        with pytest.raises(ArtifactError, match=r"as float32\[4,7,2\], but the signature says float32\[N,M,\?\] with N=3"):
            model(x=x)
        model = fixed_model(tmp_path, spec, {"z": np.ones((3, 7, 2), np.float32)})
        with pytest.raises(ArtifactError, match="did not produce output 'y'"):
            model(x=x)
    finally:
        unregister_loader("test-fixed")
