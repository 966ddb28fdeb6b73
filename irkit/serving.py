"""``irkit serve``: run a spec's serve block, or one server for many models.

``irkit serve PATH [PATH ...]`` takes spec files and model repository directories
(``<model>/<version>/`` artifacts). With a batch or kafka adapter it serves one pipeline,
as before. With ``http`` and/or ``grpc`` it serves every selected pipeline (several per
spec, several specs) and every repository directory from one process: one
``ModelRepository``, one batcher per model version, HTTP and gRPC on their own ports.

Options of the ``serve http`` / ``serve grpc`` blocks fall in three groups:

- per model (``max_batch``, ``max_delay_ms``, ``max_queue``, ``timeout_ms``, ``workers``,
  ``version``, ``required``): each pipeline's own; when a pipeline declares both blocks,
  they must agree (they describe one batcher);
- per repository (``model_repository``, ``poll_s``, ``version_policy``,
  ``allow_model_control``) and per server (``host``, ``port``, ...): one value for the whole
  process; two blocks that give different values are an error naming both.

An HTTP server also serves ``/demo/``, a page that runs the model in the browser, for
each pipeline with a ``backend = "wasm"`` target (built when missing), falling back to
the server's own infer route where WebAssembly is unavailable.

Command-line flags (``--host``, ``--port``, ``--grpc-port``, ``--poll-s``,
``--version-policy``, ``--allow-model-control``) override the specs; with only
directories given they are the whole configuration (HTTP on 8080 and gRPC on 8001 by
default).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irkit.errors import IrkitError

NETWORK_ADAPTERS = ("http", "grpc")
log = logging.getLogger("irkit.serve")


def served_counts(registry: Any) -> str:
    """``12 requests (11 ok, 1 bad_input)`` from the ``irkit_requests_total`` samples of a
    Prometheus registry (empty when there are none)."""
    outcomes: dict[str, float] = {}
    for family in registry.collect() if registry is not None else ():
        for sample in family.samples:
            if sample.name == "irkit_requests_total":
                outcome = sample.labels.get("outcome", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + sample.value
    total = int(sum(outcomes.values()))
    parts = ", ".join(f"{int(n)} {k}" for k, n in sorted(outcomes.items()) if n)
    return f"{total} requests" + (f" ({parts})" if parts else "")


@dataclass
class _Setting:
    """One option value and where it was given (for conflict messages)."""

    value: Any
    where: str


@dataclass
class ServePlan:
    """What one network server serves: models (pipelines), directories and options."""

    adapters: list[str]
    models: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # (pipeline, opts)
    server: dict[str, dict[str, _Setting]] = field(default_factory=dict)  # adapter -> options
    repository: dict[str, _Setting] = field(default_factory=dict)
    directories: list[Path] = field(default_factory=list)


def _merge(into: dict[str, _Setting], key: str, value: Any, where: str, what: str) -> None:
    old = into.get(key)
    if old is not None and old.value != value:
        raise IrkitError(f"{what} option {key!r} is {old.value!r} at {old.where} but "
                         f"{value!r} at {where}: one server takes one value")  # fmt: skip
    into.setdefault(key, _Setting(value, where))


def split_names(values: list[str] | None) -> list[str]:
    """``["http,grpc", "x"]`` -> ``["http", "grpc", "x"]`` (order kept, no duplicates)."""
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
    return names


def _choose_adapters(requested: list[str], pipelines: list[Any], has_dirs: bool) -> list[str]:
    if requested:
        return requested
    if not pipelines:
        return list(NETWORK_ADAPTERS)
    declared = {s.adapter for p in pipelines for s in p.serves}
    if len(pipelines) == 1 and len(pipelines[0].serves) == 1:
        return [pipelines[0].serves[0].adapter]
    if declared and declared <= set(NETWORK_ADAPTERS):
        return [a for a in NETWORK_ADAPTERS if a in declared]
    listed = ", ".join(sorted(declared)) or "none"
    raise IrkitError(f"the pipelines declare serve blocks {listed}; choose with --adapter "
                     "(http and grpc can run together: --adapter http,grpc)")  # fmt: skip


def _describe_summary(summary: Any) -> str:
    """A batch run's summary in words (other adapters' summaries as they print)."""
    if not hasattr(summary, "rows"):
        return str(summary)
    state = "complete" if summary.complete else "stopped early (run again to resume)"
    return (f"{summary.rows} rows read, {summary.written} written, {summary.errors} in "
            f"errors.jsonl, {summary.shards} shards ({summary.skipped_shards} already done) "
            f"in {summary.seconds:.2f} s -> {summary.output}: {state}")


def plan_network(pipelines: list[Any], adapters: list[str], directories: list[Path],
                 overrides: Mapping[str, Any], explicit: bool) -> ServePlan:
    """Group the options of the selected pipelines' serve blocks (see the module doc)."""
    from irkit.runtime.adapters.frontend import MODEL_OPTIONS, REPOSITORY_OPTIONS

    plan = ServePlan(adapters, server={a: {} for a in adapters}, directories=list(directories))
    for pipeline in pipelines:
        blocks = [s for s in pipeline.serves if s.adapter in adapters]
        if not blocks:
            if explicit:
                raise IrkitError(f"{pipeline.file}: pipeline {pipeline.name!r} declares no "
                                 f"serve {' or '.join(adapters)} block")  # fmt: skip
            continue
        model: dict[str, _Setting] = {}
        for block in blocks:
            where = f"{pipeline.file}:{block.line}:{block.column}"
            for key, value in dict(block.options).items():
                if key in MODEL_OPTIONS:
                    _merge(model, key, value, where, f"pipeline {pipeline.name!r}")
                elif key in REPOSITORY_OPTIONS:
                    _merge(plan.repository, key, value, where, "repository")
                else:
                    _merge(plan.server[block.adapter], key, value, where, f"serve {block.adapter}")
        plan.models.append((pipeline, {k: s.value for k, s in model.items()}))
    if not plan.models and not directories:
        raise IrkitError(f"no selected pipeline declares serve {' or '.join(adapters)}")
    for key in ("poll_s", "version_policy", "allow_model_control"):
        if overrides.get(key) is not None:
            plan.repository[key] = _Setting(overrides[key], "the command line")
    if overrides.get("host") is not None:
        for adapter in adapters:
            plan.server[adapter]["host"] = _Setting(overrides["host"], "the command line")
    for adapter, key in (("http", "port"), ("grpc", "grpc_port")):
        if adapter in adapters and overrides.get(key) is not None:
            plan.server[adapter]["port"] = _Setting(overrides[key], "the command line")
    return plan


