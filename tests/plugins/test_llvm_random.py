"""The random ops on the llvm backend (irkit.lower.random_ops).

Values cannot match ONNX Runtime's (another generator), so the tests check:

- reproducibility: the llvm build gives the kernel-IR interpreter's values (integer and
  Bernoulli outputs bit for bit; floats within rtol 1e-6 / 1e-5 for the libm-based normal),
  and RandomUniform f64 equals the numpy form of the generator (``draws``) within 1 ulp;
  another seed gives other values;
- fresh values per call: nodes without a seed differ between calls (checked and exact
  call paths) and equal ``draws`` under ``unseeded_key(node key, call key)``; the load option
  ``random_seed`` repeats them per call number, across loads; seeded nodes never change;
- distributions, on 2**18 draws per op: mean and variance within 6 standard errors,
  the Kolmogorov-Smirnov distance below 0.006 (p < 1e-6 for a true match at n = 2**18:
  sqrt(ln(2e6) / 2n) = 0.0053), Bernoulli frequencies within 6 binomial standard
  errors, Multinomial frequencies with a chi-square statistic below 35 (3 degrees of
  freedom: p < 1e-6). The generator is deterministic, so these cannot flake; the bounds
  say how far a bad generator would have to be off to pass;
- dtypes and shapes exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("llvmlite")

import onnx
from onnx import TensorProto, helper

from irkit import api
from irkit.lower.driver import lower_graph
from irkit.lower.random_ops import GAMMA, draws, seed_key, unseeded_key
from irkit.testing.op_cases import KIR, LLVM_NATIVE, compile_and_load

N_STATS = 2**18
OUTS = ("normal", "uniform", "bern", "bern_bool", "multi", "like", "noseed", "noseed2")


def _model(n: int, classes: int = 4) -> onnx.ModelProto:
    nodes = [
        helper.make_node("RandomNormal", [], ["normal"], shape=[4, n // 4], seed=3.0,
                         mean=1.0, scale=2.0),
        helper.make_node("RandomUniform", [], ["uniform"], shape=[n], low=-1.0, high=3.0,
                         dtype=TensorProto.DOUBLE, seed=5.0),
        helper.make_node("Bernoulli", ["p"], ["bern"], seed=1.0),
        helper.make_node("Bernoulli", ["p"], ["bern_bool"], seed=1.0, dtype=TensorProto.BOOL),
        helper.make_node("Multinomial", ["logits"], ["multi"], seed=2.0, sample_size=n // 2,
                         dtype=TensorProto.INT64),
        helper.make_node("RandomUniformLike", ["p"], ["like"], dtype=TensorProto.FLOAT16,
                         seed=7.0),
        helper.make_node("RandomNormal", [], ["noseed"], shape=[8]),
        helper.make_node("RandomNormal", [], ["noseed2"], shape=[8]),
    ]
    inputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 5]),
              helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, classes])]
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in OUTS]
    graph = helper.make_graph(nodes, "random", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return onnx.shape_inference.infer_shapes(model)


PROBS = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
CLASS_P = np.array([0.1, 0.2, 0.3, 0.4])
LOGITS = np.stack([np.log(CLASS_P) + 3.0, [0.0, -np.inf, 0.0, 0.0]]).astype(np.float32)


def _feeds(rows: int) -> dict[str, np.ndarray]:
    return {"p": np.tile(PROBS, (rows, 1)), "logits": LOGITS}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    model = _model(N_STATS)
    loaded = compile_and_load(model, tmp_path_factory.mktemp("big"), threads=2)
    return loaded(**_feeds(N_STATS // 5))


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))


def _ks(sample: np.ndarray, cdf: Any) -> float:
    x = np.sort(sample.astype(np.float64))
    f = cdf(x)
    n = x.size
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def _moments(x: np.ndarray, mean: float, var: float) -> None:
    n = x.size
    x = x.astype(np.float64)
    assert abs(x.mean() - mean) < 6 * math.sqrt(var / n)
    # var of the sample variance ~ 2 var^2 / n (normal) and 0.8 var^2 / n (uniform)
    assert abs(x.var() - var) < 6 * var * math.sqrt(2 / n)


def test_distributions(big: dict[str, np.ndarray]) -> None:
    normal, uniform = big["normal"], big["uniform"]
    assert normal.dtype == np.float32 and normal.shape == (4, N_STATS // 4)
    _moments(normal, 1.0, 4.0)
    assert _ks(normal.ravel(), lambda x: _normal_cdf((x - 1.0) / 2.0)) < 0.006
    assert uniform.dtype == np.float64 and uniform.shape == (N_STATS,)
    assert uniform.min() >= -1.0 and uniform.max() < 3.0
    _moments(uniform, 1.0, 16 / 12)
    assert _ks(uniform, lambda x: (x + 1.0) / 4.0) < 0.006

    bern = big["bern"]
    assert bern.dtype == np.float32 and bern.shape == (N_STATS // 5, 5)
    assert set(np.unique(bern).tolist()) <= {0.0, 1.0}
    freq = bern.mean(axis=0)
    rows = bern.shape[0]
    for p, f in zip(PROBS.astype(np.float64), freq):
        assert abs(f - p) <= 6 * math.sqrt(p * (1 - p) / rows)  # exact at p = 0 and 1
    assert big["bern_bool"].dtype == np.bool_
    assert np.array_equal(big["bern_bool"], bern.astype(bool))  # same seed, same draws

    multi = big["multi"]
    assert multi.dtype == np.int64 and multi.shape == (2, N_STATS // 2)
    counts = np.bincount(multi[0], minlength=4)
    expected = CLASS_P * multi.shape[1]
    assert float(((counts - expected) ** 2 / expected).sum()) < 35.0
    masked = np.bincount(multi[1], minlength=4)
    assert masked[1] == 0  # a -inf logit is never drawn
    assert float(((masked[[0, 2, 3]] - multi.shape[1] / 3) ** 2 / (multi.shape[1] / 3)
                  ).sum()) < 31.0  # 2 degrees of freedom: p < 1e-6

    like = big["like"]
    assert like.dtype == np.float16 and like.shape == (N_STATS // 5, 5)
    assert like.min() >= 0.0 and like.max() < 1.0
    assert np.array_equal(like * 2048, np.round(like * 2048))  # 11 bits: exact in f16
    assert abs(float(like.astype(np.float64).mean()) - 0.5) < 6 * math.sqrt(1 / 12 / like.size)


def test_llvm_gives_the_interpreters_values(tmp_path: Path) -> None:
    model = _model(400)
    llvm = compile_and_load(model, tmp_path / "llvm", target=LLVM_NATIVE)(**_feeds(3))
    kir = compile_and_load(model, tmp_path / "kir", target=KIR)(**_feeds(3))
    for name in ("bern", "bern_bool", "multi"):
        assert llvm[name].dtype == kir[name].dtype
        assert np.array_equal(llvm[name], kir[name]), name
    np.testing.assert_allclose(llvm["uniform"], kir["uniform"], rtol=1e-15)
    np.testing.assert_allclose(llvm["like"].astype(np.float32), kir["like"], rtol=1e-3)
    np.testing.assert_allclose(llvm["normal"], kir["normal"], rtol=1e-5, atol=1e-6)
    # the numpy form of the generator: u = top 53 bits * 2**-53, low + (high - low) * u
    key = seed_key(_node(model, "uniform"))[0]
    u = (draws(key, np.arange(400, dtype=np.uint64)) >> np.uint64(11)) * 2.0**-53
    np.testing.assert_allclose(llvm["uniform"], -1.0 + 4.0 * u, rtol=2**-52, atol=2**-51)
    # two unseeded nodes of one call differ
    assert not np.array_equal(llvm["noseed"], llvm["noseed2"])


def _fresh_model() -> onnx.ModelProto:
    nodes = [helper.make_node("RandomUniform", [], ["fresh"], shape=[4096],
                              dtype=TensorProto.DOUBLE),
             helper.make_node("RandomUniform", [], ["fixed"], shape=[16], seed=2.0),
             helper.make_node("Bernoulli", ["p"], ["bern"])]
    inputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])]
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
               for o in ("fresh", "fixed", "bern")]
    graph = helper.make_graph(nodes, "fresh", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return onnx.shape_inference.infer_shapes(model)


def test_unseeded_nodes_draw_fresh_values_per_call(tmp_path: Path) -> None:
    import irkit.runtime
    from irkit.runtime.artifact import ArtifactError
    from irkit.runtime.call_keys import CALL_KEY_SYMBOL, call_key

    model = _fresh_model()
    path = api.compile(api.load_model(model), target="llvm").save(tmp_path / "fresh")
    entry = irkit.runtime.load(path).manifest.entry
    assert entry["variants"][0]["segments"][0]["symbols"] == ["N", CALL_KEY_SYMBOL]
    feeds = {"p": np.full((2, 3), 0.5, np.float32)}

    def calls(count: int, **options: Any) -> list[dict[str, np.ndarray]]:
        loaded = irkit.runtime.load(path, **options)  # call 1: checked path; then exact
        assert loaded._runner.exact  # type: ignore[union-attr]
        return [loaded(**feeds) for _ in range(count)]

    plain = calls(3)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not np.array_equal(plain[a]["fresh"], plain[b]["fresh"])
        assert np.array_equal(plain[a]["fixed"], plain[b]["fixed"])
    assert not np.array_equal(plain[0]["fresh"], calls(1)[0]["fresh"])  # a new load
    seeded, again = calls(3, random_seed=5), calls(3, random_seed=5)
    fresh_key, bern_key = (seed_key(_node(model, name))[0] for name in ("fresh", "bern"))
    for n in range(3):
        assert np.array_equal(seeded[n]["fresh"], again[n]["fresh"])
        assert np.array_equal(seeded[n]["fixed"], plain[0]["fixed"])
        key = call_key(5, n)  # the n-th call's key: u = top 53 (f64) / 24 (f32) bits
        u = draws(unseeded_key(fresh_key, key), np.arange(4096, dtype=np.uint64))
        assert np.array_equal(seeded[n]["fresh"], (u >> np.uint64(11)) * 2.0**-53)
        u = draws(unseeded_key(bern_key, key), np.arange(6, dtype=np.uint64)) >> np.uint64(40)
        assert np.array_equal(seeded[n]["bern"], (u * 2.0**-24 < 0.5).reshape(2, 3))
    assert not np.array_equal(calls(1, random_seed=6)[0]["fresh"], seeded[0]["fresh"])
    sample = np.concatenate([c["fresh"] for c in seeded])  # deterministic: random_seed
    _moments(sample, 0.5, 1 / 12)
    # consecutive calls are uncorrelated (6 standard errors of a correlation at n = 4096)
    assert abs(np.corrcoef(seeded[0]["fresh"], seeded[1]["fresh"])[0, 1]) < 6 / 64
    with pytest.raises(ArtifactError, match="random_seed=-1 must be an int"):
        irkit.runtime.load(path, random_seed=-1)

    # one input, one output: the llvm runner's single-array exact path
    like = helper.make_node("RandomUniformLike", ["x"], ["y"], dtype=TensorProto.DOUBLE)
    graph = helper.make_graph([like], "like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 4])])
    single = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    path = api.compile(api.load_model(single), target="llvm").save(tmp_path / "single")
    loaded = irkit.runtime.load(path, random_seed=9)
    y_key = seed_key(_node(single, "y"))[0]
    for n in range(3):
        u = draws(unseeded_key(y_key, call_key(9, n)), np.arange(8, dtype=np.uint64))
        y = loaded(x=np.zeros((2, 4), np.float32))["y"]
        assert np.array_equal(y, ((u >> np.uint64(11)) * 2.0**-53).reshape(2, 4)), n


def test_seed_changes_values_and_the_report_names_the_key(tmp_path: Path) -> None:
    model = _model(64)
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for attr in other.graph.node[0].attribute:
        if attr.name == "seed":
            attr.f = 4.0
    a = compile_and_load(model, tmp_path / "a")(**_feeds(1))
    b = compile_and_load(other, tmp_path / "b")(**_feeds(1))
    assert not np.array_equal(a["normal"], b["normal"])
    assert np.array_equal(a["uniform"], b["uniform"])
    notes = lower_graph(api.load_model(model)).kernel_notes
    unseeded = [note for note in notes.values() if "no seed attribute" in note]
    assert len(unseeded) == 2 and all("key 0x" in note and "xor a fresh key per call" in note
                                      for note in unseeded)
    assert any("seed 3.0" in note for note in notes.values())
    assert GAMMA == 0x9E3779B97F4A7C15


def _node(model: onnx.ModelProto, output: str) -> Any:
    graph = api.load_model(model)
    return next(n for n in graph.nodes if n.outputs[0].name == output)


def test_bad_attributes_are_clear_errors() -> None:
    nodes = [helper.make_node("Multinomial", ["x"], ["y"], dtype=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    with pytest.raises(Exception, match=r"dtype 1 is not int32 \(6\) or int64 \(7\)"):
        api.compile(api.load_model(model), target="llvm")


def test_conformance_checks_what_random_cases_can_check() -> None:
    from irkit.conformance import Outcome, load_cases
    from irkit.conformance.runner import check_random, run_case

    for name, seeded in (("test_bernoulli_seed", True), ("test_bernoulli_double_expanded",
                                                          False)):
        (case,) = load_cases(pattern=f"^{name}$")
        result = run_case(case, "llvm")
        assert result.outcome is Outcome.RANDOM, result.reason
        # only a seeded node repeats its values; an unseeded one draws fresh ones per call
        assert ("a second run repeats the values" in result.reason) is seeded
    zero_one = [np.array([0.0, 1.0, 1.0], np.float32)]
    with pytest.raises(AssertionError, match="other than 0 and 1"):
        check_random(zero_one, [np.array([0.0, 0.5, 1.0], np.float32)], None, "out")
    with pytest.raises(AssertionError, match="second run"):
        check_random(zero_one, zero_one, [np.array([1.0, 1.0, 1.0], np.float32)], "out")
    with pytest.raises(AssertionError, match="float64"):
        check_random(zero_one, [np.zeros(3)], None, "out")
