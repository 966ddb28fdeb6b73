"""One small function per ATen lowering (and per torch fallback decomposition), each run
through the torch frontend and ONNX Runtime at two batch sizes against torch eager."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import irkit  # noqa: E402
from irkit.frontends.torch import load_torch  # noqa: E402

F = torch.nn.functional


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[..., Any]
    shapes: tuple[tuple[int, ...], ...] = ((4, 6),)  # dim 0 is the dynamic batch
    kind: str = "float"  # float | positive | int | bool
    atol: float = 1e-5


def _input(shape: tuple[int, ...], batch: int, kind: str, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    full = (batch, *shape[1:])
    if kind == "int":
        return torch.randint(0, 5, full, generator=gen)
    if kind == "bool":
        return torch.rand(full, generator=gen) > 0.5
    x = torch.randn(full, generator=gen)
    return x.abs() + 0.1 if kind == "positive" else x


CASES = [
    # elementwise
    Case("add_alpha", lambda x, y: torch.add(x, y, alpha=2.0), ((4, 6), (4, 6))),
    Case("sub_scalar", lambda x: x - 1.5),
    Case("rsub", lambda x: 2.0 - x),
    Case("mul_div", lambda x, y: x * y / (y.abs() + 1), ((4, 6), (4, 6))),
    Case("div_floor", lambda x: torch.div(x * 4, 3, rounding_mode="floor")),
    Case("div_trunc", lambda x: torch.div(x * 4, 3, rounding_mode="trunc")),
    Case("remainder", lambda x: torch.remainder(x * 5, 3)),
    Case("int_promotion", lambda x: x * 2 + 1, kind="int"),
    Case("pow_sqrt_rsqrt", lambda x: x.pow(2) + x.sqrt() + x.rsqrt(), kind="positive"),
    Case("exp_log", lambda x: torch.exp(x) + torch.log(x) + torch.log1p(x), kind="positive"),
    Case("trig", lambda x: torch.sin(x) + torch.cos(x) + torch.tanh(x) + torch.atan(x)),
    Case("sigmoid_erf", lambda x: torch.sigmoid(x) * torch.erf(x)),
    Case("abs_neg_sign", lambda x: -x.abs() + torch.sign(x) + torch.floor(x) + torch.ceil(x)),
    Case(
        "maximum_minimum", lambda x, y: torch.maximum(x, y) - torch.minimum(x, y), ((4, 6), (4, 6))
    ),
    Case("clamp", lambda x: x.clamp(-0.5, 0.7) + x.clamp(min=0.1) + x.clamp(max=0.2)),
    Case("hardtanh_relu6", lambda x: F.hardtanh(x) + F.relu6(x * 4)),
    Case("leaky_elu", lambda x: F.leaky_relu(x, 0.2) + F.elu(x)),
    Case("silu_hardswish", lambda x: F.silu(x) + F.hardswish(x) + F.hardsigmoid(x)),
    Case("softplus_mish", lambda x: F.softplus(x) + F.mish(x)),
    Case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    Case(
        "compare_where",
        lambda x, y: torch.where(x > y, x, y * 2) + (x != y).float(),
        ((4, 6), (4, 6)),
    ),
    Case("logical", lambda x, y: (x & y) | ~x, ((4, 6), (4, 6)), kind="bool"),
    Case("masked_fill", lambda x: x.masked_fill(x < 0, -1.0)),
    Case("isnan", lambda x: torch.isnan(x / x.abs().clamp(max=0.0)).float()),
    # linear algebra and normalization
    Case("matmul_3d", lambda x: x @ x.transpose(1, 2), ((3, 5, 4),)),
    Case("linear_nobias", lambda x: F.linear(x, torch.ones(3, 6) * 0.5)),
    Case("softmax_logsoftmax", lambda x: F.softmax(x, -1) + F.log_softmax(x, 1)),
    Case("layer_norm_affine_free", lambda x: F.layer_norm(x, (6,))),
    Case("group_norm", lambda x: F.group_norm(x, 2), ((2, 4, 5, 5),)),
    Case("var_dim_unbiased", lambda x: torch.ops.aten.var.dim(x, [1], False, True)),
    Case("var_std", lambda x: x.var(dim=1, keepdim=True) + x.std(dim=1, keepdim=True)),
    Case("matmul_broadcast", lambda x, y: x @ y[:1, 0], ((3, 2, 4, 5), (3, 2, 5, 6))),
    Case("matmul_4d_2d", lambda x: x @ torch.ones(5, 3), ((3, 2, 4, 5),)),
    Case("transposes_compose", lambda x: x.transpose(1, 2).permute(0, 2, 1) + x, ((3, 4, 4),)),
    Case(
        "sdpa_mask",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=k[:, :, :, :1] > 0),
        ((2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16)),
    ),
    Case(
        "sdpa_causal",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ((2, 4, 8, 16), (2, 4, 8, 16), (2, 4, 8, 16)),
    ),
    # convolution and pooling
    Case(
        "conv1d_strided",
        lambda x: F.conv1d(x, torch.ones(4, 3, 3) * 0.1, stride=2, padding=1),
        ((2, 3, 9),),
    ),
    Case(
        "conv_transpose2d",
        lambda x: F.conv_transpose2d(x, torch.ones(3, 2, 3, 3) * 0.1, stride=2),
        ((2, 3, 4, 4),),
    ),
    Case(
        "depthwise_dilated",
        lambda x: F.conv2d(x, torch.ones(3, 1, 3, 3), dilation=2, groups=3),
        ((2, 3, 8, 8),),
    ),
    Case("max_pool_pad", lambda x: F.max_pool2d(x, 3, 2, padding=1), ((2, 3, 7, 7),)),
    Case(
        "avg_pool",
        lambda x: F.avg_pool2d(x, 2) + F.avg_pool2d(x, 3, 2, 1)[..., :4, :4],
        ((2, 3, 8, 8),),
    ),
    Case("adaptive_avg_pool", lambda x: F.adaptive_avg_pool2d(x, 2), ((2, 3, 8, 8),)),
    Case("upsample_nearest", lambda x: F.interpolate(x, scale_factor=2), ((2, 3, 4, 4),)),
    # reductions
    Case(
        "sum_mean_keepdim",
        lambda x: x.sum(1, keepdim=True) + x.mean(dim=(1, 2), keepdim=True),
        ((3, 4, 5),),
    ),
    Case("amax_amin", lambda x: x.amax(1) - x.amin(1)),
    Case(
        "max_min_dim",
        lambda x: x.max(dim=1).values + x.min(dim=1).values + x.max(dim=1).indices.float(),
    ),
    Case("argmax_argmin", lambda x: x.argmax(1) - x.argmin(1)),
    Case("any_all", lambda x: (x > 0).any(1).float() + (x > -2).all(1).float()),
    Case("cumsum", lambda x: torch.cumsum(x, 1)),
    Case("topk_sort", lambda x: torch.topk(x, 3, dim=1).values + torch.sort(x, 1)[0][:, :3]),
    # shapes and indexing
    Case("reshape_flatten", lambda x: x.reshape(x.shape[0], -1) + x.flatten(1), ((3, 4, 5),)),
    Case(
        "permute_contiguous",
        lambda x: x.permute(0, 2, 1).contiguous().view(x.shape[0], -1),
        ((3, 4, 5),),
    ),
    Case("unsqueeze_squeeze", lambda x: x.unsqueeze(1).squeeze(1) + x[:, None, :].sum(1)),
    Case("expand_repeat", lambda x: x[:, :1].expand(-1, 6) + x.repeat(1, 2)[:, :6]),
    Case(
        "cat_split",
        lambda x, y: torch.cat(torch.split(torch.cat([x, y], 1), 4, 1)[::-1], 1),
        ((4, 6), (4, 6)),
    ),
    Case("slice_select", lambda x: x[:, 1:5:2] + x[:, -1:] + x[:, 2].unsqueeze(1)),
    Case("flip", lambda x: torch.flip(x, [1])),
    Case("pad_constant", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), ((2, 3, 4),)),
    Case("pad_reflect", lambda x: F.pad(x, (2, 2), mode="reflect"), ((2, 3, 6),)),
    Case("gather", lambda x: torch.gather(x, 1, (x.abs() * 3).long().clamp(max=5))),
    Case(
        "scatter_add",
        lambda x: torch.zeros_like(x).scatter_add(1, (x.abs() * 3).long().clamp(max=5), x),
    ),
    Case("index_select", lambda x: x.index_select(1, torch.tensor([0, 2, 2, 5]))),
    Case("embedding_like_index", lambda x: torch.arange(10.0)[x], kind="int"),
    Case("arange_dynamic", lambda x: x + torch.arange(x.shape[0]).unsqueeze(1).float()),
    Case("new_full_dynamic", lambda x: x + torch.full((x.shape[0], 6), 2.0) + torch.ones_like(x)),
    Case("to_dtype", lambda x: (x * 10).to(torch.int32).to(torch.float32)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lowering_matches_eager(case: Case) -> None:
    class Wrapper(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return case.fn(*args)

    module = Wrapper().eval()
    examples = tuple(_input(s, s[0], case.kind, i) for i, s in enumerate(case.shapes))
    graph = load_torch(module, examples)
    names = [v.name for v in graph.inputs]
    assert len(names) == len(case.shapes)
    assert all(v.type.shape[0] == "N" for v in graph.inputs)
    checked = 0
    for batch in (2, 3):
        args = tuple(_input(s, batch, case.kind, 10 * batch + i) for i, s in enumerate(case.shapes))
        with torch.no_grad():
            expected = case.fn(*args)
        feeds = {name: a.numpy() for name, a in zip(names, args)}
        (out,) = irkit.evaluate(graph, feeds, engine="ort").values()
        assert out.dtype == expected.numpy().dtype
        np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=case.atol)
        checked += 1
    assert checked == 2


class PaddedAttention(torch.nn.Module):
    """nn.MultiheadAttention with a key padding mask, as a BERT-style encoder uses it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x: Any, pad: Any) -> Any:
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]


def test_multihead_attention_with_padding_mask() -> None:
    module = PaddedAttention().eval()
    example = (torch.randn(2, 10, 32), torch.zeros(2, 10, dtype=torch.bool))
    graph = load_torch(module, example)
    assert {"MatMul", "Softmax"} <= {n.op for n in graph.nodes}
    for batch in (1, 3):
        x = torch.randn(batch, 10, 32, generator=torch.Generator().manual_seed(batch))
        pad = torch.arange(10).expand(batch, 10) >= 10 - 2 * torch.arange(1, batch + 1)[:, None]
        with torch.no_grad():
            expected = module(x, pad).numpy()
        (out,) = irkit.evaluate(graph, {"x": x.numpy(), "pad": pad.numpy()}, engine="ort").values()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_every_case_has_a_distinct_name() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 60
