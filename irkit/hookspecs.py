"""pluggy hook specifications for irkit plugins.

Every hook hands the plugin a ``register`` callback. A plugin module implements any of
these with ``@irkit.hookspecs.hookimpl`` and is listed under the ``irkit`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "irkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]


@hookspec
def register_frontends(register: Register) -> None:
    """Register model frontends: ``register(name, frontend)``.

    ``frontend`` has ``can_load(source) -> bool`` and ``load(source, **options) -> Graph``.
    """


@hookspec
def register_passes(register: Register) -> None:
    """Register graph passes: ``register(name, pass_class)``.

    ``pass_class`` is a frozen dataclass whose fields are the pass options; calling
    ``pass_class(**options).run(graph, context)`` returns a ``PassResult``.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register compiler backends: ``register(name, backend)``.

    ``backend`` has ``options`` (dict of option name -> ``Option``) and
    ``compile(graph, **options) -> Artifact``.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Register serving adapters: ``register(name, adapter_class)``.

    ``adapter_class`` has ``options`` (dict of option name -> ``Option``) and is built as
    ``adapter_class(model, **options)``; ``.serve()`` runs until stopped.
    """
