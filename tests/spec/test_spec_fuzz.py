"""Fuzzing: whatever the text, parse_spec either succeeds or raises SpecError, never a
lark exception or another crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_registry import GOLDEN, make_registry

from irkit.spec import SpecError, parse_spec

SEEDS = [path.read_text() for path in sorted(GOLDEN.glob("*.irk"))]
SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
SEEDS += [path.read_text() for path in sorted(SPECS_DIR.glob("*.irk"))]
ENV = {"GOLDEN_MODEL_DIR": "models", "GOLDEN_EMPTY": ""}
REGISTRY = make_registry()

# Fragments worth inserting: every token of the language plus its usual near-misses.
FRAGMENTS = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "=",
    ",",
    ":",
    '"',
    "\\",
    "\\$",
    "$",
    "${",
    "${X}",
    "${GOLDEN_MODEL_DIR}",
    "${X:-d}",
    "pipeline",
    "model",
    "inputs",
    "eval",
    "passes",
    "target",
    "serve",
    "output",
    "onnx(",
    'onnx("m.onnx")',
    "torch(",
    "npz(",
    "csv(",
    "true",
    "false",
    "-1",
    "0",
    "1.5e3",
    ".5",
    "+",
    "#",
    "//",
    "\n",
    "f32[",
    "N",
    "@",
    "é",
    "\x00",
    "\t",
    "backend",
    '"llvm"',
    "x: f32[N]",
    "fuse",
    "prune { sparsity = 2 }",
]
FUZZ_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def parse_or_spec_error(text: str, check_files: bool) -> None:
    try:
        spec = parse_spec(
            "fuzz.irk", text=text, registry=REGISTRY, check_files=check_files, env=ENV
        )
    except SpecError as err:
        assert err.line >= 1 and err.column >= 1
        assert str(err).startswith(f"fuzz.irk:{err.line}:{err.column}: ")
    else:
        assert spec.pipelines  # success means at least one pipeline


@st.composite
def mutated_spec(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap_chars", "swap_tokens", "duplicate"]))
        if not text:
            text = draw(st.sampled_from(FRAGMENTS))
            continue
        i = draw(st.integers(0, len(text) - 1))
        if kind == "delete":
            j = draw(st.integers(i, min(len(text), i + 12)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            fragment = draw(st.sampled_from(FRAGMENTS) | st.text(max_size=3))
            text = text[:i] + fragment + text[i:]
        elif kind == "swap_chars":
            j = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
        elif kind == "swap_tokens":
            tokens = text.split(" ")
            a = draw(st.integers(0, len(tokens) - 1))
            b = draw(st.integers(0, len(tokens) - 1))
            tokens[a], tokens[b] = tokens[b], tokens[a]
            text = " ".join(tokens)
        else:
            j = draw(st.integers(i, min(len(text), i + 40)))
            text = text[:j] + text[i:j] + text[j:]
    return text


@FUZZ_SETTINGS
@given(text=mutated_spec(), check_files=st.booleans())
def test_mutated_specs_raise_only_spec_error(text: str, check_files: bool) -> None:
    parse_or_spec_error(text, check_files)


@FUZZ_SETTINGS
@given(text=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map(" ".join))
def test_random_token_soup_raises_only_spec_error(text: str) -> None:
    parse_or_spec_error(text, check_files=False)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_raises_only_spec_error(text: str) -> None:
    parse_or_spec_error(text, check_files=False)


def test_seeds_parse_cleanly() -> None:
    # The mutation fuzzer starts from specs that are valid, so its errors are the mutations'.
    for text in SEEDS[: len(list(GOLDEN.glob("*.irk")))]:
        parse_or_spec_error(text, check_files=False)
        parse_spec("seed.irk", text=text, registry=REGISTRY, check_files=False, env=ENV)
    assert len(SEEDS) >= 10
