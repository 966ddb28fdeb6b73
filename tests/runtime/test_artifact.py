"""Artifact directories: save, verify, and every way a directory can be wrong."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from irkit.runtime import FORMAT_VERSION, Artifact, ArtifactError, load, read_manifest, verify
from irkit.runtime.artifact import (
    MANIFEST_NAME,
    load_npz,
    manifest_digest,
    npz_bytes,
    raw_bytes,
    read_verified,
    sha256_bytes,
)


def rewrite_manifest(directory: Path, **changes: object) -> None:
    """Edit manifest.json and re-seal it, as a careless (or malicious) tool would."""
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    data["manifest_sha256"] = manifest_digest(data)
    path.write_text(json.dumps(data))


def test_save_writes_manifest_with_every_field(mlp_artifact: Artifact, tmp_path: Path) -> None:
    path = mlp_artifact.save(tmp_path / "out")
    data = json.loads((path / MANIFEST_NAME).read_text())
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["name"] == "mlp"
    assert data["backend"] == "ort"
    assert data["target"] == "cpu"
    assert data["entry"] == {"model": "model.onnx"}
    assert data["options"] == {"threads": 1}
    assert data["report"] == [{"pass": "fuse", "nodes_before": 4, "nodes_after": 4}]
    assert data["created_by"].startswith("irkit ")
    assert data["signature"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["N", 4]},
        {"name": "s", "dtype": "float32", "shape": ["N", 3]},
    ]
    assert data["signature"]["outputs"][1] == {"name": "label", "dtype": "int64", "shape": ["N"]}
    assert data["files"] == {
        rel: sha256_bytes(content) for rel, content in mlp_artifact.files.items()
    }
    for rel, content in mlp_artifact.files.items():
        assert (path / rel).read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_read_round_trip(saved_mlp: Path, mlp_artifact: Artifact) -> None:
    again = Artifact.read(saved_mlp)
    assert again.files == mlp_artifact.files
    assert again.inputs == mlp_artifact.inputs
    assert again.outputs == mlp_artifact.outputs
    assert again.report == mlp_artifact.report
    assert verify(saved_mlp) == read_manifest(saved_mlp)


def test_save_replaces_an_existing_artifact(mlp_artifact: Artifact, saved_mlp: Path) -> None:
    mlp_artifact.files.pop("meta/blob.bin")
    mlp_artifact.name = "mlp2"
    mlp_artifact.save(saved_mlp)
    assert not (saved_mlp / "meta" / "blob.bin").exists()
    assert load(saved_mlp).name == "mlp2"
    assert sorted(p.name for p in saved_mlp.parent.iterdir()) == ["mlp"]


def test_save_into_empty_directory(mlp_artifact: Artifact, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert load(mlp_artifact.save(tmp_path / "empty")).name == "mlp"


def test_save_refuses_non_artifact_directory(mlp_artifact: Artifact, tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    with pytest.raises(ArtifactError, match="not empty and is not an irkit artifact"):
        mlp_artifact.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not delete"


def test_save_refuses_a_file(mlp_artifact: Artifact, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        mlp_artifact.save(tmp_path / "f")


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/../../b", "C:/x", "a\\b", "./a", "a//b", MANIFEST_NAME])
def test_save_refuses_unsafe_file_names(mlp_artifact: Artifact, tmp_path: Path, bad: str) -> None:
    mlp_artifact.files[bad] = b"x"
    with pytest.raises(ArtifactError, match="mlp"):
        mlp_artifact.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_refuses_unserializable_report(mlp_artifact: Artifact, tmp_path: Path) -> None:
    mlp_artifact.report = [object()]
    with pytest.raises(ArtifactError, match="not JSON-serializable"):
        mlp_artifact.save(tmp_path / "out")


FILES = ["model.onnx", "weights/extra.npz", "meta/blob.bin"]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("relpath", FILES)
def test_flipped_byte_is_caught_and_named(saved_mlp: Path, relpath: str, where: str) -> None:
    path = saved_mlp / relpath
    data = bytearray(path.read_bytes())
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as info:
        load(saved_mlp)
    assert str(info.value) == (
        f"checksum mismatch for {relpath} in {saved_mlp}: artifact is corrupt or was modified"
    )


def test_every_byte_of_the_manifest_is_protected(saved_mlp: Path) -> None:
    path = saved_mlp / MANIFEST_NAME
    original = path.read_bytes()
    checked = 0
    for index in range(0, len(original), 7):
        data = bytearray(original)
        data[index] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=MANIFEST_NAME):
            load(saved_mlp)
        checked += 1
    path.write_bytes(original)
    assert load(saved_mlp).name == "mlp"
    assert checked > 100


def test_missing_manifest(saved_mlp: Path) -> None:
    (saved_mlp / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match=f"no manifest.json in {saved_mlp}: not an irkit artifact"):
        load(saved_mlp)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_manifest_not_json(saved_mlp: Path) -> None:
    (saved_mlp / MANIFEST_NAME).write_text("{\n  \"format_version\": 1,\n  oops\n}")
    with pytest.raises(ArtifactError, match=r"manifest.json is not valid JSON \(line 3, column 3\)"):
        load(saved_mlp)


def test_manifest_not_an_object(saved_mlp: Path) -> None:
    (saved_mlp / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="expected a JSON object, got list"):
        load(saved_mlp)


@pytest.mark.parametrize("version", [0, 2, "1", None, True])
def test_wrong_format_version(saved_mlp: Path, version: object) -> None:
    rewrite_manifest(saved_mlp, format_version=version)
    with pytest.raises(ArtifactError) as info:
        load(saved_mlp)
    message = str(info.value)
    assert f"artifact format version {version!r} is not supported (expected 1)" in message
    assert MANIFEST_NAME in message


@pytest.mark.parametrize("bad", ["../outside.bin", "/etc/passwd", "meta/../../outside.bin", "meta/./blob.bin"])
def test_path_traversal_in_manifest_is_refused(saved_mlp: Path, bad: str) -> None:
    outside = saved_mlp.parent / "outside.bin"
    outside.write_bytes(b"secret")
    data = json.loads((saved_mlp / MANIFEST_NAME).read_text())
    files = dict(data["files"])
    files[bad] = sha256_bytes(b"secret")
    rewrite_manifest(saved_mlp, files=files)
    with pytest.raises(ArtifactError, match="is not a plain relative path inside the artifact"):
        load(saved_mlp)


def test_extra_file_is_refused(saved_mlp: Path) -> None:
    (saved_mlp / "meta" / "payload.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match=r"meta/payload.py in .* not listed in manifest.json"):
        load(saved_mlp)


def test_missing_file_is_refused(saved_mlp: Path) -> None:
    (saved_mlp / "weights" / "extra.npz").unlink()
    with pytest.raises(ArtifactError, match=r"weights/extra.npz listed in manifest.json are missing"):
        load(saved_mlp)


def test_symlink_is_refused(saved_mlp: Path, tmp_path: Path) -> None:
    target = saved_mlp / "meta" / "blob.bin"
    real = tmp_path / "real.bin"
    real.write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(real, target)
    with pytest.raises(ArtifactError, match=r"meta/blob.bin .* is a symbolic link"):
        load(saved_mlp)


def test_manifest_type_errors_are_named(saved_mlp: Path) -> None:
    rewrite_manifest(saved_mlp, signature={"inputs": [{"name": "x", "dtype": "float99", "shape": [1]}], "outputs": []})
    with pytest.raises(ArtifactError, match=r"signature.inputs: unknown dtype 'float99'"):
        load(saved_mlp)


def test_bad_hash_format(saved_mlp: Path) -> None:
    data = json.loads((saved_mlp / MANIFEST_NAME).read_text())
    rewrite_manifest(saved_mlp, files={**data["files"], "model.onnx": "abc"})
    with pytest.raises(ArtifactError, match=r"sha256 of 'model.onnx' is not 64 hex digits"):
        load(saved_mlp)


def test_read_verified_refuses_unlisted_and_modified(saved_mlp: Path) -> None:
    manifest = verify(saved_mlp)
    assert read_verified(saved_mlp, manifest, "meta/blob.bin") == bytes(range(256))
    with pytest.raises(ArtifactError, match="is not a file of the artifact"):
        read_verified(saved_mlp, manifest, "../mlp/model.onnx")
    (saved_mlp / "meta" / "blob.bin").write_bytes(b"changed after verification")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for meta/blob.bin"):
        read_verified(saved_mlp, manifest, "meta/blob.bin")


def test_npz_helpers_never_pickle() -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int8)}
    back = load_npz(npz_bytes(arrays))
    assert sorted(back) == ["b", "w"]
    np.testing.assert_array_equal(back["w"], arrays["w"])
    assert back["b"].dtype == np.int8
    with pytest.raises(ArtifactError, match="dtype object"):
        npz_bytes({"o": np.array([{}, []], dtype=object)})
    pickled = io.BytesIO()
    np.savez(pickled, o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(pickled.getvalue())


def test_raw_bytes_are_little_endian() -> None:
    big = np.array([1.0, -2.5], dtype=">f4")
    assert raw_bytes(big) == np.array([1.0, -2.5], dtype="<f4").tobytes()
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert np.frombuffer(raw_bytes(fortran), dtype="<i4").tolist() == [0, 1, 2, 3, 4, 5]
