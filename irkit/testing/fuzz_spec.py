"""Seeded mutants of the example specs, and the check every mutant must pass.

``spec_mutants(seeds, rng)`` yields spec texts made from the example specs
(``specs/*.irk``) by the edits an attacker or a careless user makes: deleted, duplicated
and swapped text, stray tokens, values nested hundreds deep, 5,000-digit numbers,
``~nosuchuser`` and over-long paths, NUL characters, and the line-break characters that
``str.splitlines`` counts but the spec lexer does not (``\\v \\f \\x1c \\x85 \\u2028``).

``check_spec(text, path, ...)`` parses one mutant and returns ``None`` when the outcome
is acceptable — a parsed spec, or a :class:`irkit.spec.SpecError` whose ``file:line:col``
is in range and whose source line is the one at that line — and a description of the
failure otherwise (any other exception, a wrong location or source line).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from irkit.plugins import Registry
from irkit.spec import SpecError, parse_spec
from irkit.spec.errors import source_lines

# Lines as the lexer counts them break only at "\n"; these are the characters that other
# line splitters (str.splitlines) also break at.
LINE_BREAK_LOOKALIKES = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029",
                         "\r", "\r\n")

FRAGMENTS = (
    "{", "}", "(", ")", "[", "]", "=", ",", ":", '"', "\\", "$", "${", "${X}", "${X:-d}",
    "pipeline", "model", "inputs", "eval", "passes", "target", "serve", "output",
    'onnx("m.onnx")', "npz(", 'npz("d.npz", input = "x")', "true", "false", "-1", "0",
    "1.5e3", "1e999", "-1e400", ".5", "+", "#", "//", "\n", "f32[", "N", "@", "é", "\x00",
    "\t", "backend", '"llvm"', "x: f32[N]", "fuse", "prune { sparsity = 2 }",
    "9" * 4301, "-" + "9" * 30, "18446744073709551616",
)  # fmt: skip

PATHS = (
    "~nosuchuser/m.onnx", "~/m.onnx", "a" * 256 + ".onnx", ("d" * 200 + "/") * 30 + "m.onnx",
    "m\x00.onnx", "/", "", "..", "/dev/null", "/proc/self/fd/0", "specs/../../../etc/passwd",
)  # fmt: skip


def example_specs(root: Path) -> list[tuple[Path, str]]:
    """``(path, text)`` of every ``*.irk`` file under ``root/specs``."""
    return [(path, path.read_text()) for path in sorted((root / "specs").glob("*.irk"))]


def _nest(rng: random.Random) -> str:
    depth = rng.choice((33, 64, 300, 1200))
    kind = rng.randrange(3)
    if kind == 0:
        return "[" * depth + "1" + "]" * depth
    if kind == 1:
        return 'npz("a", input = ' * depth + '"x"' + ")" * depth
    return "[" * depth + "npz(" * 3 + '"a"' + ")" * 3 + "]" * depth


def mutate(text: str, rng: random.Random) -> str:
    """One edit of ``text``, chosen at random."""
    if not text:
        return rng.choice(FRAGMENTS)
    i = rng.randrange(len(text))
    kind = rng.randrange(11)
    if kind == 0:  # delete a span
        return text[:i] + text[min(len(text), i + rng.randint(1, 12)):]
    if kind == 1:  # insert a token of the language or a near miss
        return text[:i] + rng.choice(FRAGMENTS) + text[i:]
    if kind == 2:  # swap two characters
        j = rng.randrange(len(text))
        chars = list(text)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if kind == 3:  # duplicate a span
        j = min(len(text), i + rng.randint(1, 40))
        return text[:j] + text[i:j] + text[j:]
    if kind == 4:  # a line-break look-alike, anywhere (in strings and comments too)
        return text[:i] + rng.choice(LINE_BREAK_LOOKALIKES) + text[i:]
    if kind == 5:  # a value nested very deep in place of a value
        at = text.find("=", i)
        if at < 0:
            return text + _nest(rng)
        end = at + 1
        while end < len(text) and text[end] == " ":
            end += 1
        while end < len(text) and text[end] not in " ,}\n":
            end += 1
        return text[: at + 1] + " " + _nest(rng) + text[end:]
    if kind == 6:  # a huge or out-of-range number where a number is
        digits = [k for k in range(len(text)) if text[k].isdigit()]
        if not digits:
            return text + " " + rng.choice(FRAGMENTS)
        k = rng.choice(digits)
        return text[:k] + rng.choice(("9" * 4301, "9" * 20, "1e999", "0", "-5")) + text[k + 1 :]
    if kind == 7:  # a hostile path in place of a string
        start = text.find('"', i)
        end = text.find('"', start + 1) if start >= 0 else -1
        if end < 0:
            return text
        path = rng.choice(PATHS).replace('"', "")
        return text[: start + 1] + path + text[end:]
    if kind == 8:  # truncate
        return text[:i]
    if kind == 9:  # swap two space-separated tokens
        tokens = text.split(" ")
        a, b = rng.randrange(len(tokens)), rng.randrange(len(tokens))
        tokens[a], tokens[b] = tokens[b], tokens[a]
        return " ".join(tokens)
    # a random character, any code point the lexer might meet
    char = chr(rng.choice((rng.randrange(0, 0x80), rng.randrange(0x80, 0x3000))))
    return text[:i] + char + text[i:]


def spec_mutants(seeds: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Endless mutants: each is a seed with 1 to 4 edits."""
    while True:
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            text = mutate(text, rng)
        yield text


def check_spec(text: str, path: Path, *, registry: Registry | None = None,
               check_files: bool = True, env: Mapping[str, str] | None = None) -> str | None:
    """None if parsing ``text`` (as if read from ``path``) succeeds or raises a well-formed
    SpecError; otherwise what went wrong."""
    try:
        parse_spec(path, text=text, registry=registry, check_files=check_files,
                   env=env if env is not None else {})
    except SpecError as err:
        return check_location(err, text, str(path))
    except Exception as exc:  # the failure the fuzzer looks for
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def check_location(err: SpecError, text: str, file: str) -> str | None:
    """What is wrong with ``err``'s location, if anything: in range, right source line,
    a one-line message."""
    lines = source_lines(text)
    if err.file != file:
        return f"error names file {err.file!r}, not {file!r}"
    if not 1 <= err.line <= len(lines):
        return f"line {err.line} outside 1..{len(lines)}: {err.message[:120]}"
    line_text = lines[err.line - 1]
    if not 1 <= err.column <= len(line_text) + 1:
        return (f"column {err.column} outside 1..{len(line_text) + 1} of line {err.line}: "
                f"{err.message[:120]}")
    if err.source_line is not None and err.source_line != line_text:
        return f"source line shown is not line {err.line}: {err.source_line[:80]!r}"
    if "\n" in err.message:
        return f"message spans lines: {err.message[:120]!r}"
    if not str(err).startswith(f"{file}:{err.line}:{err.column}: "):
        return f"message does not start with its location: {str(err)[:120]!r}"
    return None
