"""irkit.runtime imports no compiler module, no onnx and no torch (DESIGN.md: a serving box
installs neither). Checked two ways: what a real load-and-run pulls into ``sys.modules``,
and a scan of every import statement under runtime/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import irkit.runtime
from irkit.runtime import Artifact

RUNTIME_DIR = Path(irkit.runtime.__file__).resolve().parent
COMPILER_MODULES = (
    "irkit.ir", "irkit.api", "irkit.frontends", "irkit.passes", "irkit.lower",
    "irkit.kir", "irkit.spec", "irkit.ops", "irkit.cli",
)
FORBIDDEN = (*COMPILER_MODULES, "onnx", "torch")


def is_forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN)


def test_forbidden_prefix_logic() -> None:
    assert is_forbidden("onnx") and is_forbidden("onnx.helper") and is_forbidden("irkit.ir.graph")
    assert not is_forbidden("onnxruntime") and not is_forbidden("irkit.runtime.artifact")
    assert not is_forbidden("irkit.errors") and not is_forbidden("torchaudio_free_name")


def test_loading_and_running_an_ort_artifact_imports_no_compiler(
    mlp_artifact: Artifact, tmp_path: Path
) -> None:
    path = mlp_artifact.save(tmp_path / "mlp")
    script = f"""
import json, sys
import numpy as np
import irkit.runtime
model = irkit.runtime.load({str(path)!r})
out = model(x=np.ones((2, 4), np.float32), s=np.zeros((2, 3), np.float32))
model.warmup(); model.signature()
print(json.dumps({{"modules": sorted(sys.modules), "shape": list(out["y"].shape)}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["shape"] == [2, 3]
    modules = result["modules"]
    assert "onnxruntime" in modules  # the ort loader's own library: allowed, and really used
    assert "irkit.runtime.backends.ort" in modules
    leaked = [m for m in modules if is_forbidden(m)]
    assert leaked == [], f"irkit.runtime pulled in compiler/onnx/torch modules: {leaked}"


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every module an import statement in ``source`` names, for a module of ``package``.

    Relative imports are resolved; imports inside functions count too (lazy imports are
    still imports).
    """
    package_parts = package.split(".")
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from irkit import api`` imports irkit.api
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def test_no_runtime_source_imports_the_compiler() -> None:
    sources = sorted(RUNTIME_DIR.rglob("*.py"))
    assert len(sources) >= 7  # __init__, artifact, model, loaders, signature, backends/*
    violations = [
        f"{source.relative_to(RUNTIME_DIR)}:{line}: {module}"
        for source in sources
        for line, module in imported_modules(
            source.read_text(),
            ".".join(["irkit", "runtime", *source.relative_to(RUNTIME_DIR).parent.parts]),
        )
        if is_forbidden(module)
    ]
    assert violations == []


def test_the_scan_catches_violations() -> None:
    text = (
        "import onnx.helper\n"
        "from irkit import api\n"
        "from ...ir import graph\n"
        "import onnxruntime\n"
        "from . import ort\n"
        "def lazy():\n"
        "    import torch\n"
    )
    names = [module for _, module in imported_modules(text, "irkit.runtime.backends")]
    assert [m for m in names if is_forbidden(m)] == [
        "onnx.helper", "irkit.api", "irkit.ir", "irkit.ir.graph", "torch"
    ]
    assert "onnxruntime" in names and "irkit.runtime.backends.ort" in names
