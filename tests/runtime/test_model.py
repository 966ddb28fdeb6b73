"""CompiledModel: results against onnxruntime, and input validation with exact messages."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from irkit.runtime import (
    Artifact,
    ArtifactError,
    CompiledModel,
    InputError,
    InputTypeError,
    TensorSpec,
    load,
)
from irkit.runtime.backends.ort import OrtRunner

Reference = Callable[..., dict[str, np.ndarray]]


def batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "s": rng.standard_normal((n, 3)).astype(np.float32),
    }


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_round_trip_matches_onnxruntime(
    mlp_artifact: Artifact, tmp_path: Path, mlp_reference: Reference, n: int
) -> None:
    model = load(mlp_artifact.save(tmp_path / "a"))
    feeds = batch(n, seed=n)
    got = model(**feeds)
    want = mlp_reference(**feeds)
    assert list(got) == ["y", "label"]
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got["label"], want["label"])
    assert got["y"].dtype == np.float32 and got["label"].dtype == np.int64
    assert got["y"].shape == (n, 3) and got["label"].shape == (n,)
    assert (got["y"] > 0).any()  # relu did not zero everything: the check has teeth
    np.testing.assert_array_equal(model.run(feeds)["y"], got["y"])


def test_model_attributes(mlp_model: CompiledModel) -> None:
    assert mlp_model.name == "mlp"
    assert mlp_model.backend == "ort"
    assert mlp_model.inputs == [
        TensorSpec("x", np.dtype("float32"), ("N", 4)),
        TensorSpec("s", np.dtype("float32"), ("N", 3)),
    ]
    assert [o.name for o in mlp_model.outputs] == ["y", "label"]
    assert mlp_model.outputs[1].dtype == np.dtype(np.int64)
    assert mlp_model.manifest.entry == {"model": "model.onnx"}
    assert repr(mlp_model) == (
        "CompiledModel('mlp', backend='ort', (x: float32[N,4], s: float32[N,3]) -> "
        "(y: float32[N,3], label: int64[N]))"
    )


def test_signature_for_http(mlp_model: CompiledModel) -> None:
    sig = mlp_model.signature()
    assert sig["name"] == "mlp"
    assert sig["platform"] == "irkit_ort"
    assert sig["inputs"][0] == {
        "name": "x", "datatype": "FP32", "shape": [-1, 4], "dtype": "float32",
        "symbolic_shape": ["N", 4],
    }
    assert sig["outputs"][1]["datatype"] == "INT64"


def test_warmup_runs_batch_one(mlp_model: CompiledModel) -> None:
    out = mlp_model.warmup()
    assert out["y"].shape == (1, 3)
    np.testing.assert_array_equal(out["y"], np.zeros((1, 3), np.float32))


def test_unknown_input_name(mlp_model: CompiledModel) -> None:
    feeds = {**batch(2), "z": np.zeros(1)}
    with pytest.raises(InputError, match=r"unknown input name\(s\) 'z'; the model's inputs are 'x', 's'"):
        mlp_model.run(feeds)


def test_missing_input_name(mlp_model: CompiledModel) -> None:
    with pytest.raises(InputError, match=r"missing input\(s\) 's'; the model's inputs are 'x', 's'"):
        mlp_model(x=batch(2)["x"])


def test_wrong_dtype_names_input_expected_and_got(mlp_model: CompiledModel) -> None:
    feeds = batch(2)
    feeds["s"] = feeds["s"].astype(np.float64)
    with pytest.raises(TypeError) as info:
        mlp_model.run(feeds)
    assert isinstance(info.value, InputTypeError)
    assert str(info.value).startswith("input 's': expected dtype float32, got float64")


def test_wrong_shape_names_input_expected_and_got(mlp_model: CompiledModel) -> None:
    feeds = batch(3)
    feeds["x"] = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError) as info:
        mlp_model.run(feeds)
    assert str(info.value) == "input 'x': expected shape [N,4], got [3,5] (axis 1 must be 4)"


def test_wrong_rank(mlp_model: CompiledModel) -> None:
    feeds = batch(3)
    feeds["x"] = np.zeros((3, 4, 1), np.float32)
    with pytest.raises(InputError, match=r"input 'x': expected rank 2 shape \[N,4\], got rank 3 shape \[3,4,1\]"):
        mlp_model.run(feeds)


def test_inconsistent_symbolic_dim(mlp_model: CompiledModel) -> None:
    feeds = {"x": batch(3)["x"], "s": batch(5)["s"]}
    with pytest.raises(InputError) as info:
        mlp_model.run(feeds)
    assert str(info.value) == (
        "input 's': dim 'N' (axis 0) is 5, but input 'x' bound N to 3; "
        "expected shape [N,3], got [5,3]"
    )


def test_non_contiguous_inputs_give_the_same_answer(
    mlp_model: CompiledModel, mlp_reference: Reference
) -> None:
    feeds = batch(8, seed=3)
    strided = {
        "x": np.repeat(feeds["x"], 2, axis=0)[::2],
        "s": np.asfortranarray(feeds["s"]),
    }
    assert not strided["x"].flags.c_contiguous and not strided["s"].flags.c_contiguous
    validated = mlp_model.validate(strided)
    assert all(a.flags.c_contiguous and a.flags.aligned for a in validated.values())
    np.testing.assert_allclose(mlp_model.run(strided)["y"], mlp_reference(**feeds)["y"], rtol=1e-6)


def test_contiguous_inputs_are_not_copied(mlp_model: CompiledModel) -> None:
    feeds = batch(4)
    validated = mlp_model.validate(feeds)
    assert validated["x"] is feeds["x"]


def test_lists_are_converted_only_when_lossless(
    mlp_model: CompiledModel, mlp_reference: Reference
) -> None:
    feeds = batch(2, seed=9)
    as_lists = {"x": feeds["x"].tolist(), "s": [[1, 0, -1], [2, 3, 4]]}
    got = mlp_model.run(as_lists)
    want = mlp_reference(x=feeds["x"], s=np.array([[1, 0, -1], [2, 3, 4]], np.float32))
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
    with pytest.raises(InputTypeError, match="input 'x': expected dtype float32, got strings"):
        mlp_model.run({"x": [["a"] * 4], "s": [[0.0] * 3]})
    with pytest.raises(InputTypeError, match="input 's': expected dtype float32, got int64"):
        mlp_model.run({"x": [[0.0] * 4], "s": [[2**40 + 1, 0, 0]]})  # float32 would round it
    with pytest.raises(InputError, match=r"input 'x'.*not a rectangular array"):
        mlp_model.run({"x": [[0.0] * 4, [0.0]], "s": [[0.0] * 3] * 2})
    with pytest.raises(InputTypeError, match=r"input 'x': expected a float32 array, got str"):
        mlp_model.run({"x": "1,2,3,4", "s": [[0.0] * 3]})


def test_big_endian_is_accepted_as_the_same_dtype(
    mlp_model: CompiledModel, mlp_reference: Reference
) -> None:
    feeds = batch(3, seed=5)
    swapped = {name: a.astype(a.dtype.newbyteorder(">")) for name, a in feeds.items()}
    np.testing.assert_allclose(mlp_model.run(swapped)["y"], mlp_reference(**feeds)["y"], rtol=1e-6)


def test_empty_batch_returns_empty_outputs(mlp_model: CompiledModel) -> None:
    out = mlp_model(x=np.zeros((0, 4), np.float32), s=np.zeros((0, 3), np.float32))
    assert out["y"].shape == (0, 3) and out["y"].dtype == np.float32
    assert out["label"].shape == (0,) and out["label"].dtype == np.int64


def test_empty_batch_runs_when_an_output_is_not_empty(
    sum_proto: onnx.ModelProto, tmp_path: Path
) -> None:
    artifact = Artifact(
        "batch_sum", "ort", "cpu",
        (TensorSpec("x", np.dtype("float32"), ("N", 3)),),
        (TensorSpec("total", np.dtype("float32"), (3,)),),
        files={"model.onnx": sum_proto.SerializeToString()}, entry={"model": "model.onnx"},
    )
    model = load(artifact.save(tmp_path / "sum"))
    np.testing.assert_allclose(model(x=np.ones((4, 3), np.float32))["total"], [4, 4, 4])
    np.testing.assert_array_equal(model(x=np.zeros((0, 3), np.float32))["total"], [0, 0, 0])


def test_concurrent_calls_are_correct(mlp_model: CompiledModel, mlp_reference: Reference) -> None:
    feeds = [batch(5, seed=i) for i in range(8)]
    expected = [mlp_reference(**f)["y"] for f in feeds]
    errors: list[str] = []

    def worker(index: int) -> None:
        for _ in range(20):
            got = mlp_model.run(feeds[index])["y"]
            if not np.allclose(got, expected[index], rtol=1e-6, atol=0):
                errors.append(f"thread {index} got a wrong answer")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_load_time_options_override_the_manifest(saved_mlp: Path) -> None:
    model = load(saved_mlp, threads=2, optimization_level="basic")
    assert isinstance(model._runner, OrtRunner)
    assert model._runner.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ArtifactError, match="unknown ort option"):
        load(saved_mlp, thread=2)
    with pytest.raises(ArtifactError, match="optimization_level='fast' must be one of"):
        load(saved_mlp, optimization_level="fast")
    with pytest.raises(ArtifactError, match="execution provider"):
        load(saved_mlp, providers=["NoSuchExecutionProvider"])


def test_manifest_signature_must_match_the_model(mlp_artifact: Artifact, tmp_path: Path) -> None:
    mlp_artifact.inputs = (mlp_artifact.inputs[0],)
    with pytest.raises(ArtifactError, match=r"model.onnx has inputs \['s', 'x'\] but the manifest declares \['x'\]"):
        load(mlp_artifact.save(tmp_path / "a"))


def test_garbage_model_file(mlp_artifact: Artifact, tmp_path: Path) -> None:
    mlp_artifact.files["model.onnx"] = b"not a protobuf at all"
    with pytest.raises(ArtifactError, match=r"onnxruntime could not load model.onnx"):
        load(mlp_artifact.save(tmp_path / "a"))


def test_closed_model_refuses_to_run(saved_mlp: Path) -> None:
    with load(saved_mlp) as model:
        assert model(**batch(1))["y"].shape == (1, 3)
    with pytest.raises(ArtifactError, match="is closed"):
        model(**batch(1))


def test_python_floats_out_of_range_for_float16_are_rejected() -> None:
    """Python floats are converted to the model's float type only when they fit."""
    from irkit.runtime.signature import InputTypeError, TensorSpec, validate_inputs

    spec = TensorSpec("x", np.dtype(np.float16), (2,))
    assert validate_inputs({"x": [1.5, 2.0]}, [spec])[0]["x"].dtype == np.float16
    got = validate_inputs({"x": [float("inf"), float("nan")]}, [spec])[0]["x"]
    assert np.isinf(got[0]) and np.isnan(got[1])  # non-finite values stay as they are
    with pytest.raises(InputTypeError, match=r"input 'x': values outside the range of float16"):
        validate_inputs({"x": [1e6, 2.0]}, [spec])
