"""Eight small models unlike irkit's built-ins, through the checks a user runs first.

A MobileNetV2-style stack (depthwise 3x3 + pointwise 1x1, ReLU6, stride 2, residuals), a
ResNet with basic blocks and a stride-2 1x1 downsample, a dilated/grouped conv net
(LeakyReLU, SiLU, Hardswish, ELU), a Conv1d audio classifier (BatchNorm1d, MaxPool1d), a
pre-norm transformer encoder (6 heads, d 96, GELU), a GRU + bidirectional LSTM
classifier, an MLP with odd widths (37 -> 129 -> 61 -> 5, Tanh, Sigmoid, Softmax) and a
small U-Net (ConvTranspose and bilinear Resize upsampling, Concat skips). Each is exported
to ONNX with a dynamic batch (the legacy exporter at opset 17, BatchNorm kept; the encoder
through torch.export at opset 18), then per model:

1. compile (llvm) for each --arch and compare with ONNX Runtime at batches 1, 3 and 17;
2. `irkit optimize --passes fuse,quantize{mode=static,per_channel=true} --measure` (and
   dynamic int8 for the encoder, the recurrent model and the MLP) with a 256-sample eval
   set labelled by the fp32 model (accuracy = agreement with fp32), 128 calibration samples;
3. `irkit bench --against onnxruntime --clock cpu` at batches 1 and 17.

Not run in CI (minutes of CPU). Needs the torch extra:

    python scripts/sweep_unseen.py --out /tmp/sweep --arch x86-64-v3,native
    python scripts/sweep_unseen.py --out /tmp/sweep --only unet_small --skip optimize,bench
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

BATCHES = (1, 3, 17)
DYNAMIC = ("encoder_gelu", "gru_lstm", "odd_mlp")


def _bn_stats(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6), InvertedResidual(24, 40, 2, 6),
            InvertedResidual(40, 40, 1, 6))
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6())
        self.fc = nn.Linear(96, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 20, 5, 1, 2, bias=False), nn.BatchNorm2d(20), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.l1 = Basic(20, 20, 1)
        self.l2 = Basic(20, 36, 2)
        self.l3 = Basic(36, 52, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(52, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l3(self.l2(self.l1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DilatedGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(24), nn.SiLU(),
            nn.Conv2d(24, 36, 3, padding=3, dilation=3, groups=3), nn.Hardswish(),
            nn.Conv2d(36, 36, (1, 5), padding=(0, 2), groups=6), nn.ELU(),
            nn.AvgPool2d(2), nn.Conv2d(36, 9, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).amax((2, 3))


class Audio1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(3),
            nn.Conv1d(32, 48, 3, padding=1), nn.BatchNorm1d(48), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(48, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(20, 96)
        layer = nn.TransformerEncoderLayer(96, 6, dim_feedforward=200, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(96)
        self.fc = nn.Linear(96, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.enc(self.proj(x)))
        return self.fc(h.mean(1))


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(13, 40, num_layers=1, batch_first=True)
        self.lstm = nn.LSTM(40, 24, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        h, _ = self.lstm(h)
        return self.fc(h[:, -1])


class OddMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(37, 129), nn.Tanh(), nn.Linear(129, 61), nn.Sigmoid(),
                                 nn.Linear(61, 5), nn.Softmax(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        def cbr(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.e1 = cbr(3, 12)
        self.e2 = cbr(12, 24)
        self.mid = cbr(24, 24)
        self.up1 = nn.ConvTranspose2d(24, 24, 2, stride=2)
        self.d1 = cbr(48, 12)
        self.d0 = cbr(24, 12)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)                                  # 32
        b = self.e2(nn.functional.max_pool2d(a, 2))     # 16
        m = self.mid(nn.functional.max_pool2d(b, 2))    # 8
        u = self.d1(torch.cat([self.up1(m), b], 1))     # 16
        u = nn.functional.interpolate(u, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.d0(torch.cat([u, a], 1)))


# name -> (factory, per-sample input shape without the batch, classifier?)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    "mobilenet_v2ish": (MobileNetish, (3, 40, 40), True),
    "resnet_basic": (ResNetish, (3, 36, 36), True),
    "dilated_grouped": (DilatedGrouped, (3, 20, 20), True),
    "audio_conv1d": (Audio1d, (1, 1600), True),
    "encoder_gelu": (Encoder, (24, 20), True),
    "gru_lstm": (GRUClassifier, (19, 13), True),
    "odd_mlp": (OddMLP, (37,), True),
    "unet_small": (UNetish, (3, 32, 32), False),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name][0]()
    _bn_stats(model, seed)
    return model.eval()


def inputs(name: str, batch: int, seed: int = 0) -> np.ndarray:
    shape = MODELS[name][1]
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def export(name: str, path: Path) -> Path:
    """ONNX with input ``x`` and output ``y``, dim 0 dynamic."""
    model = build(name)
    example = torch.from_numpy(inputs(name, 2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "encoder_gelu":  # the legacy exporter cannot take the fused encoder path
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=18,
                                        input_names=["x"], output_names=["y"],
                                        dynamic_shapes=({0: torch.export.Dim("N")},))
            assert program is not None
            program.save(str(path))
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                              do_constant_folding=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def write_data(name: str, out: Path) -> None:
    """``NAME_eval.npz`` (x, and y = the fp32 model's classes) and ``NAME_calib.npz``."""
    x_eval, x_calib = inputs(name, 256, seed=7), inputs(name, 128, seed=8)
    with torch.no_grad():
        logits = build(name)(torch.from_numpy(x_eval)).numpy()
    labels = {"y": logits.argmax(-1).astype(np.int64)} if MODELS[name][2] else {}
    np.savez(out / f"{name}_eval.npz", x=x_eval, **labels)
    np.savez(out / f"{name}_calib.npz", x=x_calib)


def check_compile(name: str, path: Path, arch: str, out: Path) -> str:
    import irkit
    import irkit.runtime

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        art = irkit.compile(irkit.load_model(str(path)), target="llvm", arch=arch)
        model = irkit.runtime.load(art.save(out / "build" / f"{name}-{arch}"))
        worst = 0.0
        for batch in BATCHES:
            x = inputs(name, batch, seed=batch)
            (want,) = session.run(None, {"x": x})
            got = model(x=x)["y"]
            if got.shape != want.shape:
                return f"SHAPE {got.shape} != {want.shape}"
            worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    except Exception as exc:  # a sweep reports every failure and goes on
        return f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return f"{'ok' if worst <= 1e-4 else 'MISMATCH'} {worst:.1e}"


def run_cli(args: list[str]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "irkit", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    return res.returncode, res.stdout + res.stderr


def check_optimize(name: str, path: Path, mode: str, arch: str, out: Path) -> str:
    passes = ("fuse,quantize{mode=static,per_channel=true}" if mode == "static"
              else "fuse,quantize{mode=dynamic}")
    code, text = run_cli(["optimize", str(path), "--passes", passes, "--arch", arch,
                          "--measure", "--eval", str(out / f"{name}_eval.npz"),
                          "--calibration", str(out / f"{name}_calib.npz"),
                          "-o", str(out / f"{name}.{mode}.onnx")])
    (out / f"{name}.{mode}.log").write_text(text)
    if code:
        return f"FAIL rc {code}: {text.strip().splitlines()[-1][:160]}"
    row = next((line for line in text.splitlines() if line.startswith("quantize")), "")
    acc = re.search(r"(\d\.\d{4}) \(([+-]\d\.\d{4})\)", row)
    err = re.search(r"\s(\S+)\s+(?:\d\.\d{4} \(|-\s)", row)  # the rel err column
    kept = len(re.findall(r": [\"']kept fp32", text))
    int8 = len(re.findall(r": [\"']int8 ", text))
    return (f"acc {acc.group(1) + ' (' + acc.group(2) + ')' if acc else '-'}, "
            f"rel err {err.group(1) if err else '?'}; int8 nodes {int8}, kept fp32 {kept}")


def check_bench(path: Path, arches: str, repeats: int) -> list[str]:
    code, text = run_cli(["bench", str(path), "--against", "onnxruntime", "--batch", "1,17",
                          "--arch", arches, "--repeats", str(repeats), "--clock", "cpu"])
    if code:
        return [f"FAIL rc {code}: {text.strip().splitlines()[-1][:160]}"]
    rows = [line.split() for line in text.splitlines()
            if line.startswith("main_graph") and "onnxruntime" in line and "ratio" not in line]
    return [f"{r[1]} b{r[2]}: {r[-1]}" + ("  SLOWER THAN ORT x1.5" if float(r[-1]) > 1.5 else "")
            for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--arch", default="x86-64-v3,native")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--skip", default="", help="compile, optimize and/or bench")
    parser.add_argument("--repeats", type=int, default=7, help="bench rounds")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    skip = set(args.skip.split(","))
    arches = [a for a in args.arch.split(",") if a]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build").mkdir(exist_ok=True)
    for name in names:
        start = time.process_time()
        path = export(name, args.out / f"{name}.onnx")
        write_data(name, args.out)
        print(f"== {name}")
        if "compile" not in skip:
            for arch in arches:
                print(f"  compile {arch}: {check_compile(name, path, arch, args.out)}")
        if "optimize" not in skip:
            for mode in ("static", "dynamic") if name in DYNAMIC else ("static",):
                result = check_optimize(name, path, mode, arches[0], args.out)
                print(f"  optimize {mode} on {arches[0]}: {result}")
        if "bench" not in skip:
            for line in check_bench(path, ",".join(arches), args.repeats):
                print(f"  bench irkit/ORT {line}")
        print(f"  ({time.process_time() - start:.0f} s CPU in this process)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
