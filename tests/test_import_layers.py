"""Layer rules of DESIGN.md, checked on import statements: data flows down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package directory or module file -> irkit modules it may import (prefix match). Data
# flows down: ir -> ops -> interop -> frontends / passes -> lower (kir) -> backends.
RULES = {
    "irkit/ir": ("irkit.ir", "irkit.errors"),
    "irkit/ops": ("irkit.ops", "irkit.ir", "irkit.errors"),
    # ONNX <-> Graph conversion and reference evaluation, shared by every layer above.
    "irkit/interop": ("irkit.interop", "irkit.ir", "irkit.ops", "irkit.errors"),
    "irkit/frontends": ("irkit.frontends", "irkit.interop", "irkit.ir", "irkit.ops",
                        "irkit.errors"),
    "irkit/passes": ("irkit.passes", "irkit.interop", "irkit.ir", "irkit.ops", "irkit.errors"),
    "irkit/kir": ("irkit.kir", "irkit.errors"),
    "irkit/target.py": ("irkit.errors", "irkit.runtime.hostcpu"),
    "irkit/lower": ("irkit.lower", "irkit.kir", "irkit.passes", "irkit.interop", "irkit.ir",
                    "irkit.ops", "irkit.target", "irkit.errors"),
    # The backend contract: what lowering produces becomes an artifact the runtime reads;
    # the one plugin it names is the ORT backend, for the whole-model ORT fallback.
    "irkit/backend.py": ("irkit.lower", "irkit.kir", "irkit.interop", "irkit.ir",
                         "irkit.target", "irkit.runtime", "irkit.errors", "irkit.plugins.ort",
                         "irkit.backend_control", "irkit.__version__"),
    # Run-time control flow: bodies compiled by the backend flow into runtime segments.
    "irkit/backend_control.py": ("irkit.lower", "irkit.ir", "irkit.target", "irkit.runtime",
                                 "irkit.backend", "irkit.errors"),
    "plugins": ("irkit.plugins", "irkit.hookspecs", "irkit.backend", "irkit.lower",
                "irkit.kir", "irkit.passes", "irkit.interop", "irkit.ir", "irkit.ops",
                "irkit.target", "irkit.runtime", "irkit.errors", "irkit.__version__"),
    "irkit/spec": ("irkit.spec", "irkit.plugins", "irkit.runtime.options", "irkit.errors"),
    # Training and search passes: above the passes, beside the api (they compile and time
    # candidates and bring torch students back through the frontends); never the backends.
    "irkit/compress": ("irkit.compress", "irkit.passes", "irkit.frontends", "irkit.interop",
                       "irkit.ir", "irkit.ops", "irkit.errors", "irkit.api", "irkit.cost",
                       "irkit.target", "irkit.plugins"),
}


def irkit_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "irkit" and node.level == 0:
            # ``from irkit import X`` names what it takes from the package root.
            found += [(node.lineno, f"irkit.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "irkit" or name.startswith("irkit.")]


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports(package: str) -> None:
    allowed = RULES[package]
    path = ROOT / package
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    assert files, package
    violations = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in files
        for line, name in irkit_imports(path)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert not violations, "\n".join(violations)


def test_importing_irkit_is_lazy() -> None:
    """``import irkit`` must not pull in onnx or the compiler (serving boxes import it)."""
    code = ("import sys, irkit; bad = [m for m in ('onnx', 'torch', 'irkit.ir', 'irkit.api') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
