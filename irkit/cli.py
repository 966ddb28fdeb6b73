"""The ``irkit`` command. User errors print one line and exit 2; ``--debug`` shows tracebacks.

Exit codes (also in ``irkit --help`` and the README): 0 done; 1 an unexpected failure (a
bug: the traceback is printed); 2 a user or input error (bad arguments, a missing or
unreadable file, an invalid spec or input array, a port in use), one line on stderr;
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from irkit.errors import IrkitError

EXIT_USER_ERROR = 2
EXIT_CODES = """exit codes:
  0    done
  1    unexpected failure (a bug: the traceback is printed; please report it)
  2    user or input error: bad arguments, a missing or unreadable file, an invalid
       spec, model or input array, a port in use (one line on stderr; --debug shows
       the traceback)
  130  interrupted (Ctrl-C) outside a server; servers finish in-flight work and exit 0"""
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``irkit run: error: ... (see irkit run --help)``)
    and exit status 2, like every other user error."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} "
                                   f"(see {self.prog} --help)\n")


def _load_any(source: str, example: str | None = None) -> Any:
    """A model file, or a torch ``pkg.module:factory`` (example inputs from ``example``,
    an .npz whose arrays are the forward arguments in order, or from the factory)."""
    from irkit.api import load_model

    if ":" in source and not Path(source).exists() and not source.endswith(".onnx"):
        options: dict[str, Any] = {}
        if example:
            import numpy as np
            import torch

            with np.load(example, allow_pickle=False) as data:
                options["example_inputs"] = tuple(torch.from_numpy(data[k]) for k in data.files)
        return load_model(source, frontend="torch", **options)
    return load_model(source)


def summarize(graph: Any) -> str:
    """Op histogram, parameter count/bytes and the signature of a graph."""
    from irkit.ir import format_type

    ops = Counter(node.qualified_op for node in graph.walk())
    weights = graph.weights()
    params = sum(int(a.size) for a in weights.values())
    nbytes = sum(int(a.nbytes) for a in weights.values())
    lines = [f"graph {graph.name}: {sum(ops.values())} nodes, {len(weights)} constants, "
             f"{params:,} parameters ({nbytes / 1e6:.3f} MB)"]
    for v in graph.inputs:
        lines.append(f"  input  {v.name}: {format_type(v.type)}")
    for v in graph.outputs:
        lines.append(f"  output {v.name}: {format_type(v.type)}")
    lines.append("  ops: " + ", ".join(f"{op} x{n}" for op, n in ops.most_common()))
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    if Path(args.model).is_dir():
        print(describe_artifact(Path(args.model)))
        if not args.summary_only:
            for name, text in generated_sources(Path(args.model)):
                print(f"\n# ---- {name} ----")
                print(text, end="" if text.endswith("\n") else "\n")
        return 0
    if args.dot and not Path(args.dot).resolve().parent.is_dir():
        raise IrkitError(f"--dot {args.dot}: no such directory "
                         f"{Path(args.dot).resolve().parent}")
    graph = _load_any(args.model, args.example)
    if not args.summary_only:
        print(graph.to_text())
    print(summarize(graph))
    if args.dot:
        try:
            Path(args.dot).write_text(graph.to_dot())
        except OSError as exc:
            raise IrkitError(f"--dot {args.dot}: cannot write: {exc.strerror}") from None
        print(f"wrote {args.dot}", file=sys.stderr)
    return 0


def describe_artifact(path: Path) -> str:
    """What an artifact directory holds: signature, backend, and for kernel programs each
    compiled variant (target, CPU, vector width, int8 kernel, required features) with
    whether this machine can run it and which one it would load."""
    import irkit.runtime
    from irkit.runtime.program import ProgramEntry, variants_summary

    manifest = irkit.runtime.verify(path)
    lines = [f"artifact {path}: model {manifest.name!r}, backend {manifest.backend}, "
             f"target {manifest.target}, {manifest.created_by}"]
    for spec in manifest.inputs:
        lines.append(f"  input  {spec.name}: {spec.dtype.name}{list(spec.shape)}")
    for spec in manifest.outputs:
        lines.append(f"  output {spec.name}: {spec.dtype.name}{list(spec.shape)}")
    size = sum((path / name).stat().st_size for name in manifest.files)
    lines.append(f"  files: {len(manifest.files)}, {size / 1024:.0f} KiB")
    if "variants" in manifest.entry:
        entry = ProgramEntry.from_json(manifest.entry, f"{path}/manifest.json: entry")
        machine = machine_for("wasm" if manifest.backend == "wasm" else "cpu")
        chosen = next((v.name for v in entry.variants if not machine.missing(v.requires)), None)
        what = "this engine" if machine.arch == "wasm32" else "this machine"
        lines.append(f"  arches ({len(entry.variants)}), most capable first; {what} "
                     f"({machine.cpu}) runs: {chosen or 'none of them'}")
        for row in variants_summary(entry):
            variant = next(v for v in entry.variants if v.name == row["arch"])
            missing = machine.missing(variant.requires)
            status = "runs here" if not missing else f"not here: lacks {', '.join(missing)}"
            lines.append(f"    {row['arch']:<16} cpu {row['cpu']:<12} {row['vector_bits']}-bit "
                         f"vectors, int8 {'/'.join(row['int8_dot']) or '-'}; {status}")
            lines.append(f"      requires: {' '.join(row['requires']) or '-'}")
            lines.append(f"      files: {' '.join(row['files'])}")
    for item in manifest.report:
        if isinstance(item, dict) and "pipeline" in item:
            lines.append(f"  pass {item['pipeline']}: ops {item.get('ops_before')}->"
                         f"{item.get('ops_after')}, rel err {item.get('rel_error')}")
        elif isinstance(item, dict) and "note" in item:
            lines.append(f"  note: {item['note']}")
    return "\n".join(lines)


def machine_for(family: str) -> Any:
    """What runs a target family's code here: the CPU, or for wasm the wasmtime engine
    (a Host with arch wasm32 and the features it validates)."""
    from irkit.runtime.hostcpu import Host, host

    if family != "wasm":
        return host()
    try:
        from irkit.runtime.backends.wasm import engine_host

        return engine_host()
    except (ImportError, IrkitError):
        return Host("wasm32", frozenset(), "no engine: pip install 'irkit[wasm]'")


def generated_sources(path: Path) -> list[tuple[str, str]]:
    """The generated Python source files of a numba or cuda artifact (checked against
    the manifest), first variant first."""
    import irkit.runtime
    from irkit.runtime.artifact import read_verified
    from irkit.runtime.program import ProgramEntry

    manifest = irkit.runtime.verify(path)
    if manifest.backend not in ("numba", "cuda") or "variants" not in manifest.entry:
        return []
    entry = ProgramEntry.from_json(manifest.entry, f"{path}/manifest.json: entry")
    names = [s.program.code for v in entry.variants for s in v.segments
             if s.program is not None]
    return [(name, read_verified(path, manifest, name).decode("utf-8"))
            for name in dict.fromkeys(names)]


def cmd_targets(args: argparse.Namespace) -> int:
    from irkit.target import PRESET_NAMES, get_target

    machine = machine_for("cpu")
    engine = machine_for("wasm")
    print(f"this machine: {machine.arch}, cpu {machine.cpu}; wasm engine: {engine.cpu}")
    for name in PRESET_NAMES:
        target = get_target(name)
        missing = (engine if target.family == "wasm" else machine).missing(target.requirements())
        runs = "runs here" if not missing else f"not here ({len(missing)} missing)"
        vector = f"{target.vector_bits}-bit SIMD" if target.vector_bits else "no SIMD"
        print(f"  {name:<16} {target.family:<5} {target.triple:<26} cpu {target.cpu:<11} "
              f"{vector:<13} int8 {target.int8_dot():<9} {runs}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from irkit.plugins import KINDS, get_registry

    registry = get_registry()
    for kind in KINDS:
        print(f"{kind}:")
        for name, entry in sorted(registry.of(kind).items()):
            target = entry.target if isinstance(entry.target, str) else repr(entry.target)
            print(f"  {name:<14} plugin {entry.plugin:<12} dist {entry.dist:<14} {target}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from irkit.api import compile as compile_graph
    from irkit.api import optimize
    from irkit.builder import build_spec
    from irkit.passes.manager import PassError

    arch = _arch_list(args.arch)
    if args.source.endswith(".irk"):
        if args.passes or args.output:
            raise IrkitError("--passes and -o apply to a model; a spec declares its own "
                             "passes and output directory")
        for target, path in build_spec(Path(args.source), args.pipeline,
                                       target=args.target, arch=arch).items():
            print(f"{target}: {path}")
        return 0
    graph = _load_any(args.source, args.example)
    if Path(args.source).is_file():
        graph.name = Path(args.source).stem  # exporters' names ("main_graph") say nothing
    if args.passes:
        # the passes that depend on the CPU (quantize's weight range) read the targets
        # compiled for, not the build host
        try:
            graph = optimize(graph, args.passes, target=arch or ["native"])
        except PassError as exc:
            if "needs calibration data" not in str(exc):
                raise
            raise IrkitError(f"{exc}: `irkit compile --passes` has no calibration data; run "
                             "`irkit optimize MODEL --passes ... --calibration DATA.npz -o "
                             "q.onnx` and compile q.onnx, or use a spec (quantize { calibrate "
                             "= npz(...) })") from None
    target = args.target or ("llvm" if arch else "ort")
    started = time.perf_counter()
    artifact = compile_graph(graph, target=target, **({"arch": arch} if arch else {}))
    seconds = time.perf_counter() - started
    out = Path(args.output or Path("build") / f"{Path(args.source).stem}-{target}")
    print(artifact.save(out))
    print(compile_summary(artifact, seconds), file=sys.stderr)
    return 0


def compile_summary(artifact: Any, seconds: float) -> str:
    """One line for people: what was compiled, how long it took and how big it is (the
    artifact's path alone goes to stdout, for scripts)."""
    entry = artifact.entry or {}
    parts = [f"compiled {artifact.name} with {artifact.backend} for {artifact.target} in "
             f"{seconds:.2f} s"]
    phases = entry.get("compile_seconds", {})
    if "lower" in phases and "codegen" in phases:
        parts[0] += f" (lowering {phases['lower']:.2f} s, code generation " \
                    f"{phases['codegen']:.2f} s)"
    if "variants" in entry:
        from irkit.runtime.program import programs

        first = programs(entry)
        parts.append(f"{sum(len(p.kernels) for p in first)} kernels")
        plan = first[0].info.get("memory_plan", {}) if first else {}
        if "peak_bytes_at_N1" in plan:
            parts.append(f"workspace {plan['peak_bytes_at_N1'] / 1024:.0f} KiB at batch 1, "
                         f"{plan['peak_bytes_at_N64'] / 1024:.0f} KiB at batch 64")
    size = sum(len(data) for data in artifact.files.values())
    parts.insert(1, f"{size / 1024:.0f} KiB of files")
    return "; ".join(parts)


def _arch_list(text: str | None) -> list[str] | None:
    """``--arch x86-64-v3,x86-64-v4`` as a list (None when not given)."""
    if not text:
        return None
    return [a.strip() for a in text.split(",") if a.strip()]


def cmd_build(args: argparse.Namespace) -> int:
    from irkit.builder import build_pipeline
    from irkit.serving import split_names
    from irkit.spec import parse_spec

    spec = parse_spec(Path(args.spec))
    wanted = split_names(args.pipeline)
    pipelines = [spec.pipeline(name) for name in wanted] if wanted else list(spec.pipelines)
    if not pipelines:
        raise IrkitError(f"{args.spec}: declares no pipeline")
    for pipeline in pipelines:
        for target, path in build_pipeline(pipeline).items():
            shown = _relative(path)
            print(f"{pipeline.name}/{target}: {shown}" if len(pipelines) > 1
                  else f"{target}: {shown}")
    return 0


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def _read_input(spec: str) -> tuple[str, Any]:
    import numpy as np

    if "=" not in spec:
        raise IrkitError(f"--input {spec!r}: expected NAME=FILE.npy or NAME=FILE.npz:KEY")
    name, _, file = spec.partition("=")
    key = None
    if ".npz:" in file:
        file, _, key = file.partition(".npz:")
        file += ".npz"
    path = Path(file)
    if not path.is_file():
        raise IrkitError(f"--input {name}: no such file {file}")
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic[:6] != b"\x93NUMPY" and magic[:2] != b"PK":
        what = "an empty file" if not magic else "not a NumPy .npy or .npz file"
        raise IrkitError(f"--input {name}: {file} is {what} (save arrays with numpy.save "
                         "or numpy.savez)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                key = key or (data.files[0] if len(data.files) == 1 else name)
                if key not in data.files:
                    raise IrkitError(f"--input {name}: {file} has no array {key!r} "
                                     f"(has: {', '.join(data.files)})")
                return name, data[key]
        return name, np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        reason = str(exc)
        if "allow_pickle" in reason:
            reason = "it holds Python objects (pickled), not a numeric array"
        raise IrkitError(f"--input {name}: cannot read {file}: {reason or 'truncated'}") \
            from None


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    import irkit.runtime

    names = [spec.partition("=")[0] for spec in args.input]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise IrkitError(f"--input {', '.join(twice)} given more than once")
    feeds = dict(_read_input(s) for s in args.input)
    device = {} if args.device is None else {"device": args.device}
    if device and irkit.runtime.verify(args.artifact).backend != "cuda":
        raise IrkitError(f"--device applies to cuda artifacts; {args.artifact} is "
                         f"{irkit.runtime.verify(args.artifact).backend}")
    model = irkit.runtime.load(args.artifact, trusted_keys=args.trusted_key or None,
                               reject_nonfinite=not args.allow_nonfinite, **device)
    try:
        outputs = model.run(feeds)
    except (ValueError, TypeError) as exc:
        raise IrkitError(str(exc)) from None
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}", file=sys.stderr)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
        if not args.output:
            print(np.array2string(value, threshold=40, precision=5))
    return 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from irkit.conformance import run_conformance
    from irkit.plugins import get_registry

    backends = ["roundtrip", *sorted(get_registry().of("backends"))]
    if args.backend not in backends:
        raise IrkitError(f"--backend {args.backend!r}: no such backend (choose from: "
                         f"{', '.join(backends)})")
    for flag in ("jobs", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise IrkitError(f"--{flag} must be >= 0")
    options = {"arch": args.arch} if args.arch else None
    report = run_conformance(args.backend, pattern=args.filter, jobs=args.jobs,
                             timeout=args.timeout, limit=args.limit, options=options)
    print(report.format(show_ops=not args.no_ops, show_failures=not args.no_failures))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _eval_arrays(path: str, graph: Any, key: str | None, labels_key: str | None
                 ) -> tuple[dict[str, Any], Any]:
    """Inputs and labels from an .npz: ``key`` names the array for a one-input model;
    otherwise arrays named like the inputs, or the one whose rank fits. Labels: the
    array ``labels_key``, else one called ``y`` or ``labels``."""
    import numpy as np

    from irkit.passes.manager import load_eval_npz

    if not Path(path).is_file():
        raise IrkitError(f"--eval {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise IrkitError(f"--eval {path}: not a readable .npz file ({exc})") from None
    if key is not None:
        if key not in arrays:
            raise IrkitError(f"--eval-input {key!r}: {path} has no such array (has: "
                             f"{', '.join(arrays)})")
        if len(graph.inputs) != 1:
            raise IrkitError("--eval-input names one array; the model has several inputs")
        feeds = {graph.inputs[0].name: arrays[key]}
        labels = arrays.get(labels_key or "y", arrays.get("labels"))
    else:
        feeds, labels = load_eval_npz(path, graph)
    if labels_key is not None:
        if labels_key not in arrays:
            raise IrkitError(f"--labels {labels_key!r}: {path} has no such array")
        labels = arrays[labels_key]
    return feeds, labels


def cmd_optimize(args: argparse.Namespace) -> int:
    from irkit.api import optimize
    from irkit.passes.manager import format_report_table

    graph = _load_any(args.model)
    eval_data: dict[str, Any] | None = None
    labels = calibration = None
    if args.eval:
        eval_data, labels = _eval_arrays(args.eval, graph, args.eval_input, args.labels)
    train_data: dict[str, Any] | None = None
    train_labels = None
    if args.train:
        train_data, train_labels = _eval_arrays(args.train, graph, args.eval_input, args.labels)
    # Static quantization calibrates on --calibration, else the first training inputs,
    # else the first eval inputs (what a spec build does).
    calib: dict[str, Any] | None = train_data if train_data is not None else eval_data
    if args.calibration:
        calib, _ = _eval_arrays(args.calibration, graph, args.eval_input, None)
    if calib is not None:
        count = len(next(iter(calib.values())))
        calibration = [{k: v[i:i + 32] for k, v in calib.items()}
                       for i in range(0, min(count, 256), 32)]
    arch = _arch_list(args.arch) or ["native"]
    if args.output and not Path(args.output).resolve().parent.is_dir():
        # say so before the passes run (a search can take minutes), as --dot does
        raise IrkitError(f"-o {args.output}: no such directory "
                         f"{Path(args.output).resolve().parent}")
    optimized = optimize(graph, args.passes, eval_data=eval_data, labels=labels, target=arch,
                         measure=args.measure, calibration=calibration,
                         train_data=train_data, train_labels=train_labels)
    print(format_report_table(optimized.history))
    _write_search_outputs(optimized.history, args.plot, args.trials_json)
    for report in optimized.history:
        if not report.modified and "skipped" in report.details:
            print(f"{report.pipeline}: changed nothing: {report.details['skipped']}")
        for key in ("nodes", "timed", "weight_range", "narrowed"):
            if key in report.details:
                print(f"{report.pipeline}: {key}: {report.details[key]}")
    if args.output:
        import onnx

        from irkit.api import to_onnx

        onnx.save(to_onnx(optimized), args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _write_search_outputs(history: list[Any], plot: str | None, trials: str | None) -> None:
    """--plot / --trials-json: the trials of the pipeline's search pass."""
    if not plot and not trials:
        return
    reports = [r.details for r in history if "trials" in r.details and "chosen" in r.details]
    if not reports:
        raise IrkitError("--plot and --trials-json draw a search's trials; add a search pass, "
                         "e.g. --passes 'search{budget=1.0}'")
    from irkit.compress.search import write_trials_json

    if trials:
        print(f"wrote {write_trials_json(reports[-1], trials)}", file=sys.stderr)
    if plot:
        from irkit.compress.pareto import plot_pareto

        print(f"wrote {plot_pareto(reports[-1], plot)}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from irkit.serving import cmd_serve as serve

    return serve(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from irkit.bench import run_bench
    from irkit.plugins import get_registry

    against = tuple(a.strip() for a in args.against.split(",") if a.strip())
    unknown = [a for a in against if a not in ("onnxruntime", "ort", "torch")]
    if unknown or not against:
        raise IrkitError(f"--against {args.against!r}: choose from onnxruntime, torch")
    if args.target not in get_registry().of("backends"):
        raise IrkitError(f"--target {args.target!r}: no such backend (choose from: "
                         f"{', '.join(sorted(get_registry().of('backends')))})")
    if args.repeats < 1:
        raise IrkitError("--repeats must be >= 1")
    run_bench(
        args.model,
        against=against,
        batches=_positive_ints(args.batch, "--batch"),
        threads=_positive_ints(args.threads, "--threads"),
        repeats=args.repeats,
        target=args.target,
        arches=tuple(_arch_list(args.arch) or ["native"]),
        clock=args.clock,
    )
    return 0


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise IrkitError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise IrkitError(f"{flag} {text!r}: expected integers >= 1")
    return values


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """``--debug`` and the logging options, taken before or after the subcommand (after
    it they must not reset what was given before it: hence SUPPRESS there)."""
    common = argparse.ArgumentParser(add_help=False)
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors",
                        **default)
    common.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower,
                        help="what servers and builds log on stderr (default info)",
                        **default)
    common.add_argument("--log-format", choices=("text", "json"),
                        help="log lines as text or one JSON object per line (default text)",
                        **default)
    return common


def configure_logging(level: str, fmt: str) -> None:
    """stderr logging for irkit (and the servers it runs): ``text`` lines with a time,
    or ``json`` objects with ts, level, logger and msg."""
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_irkit", False)]:
        root.removeHandler(old)
    handler._irkit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (main() may run in a
    process that swaps it, as pytest does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="irkit",
        description="Take a trained model (ONNX or PyTorch) to a fast, served artifact.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(suppress=False)],
    )
    parser.set_defaults(log_level="info", log_format="text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options(suppress=True)
    add_parser = sub.add_parser

    def add_with_common(*args: Any, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("parents", [common])
        kwargs.setdefault("epilog", EXIT_CODES)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return add_parser(*args, **kwargs)

    sub.add_parser = add_with_common  # type: ignore[method-assign,assignment]

    p = sub.add_parser("inspect", help="print a model's IR and a summary, or what an "
                       "artifact holds",
                       description="Print the IR text of MODEL (an .onnx file or a torch "
                       "'pkg.module:factory') with an op histogram, parameter count and the "
                       "signature. Given an artifact directory, print its signature and, "
                       "for kernel backends, every compiled arch with the CPU features it "
                       "needs and whether this machine can run it; for numba and cuda "
                       "artifacts also the generated Python source (--summary-only: "
                       "not).")
    p.add_argument("model", help="model file, torch factory, or artifact directory")
    p.add_argument("--dot", metavar="FILE", help="also write a Graphviz drawing to FILE")
    p.add_argument("--summary-only", action="store_true",
                   help="skip the IR text (or an artifact's generated source)")
    p.add_argument("--example", metavar="DATA.npz",
                   help="example inputs for a torch factory (arrays in forward's order)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compile", help="compile a model or a spec to an artifact",
                       description="Compile SOURCE (a .irk spec or a model) into an artifact "
                       "directory.")
    p.add_argument("source", help="spec file (.irk) or model (.onnx / pkg.module:factory)")
    p.add_argument("--pipeline", help="pipeline name when the spec has several")
    p.add_argument("--target", help="backend (model) or target name (spec); default ort, "
                   "or llvm when --arch is given")
    p.add_argument("--arch", help="CPU(s) to compile for, comma-separated: native (default), "
                   "x86-64-v3 (AVX2, runs on most x86 servers), x86-64-v4 (AVX-512), ...; "
                   "several give one artifact that runs the best the host supports "
                   "(see `irkit targets`)")
    p.add_argument("--passes", help="pass pipeline, e.g. 'fuse,quantize{mode=dynamic}'")
    p.add_argument("-o", "--output", help="artifact directory (model only)")
    p.add_argument("--example", metavar="DATA.npz",
                   help="example inputs for a torch factory (arrays in forward's order)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("build", help="build everything a spec declares",
                       description="Load, optimize and compile every target of every "
                       "pipeline of a spec (or of those named by --pipeline); artifacts go "
                       "to each pipeline's output directory.")
    p.add_argument("spec")
    p.add_argument("--pipeline", action="append",
                   help="build only these pipelines (repeat or comma-separate; default all)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="run an artifact on .npy/.npz inputs",
                       description="Run a compiled artifact. Inputs: NAME=FILE.npy or "
                       "NAME=FILE.npz[:KEY].")
    p.add_argument("artifact")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE",
                   help="an input array (repeat per input)")
    p.add_argument("--output", "-o", metavar="OUT.npz", help="write outputs to an .npz file")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUBLIC",
                   help="run only if the artifact is signed by this Ed25519 public key "
                   "(PEM file or hex; repeat for several; see irkit sign)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="pass NaN and inf inputs to the model (default: refuse them, "
                   "naming the input and the first such index)")
    p.add_argument("--device", choices=("gpu", "simulator"),
                   help="cuda artifacts: run on the GPU (default) or in numba-cuda's CUDA "
                   "simulator (no GPU needed; every thread in Python, small inputs only)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("targets", help="list the targets code can be compiled for",
                       description="The target presets (--arch / arch = ...): triple, CPU, "
                       "vector width, int8 dot-product instruction, and whether this machine "
                       "can run code compiled for each.")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("plugins", help="list registered frontends, passes, backends, adapters")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("conformance", help="run the ONNX backend node cases",
                       description="Regenerate ONNX's node test cases (cached) and run them "
                       "through the IR round trip or a backend; prints counts, a per-op "
                       "table and every case that did not pass.")
    p.add_argument("--backend", default="roundtrip",
                   help="'roundtrip' (import/print/parse/export/evaluate) or a backend name")
    p.add_argument("--filter", help="regular expression on case names")
    p.add_argument("--arch", help="target(s) a kernel backend compiles for (default: the "
                   "backend's; e.g. wasm32-simd to build only the SIMD wasm module)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: cores)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    p.add_argument("--limit", type=int, help="run only the first N cases")
    p.add_argument("--no-ops", action="store_true", help="omit the per-op table")
    p.add_argument("--no-failures", action="store_true", help="omit the failure list")
    p.set_defaults(func=cmd_conformance)

    p = sub.add_parser("optimize", help="run passes on a model and print the report table",
                       description="Run a pass pipeline and report ops, parameters, bytes "
                       "and (with --eval) the output error and\naccuracy per pass.\n\n"
                       "'distill{width=0.5}' trains a narrower student on --train data (soft "
                       "teacher outputs\nmixed with its labels).\n"
                       "'search{budget=1.0}' tries candidate pipelines (quantize, prune, "
                       "lowrank, distill, fuse),\nmeasures each one's accuracy on --eval and "
                       "its speed on --arch, and keeps the fastest that\nloses at most "
                       "budget accuracy points (max_error=... for models without labels); "
                       "it prints\na table as it goes and the choice as a spec passes block.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  irkit optimize specs/models/digits_cnn.onnx "
                       "--passes 'search{budget=1.0}' \\\n    --eval "
                       "specs/data/digits_eval.npz --train specs/data/digits_train.npz "
                       "--plot pareto.svg\n\nsearch options: budget (points), max_error, "
                       "max_trials (12), max_minutes (5), space (pipelines), cache (dir), "
                       "batch (64).\ndistill options: width (0.5: MLP/CNN channels; a "
                       "transformer's feed-forward width and attention heads), depth, "
                       "student "
                       "(\"pkg.mod:factory\"), temperature (4), alpha (0.7; 0 = labels "
                       "alone), epochs (40), lr, patience, val_fraction, seed.")
    p.add_argument("model")
    p.add_argument("--passes", required=True, help="e.g. 'fuse,prune{sparsity=0.5}', "
                   "'distill{width=0.5},fuse' or 'search{budget=1.0}'")
    p.add_argument("--train", metavar="DATA.npz", help="training inputs (and labels y) for "
                   "distill; without labels the teacher labels them")
    p.add_argument("--plot", metavar="PARETO.svg", help="draw the search's trials: accuracy "
                   "vs speedup, the Pareto front, the budget and the choice (matplotlib)")
    p.add_argument("--trials-json", metavar="TRIALS.json", help="write every search trial "
                   "as JSON")
    p.add_argument("--eval", metavar="DATA.npz", help="evaluation inputs (and labels)")
    p.add_argument("--eval-input", help="array in DATA.npz that feeds the model input "
                   "(default: arrays named like the inputs, else the one whose rank fits)")
    p.add_argument("--labels", help="array in DATA.npz holding class labels (default: y or "
                   "labels when present)")
    p.add_argument("--calibration", metavar="DATA.npz",
                   help="calibration inputs for static quantization (default: the first "
                   "256 --train inputs, else eval inputs)")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="write the optimized model")
    p.add_argument("--arch", help="target(s) the model will be compiled for (default "
                   "native); quantize picks weight ranges for their int8 instructions")
    p.add_argument("--measure", action="store_true",
                   help="time both forms of each node a pass may change on the targets and "
                   "keep the faster one (what spec builds do)")
    p.set_defaults(func=cmd_optimize)

    from irkit.serving import add_serve_parser

    add_serve_parser(sub)

    p = sub.add_parser("bench", help="benchmark irkit against ONNX Runtime and torch",
                       description="Median latency of irkit vs anchors over alternating "
                       "rounds, with irkit/anchor ratios; plus a 1024^3 matmul GFLOP/s "
                       "line beside numpy's.")
    p.add_argument("model", help="an .onnx file, an .irk spec (its first pipeline's model) "
                   "or a built-in: mlp, gemm512, resnet, mobilenet, transformer, minilm")
    p.add_argument("--against", default="onnxruntime",
                   help="comma-separated anchors: onnxruntime (ORT's own run), torch "
                   "(eager PyTorch: the model's torch source, or its ops replayed with "
                   "torch.nn.functional); default onnxruntime")
    p.add_argument("--batch", default="1,64", help="batch sizes (default 1,64)")
    p.add_argument("--threads", default="1", help="thread counts, each for both sides "
                   "(default 1)")
    p.add_argument("--repeats", type=int, default=50, help="alternating rounds (default 50)")
    p.add_argument("--target", default="llvm", help="irkit target to compile for "
                   "(default llvm)")
    p.add_argument("--arch", default="native", help="comma-separated CPU targets, one row "
                   "each (e.g. native,x86-64-v3; default native)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: the process's CPU time (all threads), "
                   "steadier on a shared machine (default wall)")
    p.set_defaults(func=cmd_bench)
    from irkit.cli_sign import add_parsers

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    if os.getcwd() not in sys.path:  # torch factories "pkg.module:fn" import from here too,
        sys.path.append(os.getcwd())  # as with `python -m` (after installed packages)
    configure_logging("debug" if args.debug and args.log_level == "info" else args.log_level,
                      args.log_format)
    try:
        return int(args.func(args) or 0)
    except IrkitError as exc:
        if args.debug:
            raise
        print(f"irkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `irkit ... | head`: the reader left; nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the machine said no: a file, a directory, a port
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"irkit: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
