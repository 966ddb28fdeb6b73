"""The ``irkit`` command end to end: build a spec, run the artifact, inspect, errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from irkit.cli import build_parser, main

COMMANDS = ["inspect", "compile", "build", "run", "plugins", "conformance", "optimize",
            "serve", "bench"]


def irkit_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irkit", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"irkit {command}" in out and len(out.splitlines()) >= 3


def test_build_then_run_reproduces_onnxruntime(digits_models: Path, tmp_path: Path) -> None:
    model = digits_models / "digits_mlp.onnx"
    spec = tmp_path / "mlp.irk"
    spec.write_text(textwrap.dedent(f"""
        pipeline mlp {{
          model = onnx("{model}")
          inputs {{ x: f32[N, 64] }}
          target ort
          output = "{tmp_path / 'build'}"
        }}
    """))
    built = irkit_cli("build", str(spec))
    assert built.returncode == 0, built.stderr
    artifact = tmp_path / "build" / "ort"
    assert (artifact / "manifest.json").is_file()
    with np.load(digits_models.parent / "data" / "digits_eval.npz") as data:
        x = data["x"][:37]
    np.save(tmp_path / "x.npy", x)
    ran = irkit_cli("run", str(artifact), "--input", f"x={tmp_path / 'x.npy'}",
                    "--output", str(tmp_path / "out.npz"))
    assert ran.returncode == 0, ran.stderr
    with np.load(tmp_path / "out.npz") as out:
        got = out["logits"]
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_run_rejects_wrong_shape_with_one_clear_line(digits_models: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "art"
    assert main(["compile", str(digits_models / "digits_mlp.onnx"), "-o", str(out)]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((2, 63), np.float32))
    ran = irkit_cli("run", str(out), "--input", f"x={tmp_path / 'bad.npy'}")
    assert ran.returncode == 2
    assert "Traceback" not in ran.stderr
    assert "'x'" in ran.stderr and "64" in ran.stderr and "63" in ran.stderr


def test_inspect_prints_ir_summary_and_dot(digits_models: Path, tmp_path: Path) -> None:
    dot = tmp_path / "g.dot"
    res = irkit_cli("inspect", str(digits_models / "digits_cnn.onnx"), "--dot", str(dot))
    assert res.returncode == 0, res.stderr
    assert "graph " in res.stdout and "= Conv(" in res.stdout
    assert "parameters" in res.stdout and "input  x: f32[N,1,8,8]" in res.stdout
    text = dot.read_text()
    assert text.startswith("digraph")
    # a line break Graphviz draws (the \n escape), not a literal backslash-n
    assert '[label="x\\nf32[N,1,8,8]"' in text and "\\\\n" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "nope.onnx"], "nope.onnx: no such model file"),
        (["build", "missing.irk"], "missing.irk"),
        (["run", "no-artifact-here"], "no-artifact-here"),
        (["compile", "specs/digits.irk", "--target", "nosuch"], "nosuch"),
    ],
)
def test_user_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    res = irkit_cli(*args, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 12


def test_debug_shows_traceback() -> None:
    res = irkit_cli("--debug", "inspect", "nope.onnx")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_inspect_and_compile_a_torch_factory(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The same commands as ``irkit ...`` runs them, in this process (``main``): each run in
    a fresh interpreter cost three torch imports (the entry point itself is covered by the
    subprocess tests above)."""
    pytest.importorskip("torch")
    np.savez(tmp_path / "example.npz", x=np.zeros((2, 64), np.float32))
    code = main(["inspect", "irkit.testing.digits:build_mlp", "--summary-only",
                 "--example", str(tmp_path / "example.npz")])
    res = capsys.readouterr()
    assert code == 0, res.err
    assert "input  input: f32[N,64]" in res.out and "Gemm x2" in res.out
    out = tmp_path / "art"
    code = main(["compile", "irkit.testing.digits:build_mlp", "--example",
                 str(tmp_path / "example.npz"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "manifest.json").is_file()
    code = main(["inspect", "irkit.testing.digits:build_mlp"])
    err = capsys.readouterr().err
    assert code == 2 and "example_inputs" in err and "Traceback" not in err


@pytest.mark.parametrize(("spec", "target", "key", "min_accuracy"),
                         [("digits.irk", "ort", "x", 0.95),
                          ("digits_cnn.irk", "cpu", "x_img", 0.95),
                          ("digits_cnn.irk", "ort", "x_img", 0.95)])
def test_example_specs_build_and_keep_accuracy(digits_models: Path, spec: str, target: str,
                                               key: str, min_accuracy: float) -> None:
    """The shipped examples validate against the real registry, build every target, print
    the per-pass report, and the optimized artifacts stay accurate on held-out digits."""
    import irkit.runtime
    from irkit.builder import build_spec

    specs = digits_models.parent
    log = io.StringIO()
    built = build_spec(specs / spec, log=log)
    assert "rel err" in log.getvalue() and "acc" in log.getvalue()
    with np.load(specs / "data" / "digits_eval.npz") as data:
        x, y = data[key], data["y"]
    model = irkit.runtime.load(built[target])
    (logits,) = model(x=x).values()
    assert (logits.argmax(1) == y).mean() >= min_accuracy


def test_compile_reports_time_and_size(digits_models: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn"
    assert main(["compile", str(digits_models / "digits_cnn.onnx"), "--target", "llvm",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)  # stdout stays the path alone, for scripts
    summary = captured.err
    assert summary.startswith("compiled digits_cnn with llvm for native in ")
    assert "code generation" in summary and "kernels" in summary and "workspace" in summary


def test_a_torch_factory_in_the_working_directory_needs_no_pythonpath(tmp_path: Path) -> None:
    """``irkit compile mymodels:fn`` imports ``mymodels.py`` from the working directory
    through the ``irkit`` script (whose sys.path, unlike ``python -m``'s, does not hold
    it), without PYTHONPATH. The factory returns no module, so the answer is that error
    (exit 2), not "cannot import 'mymodels'" — and no model is exported."""
    pytest.importorskip("torch")
    script = Path(sys.executable).parent / "irkit"
    if not script.is_file():
        pytest.skip("no irkit script next to this python")
    (tmp_path / "mymodels.py").write_text("def notamodule():\n    return 42\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(script), "compile", "mymodels:notamodule"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "is not a torch.nn.Module (got int)" in res.stderr, res.stderr
