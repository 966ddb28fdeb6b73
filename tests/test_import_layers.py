"""Layer rules of DESIGN.md, checked on import statements: data flows down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package directory -> irkit modules it may import (prefix match)
RULES = {
    "irkit/ir": ("irkit.ir", "irkit.errors"),
    "irkit/ops": ("irkit.ops", "irkit.ir", "irkit.errors"),
    "irkit/frontends": ("irkit.frontends", "irkit.ir", "irkit.ops", "irkit.errors"),
    "irkit/passes": ("irkit.passes", "irkit.ir", "irkit.ops", "irkit.errors",
                     # the pass manager resolves third-party passes and measures error
                     "irkit.plugins", "irkit.reference", "irkit.frontends.onnx_export",
                     "irkit.frontends.onnx_types"),
    "irkit/kir": ("irkit.kir", "irkit.errors"),
}


def irkit_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "irkit" or name.startswith("irkit.")]


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports(package: str) -> None:
    allowed = RULES[package]
    files = sorted((ROOT / package).rglob("*.py"))
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