def build_frontends(plan: ServePlan, artifact_dirs: list[Path]) -> list[Any]:
    """The repository and one frontend per adapter of ``plan`` (not started)."""
    from irkit.runtime.adapters import get_adapter
    from irkit.runtime.adapters.repository import Batching, ModelRepository, VersionPolicy

    repo_options = {k: s.value for k, s in plan.repository.items()}
    try:
        policy = VersionPolicy.parse(repo_options.get("version_policy") or "latest")
    except ValueError as exc:
        raise IrkitError(str(exc)) from None
    poll_s = repo_options.get("poll_s")
    if poll_s is not None and poll_s <= 0:
        raise IrkitError(f"poll_s must be > 0, got {poll_s!r}")
    repository = ModelRepository(label="+".join(plan.adapters), poll_s=poll_s,
                                 allow_model_control=bool(repo_options.get("allow_model_control")))
    directories = list(plan.directories)
    if repo_options.get("model_repository"):
        directories.append(Path(repo_options["model_repository"]))
    try:
        for (pipeline, options), directory in zip(plan.models, artifact_dirs):
            repository.add_artifact(pipeline.name, directory,
                                    version=options.get("version", "1"),
                                    batching=Batching.from_options(options),
                                    required=options.get("required", True))  # fmt: skip
        for directory in directories:
            repository.add_directory(directory, policy=policy)
        return [get_adapter(adapter)(None, repository=repository,
                                     **{k: s.value for k, s in plan.server[adapter].items()})
                for adapter in plan.adapters]  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise IrkitError(str(exc)) from None


def web_targets(pipeline: Any) -> list[Any]:
    """The pipeline's targets compiled by the wasm backend (the browser demo's model)."""
    return [t for t in pipeline.targets if t.backend == "wasm"]


def add_demos(frontends: list[Any], models: list[tuple[Any, Path]]) -> None:
    """Show each (pipeline, wasm artifact) at the HTTP adapters' ``/demo/``."""
    from irkit.runtime.artifact import ArtifactError

    for frontend in frontends:
        if not hasattr(frontend, "add_demo"):
            continue
        for pipeline, directory in models:
            try:
                why = frontend.add_demo(pipeline.name, directory)
                if why is not None:
                    log.warning("/demo/ leaves out pipeline %r: %s (its infer route "
                                "serves it as usual)", pipeline.name, why)
            except ArtifactError as exc:
                raise IrkitError(f"{pipeline.file}: pipeline {pipeline.name!r}: the /demo/ "
                                 f"page: {exc}") from None


