"""The artifact format: a directory holding ``manifest.json`` and checksummed files.

``manifest.json`` (written last, so a directory with a manifest is complete)::

    {
      "format_version": 1,
      "name": "mlp",
      "backend": "ort",
      "target": "cpu",
      "signature": {"inputs":  [{"name": "x", "dtype": "float32", "shape": ["N", 64]}],
                    "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 10]}]},
      "entry": {"model": "model.onnx"},          # backend-specific
      "options": {"threads": 0},                  # backend options used at compile time
      "files": {"model.onnx": "<sha256 hex>"},    # every file except manifest.json
      "report": [...],                            # optimization report (JSON list)
      "created_by": "irkit 0.1.0",
      "manifest_sha256": "<sha256 hex>"           # of this object without this key
    }

``manifest_sha256`` is the sha256 of the canonical JSON (sorted keys, no whitespace) of
the manifest without that key, so an edit to the manifest itself is caught like an edit
to any other file.

File paths are relative, use ``/`` and never contain ``..``. Weights are raw little-endian
blobs or ``.npz`` files read with ``allow_pickle=False``; nothing in an artifact is pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from irkit import __version__
from irkit.errors import IrkitError
from irkit.runtime.signature import TensorSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # irkit.runtime.signing; the one file the manifest omits
_HASH_CHUNK = 1 << 20


class ArtifactError(IrkitError):
    """An artifact directory is missing, malformed, corrupt or cannot be loaded."""


def manifest_digest(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest object, its own checksum key excluded."""
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(canonical.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_regular(path: Path) -> io.FileIO:
    """``path`` opened for reading if it is a regular file; ArtifactError otherwise.

    Opened with O_NONBLOCK and checked with fstat, so a FIFO in a file's place is refused
    without waiting for a writer, and a socket or device is named as what it is.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ArtifactError(f"{path} is {_file_kind(mode)}; artifacts hold regular files only")
    return io.FileIO(fd, "rb")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_relative_path(relpath: str, where: str = "artifact") -> str:
    """Return ``relpath`` if it is a safe relative POSIX path inside an artifact.

    Rejects empty, absolute, drive-qualified, backslashed and ``..``-containing paths, and
    the manifest's own name.
    """
    if not isinstance(relpath, str) or not relpath:
        raise ArtifactError(f"{where}: file path {relpath!r} must be a non-empty string")
    pure = PurePosixPath(relpath)
    bad = (
        pure.is_absolute()
        or "\\" in relpath
        or ":" in relpath
        or "\x00" in relpath
        or any(part in ("..", ".", "") for part in relpath.split("/"))
    )
    if bad:
        raise ArtifactError(
            f"{where}: file path {relpath!r} is not a plain relative path inside the "
            "artifact (absolute paths, '..', '.', backslashes and drive letters are refused)"
        )
    if relpath in (MANIFEST_NAME, SIGNATURE_NAME):
        raise ArtifactError(f"{where}: {relpath} cannot be listed as an artifact file")
    if "__pycache__" in relpath.split("/"):
        raise ArtifactError(f"{where}: {relpath!r} is in __pycache__, a load-time cache "
                            "directory, never artifact content")
    return relpath


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of an artifact."""

    name: str
    backend: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: Mapping[str, str]
    entry: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    report: list[Any] = field(default_factory=list)
    created_by: str = f"irkit {__version__}"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "backend": self.backend,
            "target": self.target,
            "signature": {
                "inputs": [spec.to_dict() for spec in self.inputs],
                "outputs": [spec.to_dict() for spec in self.outputs],
            },
            "entry": dict(self.entry),
            "options": dict(self.options),
            "files": dict(sorted(self.files.items())),
            "report": list(self.report),
            "created_by": self.created_by,
        }

    def to_json(self) -> str:
        """The ``manifest.json`` text, including its own ``manifest_sha256``."""
        try:
            data = self.to_dict()
            data["manifest_sha256"] = manifest_digest(data)
            return json.dumps(data, indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ArtifactError(
                f"manifest of {self.name!r} is not JSON-serializable "
                f"(check entry, options and report): {exc}"
            ) from exc

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and check a manifest object; errors name ``where`` (the file)."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ArtifactError(
                f"{where}: artifact format version {version!r} is not supported "
                f"(expected {FORMAT_VERSION}); rebuild the artifact with this irkit version "
                "or load it with the irkit version that wrote it"
            )
        if data.get("manifest_sha256") != manifest_digest(data):
            raise ArtifactError(
                f"checksum mismatch for {where}: the manifest is corrupt or was modified"
            )
        for key, kind in (("name", str), ("backend", str), ("target", str)):
            if not isinstance(data.get(key), kind) or not data[key]:
                raise ArtifactError(f"{where}: {key!r} must be a non-empty string")
        signature = data.get("signature")
        if not isinstance(signature, dict):
            raise ArtifactError(f"{where}: 'signature' must be an object with inputs, outputs")
        specs: dict[str, tuple[TensorSpec, ...]] = {}
        for side in ("inputs", "outputs"):
            items = signature.get(side)
            if not isinstance(items, list):
                raise ArtifactError(f"{where}: signature.{side} must be a list")
            try:
                specs[side] = tuple(TensorSpec.from_dict(item) for item in items)
            except ValueError as exc:
                raise ArtifactError(f"{where}: signature.{side}: {exc}") from exc
            names = [spec.name for spec in specs[side]]
            if len(set(names)) != len(names):
                raise ArtifactError(f"{where}: signature.{side} repeats a name: {names}")
        files = data.get("files")
        if not isinstance(files, dict):
            raise ArtifactError(f"{where}: 'files' must be an object of path -> sha256")
        for relpath, digest in files.items():
            check_relative_path(relpath, where)
            if not (
                isinstance(digest, str)
                and len(digest) == 64
                and all(c in "0123456789abcdef" for c in digest)
            ):
                raise ArtifactError(f"{where}: sha256 of {relpath!r} is not 64 hex digits")
        for optional, container in (("entry", dict), ("options", dict), ("report", list)):
            if not isinstance(data.get(optional, container()), container):
                raise ArtifactError(
                    f"{where}: {optional!r} must be a JSON {container.__name__}"
                )
            try:  # strict JSON: NaN/Infinity would make the manifest unwritable
                json.dumps(data.get(optional, container()), allow_nan=False)
            except ValueError as exc:
                raise ArtifactError(f"{where}: {optional!r} is not strict JSON: {exc}") from None
        return cls(
            name=data["name"],
            backend=data["backend"],
            target=data["target"],
            inputs=specs["inputs"],
            outputs=specs["outputs"],
            files=dict(files),
            entry=dict(data.get("entry", {})),
            options=dict(data.get("options", {})),
            report=list(data.get("report", [])),
            created_by=str(data.get("created_by", "unknown")),
            format_version=version,
        )


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """Read and check ``manifest.json`` of ``artifact_dir`` (no file checksums)."""
    directory = Path(artifact_dir)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ArtifactError(f"artifact {directory} {what}")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {directory}: not an irkit artifact")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc
    except RecursionError:
        raise ArtifactError(f"{path} nests arrays or objects too deeply") from None
    return Manifest.from_dict(data, where=str(path))


