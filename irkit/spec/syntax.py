"""The spec grammar (``spec.lark``) and the translation of lark's errors into SpecErrors."""

from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from irkit.spec.errors import SpecError, source_lines, spec_error

GRAMMAR = Path(__file__).with_name("spec.lark")

_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "$END": "end of file",
}


@functools.cache
def grammar() -> Lark:
    """The LALR parser for spec files (built once)."""
    return Lark.open(str(GRAMMAR), parser="lalr", propagate_positions=True)


def syntax_error(exc: UnexpectedInput, file: str, text: str) -> SpecError:
    """The SpecError for a lark parse error: what was found, what was expected, where."""
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        if char == '"':
            message = 'unterminated string (a string ends with " on the same line)'
        else:
            # The contextual lexer's ``allowed`` set is not the parser state's, so listing it
            # would mislead; the caret shows where the stray character is.
            message = f"unexpected character {char!r}"
        return spec_error(message, file, text, exc.line, exc.column)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        message = f"unexpected {_describe_token(token)}"
        message += f"; expected {_describe_expected(_acceptable(exc))}"
        return spec_error(message, file, text, token.line or 1, token.column or 1)
    if isinstance(exc, UnexpectedToken | UnexpectedEOF):
        line, column = _end_position(text)
        message = f"unexpected end of file; expected {_describe_expected(_acceptable(exc))}"
        return spec_error(message, file, text, line, column)
    return spec_error(f"syntax error: {exc}", file, text, 1, 1)


def _acceptable(exc: UnexpectedToken | UnexpectedEOF) -> set[str]:
    """Terminals the parser would really accept at the error.

    ``exc.expected`` comes from the LALR state before pending reductions, so it can list
    tokens (like ')' after a finished call) that are not acceptable; the interactive
    parser replays each terminal through the reductions to find the true set.
    """
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        accepted = set(interactive.accepts())
        if accepted:
            return accepted
    return set(exc.expected)


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name {token.value!r}"
    if token.type == "STRING":
        return f"string {token.value}"
    if token.type == "NUMBER":
        return f"number {token.value}"
    return repr(token.value)


def _describe_expected(names: set[str] | frozenset[str] | list[str]) -> str:
    terminals = {t.name: t for t in grammar().terminals}
    literals: list[str] = []
    words: list[str] = []
    for name in sorted(names):
        terminal = terminals.get(name)
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
        elif terminal is not None and isinstance(terminal.pattern, PatternStr):
            literals.append(repr(terminal.pattern.value))
        else:
            words.append(name)
    described = sorted(literals) + sorted(words)
    if len(described) == 1:
        return described[0]
    return "one of " + ", ".join(described)


# What the grammar ignores between tokens (its WHITESPACE terminal); str.rstrip() would
# also strip characters such as \x1c or \u2028 that the lexer treats as text.
_IGNORED_WHITESPACE = " \t\f\r\n"


def _end_position(text: str) -> tuple[int, int]:
    """Line and column just after the last token-bearing character of ``text``."""
    lines = source_lines(text.rstrip(_IGNORED_WHITESPACE))
    return len(lines), len(lines[-1]) + 1
