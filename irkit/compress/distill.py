"""``distill``: train a smaller student to mimic the graph (the teacher).

The student is the same graph with every hidden layer narrowed to ``width`` (0.5 unless
given) of its channels/neurons (a transformer: its feed-forward width and whole attention
heads, ``irkit.compress.heads``; d_model stays) and/or, with ``depth = N``, only the last N copies of its
repeated block of layers (``irkit.compress.depth``: transformer encoder layers) (structured pruning keeps the teacher's strongest ones as the starting
point; ``init = "random"`` starts from fresh seeded weights instead), or a torch module from ``student = "pkg.mod:factory"``. It trains in torch on the
CPU (seeded, one thread, so a rebuild gives the same weights) on the training data the
spec's ``train = npz(...)`` or ``irkit.optimize(train_data=...)`` gives, against the
teacher's outputs softened at ``temperature`` and, when labels exist, the labels
(``alpha`` weighs the two; ``alpha = 0`` trains on labels alone). Without training data
the calibration inputs serve as unlabeled data. A ``val_fraction`` of the training data is
held out to stop early (``patience`` epochs without improvement) and keep the best epoch.
With a cost model (spec builds, ``--measure``) the report also times teacher and student
on the targets. A factory student comes back into the IR through the torch frontend (``capture`` chooses
torch.export or the ONNX exporter, as ``irkit.load_model`` does); a width student's
trained weights are written into the narrowed graph.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph
from irkit.passes.base import Pass, PassContext, parameter_count, weight_bytes


class DistillError(IrkitError):
    """The distill pass cannot build or train its student."""


@dataclass
class _Data:
    train: list[np.ndarray]
    train_targets: list[np.ndarray]
    train_labels: np.ndarray | None
    val: list[np.ndarray]
    val_targets: list[np.ndarray]
    val_labels: np.ndarray | None
    labeled_by: str


def _training_data(graph: Graph, context: PassContext, fraction: float, seed: int) -> _Data:
    from irkit.passes.manager import evaluate_graph

    feeds: Mapping[str, Any] | None = context.train_data
    labels = context.train_labels
    source = "train data"
    if feeds is None and context.calibration:
        batches = list(context.calibration)
        feeds = {name: np.concatenate([np.asarray(b[name]) for b in batches])
                 for name in batches[0]}
        labels, source = None, "calibration inputs (unlabeled)"
    if feeds is None:
        raise DistillError("distill needs training inputs: a spec's train = npz(...), "
                           "irkit.optimize(train_data=...), or --train DATA.npz")
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise DistillError(f"distill: training data has no array for input(s) {missing}")
    arrays = [np.ascontiguousarray(feeds[n]) for n in names]
    count = len(arrays[0])
    if count < 8:
        raise DistillError(f"distill: {count} training examples are too few")
    teacher = evaluate_graph(graph, dict(zip(names, arrays)))
    targets = [np.asarray(teacher[v.name], np.float32) for v in graph.outputs]
    order = np.random.default_rng(seed).permutation(count)
    n_val = max(1, round(count * fraction)) if fraction > 0 else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    y = None if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    if y is not None and len(y) != count:
        raise DistillError(f"distill: {len(y)} labels for {count} training inputs")
    return _Data(
        train=[a[train_idx] for a in arrays], train_targets=[t[train_idx] for t in targets],
        train_labels=None if y is None else y[train_idx],
        val=[a[val_idx] for a in arrays], val_targets=[t[val_idx] for t in targets],
        val_labels=None if y is None else y[val_idx], labeled_by=source)


def _rename_like(student: Graph, teacher: Graph) -> Graph:
    """Give the student the teacher's input and output names (the served interface)."""
    old_inputs = list(student.inputs)
    if [v.name for v in old_inputs] != [v.name for v in teacher.inputs]:
        fresh = [student.add_input(f"{t.name}", s.type)
                 for s, t in zip(old_inputs, teacher.inputs)]
        for old, new in zip(old_inputs, fresh):
            old.replace_all_uses_with(new)
            student.remove_input(old)
    outputs = list(student.outputs)
    if [v.name for v in outputs] != [v.name for v in teacher.outputs]:
        renamed = [student.add_node("Identity", [s], outputs=[t.name], types=[s.type]).output
                   for s, t in zip(outputs, teacher.outputs)]
        student.set_outputs(renamed)
        if [v.name for v in renamed] != [v.name for v in teacher.outputs]:
            raise DistillError(f"distill: the student cannot take the teacher's output names "
                               f"{[v.name for v in teacher.outputs]}")
    return student