def _serve_processes(plan: ServePlan, make_frontends: Any, processes: Any) -> int:
    """``serve http { processes = N }``: N forked servers on one port, each its own models."""
    from irkit.runtime.adapters.http_processes import serve_http_processes

    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise IrkitError(f"serve http: processes must be an integer >= 1, got {processes!r}")
    if plan.adapters != ["http"]:
        raise IrkitError("serve http: processes > 1 runs http on its own (not with grpc); "
                         "run grpc as a separate `irkit serve --adapter grpc`")  # fmt: skip
    from irkit.runtime.adapters.common import resolve_options
    from irkit.runtime.adapters.http import HttpAdapter

    http = plan.server["http"]
    try:  # checked here, before any process starts
        resolve_options(HttpAdapter.network_options, {k: s.value for k, s in http.items()})
    except (ValueError, TypeError) as exc:
        raise IrkitError(f"serve http: {exc}") from None
    host = http["host"].value if "host" in http else "127.0.0.1"
    port = http["port"].value if "port" in http else 8080
    try:
        serve_http_processes(make_frontends, processes, host, port)
    except OSError as exc:
        raise IrkitError(str(exc)) from None
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import irkit.runtime
    from irkit.builder import build_pipeline
    from irkit.plugins import get_registry
    from irkit.runtime.adapters.frontend import serve_frontends
    from irkit.spec import parse_spec

    specs, directories = [], []
    for name in args.spec:
        path = Path(name)
        if path.is_dir():
            directories.append(path)
        elif path.is_file():
            specs.append(parse_spec(path))
        else:
            raise IrkitError(f"{name}: no such spec file or model repository directory")
    wanted = split_names(args.pipeline)
    pipelines = [p for spec in specs for p in spec.pipelines if not wanted or p.name in wanted]
    missing = [n for n in wanted if n not in {p.name for p in pipelines}]
    if missing:
        raise IrkitError(f"no pipeline {', '.join(map(repr, missing))} in the spec files given")
    adapters = _choose_adapters(split_names(args.adapter), pipelines, bool(directories))

    def built(pipeline: Any, target: Any) -> Path:
        directory = Path(pipeline.output) / target.name
        if args.rebuild or not (directory / "manifest.json").exists():
            build_pipeline(pipeline, target=target.name)
        return directory

    def artifact_of(pipeline: Any) -> Path:
        target = pipeline.target(args.target) if (args.target or len(pipeline.targets) == 1) \
            else pipeline.targets[0]
        return built(pipeline, target)

    if args.init_db and set(adapters) <= set(NETWORK_ADAPTERS):
        raise IrkitError(f"--init-db: adapter {', '.join(map(repr, adapters))} keeps no "
                         "database (it is for the postgres adapter)")
    if not set(adapters) <= set(NETWORK_ADAPTERS):
        if len(adapters) != 1 or directories:
            raise IrkitError(f"serve {', '.join(adapters)}: batch, kafka and postgres serve "
                             "one pipeline "
                             "of one spec file on their own; only http and grpc serve several "
                             "models (and model repository directories) together")
        if len(pipelines) != 1:
            names = ", ".join(repr(p.name) for p in pipelines) or "none"
            raise IrkitError(f"serve {adapters[0]} serves one pipeline; choose one with "
                             f"--pipeline (the spec files declare {names})")
        pipeline = pipelines[0]
        serve = pipeline.serve(adapters[0])
        model = irkit.runtime.load(artifact_of(pipeline))
        adapter_cls = get_registry().get("adapters", serve.adapter).obj
        try:
            adapter = adapter_cls(model, **dict(serve.options))
        except (ValueError, TypeError) as exc:  # option errors found by the adapter itself
            raise IrkitError(f"{pipeline.file}:{serve.line}:{serve.column}: serve "
                             f"{serve.adapter}: {exc}") from None
        if args.init_db:
            init_db = getattr(adapter, "init_db", None)
            if init_db is None:
                raise IrkitError(f"--init-db: adapter {serve.adapter!r} keeps no database "
                                 "(it is for the postgres adapter)")
            init_db()
            print(f"serve {serve.adapter}: schema ready", file=sys.stderr)
            return 0
        where = {k: str(v) for k, v in dict(serve.options).items()
                 if k in ("input", "output", "brokers", "input_topic", "output_topic", "dsn",
                          "table") and v}
        log.info("serve %s: model %r (%s artifact for %s, %s) %s", serve.adapter,
                 pipeline.name, model.backend, model.target, model.path,
                 " ".join(f"{k}={v}" for k, v in where.items()))
        started = time.monotonic()
        try:
            summary = adapter.serve()
        except (ValueError, RuntimeError) as exc:  # e.g. no Ray to join, a model failing
            raise IrkitError(f"serve {serve.adapter}: {exc}") from None
        metrics = getattr(adapter, "metrics", None)
        log.info("serve %s: stopped after %.1f s; %s", serve.adapter,
                 time.monotonic() - started,
                 _describe_summary(summary) if summary is not None
                 else served_counts(getattr(metrics, "registry", None)))
        return 0

    overrides = {"host": args.host, "port": args.port, "grpc_port": args.grpc_port,
                 "poll_s": args.poll_s, "version_policy": args.version_policy,
                 "allow_model_control": True if args.allow_model_control else None}
    plan = plan_network(pipelines, adapters, directories, overrides, explicit=bool(wanted))
    if args.access_log and "http" in plan.adapters:
        plan.server["http"]["access_log"] = _Setting(True, "the command line")
    artifacts = [artifact_of(p) for p, _ in plan.models]
    demos = [(p, built(p, t)) for p, _ in plan.models for t in web_targets(p)[:1]]

    def make_frontends() -> list[Any]:
        frontends = build_frontends(plan, artifacts)
        add_demos(frontends, demos)
        return frontends

    processes = plan.server.get("http", {}).get("processes")
    if processes is not None and processes.value != 1:
        return _serve_processes(plan, make_frontends, processes.value)
    frontends = make_frontends()
    served = [p.name for p, _ in plan.models] + [str(d) for d in plan.directories]
    log.info("serve %s: models %s", ",".join(plan.adapters), ", ".join(served))
    started = time.monotonic()
    try:
        serve_frontends(frontends)
    except OSError as exc:  # e.g. a port in use
        raise IrkitError(str(exc)) from None
    log.info("serve %s: stopped after %.1f s; %s", ",".join(plan.adapters),
             time.monotonic() - started, served_counts(frontends[0].repository.registry))
    return 0


