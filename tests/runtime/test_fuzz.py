"""Throw arbitrary inputs at a loaded model: only ValueError/TypeError, right answers otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from irkit.runtime import ArtifactError, CompiledModel, InputError, Manifest, TensorSpec
from irkit.runtime.artifact import manifest_digest

Reference = Callable[..., dict[str, np.ndarray]]

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
# Shapes near the valid ones, so that many draws get past validation and run.
NEAR_VALID = st.tuples(st.integers(0, 4), st.sampled_from([3, 4, 5]))


@st.composite
def tensor(draw: st.DrawFn) -> Any:
    shape = draw(st.one_of(SHAPES, NEAR_VALID))
    dtype = draw(st.sampled_from(DTYPES))
    array = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False, min_value=-100, max_value=100) if np.dtype(dtype).kind == "f" else None))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "list", "scalar", "big-endian"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return np.repeat(array, 2, axis=0)[::2]
    if layout == "list":
        return array.tolist()
    if layout == "scalar":
        return draw(st.one_of(st.floats(allow_nan=False), st.integers(-10, 10), st.text(max_size=2), st.none()))
    if layout == "big-endian" and array.dtype.itemsize > 1:
        return array.astype(array.dtype.newbyteorder(">"))
    return array


FEEDS = st.dictionaries(st.sampled_from(["x", "s", "extra"]), tensor(), min_size=0, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(feeds=FEEDS)
def test_random_inputs_raise_clean_errors_or_give_right_answers(
    mlp_model: CompiledModel, mlp_reference: Reference, feeds: dict[str, Any]
) -> None:
    try:
        out = mlp_model.run(feeds)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        assert message, "errors must say something"
        assert any(f"'{name}'" in message for name in ("x", "s", "extra", "N")) or "mapping" in message
        return
    # Valid: must equal onnxruntime on the same values as float32 C arrays.
    x = np.asarray(feeds["x"], dtype=np.float32)
    s = np.asarray(feeds["s"], dtype=np.float32)
    assert x.shape[1:] == (4,) and s.shape[1:] == (3,) and x.shape[0] == s.shape[0]
    if x.shape[0] == 0:
        assert out["y"].shape == (0, 3) and out["label"].shape == (0,)
        return
    want = mlp_reference(x=x, s=s)
    np.testing.assert_allclose(out["y"], want["y"], rtol=1e-6)
    np.testing.assert_array_equal(out["label"], want["label"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 6), layout=st.sampled_from(["c", "fortran", "strided", "list", "big-endian"]))
def test_valid_inputs_in_every_layout_match_onnxruntime(
    mlp_model: CompiledModel, mlp_reference: Reference, n: int, layout: str
) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    s = rng.standard_normal((n, 3)).astype(np.float32)

    def arrange(a: np.ndarray) -> Any:
        if layout == "fortran":
            return np.asfortranarray(a)
        if layout == "strided":
            return np.repeat(a, 2, axis=0)[::2]
        if layout == "list":
            return a.tolist()
        if layout == "big-endian":
            return a.astype(">f4")
        return a

    if n == 0 and layout == "list":
        # [] has shape (0,): a list cannot say "zero rows of 4", so it is refused clearly.
        with pytest.raises(InputError, match=r"input 'x': expected rank 2 shape \[N,4\], got rank 1 shape \[0\]"):
            mlp_model(x=arrange(x), s=arrange(s))
        return
    out = mlp_model(x=arrange(x), s=arrange(s))
    assert out["y"].shape == (n, 3)
    if n:
        np.testing.assert_allclose(out["y"], mlp_reference(x=x, s=s)["y"], rtol=1e-6)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
GOOD = {
    "format_version": 1, "name": "m", "backend": "ort", "target": "cpu",
    "signature": {"inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}], "outputs": []},
    "entry": {}, "options": {}, "files": {"a.bin": "0" * 64}, "report": [], "created_by": "t",
}


@st.composite
def mutated_manifest(draw: st.DrawFn) -> dict[str, Any]:
    data = json.loads(json.dumps(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        target = data
        path = draw(st.sampled_from([
            ("format_version",), ("name",), ("backend",), ("signature",), ("signature", "inputs"),
            ("files",), ("entry",), ("report",), ("options",), ("files", "a.bin"),
        ]))
        for key in path[:-1]:
            target = target[key] if isinstance(target, dict) and isinstance(target.get(key), dict) else {}
        target[path[-1]] = draw(JSON)
    data["manifest_sha256"] = manifest_digest(data)
    return data


@settings(max_examples=300, deadline=None)
@given(data=mutated_manifest())
def test_malformed_manifests_raise_only_artifact_errors(data: dict[str, Any]) -> None:
    try:
        manifest = Manifest.from_dict(data, where="fuzz/manifest.json")
    except ArtifactError as exc:
        assert "fuzz/manifest.json" in str(exc)
        return
    # Whatever was accepted is well-formed and survives a round trip.
    assert isinstance(manifest.name, str) and manifest.format_version == 1
    assert all(isinstance(spec, TensorSpec) for spec in manifest.inputs)
    again = json.loads(manifest.to_json())
    assert Manifest.from_dict(again) == manifest
