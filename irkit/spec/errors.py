"""SpecError: every problem found in a spec file, located by file, line and column."""

from __future__ import annotations

from irkit.errors import IrkitError


class SpecError(IrkitError):
    """A spec file is malformed or names something that does not exist.

    ``str(err)`` is ``file:line:column: message`` followed by the offending source line and
    a caret under the column (when the source text is known). ``message`` is the bare
    message; ``file``, ``line`` and ``column`` (1-based) locate it.
    """

    def __init__(
        self,
        message: str,
        file: str,
        line: int,
        column: int,
        source_line: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(format_error(message, file, line, column, source_line))

    def __reduce__(self) -> tuple[type[SpecError], tuple[str, str, int, int, str | None]]:
        # Picklable (multiprocessing, pytest-xdist) despite the custom constructor.
        return (SpecError, (self.message, self.file, self.line, self.column, self.source_line))

    @property
    def location(self) -> str:
        """``file:line:column``, the prefix of the formatted message."""
        return f"{self.file}:{self.line}:{self.column}"


def format_error(message: str, file: str, line: int, column: int, source_line: str | None) -> str:
    head = f"{file}:{line}:{column}: {message}"
    if source_line is None:
        return head
    shown = source_line.rstrip("\r\n").expandtabs(1)
    caret = " " * max(column - 1, 0) + "^"
    return f"{head}\n  {shown}\n  {caret}"


def source_lines(text: str) -> list[str]:
    """``text`` split into lines as the spec lexer counts them: at ``\n`` only.

    ``str.splitlines`` also breaks at ``\v \f \x1c-\x1e \x85 \u2028 \u2029`` (and a lone
    ``\r``), which the lexer does not count, so a line number from an error would show the
    wrong source line.
    """
    return text.split("\n")


def source_line_at(text: str | None, line: int) -> str | None:
    """The 1-based ``line`` of ``text``, or None when it is out of range or unknown."""
    if text is None or line < 1:
        return None
    lines = source_lines(text)
    if line > len(lines):
        return None
    return lines[line - 1]


def spec_error(message: str, file: str, text: str | None, line: int, column: int) -> SpecError:
    """Build a SpecError whose formatted message shows the source line from ``text``."""
    return SpecError(message, file, line, column, source_line_at(text, line))


def clip_text(raw: str, limit: int = 40) -> str:
    """``raw`` shortened for a message (a 5,000-digit number is not worth printing)."""
    return raw if len(raw) <= limit else f"{raw[:limit]}... ({len(raw)} characters)"
