"""The digits models: a small MLP and CNN trained on sklearn's bundled ``load_digits``.

They are the real (if small) models that specs, passes and backends measure accuracy on.
Everything is seeded, so two runs on the same machine give the same weights and files.

Export choice (checked with torch 2.13): the legacy TorchScript exporter with constant
folding off gives ``Conv, BatchNormalization, Relu, …, MaxPool, Flatten, Gemm`` with the
batch dim named ``N``. The dynamo exporter either folds BatchNormalization into Conv (its
default optimizer, which leaves the fuse pass nothing to show) or, with ``optimize=False``,
turns the dynamic flatten into ``Shape/Squeeze/Concat/Reshape``. Both load either way.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
OPSET = 17
MLP_FILE = "digits_mlp.onnx"
CNN_FILE = "digits_cnn.onnx"
EVAL_FILE = "digits_eval.npz"
CALIB_FILE = "digits_calib.npz"
TRAIN_FILE = "digits_train.npz"
CALIB_SIZE = 128
REPO_SPECS = Path(__file__).resolve().parents[2] / "specs"


@dataclass(frozen=True)
class DigitsSplit:
    """Seeded train / held-out split, inputs scaled to [0, 1] (pixel / 16)."""

    x_train: np.ndarray  # f32[n, 64]
    y_train: np.ndarray  # i64[n]
    x_eval: np.ndarray
    y_eval: np.ndarray


@dataclass(frozen=True)
class DigitsReport:
    """What ``make_digits_assets`` wrote (or found) and the held-out accuracies."""

    models_dir: Path
    data_dir: Path
    written: bool
    mlp_accuracy: float | None = None
    cnn_accuracy: float | None = None


def load_split(seed: int = SEED, eval_fraction: float = 0.2) -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(
        x, y, test_size=eval_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(x_tr, y_tr, x_ev, y_ev)


def build_mlp():  # -> torch.nn.Module
    from torch import nn

    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def build_cnn():  # -> torch.nn.Module
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = SEED, lr: float = 3e-3):
    """Adam on cross-entropy, fixed batch order from ``seed``; returns the model in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_legacy(model, example: np.ndarray, path: Path) -> None:
    """Export with input ``x``, output ``logits``, batch dim ``N``, opset 17 (see module doc)."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(f".{path.name}.{os.getpid()}.raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        )
    proto = onnx.load(str(raw))
    raw.unlink()
    inline_identity_initializers(proto)
    onnx.checker.check_model(proto)
    _write_atomically(path, proto.SerializeToString())


def inline_identity_initializers(proto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The legacy exporter deduplicates equal-valued weights that way (an untrained BN has
    equal weight and running_var); a graph of plain initializers is easier to read.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a private temporary name and rename: parallel test sessions may race."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub reads allow_pickle
    return buffer.getvalue()


def assets_present(models_dir: Path, data_dir: Path) -> bool:
    files = [models_dir / MLP_FILE, models_dir / CNN_FILE]
    files += [data_dir / EVAL_FILE, data_dir / CALIB_FILE, data_dir / TRAIN_FILE]
    return all(f.is_file() for f in files)


def make_digits_assets(
    specs_dir: Path | None = None,
    force: bool = False,
    epochs_mlp: int = 40,
    epochs_cnn: int = 15,
) -> DigitsReport:
    """Train, export and write the digits models and data under ``specs_dir``.

    Writes ``models/digits_{mlp,cnn}.onnx`` and ``data/digits_{eval,calib,train}.npz``
    (the training split, for ``distill``); skips the work when all five exist unless
    ``force``.
    """
    import torch

    specs = Path(specs_dir) if specs_dir is not None else REPO_SPECS
    models_dir, data_dir = specs / "models", specs / "data"
    if not force and assets_present(models_dir, data_dir):
        return DigitsReport(models_dir, data_dir, written=False)

    split = load_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and fully repeatable
    try:
        torch.manual_seed(SEED)  # the initial weights
        mlp = train(build_mlp(), split.x_train, split.y_train, epochs_mlp)
        torch.manual_seed(SEED)
        cnn_x_train = split.x_train.reshape(-1, 1, 8, 8)
        cnn = train(build_cnn(), cnn_x_train, split.y_train, epochs_cnn)
        mlp_acc = accuracy(mlp, split.x_eval, split.y_eval)
        cnn_acc = accuracy(cnn, split.x_eval.reshape(-1, 1, 8, 8), split.y_eval)
        export_legacy(mlp, split.x_eval[:2], models_dir / MLP_FILE)
        export_legacy(cnn, split.x_eval[:2].reshape(-1, 1, 8, 8), models_dir / CNN_FILE)
    finally:
        torch.set_num_threads(threads)

    data_dir.mkdir(parents=True, exist_ok=True)
    eval_npz = _npz_bytes(x=split.x_eval, x_img=split.x_eval.reshape(-1, 1, 8, 8), y=split.y_eval)
    _write_atomically(data_dir / EVAL_FILE, eval_npz)
    calib = split.x_train[:CALIB_SIZE]
    calib_npz = _npz_bytes(x=calib, x_img=calib.reshape(-1, 1, 8, 8))
    _write_atomically(data_dir / CALIB_FILE, calib_npz)
    train_npz = _npz_bytes(x=split.x_train, x_img=split.x_train.reshape(-1, 1, 8, 8),
                           y=split.y_train)
    _write_atomically(data_dir / TRAIN_FILE, train_npz)
    return DigitsReport(models_dir, data_dir, True, mlp_acc, cnn_acc)
