"""Signed artifacts: Ed25519 signatures over ``manifest.json`` for provenance.

The manifest's sha256 (``manifest_sha256``) catches accidents — a flipped bit, a half
copy — but anyone who edits an artifact can recompute it. A signature can only be made
with the private key, so a loader that trusts a set of public keys refuses artifacts
that were changed after signing, signed by someone else, or not signed at all.

``manifest.sig`` (next to ``manifest.json``; the only file the manifest does not list)::

    {"algorithm": "ed25519", "public_key": "<64 hex digits>", "signature": "<128 hex>"}

The signature covers the exact bytes of ``manifest.json``, which holds the sha256 of
every other file, so it covers the whole artifact. Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), as ``openssl genpkey -algorithm ed25519`` writes them.

    generate_keypair(private_path, public_path)
    sign_artifact(artifact_dir, private_path)          # writes manifest.sig
    check_signature(artifact_dir, trusted_keys)        # ArtifactError unless trusted
    irkit.runtime.load(artifact_dir, trusted_keys=[public_path])

Needs the ``cryptography`` package (``pip install irkit[sign]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from irkit.runtime.artifact import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ArtifactError,
    open_regular,
    verify,
)

__all__ = ["check_signature", "generate_keypair", "public_key_hex", "sign_artifact"]

KeySource = str | bytes | os.PathLike[str]
_MAX_SIGNATURE_FILE = 4096


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise ArtifactError("signing artifacts needs the 'cryptography' package "
                            f"(pip install 'irkit[sign]'): {exc}") from None
    return ed25519


def generate_keypair(private_path: str | os.PathLike[str],
                     public_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 key pair as PEM files (the private one mode 0600); returns the
    public key as hex. Refuses to overwrite an existing private key."""
    from cryptography.hazmat.primitives import serialization

    key = _crypto().Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ArtifactError(f"{private_path} exists; not overwriting a private key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public = key.public_key()
    Path(public_path).write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return _raw_public(public).hex()


def _raw_public(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def _load_private(source: KeySource) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{_name(source)}: not an unencrypted PEM private key: {exc}"
                            ) from None
    if not isinstance(key, _crypto().Ed25519PrivateKey):
        raise ArtifactError(f"{_name(source)}: not an Ed25519 private key")
    return key


def public_key_hex(source: KeySource) -> str:
    """A public key (PEM file or bytes, or 64 hex digits) as 64 hex digits."""
    from cryptography.hazmat.primitives import serialization

    if isinstance(source, str) and len(source) == 64 and not Path(source).exists():
        try:
            return bytes.fromhex(source).hex()
        except ValueError:
            pass
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read public key {_name(source)}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{_name(source)}: not a PEM public key: {exc}") from None
    if not isinstance(key, _crypto().Ed25519PublicKey):
        raise ArtifactError(f"{_name(source)}: not an Ed25519 public key")
    return _raw_public(key).hex()


def _name(source: KeySource) -> str:
    return "key" if isinstance(source, bytes) else str(source)


def sign_artifact(artifact_dir: str | os.PathLike[str], private_key: KeySource) -> str:
    """Check the artifact's files, then write ``manifest.sig``; returns the public key hex."""
    directory = Path(artifact_dir)
    verify(directory)
    key = _load_private(private_key)
    with open_regular(directory / MANIFEST_NAME) as handle:
        manifest = handle.readall()
    public = _raw_public(key.public_key()).hex()
    doc = {"algorithm": "ed25519", "public_key": public, "signature": key.sign(manifest).hex()}
    staging = directory / f".{SIGNATURE_NAME}.tmp"
    staging.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(staging, directory / SIGNATURE_NAME)
    return public


def check_signature(artifact_dir: str | os.PathLike[str],
                    trusted_keys: Iterable[KeySource]) -> str:
    """ArtifactError unless ``manifest.sig`` is a valid signature of ``manifest.json`` by
    one of ``trusted_keys``; returns the signer's public key hex. (File checksums are
    ``verify``'s job; the signed manifest holds them.)"""
    directory = Path(artifact_dir)
    trusted = {public_key_hex(k) for k in trusted_keys}
    if not trusted:
        raise ArtifactError("trusted_keys is empty: no artifact could be trusted")
    path = directory / SIGNATURE_NAME
    if not path.exists():
        raise ArtifactError(f"{directory} is not signed (no {SIGNATURE_NAME}); sign it with "
                            "'irkit sign' or load it without trusted_keys")
    with open_regular(path) as handle:
        text = handle.read(_MAX_SIGNATURE_FILE + 1)
    try:
        doc = json.loads(text) if len(text) <= _MAX_SIGNATURE_FILE else None
    except (ValueError, RecursionError):
        doc = None
    fields = ("algorithm", "public_key", "signature")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(f), str) for f in fields) \
            or doc["algorithm"] != "ed25519":
        raise ArtifactError(f"{path}: not an irkit signature ({', '.join(fields)}; ed25519)")
    signer = doc["public_key"].lower()
    if signer not in trusted:
        raise ArtifactError(f"{path}: signed by key {signer[:16]}..., which is not one of the "
                            f"{len(trusted)} trusted key(s)")
    with open_regular(directory / MANIFEST_NAME) as handle:
        manifest = handle.readall()
    from cryptography.exceptions import InvalidSignature

    try:
        public = _crypto().Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer))
        public.verify(bytes.fromhex(doc["signature"]), manifest)
    except (InvalidSignature, ValueError):
        raise ArtifactError(f"{path}: the signature does not match {MANIFEST_NAME}: the "
                            "artifact was modified after it was signed") from None
    return signer
