"""Distillation and the accuracy-budget search, measured on this machine.

1. ``search { budget = 1.0 }`` on the digits CNN: every trial's speedup over the original
   model on llvm (batch 64, one thread, interleaved rounds, fastest run) and its accuracy
   on the 360 held-out digits; then the original and the chosen model beside ONNX
   Runtime (median of alternating rounds), so the speedups have an outside anchor.
2. ``distill`` on the ``transformer`` built-in (2 layers, d=128, seq 64, seeded, not
   trained): ``width = 0.5`` (half the feed-forward width and half the attention heads,
   narrowed in the IR), ``depth = 1`` (one layer, cut from the IR) and a one-layer
   half-FFN torch student, each trained on the teacher's outputs over unlabeled random
   inputs; their relative output error and their speed on llvm.
3. With ``--minilm EPOCHS``: ``distill { width = 0.5 }`` on all-MiniLM-L6-v2 (6 of 12
   heads and half the FFN in each layer) over random token sequences: output error,
   mean-pooled embedding cosine and llvm speed against the teacher.

    python benchmarks/bench_distill_search.py [--plot pareto.svg] [--skip-transformer]
        [--skip-search] [--minilm EPOCHS] [--minilm-lr LR]

Models and data come from ``python scripts/make_models.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

import irkit
import irkit.runtime
from irkit.bench import _ort_session, alternate, builtin_model, cpu_description
from irkit.passes.manager import compare_outputs, evaluate_graph

ROOT = Path(__file__).resolve().parents[1]


def _llvm(graph: irkit.ir.Graph) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        irkit.compile(graph, target="llvm", threads=1).save(Path(tmp) / "m")
        return irkit.runtime.load(Path(tmp) / "m", threads=1)


def _three_way(calls: dict[str, Callable[[], object]], rounds: int = 21,
               inner: int = 20) -> dict[str, tuple[float, float]]:
    """(median, fastest) seconds per call, the calls taking turns every round (a shared
    machine's load falls on all of them alike)."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(inner):
                call()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: (float(np.median(times)), float(np.min(times)))
            for name, times in samples.items()}


def _anchor_table(chosen_name: str, chosen: irkit.ir.Graph, original: irkit.ir.Graph,
                  feeds: dict[str, np.ndarray]) -> None:
    session = _ort_session(irkit.compile(original, target="ort").files["model.onnx"], 1)
    base, ours = _llvm(original), _llvm(chosen)
    times = _three_way({
        "ORT, original model": partial(session.run, [v.name for v in original.outputs],
                                       feeds),
        "irkit llvm, original model": partial(base.run, feeds),  # type: ignore[attr-defined]
        f"irkit llvm, chosen: {chosen_name}": partial(ours.run, feeds),  # type: ignore[attr-defined]
    })
    median0, fastest0 = times["ORT, original model"]
    print(f"  {'median':>9} {'vs ORT':>7} {'fastest':>9} {'vs ORT':>7}")
    for name, (median, fastest) in times.items():
        print(f"  {median * 1e3:6.4f} ms {median0 / median:6.2f}x {fastest * 1e3:6.4f} ms "
              f"{fastest0 / fastest:6.2f}x  {name}", flush=True)


def search_digits(plot: str | None) -> None:
    data = ROOT / "specs" / "data"
    graph = irkit.load_model(ROOT / "specs" / "models" / "digits_cnn.onnx")
    tr, ev = np.load(data / "digits_train.npz"), np.load(data / "digits_eval.npz")
    cache = tempfile.mkdtemp(prefix="irkit-search-")
    started = time.perf_counter()
    chosen = irkit.optimize(
        graph, f"search{{budget=1.0,cache={cache}}}", eval_data={"x": ev["x_img"]},
        labels=ev["y"], train_data={"x": tr["x_img"]}, train_labels=tr["y"])
    report = chosen.history[-1].details
    print(f"\nsearch took {time.perf_counter() - started:.0f} s (this machine, shared); "
          f"chose {report['chosen']} ({report['chosen_speedup']:.2f}x)")
    print(f"{'speedup':>8} {'acc':>7} {'delta pts':>9}  pipeline")
    for t in report["trials"]:
        if t.get("status") != "ok":
            print(f"{'-':>8} {'-':>7} {'-':>9}  {t['pipeline']} [{t.get('status')}]")
            continue
        mark = " <- chosen" if t["pipeline"] == report["chosen"] else ""
        print(f"{t['speedup']:>7.2f}x {t['accuracy']:>7.4f} {-t['loss']:>+9.2f}  "
              f"{t['pipeline']}{'' if t['within_budget'] else ' (over budget)'}{mark}")
    print("\nbatch 64, one thread, 21 alternating rounds of 20 calls; anchor: ONNX Runtime "
          "running the original model")
    _anchor_table(report["chosen"], chosen, graph,
                  {"x": np.ascontiguousarray(ev["x_img"][:64])})
    if plot:
        from irkit.compress.pareto import plot_pareto

        print(f"wrote {plot_pareto(report, plot)}")


