"""Run node cases through a driver and classify each outcome.

Drivers: ``roundtrip`` (import → print → parse → export → reference evaluation) and
every registered backend (import → ``irkit.compile`` → save → ``irkit.runtime.load`` → run).
"""

from __future__ import annotations

import enum
import gc
import multiprocessing
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from irkit.conformance.cases import Case, load_cases
from irkit.errors import EvaluationError, UnsupportedOpsError


class Outcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"  # wrong result, or irkit raised
    UNSUPPORTED = "unsupported"  # an op irkit (or the backend) declares it cannot handle
    EVALUATOR = "evaluator-error"  # the engines cannot run it, or are wrong on the original too
    RANDOM = "nondeterministic"  # random ops: shapes and dtypes match, values cannot
    TIMEOUT = "timeout"


@dataclass
class CaseResult:
    name: str
    outcome: Outcome
    ops: list[str]
    reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        return d


class CaseTimeout(Exception):
    pass


Runner = Callable[[list[Any]], list[Any]]


RANDOM_OPS = {"Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform",
              "RandomUniformLike", "Multinomial"}
REFERENCE_ORDER = ("reference", "ort")
# Engines whose random ops may give other values on a second run (a generator that
# advances per run); irkit's kernel backends repeat those with a seed attribute (unseeded
# ones draw fresh values per call, as ONNX Runtime's do: irkit.lower.random_ops).
NOT_REPRODUCIBLE = ("roundtrip", "ort")


class EvaluatorWrong(Exception):
    """The engines give the same wrong answer on the original, untouched model."""


def _export_check(model: onnx.ModelProto) -> bool:
    """Check exports with the full ONNX checker, unless the original fails it already."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:  # the original is invalid in ways irkit must not be blamed for
        return False
    return True


def evaluate_original(model: onnx.ModelProto, inputs: list[Any]) -> list[Any]:
    from irkit.interop.reference import _RUNNERS

    names = [vi.name for vi in model.graph.input]
    feeds = dict(zip(names, inputs))
    out_names = [vi.name for vi in model.graph.output]
    for engine in REFERENCE_ORDER:
        try:
            return list(_RUNNERS[engine](model, feeds, out_names))
        except Exception:  # try the next engine, as irkit.evaluate does
            continue
    raise EvaluationError("no engine runs the original model")


def _roundtrip(model: onnx.ModelProto, workdir: Path) -> Runner:
    from irkit.interop.onnx_import import load_onnx
    from irkit.interop.reference import evaluate
    from irkit.ir import parse_graph, print_graph

    check = _export_check(model)

    graph = load_onnx(model)
    text = print_graph(graph)
    reparsed = parse_graph(text, graph.weights())
    again = print_graph(reparsed)
    if again != text:
        raise AssertionError("IR text does not round-trip exactly")
    reparsed.verify()
    names = [v.name for v in reparsed.inputs]
    out_names = [v.name for v in reparsed.outputs]

    def run(inputs: list[Any]) -> list[Any]:
        feeds = dict(zip(names, inputs))
        outs = evaluate(reparsed, feeds, engine=REFERENCE_ORDER, check=check)
        return [outs[n] for n in out_names]

    return run


def _backend(name: str, options: Mapping[str, Any] | None = None
             ) -> Callable[[onnx.ModelProto, Path], Runner]:
    def prepare(model: onnx.ModelProto, workdir: Path) -> Runner:
        import irkit.runtime
        from irkit.api import compile as compile_graph
        from irkit.interop.onnx_import import load_onnx

        graph = load_onnx(model)
        artifact = compile_graph(graph, target=name, **dict(options or {}))
        path = artifact.save(workdir / "artifact")
        compiled = irkit.runtime.load(path, reject_nonfinite=False)  # cases hold NaN/inf
        names = [spec.name for spec in compiled.inputs]
        out_names = [spec.name for spec in compiled.outputs]

        def run(inputs: list[Any]) -> list[Any]:
            outs = compiled.run(dict(zip(names, inputs)))
            return [outs[n] for n in out_names]

        return run

    return prepare


def driver_for(backend: str, options: Mapping[str, Any] | None = None
               ) -> Callable[[onnx.ModelProto, Path], Runner]:
    """How cases run: the IR round trip, or ``irkit.compile(target=backend, **options)``."""
    return _roundtrip if backend == "roundtrip" else _backend(backend, options)


def compare(expected: Any, got: Any, rtol: float, atol: float, where: str = "output") -> None:
    """Raise AssertionError unless ``got`` matches ``expected`` like ONNX's own runner."""
    if isinstance(expected, list | tuple):
        if not isinstance(got, list | tuple) or len(got) != len(expected):
            raise AssertionError(f"{where}: expected a sequence of {len(expected)}, got "
                                 f"{type(got).__name__}")
        for i, (e, g) in enumerate(zip(expected, got)):
            compare(e, g, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        if got is not None:
            raise AssertionError(f"{where}: expected None (empty optional)")
        return
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{where}: shape {got.shape} != expected {expected.shape}")
    if expected.dtype == object or got.dtype == object:
        if not np.array_equal(got.astype(object), expected.astype(object)):
            raise AssertionError(f"{where}: string values differ")
        return
    if got.dtype != expected.dtype:
        raise AssertionError(f"{where}: dtype {got.dtype} != expected {expected.dtype}")
    if expected.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)
    if not expected.dtype.isnative or expected.dtype.kind not in "biufc":
        got, expected = got.astype(np.float32), expected.astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)


