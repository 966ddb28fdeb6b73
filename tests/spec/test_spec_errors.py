"""Broken specs: each gives one SpecError naming file:line:column and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_registry import make_registry

from irkit.spec import SpecError, parse_spec

M = 'model = onnx("m.onnx")'

# (id, spec text, "file:line:column", substring of the message)
BROKEN: list[tuple[str, str, str, str]] = [
    (
        "missing-closing-brace",
        f"pipeline a {{\n  {M}\n",
        "bad.irk:2:25",
        "unexpected end of file; expected one of 'eval', 'inputs', 'model', 'output', 'passes', "
        "'serve', 'target', 'train', '}'",
    ),
    (
        "missing-equals",
        'pipeline a {\n  model onnx("m.onnx")\n}',
        "bad.irk:2:9",
        "unexpected name 'onnx'; expected '='",
    ),
    (
        "unterminated-string",
        'pipeline a {\n  model = onnx("m.onnx)\n}',
        "bad.irk:2:16",
        "unterminated string",
    ),
    ("stray-character", f"pipeline a {{ {M} @ }}", "bad.irk:1:37", "unexpected character '@'"),
    (
        "unknown-item",
        f"pipeline a {{\n  {M}\n  targets cpu {{}}\n}}",
        "bad.irk:3:3",
        "unexpected name 'targets'",
    ),
    (
        "unknown-pass",
        f'pipeline a {{ {M}\n  passes {{ fuse quantise {{ mode = "static" }} }}\n}}',
        "bad.irk:2:17",
        "unknown pass 'quantise'; did you mean 'quantize'?",
    ),
    (
        "unknown-backend-option",
        f'pipeline a {{ {M}\n  target cpu {{ backend = "llvn" }}\n}}',
        "bad.irk:2:16",
        "unknown backend 'llvn'; did you mean 'llvm'?",
    ),
    (
        "unknown-backend-name",
        f"pipeline a {{ {M}\n  target wasmm\n}}",
        "bad.irk:2:10",
        "unknown backend 'wasmm'; did you mean 'wasm'?",
    ),
    (
        "unknown-adapter",
        f"pipeline a {{ {M}\n  serve htpp {{ port = 1 }}\n}}",
        "bad.irk:2:9",
        "unknown adapter 'htpp'; did you mean 'http'?",
    ),
    (
        "unknown-pass-option",
        f"pipeline a {{ {M}\n  passes {{ lowrank {{ enrgy = 0.9 }} }}\n}}",
        "bad.irk:2:22",
        "pass 'lowrank': unknown option 'enrgy'; did you mean 'energy'?",
    ),
    (
        "unknown-adapter-option",
        f"pipeline a {{ {M}\n  serve http {{ prot = 80 }}\n}}",
        "bad.irk:2:16",
        "adapter 'http': unknown option 'prot'; did you mean 'port'?",
    ),
    (
        "string-for-float",
        f'pipeline a {{ {M}\n  passes {{ prune {{ sparsity = "half" }} }}\n}}',
        "bad.irk:2:20",
        "option 'sparsity' expects a number, got the string 'half'",
    ),
    (
        "bool-for-int",
        f"pipeline a {{ {M}\n  serve http {{ port = true }}\n}}",
        "bad.irk:2:16",
        "option 'port' expects an integer, got true",
    ),
    (
        "float-for-int",
        f"pipeline a {{ {M}\n  target ort {{ threads = 1.5 }}\n}}",
        "bad.irk:2:16",
        "backend 'ort': option 'threads' expects an integer, got the number 1.5",
    ),
    (
        "bad-choice",
        f'pipeline a {{ {M}\n  passes {{ quantize {{ mode = "statc" }} }}\n}}',
        "bad.irk:2:23",
        "must be one of 'dynamic', 'static', got 'statc'; did you mean 'static'?",
    ),
    (
        "missing-required",
        f'pipeline a {{ {M}\n  serve kafka {{ input_topic = "in" }}\n}}',
        "bad.irk:2:9",
        "adapter 'kafka': missing required option 'output_topic'",
    ),
    (
        "no-options-taken",
        f"pipeline a {{ {M}\n  passes {{ fuse {{ level = 2 }} }}\n}}",
        "bad.irk:2:19",
        "pass 'fuse' takes no options (got 'level')",
    ),
    (
        "unknown-dtype",
        f"pipeline a {{ {M}\n  inputs {{ x: float32[N] }}\n}}",
        "bad.irk:2:15",
        "unknown dtype 'float32'",
    ),
    (
        "zero-dim",
        f"pipeline a {{ {M}\n  inputs {{ x: f32[N, 0] }}\n}}",
        "bad.irk:2:22",
        "dimension must be a positive integer or a symbol name, got 0",
    ),
    (
        "negative-dim",
        f"pipeline a {{ {M}\n  inputs {{ x: f32[-1, 4] }}\n}}",
        "bad.irk:2:19",
        "got -1",
    ),
    (
        "float-dim",
        f"pipeline a {{ {M}\n  inputs {{ x: f32[N, 2.5] }}\n}}",
        "bad.irk:2:22",
        "got 2.5",
    ),
    (
        "string-dim",
        f'pipeline a {{ {M}\n  inputs {{ x: f32["N"] }}\n}}',
        "bad.irk:2:19",
        'unexpected string "N"',
    ),
    (
        "duplicate-input",
        f"pipeline a {{ {M}\n  inputs {{ x: f32[N]\n x: f32[N] }}\n}}",
        "bad.irk:3:2",
        "duplicate input 'x'",
    ),
    (
        "duplicate-pipeline",
        f"pipeline a {{ {M} }}\npipeline a {{ {M} }}\n",
        "bad.irk:2:10",
        "duplicate pipeline 'a' (first declared at line 1)",
    ),
    (
        "duplicate-target",
        f"pipeline a {{ {M}\n  target ort\n  target ort {{ threads = 1 }}\n}}",
        "bad.irk:3:10",
        "duplicate target 'ort' (first declared at line 2)",
    ),
    (
        "duplicate-serve",
        f"pipeline a {{ {M}\n  serve http\n  serve http\n}}",
        "bad.irk:3:9",
        "duplicate serve block 'http'",
    ),
    (
        "duplicate-option",
        f"pipeline a {{ {M}\n  serve http {{ port = 1, port = 2 }}\n}}",
        "bad.irk:2:26",
        "duplicate option 'port' in serve 'http'",
    ),
    (
        "duplicate-model",
        f"pipeline a {{\n  {M}\n  {M}\n}}",
        "bad.irk:3:3",
        "duplicate 'model' in pipeline 'a' (first given at line 2)",
    ),
    ("missing-model", "pipeline a {\n  target ort\n}", "bad.irk:1:10", "pipeline 'a' has no model"),
    ("no-pipeline", "# nothing here\n", "bad.irk:1:1", "spec declares no pipeline"),
    (
        "model-is-string",
        'pipeline a {\n  model = "m.onnx"\n}',
        "bad.irk:2:11",
        'model must be a model source such as onnx("model.onnx")',
    ),
    (
        "model-is-data",
        'pipeline a {\n  model = npz("m.npz")\n}',
        "bad.irk:2:11",
        "not a npz() data reference",
    ),
    (
        "unknown-frontend",
        'pipeline a {\n  model = onx("m.onnx")\n}',
        "bad.irk:2:11",
        "unknown model frontend 'onx'; did you mean 'onnx'?",
    ),
    (
        "bad-factory",
        'pipeline a {\n  model = torch("pkg.mod.factory")\n}',
        "bad.irk:2:17",
        "torch() factory must look like 'package.module:factory'",
    ),
    (
        "eval-not-data",
        f'pipeline a {{ {M}\n  eval = "data.npz"\n}}',
        "bad.irk:2:10",
        'eval must be a data reference such as npz("file.npz")',
    ),
    (
        "unknown-data-format",
        f'pipeline a {{ {M}\n  eval = npzz("e.npz")\n}}',
        "bad.irk:2:10",
        "unknown data format 'npzz'; did you mean 'npz'?",
    ),
    (
        "unknown-data-arg",
        f'pipeline a {{ {M}\n  eval = npz("e.npz", lables = "y")\n}}',
        "bad.irk:2:23",
        "unknown npz() argument 'lables'; did you mean 'labels'?",
    ),
    (
        "data-arg-type",
        f'pipeline a {{ {M}\n  eval = npz("e.npz", limit = "all")\n}}',
        "bad.irk:2:31",
        "npz() argument 'limit' expects an integer, got the string 'all'",
    ),
    (
        "data-two-paths",
        f'pipeline a {{ {M}\n  eval = npz("a.npz", "b.npz")\n}}',
        "bad.irk:2:10",
        "npz() takes exactly one positional argument",
    ),
    (
        "positional-after-keyword",
        f'pipeline a {{ {M}\n  eval = npz(input = "x", "a.npz")\n}}',
        "bad.irk:2:27",
        "positional argument after keyword argument",
    ),
    (
        "unset-env",
        'pipeline a {\n  model = onnx("${IRKIT_SPEC_TEST_UNSET}/m.onnx")\n}',
        "bad.irk:2:17",
        "environment variable 'IRKIT_SPEC_TEST_UNSET' is not set",
    ),
    (
        "unterminated-interpolation",
        'pipeline a {\n  model = onnx("a/${HOME")\n}',
        "bad.irk:2:19",
        "unterminated '${'",
    ),
    (
        "bad-env-name",
        'pipeline a {\n  model = onnx("${1X}")\n}',
        "bad.irk:2:17",
        "bad environment variable name '1X'",
    ),
    (
        "unknown-escape",
        'pipeline a {\n  model = onnx("C:\\models\\m.onnx")\n}',
        "bad.irk:2:19",
        "unknown escape '\\m' in string",
    ),
    (
        "output-not-string",
        f"pipeline a {{ {M}\n  output = 3\n}}",
        "bad.irk:2:12",
        "output must be a directory path string, got the number 3",
    ),
    (
        "backend-not-string",
        f"pipeline a {{ {M}\n  target cpu {{ backend = 1 }}\n}}",
        "bad.irk:2:16",
        "target option 'backend' must be a backend name string",
    ),
    (
        "path-option-number",
        f'pipeline a {{ {M}\n  serve batch {{ input = 1, output = "o" }}\n}}',
        "bad.irk:2:17",
        "adapter 'batch': option 'input' expects a path string, got the number 1",
    ),
]


@pytest.mark.parametrize(
    ("text", "location", "message"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_spec_reports_location_and_message(text: str, location: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("bad.irk", text=text, registry=make_registry(), check_files=False, env={})
    err = info.value
    first_line = str(err).splitlines()[0]
    assert first_line.startswith(f"{location}: "), first_line
    assert message in err.message, err.message
    file, line, column = location.rsplit(":", 2)
    assert (err.file, err.line, err.column) == (file, int(line), int(column))
    # The source line is shown with a caret under the column.
    _, shown, caret = str(err).splitlines()
    assert shown == "  " + text.splitlines()[err.line - 1] if text.splitlines() else True
    assert caret == " " * (err.column + 1) + "^"


def test_enough_broken_cases_with_distinct_ids() -> None:
    ids = [case[0] for case in BROKEN]
    assert len(ids) == len(set(ids)) >= 15


def test_missing_model_file(tmp_path: Path) -> None:
    spec = tmp_path / "s.irk"
    spec.write_text(f"pipeline a {{\n  {M}\n}}\n")
    with pytest.raises(SpecError) as info:
        parse_spec(spec, registry=make_registry())
    assert info.value.location == f"{spec}:2:11"
    assert f"model file not found: {tmp_path / 'm.onnx'}" in info.value.message
    (tmp_path / "m.onnx").write_bytes(b"")
    assert parse_spec(spec, registry=make_registry()).pipeline().model.path == tmp_path / "m.onnx"


@pytest.mark.parametrize(
    ("item", "what", "column"),
    [
        ('eval = npz("data/e.npz")', "eval data", 10),
        (
            'passes { quantize { calibrate = npz("data/e.npz") } }',
            "pass 'quantize' option 'calibrate'",
            35,
        ),
        (
            'passes { tag { label = "x", extra = [1, npy("data/e.npz")] } }',
            "pass 'tag' option 'extra'",
            43,
        ),
    ],
)
def test_missing_data_files(tmp_path: Path, item: str, what: str, column: int) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    spec = tmp_path / "s.irk"
    spec.write_text(f"pipeline a {{ {M}\n  {item}\n}}\n")
    with pytest.raises(SpecError) as info:
        parse_spec(spec, registry=make_registry())
    assert info.value.location == f"{spec}:2:{column}"
    assert info.value.message == f"{what} file not found: {tmp_path / 'data' / 'e.npz'}"
    # The same spec passes once file checks are off.
    parse_spec(spec, registry=make_registry(), check_files=False)


def test_torch_example_file_is_checked(tmp_path: Path) -> None:
    spec = tmp_path / "s.irk"
    spec.write_text('pipeline a {\n  model = torch("m:f", example = npz("ex.npz"))\n}\n')
    with pytest.raises(SpecError, match="torch\\(\\) data file not found"):
        parse_spec(spec, registry=make_registry())
    (tmp_path / "ex.npz").write_bytes(b"")
    assert parse_spec(spec, registry=make_registry()).pipeline().model.factory == "m:f"


def test_unreadable_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file") as info:
        parse_spec(tmp_path / "absent.irk")
    assert info.value.line == 1
    (tmp_path / "latin1.irk").write_bytes(b"# caf\xe9\n")
    with pytest.raises(SpecError, match="cannot read spec file"):
        parse_spec(tmp_path / "latin1.irk")
