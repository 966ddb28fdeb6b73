"""Hostile specs: the smallest input of each failure class the fuzzer found gets a clean
SpecError at the right place, and seeded mutants of specs/*.irk give nothing else."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from spec_registry import make_registry

from irkit.cli import main
from irkit.spec import SpecError, parse_spec
from irkit.spec.parser import MAX_NESTING
from irkit.testing.fuzz_spec import check_location, check_spec, example_specs, spec_mutants

REPO = Path(__file__).resolve().parents[2]
REGISTRY = make_registry()
M = 'model = onnx("m.onnx")'

# (id, spec text, "line:column", substring of the message): each the minimal input of a
# class that used to escape as another exception or point at the wrong line.
HOSTILE: list[tuple[str, str, str, str]] = [
    ("nested-lists", f"pipeline p {{ {M} serve http {{ max_batch = " + "[" * 300 + "]" * 300
     + " } }", "1:94", f"nested too deeply (more than {MAX_NESTING} levels"),
    ("nested-calls", f"pipeline p {{ {M} eval = " + 'npz("a", input = ' * 300 + '"x"'
     + ")" * 300 + " }", "1:588", "nested too deeply"),
    ("huge-integer-option", f"pipeline p {{ {M} serve http {{ max_batch = " + "9" * 4301
     + " } }", "1:62", "integer 9999999999999999999999999999999999999999... (4301 characters) "
     "is out of range"),
    ("huge-integer-dim", f"pipeline p {{ {M} inputs {{ x: f32[" + "9" * 4301 + "] } }",
     "1:53", "out of range"),
    ("integer-past-64-bits", f"pipeline p {{ {M} serve http {{ port = 9223372036854775808 }} }}",
     "1:57", "out of range (at most 9223372036854775807"),
    ("float-overflow", f"pipeline p {{ {M} serve http {{ max_delay_ms = 1e999 }} }}", "1:65",
     "number 1e999 is out of range"),
    ("unknown-user-home", 'pipeline p { model = onnx("~nosuchuser/m.onnx") }', "1:27",
     "cannot expand '~nosuchuser'"),
    ("unknown-user-in-data", f'pipeline p {{ {M} eval = npz("~nosuchuser/d.npz") }}', "1:48",
     "cannot expand '~nosuchuser'"),
    ("nul-in-path", 'pipeline p { model = onnx("m\x00.onnx") }', "1:27", "NUL character"),
]


@pytest.mark.parametrize(("text", "where", "message"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
def test_hostile_values_raise_spec_errors_at_their_place(text: str, where: str,
                                                        message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("bad.irk", text=text, registry=REGISTRY, check_files=False)
    err = info.value
    assert f"{err.line}:{err.column}" == where, str(err)
    assert message in err.message
    assert check_location(err, text, "bad.irk") is None


def test_nesting_at_the_limit_is_fine_one_past_is_not() -> None:
    def spec(depth: int) -> str:
        return f"pipeline p {{ {M} serve http {{ x = " + "[" * depth + "]" * depth + " } }"

    parse_spec("ok.irk", text=spec(MAX_NESTING), registry=REGISTRY, validate=False)
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_spec("bad.irk", text=spec(MAX_NESTING + 1), registry=REGISTRY, validate=False)


def test_a_file_name_too_long_for_the_file_system_is_a_spec_error(tmp_path: Path) -> None:
    text = 'pipeline p { model = onnx("' + "a" * 256 + '.onnx") }'
    with pytest.raises(SpecError) as info:
        parse_spec(tmp_path / "bad.irk", text=text, registry=REGISTRY, check_files=True)
    assert "File name too long" in info.value.message
    assert (info.value.line, info.value.column) == (1, 22)


@pytest.mark.parametrize("breaker", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85",
                                     "\u2028", "\u2029", "\r"])
def test_line_break_lookalikes_in_comments_keep_the_source_line_right(breaker: str) -> None:
    # Only "\n" ends a line for the lexer; the caret line must be the lexer's line 3.
    text = f"# a comment{breaker}with a look-alike\npipeline p {{\n  {M} @\n}}\n"
    with pytest.raises(SpecError) as info:
        parse_spec("bad.irk", text=text, registry=REGISTRY, check_files=False)
    err = info.value
    assert (err.line, err.column) == (3, 26)
    assert err.source_line == f"  {M} @"


@pytest.mark.parametrize("breaker", ["\x85", "\u2028", "\x1c"])
def test_end_of_file_position_counts_lines_as_the_lexer_does(breaker: str) -> None:
    text = f"# head{breaker}more\npipeline p {{\n  {M}"
    with pytest.raises(SpecError) as info:
        parse_spec("bad.irk", text=text, registry=REGISTRY, check_files=False)
    err = info.value
    assert "unexpected end of file" in err.message
    assert (err.line, err.column) == (3, len(M) + 3)
    assert err.source_line == f"  {M}"


def test_seeded_mutants_of_the_example_specs_give_only_located_spec_errors() -> None:
    """600 mutants in CI (a few seconds); `scripts/fuzz.py spec` runs any number."""
    specs = example_specs(REPO)
    assert len(specs) >= 3
    seeds = [text for _, text in specs]
    rng = random.Random(20260321)
    failures: list[tuple[str, str]] = []
    parsed = errors = 0
    for index, text in zip(range(600), spec_mutants(seeds, rng)):
        problem = check_spec(text, specs[index % len(specs)][0], check_files=bool(index % 2))
        if problem is not None:
            failures.append((problem, text[:200]))
        try:
            parse_spec("m.irk", text=text, validate=False)
            parsed += 1
        except SpecError:
            errors += 1
        except Exception as exc:
            failures.append((repr(exc), text[:200]))
    assert not failures, failures[:5]
    assert parsed > 20 and errors > 200, (parsed, errors)  # both outcomes were exercised


def test_the_cli_prints_one_located_error_and_exits_2_for_each_mutant(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs = example_specs(REPO)
    seeds = [text for _, text in specs]
    rng = random.Random(7)
    checked = 0
    for text in spec_mutants(seeds, rng):
        try:
            parse_spec("m.irk", text=text, validate=False)
            continue  # a mutant that still parses would be built: not this test's business
        except SpecError:
            pass
        path = tmp_path / f"m{checked}.irk"
        path.write_text(text, encoding="utf-8", newline="")
        assert main(["build", str(path)]) == 2
        err = capsys.readouterr().err
        lines = err.rstrip("\n").split("\n")
        assert lines[0].startswith(f"irkit: error: {path}:"), err[:300]
        assert "Traceback" not in err
        assert sum(line.startswith("irkit:") for line in lines) == 1
        assert len(lines) <= 3  # the message, then the source line and its caret
        checked += 1
        if checked == 40:
            break
    assert checked == 40
