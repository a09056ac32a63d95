"""Ed25519 keys and signatures of manifest.json: key files (bounded reads), key ids, checking a signature."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from ..core.fsutil import check_output, staging
from ..errors import BundleError
from .runner import SIGNATURE


MAX_KEY_BYTES = 64 << 10


def _read_key(path: Path, what: str) -> bytes:
    """A PEM key file: a regular file of at most 64 KiB (checked before reading)."""
    from ..core.fsutil import require_regular_file

    path = Path(require_regular_file(path, what, BundleError))
    if path.is_dir():
        raise BundleError(f"{what} {path} is a folder", "pass the PEM file edgeq keygen wrote")
    if path.is_file() and path.stat().st_size > MAX_KEY_BYTES:
        raise BundleError(f"{what} {path} is larger than {MAX_KEY_BYTES >> 10} KiB", "pass the PEM file edgeq keygen wrote")
    return path.read_bytes()


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read_key(path, "signing key"), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"cannot read signing key {path}: {str(e)[:120]}", "pass an unencrypted Ed25519 private key in PEM (edgeq keygen)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {path} is not an Ed25519 key", "create one with edgeq keygen")
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(_read_key(path, "public key"))
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"cannot read public key {path}: {str(e)[:120]}", "pass the Ed25519 public key in PEM (edgeq keygen writes KEY.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key {path} is not an Ed25519 key", "pass the .pub file edgeq keygen wrote")
    return key


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def generate_keypair(private_out: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write an Ed25519 private key (PEM, mode 0600) and its public key (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_out = Path(private_out)
    public_out = private_out.with_name(private_out.name + ".pub")
    check_output(public_out, force, is_dir=False)
    check_output(private_out, force, is_dir=False)
    key = Ed25519PrivateKey.generate()
    with staging(private_out, force=force, is_dir=False) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with staging(public_out, force=force, is_dir=False) as tmp:
        tmp.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_out, public_out


def check_signature(root: Path, data: bytes, manifest: dict[str, Any], pubkey: Path) -> str:
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(pubkey)
    sig_path = root / SIGNATURE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise BundleError("the bundle is not signed (no manifest.json.sig)", "a device given --pubkey accepts signed bundles only")
    if sig_path.stat().st_size > 1024:
        raise BundleError(f"{SIGNATURE} is not an Ed25519 signature", "the bundle was tampered with")
    try:
        sig = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except ValueError:
        raise BundleError(f"{SIGNATURE} is not base64", "the bundle was tampered with") from None
    declared = (manifest.get("signature") or {}).get("key_id") if isinstance(manifest.get("signature"), dict) else None
    kid = key_id(key)
    try:
        key.verify(sig, data)
    except InvalidSignature:
        if declared and declared != kid:
            raise BundleError(f"the bundle was signed by another key ({declared[:16]}..., expected {kid[:16]}...)", "the bundle is not from the publisher you trust") from None
        raise BundleError("the signature does not match manifest.json: the manifest was changed or swapped", "the bundle was tampered with; fetch an intact copy") from None
    return kid


def signature_record(signer) -> dict[str, Any]:
    """What the manifest says about its signature (the signature itself lives in manifest.json.sig)."""
    return {"algorithm": "ed25519", "key_id": key_id(signer.public_key()), "file": SIGNATURE}


def signature_text(signer, data: bytes) -> str:
    """manifest.json.sig: the base64 Ed25519 signature of the manifest's bytes."""
    return base64.b64encode(signer.sign(data)).decode("ascii") + "\n"
