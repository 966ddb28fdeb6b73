"""Errors a user of irkit can see. Every one names the input, file, op or value at fault."""

from __future__ import annotations


class IrkitError(Exception):
    """Base class of every error irkit raises on purpose (CLI: exit 2, no traceback)."""


class ModelLoadError(IrkitError):
    """A model file or ModelProto could not be read (truncated, malformed, missing data)."""


class UnsupportedOpsError(IrkitError):
    """One or more ops cannot be represented or handled; ``ops`` lists every one."""

    def __init__(self, message: str, ops: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.ops = list(ops or [])


class VerificationError(IrkitError):
    """The graph breaks an IR invariant; the message names the node and value."""


class ParseError(IrkitError):
    """IR text could not be parsed; the message carries line and column."""


class EvaluationError(IrkitError):
    """The reference evaluator itself failed (as opposed to giving a wrong answer)."""