LOAD_CACHE_DIR = "__pycache__"
"""Not artifact content: where a loader that compiles generated Python source at load
(numba, cuda) lets Numba keep its compiled code (irkit.runtime.backends.pysource)."""


def _present_files(directory: Path) -> set[str]:
    found: set[str] = set()
    for root, dirs, names in os.walk(directory, followlinks=False):
        dirs[:] = [d for d in dirs if d != LOAD_CACHE_DIR]
        for name in dirs + names:
            full = Path(root) / name
            rel = full.relative_to(directory).as_posix()
            if full.is_symlink():
                raise ArtifactError(
                    f"{rel} in {directory} is a symbolic link; artifacts hold plain files only"
                )
            if name in names and rel not in (MANIFEST_NAME, SIGNATURE_NAME):
                mode = full.lstat().st_mode  # never opened: a FIFO would block
                if not stat.S_ISREG(mode):
                    raise ArtifactError(f"{rel} in {directory} is {_file_kind(mode)}; "
                                        "artifacts hold regular files only")
                found.add(rel)
    return found


def verify(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """Read the manifest and check every file: present, listed, and matching its sha256."""
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    present = _present_files(directory)
    listed = set(manifest.files)
    missing = sorted(listed - present)
    if missing:
        raise ArtifactError(
            f"file(s) {', '.join(missing)} listed in {MANIFEST_NAME} are missing from "
            f"{directory}: artifact is incomplete"
        )
    extra = sorted(present - listed)
    if extra:
        raise ArtifactError(
            f"file(s) {', '.join(extra)} in {directory} are not listed in {MANIFEST_NAME}: "
            "artifact was modified"
        )
    for relpath, digest in manifest.files.items():
        if sha256_file(directory / relpath) != digest:
            raise checksum_error(relpath, directory)
    return manifest


def checksum_error(relpath: str, directory: Path) -> ArtifactError:
    return ArtifactError(
        f"checksum mismatch for {relpath} in {directory}: artifact is corrupt or was modified"
    )


def read_verified(artifact_dir: str | os.PathLike[str], manifest: Manifest, relpath: str) -> bytes:
    """Bytes of one listed artifact file, checked against the manifest as they are read.

    Loaders use this instead of opening paths themselves: it refuses files the manifest
    does not list, and hashing the very bytes that get used leaves no window for the file
    to change between verification and use.
    """
    directory = Path(artifact_dir)
    if relpath not in manifest.files:
        raise ArtifactError(f"{relpath!r} is not a file of the artifact in {directory}")
    with open_regular(directory / check_relative_path(relpath)) as handle:
        data = handle.readall()
    if sha256_bytes(data) != manifest.files[relpath]:
        raise checksum_error(relpath, directory)
    return data


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` file holding ``arrays``; object arrays (which would pickle) are refused.

    The output is deterministic (fixed zip timestamps, insertion order), so the same
    weights always give the same checksum.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ArtifactError(f"weight {name!r} has dtype object; artifacts never pickle")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file's bytes, read with ``allow_pickle=False``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def raw_bytes(array: np.ndarray) -> bytes:
    """The little-endian, C-order bytes of ``array`` (a raw weight blob)."""
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


@dataclass
class Artifact:
    """A compiled model in memory: manifest fields plus file contents (``relpath -> bytes``).

    Backends return one from ``compile``; :meth:`save` writes it as an artifact directory
    that :func:`irkit.runtime.load` reads back.
    """

    name: str
    backend: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    report: list[Any] = field(default_factory=list)
    created_by: str = f"irkit {__version__}"

    def __post_init__(self) -> None:
        self.inputs = tuple(self.inputs)
        self.outputs = tuple(self.outputs)

    def manifest(self) -> Manifest:
        """The manifest describing this artifact, with checksums of the current files."""
        for relpath, data in self.files.items():
            check_relative_path(relpath, f"artifact {self.name!r}")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ArtifactError(
                    f"artifact {self.name!r}: file {relpath!r} holds "
                    f"{type(data).__name__}, expected bytes"
                )
        manifest = Manifest(
            name=self.name,
            backend=self.backend,
            target=self.target,
            inputs=self.inputs,
            outputs=self.outputs,
            files={rel: sha256_bytes(bytes(data)) for rel, data in self.files.items()},
            entry=dict(self.entry),
            options=dict(self.options),
            report=list(self.report),
            created_by=self.created_by,
        )
        # Round-trip through the checker so a saved artifact always loads.
        return Manifest.from_dict(json.loads(manifest.to_json()), where=f"artifact {self.name!r}")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact directory at ``path`` and return it.

        Files go into a temporary sibling directory, ``manifest.json`` last, which then
        replaces ``path`` by rename: readers never see a half-written artifact. (Replacing
        an existing artifact takes two renames; a crash between them leaves the old one in
        a hidden ``.<name>.old.*`` sibling and no ``path``.) An existing artifact (a directory with ``manifest.json``) or an empty directory
        is replaced; any other existing path is refused.
        """
        target = Path(path)
        manifest_text = self.manifest().to_json()
        if target.exists() or target.is_symlink():
            if not target.is_dir() or target.is_symlink():
                raise ArtifactError(f"cannot save artifact to {target}: it exists and is not a directory")
            if any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
                raise ArtifactError(
                    f"cannot save artifact to {target}: the directory is not empty and is not "
                    "an irkit artifact; choose another path or empty it"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for relpath, data in self.files.items():
                file_path = staging / relpath
                file_path.parent.mkdir(parents=True, exist_ok=True)
                file_path.write_bytes(bytes(data))
            (staging / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
            staging.chmod(0o755)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                retired.rmdir()
                os.replace(target, retired)
                os.replace(staging, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Artifact:
        """Read a saved artifact directory back into memory, verifying every checksum."""
        manifest = verify(path)
        files = {rel: read_verified(path, manifest, rel) for rel in manifest.files}
        return cls(
            name=manifest.name,
            backend=manifest.backend,
            target=manifest.target,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
            files=files,
            entry=dict(manifest.entry),
            options=dict(manifest.options),
            report=list(manifest.report),
            created_by=manifest.created_by,
        )
