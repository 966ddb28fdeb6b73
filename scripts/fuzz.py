"""Longer fuzzing runs than CI affords: seeded, so any failure can be replayed.

    python scripts/fuzz.py spec --minutes 5            # mutants of specs/*.irk
    python scripts/fuzz.py http --minutes 5            # malformed requests, a real server
    python scripts/fuzz.py artifact                    # every tamper class, llvm artifact
    python scripts/fuzz.py all --minutes 2 --seed 7

Each target runs until its time is up (``--count`` caps the cases instead), prints its
counts and the first failures with their inputs, and the script exits 1 if anything
failed. The same checks run in CI on a small fixed sample (tests/spec/
test_spec_hardening.py, tests/runtime/adapters/test_http_hardening.py,
tests/runtime/test_artifact_tamper.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fuzz_spec(deadline: float, count: int, seed: int) -> list[str]:
    from irkit.spec import SpecError, parse_spec
    from irkit.testing.fuzz_spec import check_spec, example_specs, spec_mutants

    specs = example_specs(REPO)
    rng = random.Random(seed)
    failures: list[str] = []
    done = parsed = 0
    for text in spec_mutants([t for _, t in specs], rng):
        if done >= count or time.monotonic() > deadline:
            break
        path = specs[done % len(specs)][0]
        problem = check_spec(text, path, check_files=bool(done % 2))
        if problem is not None:
            failures.append(f"{problem}\n    input: {text[:300]!r}")
        try:
            parse_spec(path, text=text, validate=False)
            parsed += 1
        except SpecError:
            pass
        done += 1
    print(f"spec: {done} mutants, {parsed} still parse, {len(failures)} failures")
    return failures


def fuzz_http(deadline: float, count: int, seed: int) -> list[str]:
    import httpx

    import irkit
    import irkit.runtime
    from irkit.runtime.adapters.http import HttpAdapter
    from irkit.testing.fuzz_http import malformed_requests
    from irkit.testing.onnx_models import mlp_model

    with tempfile.TemporaryDirectory() as tmp:
        irkit.compile(irkit.load_model(mlp_model()), "ort").save(Path(tmp) / "m")
        model = irkit.runtime.load(Path(tmp) / "m")
    adapter = HttpAdapter(model, port=0, max_delay_ms=1.0)
    thread = threading.Thread(target=adapter.serve, daemon=True)
    thread.start()
    if not adapter.ready.wait(30):
        return ["http: the server did not become ready in 30 s"]
    rng = random.Random(seed)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    done = 0
    try:
        with httpx.Client(base_url=adapter.url, timeout=60) as http:
            for body, headers in malformed_requests(rng, "x", 64):
                if done >= count or time.monotonic() > deadline:
                    break
                response = http.post(f"/v2/models/{model.name}/infer", content=body,
                                     headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                ok = response.status_code < 500
                if ok and response.status_code >= 400:
                    try:
                        ok = isinstance(response.json().get("error"), str)
                    except ValueError:
                        ok = False
                if not ok:
                    failures.append(f"{response.status_code} {response.text[:200]!r}\n"
                                    f"    input: {body[:300]!r} {headers}")
                done += 1
    finally:
        adapter.stop()
        thread.join(30)
    print(f"http: {done} malformed requests, statuses {dict(sorted(statuses.items()))}, "
          f"{len(failures)} failures")
    return failures


def fuzz_artifact(deadline: float, count: int, seed: int) -> list[str]:
    import numpy as np

    import irkit
    import irkit.runtime
    from irkit.testing.fuzz_artifact import check_tampered, tampered_copies
    from irkit.testing.onnx_models import mlp_model

    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        irkit.compile(irkit.load_model(mlp_model()), "llvm").save(source)
        x = np.random.default_rng(seed).standard_normal((3, 64)).astype(np.float32)
        expected = irkit.runtime.load(source).run({"x": x})
        done = 0
        for name, path in tampered_copies(source, Path(tmp) / "cases"):
            if done >= count or time.monotonic() > deadline:
                break
            problem = check_tampered(path, x, expected)
            if problem is not None:
                failures.append(f"{name}: {problem}")
            done += 1
    print(f"artifact: {done} tamper cases, {len(failures)} failures")
    return failures


TARGETS: dict[str, Callable[[float, int, int], list[str]]] = {
    "spec": fuzz_spec, "http": fuzz_http, "artifact": fuzz_artifact}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--minutes", type=float, default=1.0,
                        help="time per target (default 1)")
    parser.add_argument("--count", type=int, default=10**9, help="most cases per target")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.count <= 0:
        parser.error("--minutes and --count must be positive")
    failed = False
    for name in TARGETS if args.target == "all" else [args.target]:
        failures = TARGETS[name](time.monotonic() + args.minutes * 60, args.count, args.seed)
        for failure in failures[:10]:
            print(f"  FAIL {failure}")
        failed |= bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
