"""``irkit keygen``, ``irkit sign`` and ``irkit verify``: Ed25519 provenance for artifacts
(see :mod:`irkit.runtime.signing`)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_keygen(args: argparse.Namespace) -> int:
    from irkit.runtime.signing import generate_keypair

    public = generate_keypair(args.private, args.public)
    print(f"wrote {args.private} (private, mode 0600) and {args.public}; public key {public}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from irkit.runtime.signing import sign_artifact

    public = sign_artifact(args.artifact, args.key)
    print(f"signed {args.artifact} (manifest.sig) with key {public}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from irkit.runtime.artifact import verify
    from irkit.runtime.signing import check_signature

    signer = check_signature(args.artifact, args.trusted_key) if args.trusted_key else None
    manifest = verify(args.artifact)
    line = f"ok: {args.artifact}: {len(manifest.files)} file(s) match manifest.json"
    print(line + (f"; signed by trusted key {signer}" if signer else
                  " (signature not checked: no --trusted-key)"))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("keygen", help="write an Ed25519 key pair for signing artifacts",
                       description="Write a new Ed25519 private key (PEM, mode 0600) and its "
                       "public key (PEM). Never overwrites a private key.")
    p.add_argument("private", help="private key file to create")
    p.add_argument("public", help="public key file to write")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign an artifact (writes manifest.sig)",
                       description="Check ARTIFACT's files against manifest.json, then sign "
                       "manifest.json (which holds every file's sha256) with an Ed25519 "
                       "private key into manifest.sig. Loaders given trusted keys "
                       "(irkit.runtime.load(dir, trusted_keys=[...]), irkit verify "
                       "--trusted-key) refuse artifacts changed after signing.")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--key", required=True, help="Ed25519 private key (PEM, from irkit keygen "
                   "or openssl genpkey -algorithm ed25519)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="check an artifact's files and, given keys, its "
                       "signature",
                       description="Check that every file of ARTIFACT is a regular file "
                       "matching its sha256 in manifest.json; with --trusted-key, also that "
                       "manifest.sig is a valid signature by one of those keys (unsigned or "
                       "foreign artifacts fail). Exit 0 when all holds, 2 otherwise.")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUBLIC",
                   help="trusted Ed25519 public key (PEM file or 64 hex digits); repeat")
    p.set_defaults(func=cmd_verify)