@dataclass(frozen=True)
class Distill(Pass):
    """Knowledge distillation into a narrower graph or a user's torch module."""

    name = "distill"
    width: float | None = None
    depth: int = 0
    student: str = ""
    capture: Literal["export", "onnx"] = "export"
    init: Literal["teacher", "random"] = "teacher"
    temperature: float = 4.0
    alpha: float = 0.7
    loss: Literal["auto", "kl", "mse"] = "auto"
    epochs: int = 40
    batch: int = 64
    lr: float = 3e-3
    patience: int = 6
    val_fraction: float = 0.15
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.width is not None and not 0.0 < self.width <= 1.0:
            raise ValueError(f"distill: width must be in (0, 1], got {self.width}")
        if self.depth < 0:
            raise ValueError(f"distill: depth must be >= 0 (0: all layers), got {self.depth}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill: alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("distill: epochs and batch must be at least 1")
        if self.temperature <= 0:
            raise ValueError(f"distill: temperature must be > 0, got {self.temperature}")

    def run(self, graph: Graph, context: PassContext | None = None) -> Any:
        from irkit.passes.base import PassResult

        modified, report, student = self._distill(graph, context or PassContext())
        return PassResult(student, modified, report)

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        raise NotImplementedError("distill replaces the graph; call run()")

    @property
    def effective_width(self) -> float:
        """``width`` as given; unset, 0.5 unless ``depth`` alone makes the student."""
        if self.width is not None:
            return self.width
        return 1.0 if self.depth else 0.5

    # -- the student ------------------------------------------------------------------------
    def _narrow_student(self, graph: Graph, sample: Mapping[str, np.ndarray]
                        ) -> tuple[Graph, dict[str, Any]]:
        from irkit.compress.depth import drop_blocks

        layers: dict[str, Any] = {}
        if self.depth:
            graph, layers["depth"] = drop_blocks(graph, self.depth)
        narrowed, channels = self._width_student(graph, sample)
        layers.update(channels)
        return narrowed, layers

    def _width_student(self, graph: Graph, sample: Mapping[str, np.ndarray]
                       ) -> tuple[Graph, dict[str, Any]]:
        """Structured pruning of every channel chain (MLP/CNN layers, a transformer's
        feed-forward), then whole attention heads (``irkit.compress.heads``)."""
        from irkit.compress.heads import prune_heads
        from irkit.passes.prune import Prune

        width = self.effective_width
        if width == 1.0:
            return graph.clone(), {}
        pruned = Prune(sparsity=1.0 - width, mode="structured", compensate=False
                       ).run(graph)
        narrowed = pruned.graph if pruned.modified else graph
        layers: dict[str, Any] = dict(pruned.report.get("channels", {})) \
            if pruned.modified else {}
        has_softmax = any(n.op == "Softmax" for n in graph.nodes)
        if has_softmax:
            narrowed, heads, skipped = prune_heads(narrowed, width, sample)
            if heads:
                layers["heads"] = heads
            if skipped:
                layers["heads_kept"] = skipped
        if not pruned.modified and not layers.get("heads"):
            raise DistillError(
                "distill: no layer of this graph could be narrowed to width "
                f"{width} (structured pruning found no prunable channel chain"
                + (" and no attention block whose heads could be dropped" if has_softmax
                   else "") + "); try depth = N (fewer repeated layers) or a student = "
                "\"pkg.mod:factory\" torch module")
        return narrowed, layers

    def _distill(self, teacher: Graph, context: PassContext) -> tuple[bool, dict[str, Any], Graph]:
        import torch

        data = _training_data(teacher, context, self.val_fraction, self.seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small models: as fast, and the weights repeat exactly
        try:
            torch.manual_seed(self.seed)
            if self.student:
                from irkit.frontends.torch import resolve_module

                module = resolve_module(self.student)[0]
                layers: dict[str, Any] = {}
            else:
                from irkit.compress.torch_graph import graph_module

                sample = {v.name: a[:4] for v, a in zip(teacher.inputs, data.train)}
                narrow, layers = self._narrow_student(teacher, sample)
                module = graph_module(narrow)
                if self.init == "random":
                    module.reinitialize(self.seed)
            started = time.perf_counter()
            history = self._train(module, data)
            seconds = time.perf_counter() - started
            if self.student:
                student = self._import_factory(module, teacher, data)
            else:
                from irkit.compress.torch_graph import write_back

                student = write_back(narrow, module)
        finally:
            torch.set_num_threads(threads)
        report: dict[str, Any] = {
            "student": self.student or f"width {self.effective_width}"
                       + (f", depth {self.depth}" if self.depth else ""),
            "narrowed": layers,
            "data": f"{len(data.train[0])} train / {len(data.val[0])} held out, "
                    f"{data.labeled_by}" + (", labels" if data.train_labels is not None
                                            else ", teacher outputs only"),
            "epochs_run": len(history),
            "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1,
            "train_seconds": round(seconds, 2),
            "teacher_params": parameter_count(teacher),
            "student_params": parameter_count(student),
            "teacher_bytes": weight_bytes(teacher),
            "student_bytes": weight_bytes(student),
            "epochs": history,
        }
        if context.cost is not None:  # a spec build or --measure: time both on the targets
            timing = context.cost.compare({"teacher": teacher, "student": student})
            report["latency_ms"] = {
                target: {k: round(v * 1e3, 4) for k, v in times.items()}
                for target, times in timing.seconds.items()}
            report["speedup"] = {t: round(v, 2)
                                 for t, v in timing.speedup("teacher", "student").items()}
            report["clock"] = timing.clock
        if data.val_labels is not None:
            teacher_acc = float(np.mean(np.argmax(data.val_targets[0], -1) == data.val_labels))
            report["teacher_val_accuracy"] = round(teacher_acc, 4)
            report["student_val_accuracy"] = history[report["best_epoch"] - 1].get("val_acc")
        return True, report, student

    def _import_factory(self, module: Any, teacher: Graph, data: _Data) -> Graph:
        import torch

        from irkit.api import load_model

        example = tuple(torch.from_numpy(a[:2]) for a in data.train)
        names = [v.name for v in teacher.outputs]
        student = load_model(module.eval(), frontend="torch", example_inputs=example,
                             output_names=names, capture=self.capture)
        return _rename_like(student, teacher)

    # -- training ---------------------------------------------------------------------------
    def _loss_kind(self, data: _Data) -> str:
        if self.loss != "auto":
            return self.loss
        classify = data.train_labels is not None or data.train_targets[0].ndim == 2
        return "kl" if classify else "mse"

    def _batch_loss(self, outputs: Any, targets: list[Any], labels: Any, kind: str) -> Any:
        import torch.nn.functional as F

        if kind == "mse":
            return sum(F.mse_loss(o, t) for o, t in zip(outputs, targets))
        t = self.temperature
        soft = F.kl_div(F.log_softmax(outputs[0] / t, -1), F.softmax(targets[0] / t, -1),
                        reduction="batchmean") * t * t
        if labels is None:
            return soft
        hard = F.cross_entropy(outputs[0], labels)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def _train(self, module: Any, data: _Data) -> list[dict[str, float]]:
        import torch

        kind = self._loss_kind(data)
        xs = [torch.from_numpy(a) for a in data.train]
        ts = [torch.from_numpy(a) for a in data.train_targets]
        ys = None if data.train_labels is None else torch.from_numpy(data.train_labels)
        vx = [torch.from_numpy(a) for a in data.val]
        vt = [torch.from_numpy(a) for a in data.val_targets]
        vy = None if data.val_labels is None else torch.from_numpy(data.val_labels)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        history: list[dict[str, float]] = []
        best, best_state, stale = float("inf"), None, 0
        for epoch in range(1, self.epochs + 1):
            module.train()
            order = torch.randperm(len(xs[0]), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(order), self.batch):
                idx = order[start:start + self.batch]
                optimizer.zero_grad()
                out = module(*[x[idx] for x in xs])
                out = out if isinstance(out, tuple | list) else (out,)
                loss = self._batch_loss(out, [t[idx] for t in ts],
                                        None if ys is None else ys[idx], kind)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            row = {"epoch": epoch, "loss": round(total / max(seen, 1), 5)}
            module.eval()
            with torch.no_grad():
                out = module(*vx)
                out = out if isinstance(out, tuple | list) else (out,)
                val_loss = float(self._batch_loss(out, vt, vy, kind)) if len(vx[0]) else 0.0
                row["val_loss"] = round(val_loss, 5)
                if vy is not None:
                    row["val_acc"] = round(float((out[0].argmax(-1) == vy).float().mean()), 4)
            history.append(row)
            if self.verbose:
                extra = f" val acc {row['val_acc']:.4f}" if "val_acc" in row else ""
                print(f"distill: epoch {epoch}/{self.epochs} loss {row['loss']:.4f} "
                      f"val loss {row['val_loss']:.4f}{extra}", file=sys.stderr, flush=True)
            if val_loss < best - 1e-6:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        return history
