"""parse_spec / validate behaviour: dataclasses, interpolation, paths, did-you-mean."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from spec_registry import make_registry

import irkit.spec.validation as validate_module
from irkit.plugins import unknown_name_message
from irkit.spec import (
    DataRef,
    InputDecl,
    ModelSource,
    Options,
    PassSpec,
    SpecError,
    SpecFile,
    TargetSpec,
    parse_spec,
    validate,
)

SPEC = """\
pipeline digits {
  model  = onnx("models/digits_cnn.onnx")
  inputs { x: f32[N, 1, 8, 8] }
  eval   = npz("data/digits_eval.npz", input = "x", labels = "y")
  passes {
    fuse
    prune    { sparsity = 0.5, structured = true }
    quantize { mode = "static", per_channel = true, calibrate = npz("data/digits_calib.npz") }
  }
  target cpu  { backend = "llvm" }
  serve http  { port = 8080, max_delay_ms = 2 }
}
"""


def parse(text: str, name: str = "/specs/t.irk", **kwargs: object) -> SpecFile:
    kwargs.setdefault("registry", make_registry())
    kwargs.setdefault("check_files", False)
    kwargs.setdefault("env", {})
    return parse_spec(name, text=text, **kwargs)  # type: ignore[arg-type]


def test_parse_builds_the_expected_dataclasses() -> None:
    spec = parse(SPEC)
    base = Path("/specs")
    assert spec.path == base / "t.irk"
    pipeline = spec.pipeline()
    assert pipeline.name == "digits" and (pipeline.line, pipeline.column) == (1, 10)
    assert pipeline.model == ModelSource(
        "onnx", base / "models/digits_cnn.onnx", None, Options(), 2, 12
    )
    assert pipeline.inputs == (InputDecl("x", "f32", ("N", 1, 8, 8), 3, 12),)
    assert pipeline.eval == DataRef(
        "npz", base / "data/digits_eval.npz", Options(input="x", labels="y"), 4, 12
    )
    assert pipeline.model.kind == "onnx"
    assert pipeline.model.path == base / "models/digits_cnn.onnx"
    assert (pipeline.model.line, pipeline.model.column) == (2, 12)
    assert pipeline.inputs[0].shape == ("N", 1, 8, 8) and pipeline.inputs[0].dtype == "f32"
    assert pipeline.eval is not None and pipeline.eval.options == {"input": "x", "labels": "y"}
    assert [p.name for p in pipeline.passes] == ["fuse", "prune", "quantize"]
    assert pipeline.passes[1].options == {"sparsity": 0.5, "structured": True}
    assert (pipeline.passes[1].line, pipeline.passes[1].column) == (7, 5)
    calibrate = pipeline.passes[2].options["calibrate"]
    assert isinstance(calibrate, DataRef) and calibrate.path == base / "data/digits_calib.npz"
    assert pipeline.target() == TargetSpec("cpu", "llvm", Options(), 10, 10)
    http = pipeline.serve("http")
    assert http.options == {"port": 8080, "max_delay_ms": 2.0}
    assert isinstance(http.options["max_delay_ms"], float)  # int accepted for a float option
    assert pipeline.output == base / "build" / "digits"


def test_dataclasses_and_options_are_immutable_and_hashable() -> None:
    pipeline = parse(SPEC).pipeline()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.name = "other"  # type: ignore[misc]
    options = pipeline.passes[1].options
    with pytest.raises(TypeError):
        options["sparsity"] = 0.9  # type: ignore[index]
    assert hash(pipeline) == hash(parse(SPEC).pipeline())
    assert options.position("structured") == (7, 32)
    assert options == {"sparsity": 0.5, "structured": True} and options != {"sparsity": 0.5}


def test_pass_pipeline_text() -> None:
    pipeline = parse(SPEC).pipeline()
    # The calibration data reference has no text form and is left out.
    assert pipeline.pass_pipeline_text() == (
        "fuse,prune{sparsity=0.5,structured=true},quantize{mode=static,per_channel=true}"
    )
    odd = PassSpec("tag", Options(label="two words", extra=(1, "a", [True])))
    assert odd.to_pipeline_text() == 'tag{label="two words",extra=[1,a,[true]]}'


def test_interpolation_from_env_mapping() -> None:
    text = (
        'pipeline p { model = onnx("${DIR}/m.onnx")\n'
        '  serve kafka { brokers = "${B:-embedded}", input_topic = "${EMPTY:-in}",\n'
        '                output_topic = "a\\${DIR}$b" } }'
    )
    spec = parse(text, env={"DIR": "nets", "EMPTY": ""})
    assert spec.pipeline().model.path == Path("/specs/nets/m.onnx")
    assert spec.pipeline().serve().options == {
        "brokers": "embedded",
        "input_topic": "in",
        "output_topic": "a${DIR}$b",
    }
    spec = parse(text, env={"DIR": "nets", "B": "kafka:9092", "EMPTY": "x"})
    assert spec.pipeline().serve().options["brokers"] == "kafka:9092"
    assert spec.pipeline().serve().options["input_topic"] == "x"
    with pytest.raises(SpecError, match="'DIR' is not set") as info:
        parse(text, env={})
    assert (info.value.line, info.value.column) == (1, 28)


def test_interpolation_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRKIT_SPEC_TEST_DIR", "from_env")
    text = 'pipeline p { model = onnx("${IRKIT_SPEC_TEST_DIR}/m.onnx") }'
    spec = parse_spec("/s/t.irk", text=text, registry=make_registry(), check_files=False)
    assert spec.pipeline().model.path == Path("/s/from_env/m.onnx")
    monkeypatch.delenv("IRKIT_SPEC_TEST_DIR")
    with pytest.raises(SpecError, match="IRKIT_SPEC_TEST_DIR"):
        parse_spec("/s/t.irk", text=text, registry=make_registry(), check_files=False)


def test_relative_paths_resolve_against_the_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = tmp_path / "project" / "specs"
    (specs / "models").mkdir(parents=True)
    (specs / "data").mkdir()
    (specs / "models" / "m.onnx").write_bytes(b"")
    (specs / "data" / "e.npz").write_bytes(b"")
    (tmp_path / "m.onnx").write_bytes(b"")  # ~/m.onnx once HOME is tmp_path
    (specs / "s.irk").write_text(
        'pipeline p {\n  model = onnx("models/m.onnx")\n  eval = npz("./data/../data/e.npz")\n'
        '  serve batch { input = "data/e.npz", output = "/abs/out.npz" }\n'
        '  output = "../artifacts/p"\n}\n'
        'pipeline q { model = onnx("~/m.onnx") }\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = parse_spec(Path("../project/specs/s.irk"), registry=make_registry(), check_files=False)
    p = spec.pipeline("p")
    assert spec.path is not None and spec.path.is_absolute()
    assert p.model.path == specs / "models" / "m.onnx"
    assert p.eval is not None and p.eval.path == specs / "data" / "e.npz"
    assert p.serve("batch").options == {
        "input": specs / "data" / "e.npz",
        "output": Path("/abs/out.npz"),
    }
    assert p.output == tmp_path / "project" / "artifacts" / "p"
    assert spec.pipeline("q").model.path == tmp_path / "m.onnx"
    assert spec.pipeline("q").output == specs / "build" / "q"
    # With file checks on, the same spec validates because the files exist.
    parse_spec(specs / "s.irk", registry=make_registry()).pipeline("p")


def test_pipeline_selection_errors() -> None:
    two = parse('pipeline a { model = onnx("m") } pipeline b { model = onnx("m") }')
    assert two.pipeline("b").name == "b"
    with pytest.raises(SpecError, match=r"declares 2 pipelines \('a', 'b'\); choose one"):
        two.pipeline()
    with pytest.raises(SpecError, match="unknown pipeline 'c'"):
        two.pipeline("c")
    with pytest.raises(SpecError, match="did you mean 'bb'"):
        parse('pipeline bb { model = onnx("m") }').pipeline("b")
    with pytest.raises(SpecError, match="pipeline 'a' declares no target") as info:
        two.pipeline("a").target()
    assert info.value.location == "/specs/t.irk:1:10"


def test_did_you_mean_lists_known_names() -> None:
    with pytest.raises(SpecError) as info:
        parse('pipeline a { model = onnx("m")\n  passes { prunne }\n}')
    assert info.value.message == unknown_name_message("pass", "prunne", make_registry().passes)
    assert "did you mean 'prune'?" in info.value.message
    assert "(known: cse, distill, fold, fuse, lowrank, prune, quantize, search, tag)" in info.value.message
    # A name with nothing close still lists what exists.
    with pytest.raises(SpecError) as info:
        parse('pipeline a { model = onnx("m")\n  target tpu\n}')
    assert "did you mean" not in info.value.message
    assert "(known: cuda, llvm, numba, ort, wasm)" in info.value.message


def test_parts_that_cannot_be_imported_are_checked_by_name_only() -> None:
    spec = parse('pipeline a { model = onnx("m") passes { cse { whatever = [1, "x"] } } }')
    assert spec.pipeline().passes[0].options == {"whatever": (1, "x")}
    with pytest.raises(SpecError, match="unknown pass 'cses'"):
        parse('pipeline a { model = onnx("m") passes { cses } }')


def test_validate_false_skips_registry_and_file_checks() -> None:
    text = 'pipeline a { model = onnx("absent.onnx") passes { no_such_pass { x = 1 } } }'
    spec = parse(text, validate=False, check_files=True)
    assert spec.pipeline().passes[0] == PassSpec("no_such_pass", Options(x=1), 1, 51)
    with pytest.raises(SpecError, match=r"model file not found: /specs/absent\.onnx"):
        validate(spec, make_registry())
    with pytest.raises(SpecError, match="unknown pass 'no_such_pass'"):
        validate(spec, make_registry(), check_files=False)


def test_validate_defaults_to_the_plugin_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_get_registry():  # type: ignore[no-untyped-def]
        calls.append(1)
        return make_registry()

    monkeypatch.setattr(validate_module, "get_registry", fake_get_registry)
    spec = parse_spec(
        "/s/t.irk", text='pipeline a { model = onnx("m") target ort }', check_files=False
    )
    assert calls == [1] and spec.pipeline().target().backend == "ort"


def test_errors_are_irkit_errors_with_source_and_caret() -> None:
    from irkit.errors import IrkitError

    with pytest.raises(IrkitError) as info:
        parse('pipeline a {\n\tmodel = onnx("m")\n  passes { fuse { x = 1 } }\n}')
    err = info.value
    assert isinstance(err, SpecError)
    assert str(err) == (
        "/specs/t.irk:3:19: pass 'fuse' takes no options (got 'x')\n"
        "    passes { fuse { x = 1 } }\n"
        "                    ^"
    )


def test_object_options_accept_anything_and_path_options_take_strings() -> None:
    spec = parse(
        'pipeline a { model = onnx("m")\n'
        '  passes { tag { label = "l", extra = npz("d.npz") } }\n'
        '  serve batch { input = "in/x.npz", output = "${OUT:-out}/y.npz" } }'
    )
    assert isinstance(spec.pipeline().passes[0].options["extra"], DataRef)
    assert spec.pipeline().serve().options["output"] == Path("/specs/out/y.npz")


def test_option_values_position_is_kept_through_validation() -> None:
    spec = parse(SPEC)
    # Validation normalises values (2 -> 2.0) but keeps where each option was written.
    assert spec.pipeline().serve().options.position("max_delay_ms") == (11, 30)


def test_env_default_is_a_real_mapping_not_os_environ_copy() -> None:
    # parse_spec reads os.environ at call time, not at import time.
    key = "IRKIT_SPEC_TEST_LATE"
    os.environ[key] = "late"
    try:
        spec = parse_spec(
            "/s/t.irk", text=f'pipeline a {{ model = onnx("${{{key}}}") }}', validate=False
        )
        assert spec.pipeline().model.path == Path("/s/late")
    finally:
        del os.environ[key]


def test_crlf_line_endings_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "win.irk"
    path.write_bytes(
        b'\xef\xbb\xbfpipeline a {\r\n  model = onnx("m")\r\n  passes { fusee }\r\n}\r\n'
    )
    with pytest.raises(SpecError) as info:
        parse_spec(path, registry=make_registry(), check_files=False)
    assert (info.value.line, info.value.column) == (3, 12)
    assert str(info.value).splitlines()[1] == "    passes { fusee }"


def test_spec_errors_pickle() -> None:
    import pickle

    with pytest.raises(SpecError) as info:
        parse('pipeline a { model = onnx("m") target tpu }')
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.file, copy.line, copy.column, str(copy)) == (
        info.value.file,
        info.value.line,
        info.value.column,
        str(info.value),
    )


def test_absurdly_deep_nesting_is_a_spec_error() -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(SpecError, match="nested too deeply"):
        parse(
            f'pipeline a {{ model = onnx("m") passes {{ tag {{ label = "x", extra = {deep} }} }} }}'
        )