def distill_transformer() -> None:
    teacher = builtin_model("transformer")
    rng = np.random.default_rng(0)
    name = teacher.inputs[0].name
    train = {name: rng.standard_normal((384, 64, 128)).astype(np.float32)}
    held = {name: rng.standard_normal((64, 64, 128)).astype(np.float32)}
    reference = evaluate_graph(teacher, held)
    students = {
        "width=0.5 (FFN 512->256 and 2 of 4 heads per layer, from the IR)":
            "distill{width=0.5,epochs=15,lr=1e-3,verbose=false}",
        "width=0.5, default training (40 epochs, early stop)":
            "distill{width=0.5,lr=1e-3,verbose=false}",
        "depth=1 (one of the two layers, from the IR)":
            "distill{depth=1,epochs=15,lr=1e-3,verbose=false}",
        "torch student: 1 layer, FFN 256":
            "distill{student=\"irkit.testing.models:make_transformer_student\","
            "capture=onnx,epochs=15,lr=1e-3,verbose=false}",
    }
    print("\ntransformer built-in (2 layers, d 128, seq 64; seeded, untrained), students "
          "trained on its outputs over 384 unlabeled random inputs, error on 64 others; "
          "llvm batch 8, one thread:")
    t_llvm = _llvm(teacher)
    feeds = {name: held[name][:8]}
    from irkit.compress.distill import Distill

    narrow, layers = Distill(width=0.5)._width_student(teacher, {name: train[name][:4]})
    err = compare_outputs(evaluate_graph(narrow, held), reference)
    print(f"  width=0.5 before training (pruned only; {layers.get('heads')}): relative "
          f"output error {err.rel:.3f} (max abs {err.max_abs:.3f})", flush=True)
    for label, passes in students.items():
        started = time.perf_counter()
        student = irkit.optimize(teacher, passes, train_data=train)
        details = student.history[-1].details
        err = compare_outputs(evaluate_graph(student, held), reference)
        s_llvm = _llvm(student)
        t_teacher, t_student = alternate(partial(t_llvm.run, feeds),  # type: ignore[attr-defined]
                                         partial(s_llvm.run, feeds), 9)  # type: ignore[attr-defined]
        print(f"  {label}: params {details['teacher_params']} -> {details['student_params']}, "
              f"{details['epochs_run']} epochs in {time.perf_counter() - started:.0f} s, "
              f"relative output error {err.rel:.3f} (max abs {err.max_abs:.3f}); teacher "
              f"{t_teacher * 1e3:.3f} ms, student {t_student * 1e3:.3f} ms, "
              f"{t_teacher / t_student:.2f}x", flush=True)


def distill_minilm(epochs: int, lr: float) -> None:
    """distill{width=0.5} on all-MiniLM-L6-v2 over random token sequences (no corpus is
    bundled): output error and mean-pooled embedding cosine against the teacher."""
    teacher = builtin_model("minilm")
    rng = np.random.default_rng(0)

    def tokens(count: int, length: int = 32) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 20000, (count, length)).astype(np.int64)
        mask = np.ones((count, length), np.int64)
        for row, keep in enumerate(rng.integers(8, length + 1, count)):
            ids[row, 0], ids[row, keep - 1] = 101, 102
            ids[row, keep:], mask[row, keep:] = 0, 0
        return {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros((count, length), np.int64)}

    train, held = tokens(256), tokens(32)
    reference = evaluate_graph(teacher, held)
    started = time.perf_counter()
    student = irkit.optimize(teacher, f"distill{{width=0.5,epochs={epochs},lr={lr},batch=16,"
                             "verbose=false}", train_data=train)
    details = student.history[-1].details
    got = evaluate_graph(student, held)
    err = compare_outputs(got, reference)
    mask = held["attention_mask"][..., None].astype(np.float32)
    a, b = ((v["last_hidden_state"] * mask).sum(1) / mask.sum(1) for v in (reference, got))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    feeds = {k: np.ascontiguousarray(v[:8]) for k, v in held.items()}
    t_llvm, s_llvm = _llvm(teacher), _llvm(student)
    t_teacher, t_student = alternate(partial(t_llvm.run, feeds),  # type: ignore[attr-defined]
                                     partial(s_llvm.run, feeds), 9)  # type: ignore[attr-defined]
    print(f"\nMiniLM width=0.5 ({details['narrowed'].get('heads')} heads): params "
          f"{details['teacher_params']} -> {details['student_params']}, "
          f"{details['epochs_run']} epochs in {time.perf_counter() - started:.0f} s on 256 "
          f"random token sequences (S 32, padded); on 32 others: relative output error "
          f"{err.rel:.3f}, mean-pooled embedding cosine mean {cos.mean():.4f} min "
          f"{cos.min():.4f}; llvm batch 8, one thread: teacher {t_teacher * 1e3:.2f} ms, "
          f"student {t_student * 1e3:.2f} ms, {t_teacher / t_student:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="write the search's Pareto plot (svg/png)")
    parser.add_argument("--skip-transformer", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--minilm", type=int, metavar="EPOCHS", default=0,
                        help="also distill all-MiniLM-L6-v2 at width 0.5 for EPOCHS epochs")
    parser.add_argument("--minilm-lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    print(cpu_description())
    if not args.skip_search:
        search_digits(args.plot)
    if not args.skip_transformer:
        distill_transformer()
    if args.minilm:
        distill_minilm(args.minilm, args.minilm_lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