def add_serve_parser(sub: Any) -> None:
    """The ``serve`` subcommand's arguments."""
    p = sub.add_parser(
        "serve", help="serve specs' artifacts (batch, http, grpc, kafka or postgres) or a model "
        "repository",
        description="Build the artifacts if needed, then serve them. batch, kafka and postgres "
        "serve one pipeline; http and grpc serve every pipeline of the spec files and every model "
        "repository directory (<model>/<version>/ artifacts) from one process, HTTP and gRPC "
        "on two ports sharing one batcher per model. gRPC runs on irkit's own HTTP/2 "
        "transport (serve grpc { server = \"grpcio\" } picks grpcio's server instead). "
        "HTTP also serves /demo/, a page that "
        "runs the model in the browser, for pipelines with a backend = \"wasm\" target. "
        "SIGINT/SIGTERM finish the in-flight requests, drain every batcher and exit 0.")
    p.add_argument("spec", nargs="+", metavar="SPEC|DIR",
                   help="spec files and/or model repository directories")
    p.add_argument("--pipeline", action="append",
                   help="serve only these pipelines (repeat or comma-separate)")
    p.add_argument("--adapter", action="append",
                   help="batch, http, grpc, kafka or postgres; http,grpc runs both (default: the "
                   "serve "
                   "blocks declared, or http,grpc for directories)")
    p.add_argument("--target", help="which target's artifact to serve (default: the first)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if an artifact exists")
    p.add_argument("--host", help="address to bind (overrides the specs)")
    p.add_argument("--port", type=int, help="HTTP port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    p.add_argument("--poll-s", type=float,
                   help="rescan the model repositories every N seconds and swap in new versions")
    p.add_argument("--version-policy",
                   help="versions served from repositories: latest, latest:N, all, "
                   "specific:1,3 (default latest)")
    p.add_argument("--allow-model-control", action="store_true",
                   help="allow repository load/unload requests (HTTP and gRPC)")
    p.add_argument("--access-log", action="store_true",
                   help="http: log one line per request")
    p.add_argument("--init-db", action="store_true",
                   help="postgres: create the queue's tables, view, trigger and functions "
                   "(idempotent) and exit without serving")
    p.set_defaults(func=cmd_serve)