def compare_structure(expected: Any, got: Any, where: str) -> None:
    if isinstance(expected, list | tuple):
        for i, (e, g) in enumerate(zip(expected, got)):
            compare_structure(e, g, f"{where}[{i}]")
        return
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape or got.dtype != expected.dtype:
        raise AssertionError(f"{where}: {got.dtype}{got.shape} != expected "
                             f"{expected.dtype}{expected.shape}")


def check_random(expected: Any, got: Any, again: Any, where: str) -> str:
    """What a random-op case can check (values cannot match another generator): shapes
    and dtypes; outputs whose expected values are all 0 or 1 (Bernoulli) hold only 0
    and 1; a second run (``again``, None where the engine does not promise it) gives the
    same values. Raises AssertionError; returns the outcome's reason."""
    compare_structure(expected, got, where)
    for e, g in zip(_flat(expected), _flat(got)):
        e, g = np.asarray(e), np.asarray(g)
        zero_one = e.dtype.kind in "biuf" and e.size and np.isin(e, (0, 1)).all()
        if zero_one and not np.isin(g, (0, 1)).all():
            raise AssertionError(f"{where}: values other than 0 and 1 where the "
                                 f"expected output is 0/1 (Bernoulli)")
    reason = "random op: shapes, dtypes and 0/1 domains match"
    if again is None:
        return reason
    for g, h in zip(_flat(got), _flat(again)):
        if not np.array_equal(np.asarray(g), np.asarray(h), equal_nan=True):
            raise AssertionError(f"{where}: a second run gave other values (irkit's random "
                                 "ops are reproducible)")
    return reason + "; a second run repeats the values"


def _all_seeded(model: onnx.ModelProto) -> bool:
    """Whether every random node of ``model`` has a ``seed`` (repeats its values)."""
    return all(any(a.name == "seed" for a in node.attribute)
               for node in model.graph.node if node.op_type in RANDOM_OPS)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flat(v)]
    return [value]


def _blame_evaluator(model: onnx.ModelProto, inputs: list[Any], expected: Any, got: Any,
                     case: Case, mismatch: AssertionError) -> None:
    """Raise EvaluatorWrong when the engines compute the same wrong answer on the original
    model: the round trip preserved the semantics and the evaluator is at fault."""
    try:
        original = evaluate_original(model, inputs)
        compare(original, got, case.rtol, case.atol)
    except (AssertionError, EvaluationError):
        return
    try:
        compare(expected, original, case.rtol, case.atol)
    except AssertionError:
        raise EvaluatorWrong(
            "the evaluator gives the same wrong result on the original model "
            f"({' '.join(str(mismatch).split())[:200]})"
        ) from None


