"""Tampered llvm artifacts (special files, a manifest nested 100,000 deep, consistently
re-hashed entry edits): each is refused with an ArtifactError naming the file or field,
or still answers exactly; never a hang, a crash or NaN. Each case runs in a forked child."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import irkit.runtime
from irkit.testing.fuzz_artifact import check_tampered, tamper_cases, tampered_copies

pytest.importorskip("llvmlite")

# what the refusal must name, per case (the file or the entry field)
NAMES = {
    "weights-fifo": "weights.bin in", "code-fifo": "model.o in",
    "weights-socket": "is a socket", "manifest-nested-100k": "nests arrays",
    "weights-short": "weights_bytes", "weights-empty": "weights_bytes",
    "weights-is-code": "weights_bytes", "output-shapes-small": "output_shapes.logits",
    "output-shapes-big": "output_shapes.logits", "input-shapes-wide": "input_shapes.x",
    "workspace-huge": "workspace", "guards-junk": "guards",
    "constraints-never": "constraints", "signature-dtype": "dtype float64",
    # caught by the facts the compiler records in model.o (irkit.runtime.facts)
    "io-reordered": "entry io is", "workspace-shrunk": "entry workspace is",
    "kernels-reordered": "entry kernels is", "native-call-is-kernel": "entry native is",
    "weights-other": "not the weights file", "signature-input-dtype": "model.o reads float32",
    "requires-nothing": "variants[0].requires is",
}  # fmt: skip


@pytest.fixture(scope="module")
def llvm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import irkit
    from irkit.testing.onnx_models import mlp_model

    path = tmp_path_factory.mktemp("tamper") / "mlp"
    graph = irkit.load_model(mlp_model())
    irkit.compile(graph, "llvm").save(path)
    return path


def test_every_tamper_class_is_refused_or_harmless(llvm_artifact: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    expected = irkit.runtime.load(llvm_artifact).run({"x": x})
    problems = {}
    for name, path in tampered_copies(llvm_artifact, tmp_path):
        problem = check_tampered(path, x, expected, timeout=20)
        if problem is not None:
            problems[name] = problem
    assert not problems, problems
    assert len(tamper_cases()) >= 39


@pytest.mark.parametrize("case", sorted(NAMES))
def test_refusals_name_the_file_or_field(llvm_artifact: Path, tmp_path: Path, case: str) -> None:
    (_, path), = tampered_copies(llvm_artifact, tmp_path, [case])
    with pytest.raises(irkit.runtime.ArtifactError) as info:
        irkit.runtime.load(path)
    assert NAMES[case] in str(info.value)


def test_code_without_facts_loads_as_before(llvm_artifact: Path, tmp_path: Path) -> None:
    """An object compiled before the facts existed (here: the symbol's name changed in
    its string table, re-hashed) links and runs as before: the calling convention is the
    same, only the cross-check is missing."""
    from irkit.runtime.facts import facts_symbol, has_facts
    from irkit.testing.fuzz_artifact import _rewrite

    copy = tmp_path / "old"
    shutil.copytree(llvm_artifact, copy)
    model = irkit.runtime.load(llvm_artifact)
    run = model._runner.program.run  # type: ignore[union-attr]
    code = (copy / "model.o").read_bytes()
    assert has_facts(code, run)
    old = facts_symbol(run).encode()
    (copy / "model.o").write_bytes(code.replace(b"\0" + old + b"\0",
                                                b"\0" + old[:-1] + b"X\0"))
    _rewrite(copy, lambda _: None)
    assert not has_facts((copy / "model.o").read_bytes(), run)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_array_equal(irkit.runtime.load(copy).run({"x": x})["logits"],
                                  model.run({"x": x})["logits"])
