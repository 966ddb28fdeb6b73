"""The artifact runtime runs where only numpy and the backend's own library are installed.

The test builds such an environment: a fresh virtual environment (no system site
packages) holding numpy, llvmlite and irkit's runtime files (``irkit/__init__.py``,
``irkit/errors.py`` and ``irkit/runtime``) — no onnx, onnxruntime, lark, networkx or
torch. An llvm artifact compiled here loads and runs there with the same outputs; an
``ort`` artifact is refused with an error naming onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import irkit
import irkit.runtime
from irkit.bench import mlp_onnx

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("onnx", "onnxruntime", "lark", "networkx", "torch", "pluggy")


def _site_packages(venv: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


def _link_distribution(name: str, into: Path) -> None:
    """Link an installed package (and its bundled shared libraries) into ``into``."""
    source = Path(sysconfig.get_paths()["purelib"])
    module = __import__(name)
    package = Path(module.__file__).parent
    source = package.parent
    for entry in source.iterdir():
        if entry.name == name or entry.name.startswith(f"{name}.libs") or (
                entry.name.startswith(f"{name}-") and entry.name.endswith(".dist-info")):
            (into / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("runtime-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    site = _site_packages(venv)
    for name in ("numpy", "llvmlite"):
        _link_distribution(name, site)
    package = site / "irkit"
    package.mkdir()
    for name in ("__init__.py", "errors.py"):
        (package / name).write_bytes((ROOT / "irkit" / name).read_bytes())
    (package / "runtime").symlink_to(ROOT / "runtime")
    return venv


def _run(venv: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True,
                          text=True, timeout=300, env=env, cwd=venv)


def test_the_environment_really_lacks_the_compiler_stack(runtime_env: Path) -> None:
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) "
             f"is not None for m in {list(ABSENT)!r}}}))")
    done = _run(runtime_env, probe)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == dict.fromkeys(ABSENT, False)


def test_an_llvm_artifact_runs_with_numpy_and_llvmlite_only(runtime_env: Path,
                                                            tmp_path: Path) -> None:
    graph = irkit.load_model(mlp_onnx((16, 32, 8)))
    path = irkit.compile(graph, target="llvm", arch="x86-64-v3,native").save(tmp_path / "m")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = irkit.runtime.load(path, threads=1)(x=x)["y"]
    script = f"""
import json, sys
import numpy as np
import irkit.runtime
model = irkit.runtime.load({str(path)!r}, threads=1)
y = model(x=np.load({str(tmp_path / "x.npy")!r}))["y"]
np.save({str(tmp_path / "y.npy")!r}, y)
print(json.dumps({{"modules": sorted(sys.modules), "variant": model.variant}}))
"""
    done = _run(runtime_env, script)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    assert result["variant"] in ("x86-64-v3", "native")
    assert "llvmlite" in result["modules"]
    assert not [m for m in result["modules"] if m.split(".")[0] in ABSENT]


def test_an_ort_artifact_names_the_missing_library(runtime_env: Path, tmp_path: Path) -> None:
    graph = irkit.load_model(mlp_onnx((16, 32, 8)))
    path = irkit.compile(graph, target="ort").save(tmp_path / "ort")
    script = f"""
import irkit.runtime
try:
    irkit.runtime.load({str(path)!r})
except irkit.runtime.ArtifactError as exc:
    print(exc)
"""
    done = _run(runtime_env, script)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime" in done.stdout
