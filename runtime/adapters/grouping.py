"""Run many decoded requests through a model in few calls (the queue adapters' core).

The kafka and postgres adapters take requests in bunches (a poll, a claimed batch of rows)
rather than one at a time as http does; this module turns such a bunch into model calls:

- ``SignatureCheck(model)(inputs)`` raises ``BadInput`` when ``inputs`` do not fit the
  model's signature; the verdict is cached per distinct set of names, dtypes and shapes,
  so a steady stream of same-shaped requests costs one dict lookup each, plus the
  model's per-request value check (``check_finite``: NaN/inf inputs, when refused).
- ``batch_key(inputs)``: requests with equal keys can be concatenated along axis 0 (all
  but the batch dimension agree); ``None`` for requests that must run alone (a scalar
  input, or inputs that disagree on the batch dimension).
- ``run_grouped(model, requests, max_rows, metrics)`` groups the requests by key, runs
  each group in calls of at most ``max_rows`` rows (a request larger than that runs
  alone), and splits the outputs back. A failing call is retried request by request, so
  only the guilty requests fail. It returns, per request and in order, its outputs or the
  ``AdapterError`` it failed with: ``BadInput`` when the model raised ``ValueError`` /
  ``TypeError`` (the runtime's input checks), a plain ``AdapterError`` otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from irkit.runtime.adapters.common import (
    AdapterError,
    AdapterMetrics,
    BadInput,
    ServableModel,
    concat_requests,
    split_outputs,
)

__all__ = ["Outcome", "SignatureCheck", "batch_key", "run_grouped"]

Outcome: TypeAlias = dict[str, np.ndarray] | AdapterError
_SIGNATURE_CACHE_SIZE = 1024


class SignatureCheck:
    """``check(inputs)`` raises ``BadInput`` if ``inputs`` do not fit ``model``."""

    def __init__(self, model: ServableModel, cache_size: int = _SIGNATURE_CACHE_SIZE) -> None:
        self.model = model
        self.cache_size = cache_size
        self._verdicts: dict[tuple[object, ...], BadInput | None] = {}
        self._values = getattr(model, "check_finite", None)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> None:
        key = tuple((n, a.dtype.str, a.shape) for n, a in inputs.items())
        if key in self._verdicts:
            error = self._verdicts[key]
        else:
            try:
                self.model.validate(inputs)
                error = None
            except (ValueError, TypeError) as exc:
                error = BadInput(str(exc))
            if len(self._verdicts) >= self.cache_size:
                self._verdicts.clear()
            self._verdicts[key] = error
        if error is not None:
            raise error
        if self._values is not None:
            try:
                self._values(inputs)
            except (ValueError, TypeError) as exc:
                raise BadInput(str(exc)) from None


def batch_key(inputs: Mapping[str, np.ndarray]) -> tuple[object, ...] | None:
    """Requests can share a model call only when all but the batch dim agree (None: never)."""
    arrays = inputs.values()
    if any(a.ndim == 0 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        return None
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return next(iter(inputs.values())).shape[0] if inputs else 1


def _chunks(indices: list[int], rows: list[int], max_rows: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    total = 0
    for index in indices:
        if chunk and total + rows[index] > max_rows:
            yield chunk
            chunk, total = [], 0
        chunk.append(index)
        total += rows[index]
    if chunk:
        yield chunk


def as_adapter_error(exc: BaseException) -> AdapterError:
    """A model's exception as the error its request fails with (see the module docstring)."""
    if isinstance(exc, AdapterError):
        return exc
    kind = BadInput if isinstance(exc, ValueError | TypeError) else AdapterError
    return kind(f"{type(exc).__name__}: {exc}")


def run_grouped(
    model: ServableModel,
    requests: Sequence[Mapping[str, np.ndarray]],
    max_rows: int,
    metrics: AdapterMetrics | None = None,
) -> list[Outcome]:
    """Outputs (or the error) of every request, in order; see the module docstring."""
    outcomes: list[Any] = [None] * len(requests)
    rows = [1] * len(requests)
    groups: dict[object, list[int]] = {}
    for index, inputs in enumerate(requests):
        key = batch_key(inputs)
        if key is not None:
            rows[index] = _rows(inputs)
        groups.setdefault(key if key is not None else object(), []).append(index)
    for indices in groups.values():
        for chunk in _chunks(indices, rows, max_rows):
            _run_chunk(model, requests, rows, chunk, outcomes, metrics)
    return outcomes


def _run_chunk(
    model: ServableModel,
    requests: Sequence[Mapping[str, np.ndarray]],
    rows: list[int],
    chunk: list[int],
    outcomes: list[Any],
    metrics: AdapterMetrics | None,
) -> None:
    started = time.perf_counter()
    try:
        if len(chunk) == 1:
            parts = [model.run(requests[chunk[0]])]
            total = rows[chunk[0]]
        else:
            inputs, sizes = concat_requests([requests[i] for i in chunk])
            outputs = model.run(inputs)
            total = sum(sizes)
            if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
                raise AdapterError("outputs do not follow the batch dimension of the inputs")
            parts = split_outputs(outputs, sizes)
    except Exception as exc:
        if len(chunk) > 1:  # find the guilty request(s): run them one by one
            for index in chunk:
                _run_chunk(model, requests, rows, [index], outcomes, metrics)
            return
        outcomes[chunk[0]] = as_adapter_error(exc)
        return
    if metrics is not None:
        metrics.observe_batch(total, time.perf_counter() - started)
    for index, part in zip(chunk, parts):
        outcomes[index] = part
