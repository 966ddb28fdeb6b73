"""Signed artifacts: irkit keygen / sign / verify and load(trusted_keys=...) accept only
artifacts signed by a trusted key and unchanged since, through the real CLI too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import irkit.runtime
from irkit.cli import main
from irkit.runtime import ArtifactError
from irkit.runtime.artifact import manifest_digest, sha256_file

pytest.importorskip("cryptography")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub"
    assert main(["keygen", str(private), str(public)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600
    return private, public


@pytest.fixture
def signed(saved_mlp: Path, keys: tuple[Path, Path]) -> Path:
    assert main(["sign", str(saved_mlp), "--key", str(keys[0])]) == 0
    assert (saved_mlp / "manifest.sig").is_file()
    return saved_mlp


def rehash(directory: Path) -> None:
    """Recompute every checksum after an edit, as anyone can."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["files"] = {rel: sha256_file(directory / rel) for rel in data["files"]}
    data["manifest_sha256"] = manifest_digest(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_a_signed_artifact_loads_with_its_key_and_runs(
        signed: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = irkit.runtime.load(signed, trusted_keys=[keys[1]])
    plain = irkit.runtime.load(signed)  # unsigned loading still works without keys
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.standard_normal((2, *spec.shape[1:])).astype(spec.dtype)
             for spec in plain.inputs}
    for got, want in zip(model.run(feeds).values(), plain.run(feeds).values()):
        np.testing.assert_array_equal(got, want)
    assert main(["verify", str(signed), "--trusted-key", str(keys[1])]) == 0
    assert "signed by trusted key" in capsys.readouterr().out


def test_unsigned_foreign_and_modified_artifacts_are_refused(
        signed: Path, keys: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    other_private, other_public = tmp_path / "other.pem", tmp_path / "other.pub"
    main(["keygen", str(other_private), str(other_public)])
    with pytest.raises(ArtifactError, match="not one of the 1 trusted key"):
        irkit.runtime.load(signed, trusted_keys=[other_public])

    unsigned = tmp_path / "unsigned"
    shutil.copytree(signed, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(ArtifactError, match="is not signed"):
        irkit.runtime.load(unsigned, trusted_keys=[keys[1]])

    # a file changed and every checksum recomputed: the hashes agree, the signature not
    tampered = tmp_path / "tampered"
    shutil.copytree(signed, tampered)
    victim = next(p for p in sorted(tampered.iterdir()) if p.name not in (
        "manifest.json", "manifest.sig") and p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\0")
    rehash(tampered)
    irkit.runtime.verify(tampered)  # the checksums alone are satisfied
    with pytest.raises(ArtifactError, match="modified after it was signed"):
        irkit.runtime.load(tampered, trusted_keys=[keys[1]])
    assert main(["verify", str(tampered), "--trusted-key", str(keys[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("irkit: error: ") and "Traceback" not in err
    assert main(["run", str(tampered), "--trusted-key", str(keys[1])]) == 2

    (signed / "manifest.sig").write_text("[" * 100_000)
    with pytest.raises(ArtifactError, match="not an irkit signature"):
        irkit.runtime.load(signed, trusted_keys=[keys[1]])


def test_keygen_never_overwrites_a_private_key(keys: tuple[Path, Path]) -> None:
    before = keys[0].read_bytes()
    assert main(["keygen", str(keys[0]), str(keys[1])]) == 2
    assert keys[0].read_bytes() == before