def _ops_of(model: onnx.ModelProto) -> list[str]:
    ops = {f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
           for n in model.graph.node}
    return sorted(ops) or ["(none)"]


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def run_case(case: Case, backend: str, timeout: float = 60.0,
             options: Mapping[str, Any] | None = None) -> CaseResult:
    start = time.perf_counter()
    model = case.load_model()
    ops = _ops_of(model)

    def result(outcome: Outcome, reason: str = "") -> CaseResult:
        return CaseResult(case.name, outcome, ops, reason[:400],
                          round(time.perf_counter() - start, 3))

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with tempfile.TemporaryDirectory(prefix="irkit-conf-") as tmp:
            runner = driver_for(backend, options)(model, Path(tmp))
            for k, (inputs, expected) in enumerate(case.data_sets(model)):
                got = runner(inputs)
                if RANDOM_OPS & set(ops):
                    again = runner(inputs) if backend not in NOT_REPRODUCIBLE and \
                        _all_seeded(model) else None
                    return result(Outcome.RANDOM, check_random(expected, got, again,
                                                               f"data set {k}"))
                try:
                    compare(expected, got, case.rtol, case.atol, f"data set {k}")
                except AssertionError as mismatch:
                    _blame_evaluator(model, inputs, expected, got, case, mismatch)
                    raise
        return result(Outcome.PASSED)
    except EvaluatorWrong as exc:
        return result(Outcome.EVALUATOR, str(exc))
    except CaseTimeout:
        return result(Outcome.TIMEOUT, f"exceeded {timeout:.0f} s")
    except UnsupportedOpsError as exc:
        return result(Outcome.UNSUPPORTED, str(exc))
    except EvaluationError as exc:
        return result(Outcome.EVALUATOR, str(exc))
    except AssertionError as exc:
        return result(Outcome.FAILED, "wrong result: " + " ".join(str(exc).split())[:300])
    except Exception as exc:  # any other irkit failure is a failed case, with its reason
        return result(Outcome.FAILED, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _worker(args: tuple[Case, str, float, Mapping[str, Any] | None]) -> CaseResult:
    import warnings

    warnings.simplefilter("ignore")
    case, backend, timeout, options = args
    return run_case(case, backend, timeout, options)


@dataclass
class ConformanceReport:
    backend: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.outcome.value for r in self.results)

    def per_op(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for r in self.results:
            for op in r.ops:
                table[op][r.outcome.value] += 1
        return dict(sorted(table.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "onnx_version": onnx.__version__,
            "total": len(self.results),
            "counts": dict(self.counts),
            "per_op": {op: dict(c) for op, c in self.per_op().items()},
            "cases": [r.to_dict() for r in sorted(self.results, key=lambda r: r.name)],
        }

    def format(self, show_ops: bool = True, show_failures: bool = True) -> str:
        counts = self.counts
        total = len(self.results)
        cols = [o.value for o in Outcome]
        lines = [f"irkit conformance — backend {self.backend}, onnx {onnx.__version__}, "
                 f"{total} node cases"]
        for col in cols:
            pct = 100.0 * counts[col] / total if total else 0.0
            lines.append(f"  {col:<16}{counts[col]:>6}  ({pct:5.1f}%)")
        if show_ops:
            lines.append("")
            width = max(12, *(len(c) + 2 for c in cols))  # whole column names, never cut
            lines.append(f"{'op':<36}" + "".join(f"{c:>{width}}" for c in cols))
            for op, c in self.per_op().items():
                lines.append(f"{op:<36}" + "".join(f"{c[col]:>{width}}" for col in cols))
        if show_failures:
            bad = [r for r in self.results if r.outcome is not Outcome.PASSED]
            if bad:
                lines.append("")
                lines.append(f"not passed ({len(bad)}):")
                for r in sorted(bad, key=lambda r: (r.outcome.value, r.name)):
                    first = r.reason.splitlines()[0] if r.reason else ""
                    lines.append(f"  [{r.outcome.value}] {r.name}: {first}")
        return "\n".join(lines)


def run_conformance(
    backend: str = "roundtrip",
    *,
    pattern: str | None = None,
    cache_dir: Path | None = None,
    jobs: int = 0,
    timeout: float = 60.0,
    progress: bool = True,
    limit: int | None = None,
    every: int = 1,
    options: Mapping[str, Any] | None = None,
) -> ConformanceReport:
    """Run every (matching) node case through ``backend``; returns the full report.

    ``every`` > 1 runs every n-th case only (a deterministic sample); ``options`` go to
    ``irkit.compile`` (``{"arch": "wasm32-simd"}``)."""
    cases = load_cases(cache_dir, pattern)[::max(1, every)]
    if limit is not None:
        cases = cases[:limit]
    report = ConformanceReport(backend)
    jobs = jobs or (multiprocessing.cpu_count() or 1)
    work = [(case, backend, timeout, options) for case in cases]
    results: Iterable[CaseResult]
    if jobs == 1:
        results = (_worker(w) for w in work)
        pool = None
    else:
        # Workers are forked: objects the parent holds stay out of their garbage
        # collector, so a worker never destroys an inherited ONNX Runtime session (whose
        # thread pool did not survive the fork: its destructor waits forever).
        gc.collect()
        gc.freeze()
        pool = multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=200)
        results = pool.imap_unordered(_worker, work, chunksize=4)
    try:
        for i, res in enumerate(results, 1):
            report.results.append(res)
            if progress and (i % 100 == 0 or i == len(work)):
                c = report.counts
                print(f"  {i}/{len(work)} cases: {c['passed']} passed, {c['failed']} failed, "
                      f"{c['unsupported']} unsupported", file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
            gc.unfreeze()
    return report
