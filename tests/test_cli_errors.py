"""Every subcommand, driven with bad arguments: exit status 2 and one line on stderr.

The property the README states ("user errors print one line and exit 2; --debug shows the
traceback") checked as a table, in process (no interpreter start per row), so one more
row costs milliseconds.
"""

from __future__ import annotations

import re
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from irkit.cli import main
from irkit.errors import IrkitError


@pytest.fixture(scope="module")
def case_dir(digits_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ort artifact of the digits MLP, a model repository, bad input files and specs
    with two pipelines / two serve blocks."""
    root = tmp_path_factory.mktemp("cli-errors")
    model = digits_models / "digits_mlp.onnx"
    assert main(["compile", str(model), "-o", str(root / "art")]) == 0
    assert main(["compile", str(model), "-o", str(root / "repo" / "digits" / "1")]) == 0
    (root / "empty.npy").write_bytes(b"")
    (root / "text.npy").write_text("1 2 3\n")
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(root / "x.npy", np.zeros((1, 64), np.float32))
    np.save(root / "nan.npy", np.where(np.arange(64) == 5, np.nan, 0).astype(np.float32)[None])
    (root / "zipmap.onnx").write_bytes(_zipmap_model())
    (root / "two.irk").write_text(textwrap.dedent(f"""
        pipeline a {{ model = onnx("{model}") inputs {{ x: f32[N, 64] }} target ort }}
        pipeline b {{ model = onnx("{model}") inputs {{ x: f32[N, 64] }} target ort }}
    """))
    (root / "serves.irk").write_text(textwrap.dedent(f"""
        pipeline a {{
          model = onnx("{model}")
          inputs {{ x: f32[N, 64] }}
          target ort
          output = "{root / 'build'}"
          serve batch {{ input = "x.npy", output = "out" }}
          serve kafka {{ brokers = "127.0.0.1:1", input_topic = "i", output_topic = "o" }}
        }}
    """))
    return root


def _zipmap_model() -> bytes:
    """A scikit-learn-style classifier export: ONNX-ML LinearClassifier, then ZipMap, whose
    output is a sequence of maps (class -> probability)."""
    from onnx import TensorProto, helper

    classify = helper.make_node(
        "LinearClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
        classlabels_ints=[0, 1], coefficients=[1.0, -1.0, 0.5, -0.5], intercepts=[0.0, 0.1],
        post_transform="SOFTMAX")  # fmt: skip
    zipmap = helper.make_node("ZipMap", ["scores"], ["probabilities"], domain="ai.onnx.ml",
                              classlabels_int64s=[0, 1])  # fmt: skip
    seq_of_maps = helper.make_value_info("probabilities", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64,
                                   helper.make_tensor_type_proto(TensorProto.FLOAT, []))))  # fmt: skip
    graph = helper.make_graph(
        [classify, zipmap], "sklearn_like",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]), seq_of_maps])  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


MLP = "{models}/digits_mlp.onnx"
EVAL = "{models}/../data/digits_eval.npz"
ART = "{dir}/art"
# (arguments, a piece of the one error line). {dir}: case_dir, {models}: specs/models,
# {port}: a port something already listens on.
BAD = [
    (["frobnicate"], "invalid choice"),
    (["run"], "required"),
    (["run", ART, "--bogus"], "--bogus"),
    (["--log-level", "loud", "targets"], "--log-level"),
    (["inspect", "nope.onnx"], "no such model file"),
    (["inspect", MLP, "--dot", "/no/such/dir/g.dot"], "no such directory"),
    (["compile", "{dir}/two.irk"], "--pipeline"),
    (["compile", "nosuchpackage_xyz:factory"], "cannot import"),
    (["build", "missing.irk"], "missing.irk"),
    (["build", "{dir}/two.irk", "--pipeline", "c"], "'c'"),
    (["run", "no-artifact-here", "-i", "x={dir}/x.npy"], "no-artifact-here"),
    (["run", ART, "-i", "x"], "NAME=FILE"),
    (["run", ART, "-i", "x={dir}/missing.npy"], "no such file"),
    (["run", ART, "-i", "x={dir}/empty.npy"], "empty file"),
    (["run", ART, "-i", "x={dir}/text.npy"], "not a NumPy"),
    (["run", ART, "-i", "x={dir}/objects.npy"], "Python objects"),
    (["run", ART, "-i", "x={dir}/x.npy", "-i", "x={dir}/x.npy"], "more than once"),
    (["run", ART, "-i", "x={dir}/nan.npy"], "input 'x': NaN at index [0, 5]; "),
    (["run", ART, "-i", "x={dir}/x.npy", "--device", "simulator"],
     "--device applies to cuda artifacts"),
    (["run", ART, "--device", "tpu"], "invalid choice"),
    (["compile", "{dir}/zipmap.onnx", "--target", "ort", "-o", "{dir}/z"],
     "output 'probabilities' is a seq<map<i64,f32[]>>"),
    (["compile", "{dir}/zipmap.onnx", "--target", "ort", "-o", "{dir}/z"], "'zipmap': False"),
    (["compile", "{dir}/zipmap.onnx", "--target", "llvm", "-o", "{dir}/z"],
     "ZipMap"),
    (["compile", "{dir}/zipmap.onnx", "--target", "llvm", "-o", "{dir}/z"],
     "turns class scores into a sequence of maps"),
    (["optimize", MLP, "--passes", "fuse", "--eval", "missing.npz"], "no such file"),
    (["optimize", MLP, "--passes", "fuse", "--eval", EVAL, "--eval-input", "nosuch"],
     "nosuch"),
    (["optimize", MLP, "--passes", "nosuchpass"], "nosuchpass"),
    (["optimize", MLP, "--passes", "fuse", "-o", "{dir}/no/such/q.onnx"], "no such directory"),
    (["compile", MLP, "--arch", "x86-64-v3", "--passes", "quantize{{mode=static}}"],
     "--calibration DATA.npz"),
    (["bench", MLP, "--against", "tensorflow"], "tensorflow"),
    (["bench", MLP, "--batch", "x"], "--batch"),
    (["bench", MLP, "--target", "nope"], "nope"),
    (["conformance", "--backend", "nope"], "nope"),
    (["serve", "{dir}/nothing-here"], "no such spec file"),
    (["serve", "{dir}/serves.irk"], "--adapter"),
    (["serve", "{dir}/repo", "--adapter", "http", "--port", "{port}", "--log-level", "warning"],
     "{port}"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_user_error_exits_2_with_one_line(args: list[str], message: str, case_dir: Path,
                                          digits_models: Path, busy_port: int,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fill = {"dir": str(case_dir), "models": str(digits_models), "port": str(busy_port)}
    argv = [a.format(**fill) for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("irkit") and "error:" in lines[0], err
    assert message.format(**fill) in lines[0], err


def test_debug_after_the_subcommand_shows_the_exception(digits_models: Path) -> None:
    with pytest.raises(IrkitError, match="no such model file"):
        main(["inspect", "nope.onnx", "--debug"])


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit codes:" in out and "2    user or input error" in out, argv


def test_reports_say_what_passes_did(digits_models: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Unstructured pruning shows the non-zero count; a lowrank that changes nothing says
    why; the conformance table shows whole column names."""
    from irkit.conformance.runner import ConformanceReport

    model = str(digits_models / "digits_mlp.onnx")
    assert main(["optimize", model, "--passes", "prune{sparsity=0.5},lowrank{energy=1.0}"]) == 0
    out = capsys.readouterr().out
    prune_row = next(line for line in out.splitlines() if line.startswith("prune"))
    nonzero = int(re.search(r"\((\d+) nonzero\)", prune_row).group(1))  # type: ignore[union-attr]
    assert 9610 * 0.45 <= nonzero <= 9610 * 0.55, prune_row  # half of the 9,610, +-5%
    assert "changed nothing" in out and "would not save" in out
    table = ConformanceReport("roundtrip").format().splitlines()
    header = next(line for line in table if line.startswith("op "))
    assert "evaluator-error" in header and "nondeterministic" in header


def test_serve_logs_start_and_stop_as_json(case_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One structured line when the adapter starts (what, where) and one when it stops
    (what was served); batch paths resolve against the spec file, not the cwd."""
    import json

    assert main(["serve", str(case_dir / "serves.irk"), "--adapter", "batch",
                 "--log-format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{")]
    served = [entry["msg"] for entry in lines if entry["logger"] == "irkit.serve"]
    assert len(served) == 2, lines
    assert served[0].startswith("serve batch: model 'a'") and str(case_dir / "x.npy") in served[0]
    assert "1 rows read, 1 written, 0 in errors.jsonl" in served[1]
    assert (case_dir / "out" / "manifest.json").is_file()
