"""The one way edgeq opens a bundle, and the one way it writes a manifest.

Reading (``open_bundle`` for a folder or an archive, ``read_bundle`` for a folder)::

    archive   -> safe extraction (bundles/archive.py: bounded, no traversal, no links)
    manifest  -> a regular file of bounded size and depth, valid JSON
    signature -> with a public key: Ed25519 over the manifest's bytes (and --min-version)
    schema    -> the kind's JSON Schema (bundles/schemas/)
    files     -> every listed file present, regular and matching its size and sha256;
                 no other file besides manifest.json and manifest.json.sig

and gives a frozen :class:`Bundle`: the kind (onnx / genai / gguf), target, verdict,
the listed files and the manifest. Every caller (verify, profile, generate, qemu
emulation, ssh devices, GGUF bundles) goes through it; the standalone runners shipped
inside bundles (run.py, generate.py, the GGUF run.py) keep their own copy of the same
rules, because they cannot import edgeq.

Writing (``write_manifest``): checksums of every file in the folder, the kind's schema,
then an atomic write (temporary sibling, ``os.replace``) and the optional signature.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.fsutil import sha256_file
from ..errors import BundleError
from . import runner as runner_mod
from .archive import ExtractLimits, archive_format, safe_extract

MANIFEST = runner_mod.MANIFEST
SIGNATURE = runner_mod.SIGNATURE
KINDS = ("onnx", "genai", "gguf")
SCHEMAS = Path(__file__).resolve().parent / "schemas"
SCHEMA_FILES = {"onnx": "manifest.schema.json", "genai": "manifest.schema.json", "gguf": "gguf_manifest.schema.json"}
CORRUPT_HINT = "rebuild it with edgeq export, or fetch an intact copy"


@dataclass(frozen=True)
class Bundle:
    """A bundle that passed every check; its files are the ones the manifest lists (checksummed)."""

    root: Path
    """the folder checked (for an archive: the extracted copy, valid inside ``open_bundle`` only)"""
    shown: Path
    """what the user named (folder or archive), for messages"""
    kind: str
    """onnx (ONNX Runtime bundle) | genai (KV-cache LLM bundle) | gguf (llama.cpp bundle)"""
    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: tuple[str, ...]
    """the listed files, relative paths, sorted"""
    target: str
    verdict: dict[str, str]
    """{"status": pass | fail | accepted-failed | skipped, "reason": ...} recorded when it was built"""
    signed_by: str | None = None
    """key id of the public key that verified the signature (None: not checked)"""
    archive: str | None = None
    """the archive's file name when the bundle came from one"""

    @property
    def bundle_version(self) -> int | None:
        v = self.manifest.get("bundle_version")
        return v if isinstance(v, int) else None

    def path(self, rel: Any) -> Path:
        """A file the manifest names: one of its checksummed files, else BundleError (exit 2)."""
        if not isinstance(rel, str) or rel not in self.manifest["files"]:
            raise BundleError(f"bundle {self.shown} is corrupt: {MANIFEST} names a file that is not in its file list: {str(rel)[:80]!r}",
                              CORRUPT_HINT)
        return self.root / rel

    def array(self, rel: Any) -> Any:
        """A listed .npy file's array, its header checked against the file's size before numpy allocates (run.py's
        reader: no object arrays), else BundleError (exit 2)."""
        try:
            return runner_mod.load_npy(str(self.path(rel)))
        except runner_mod.BundleCorrupt as e:
            raise BundleError(f"bundle {self.shown} is corrupt: {e}", CORRUPT_HINT) from None


# ---------------------------------------------------------------- reading


def read_manifest(root: Path) -> tuple[bytes, dict[str, Any]]:
    """manifest.json's bytes and its JSON object (bounded: stat first, at most 16 MiB, 64 levels deep)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"no {MANIFEST} in {root}", "pass the folder that holds manifest.json, or an archive of it")
    try:
        data = runner_mod.read_manifest_bytes(str(root))
        manifest = runner_mod.parse_manifest(data)
    except runner_mod.BundleCorrupt as e:
        raise BundleError(str(e), "the bundle is corrupt: fetch an intact copy") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} is not a JSON object", "the bundle is corrupt: fetch an intact copy")
    return data, manifest


def kind_of(manifest: dict[str, Any]) -> str:
    """gguf (runtime llama.cpp), genai (ships genai_config.json and generate.py) or onnx."""
    if manifest.get("runtime") == "llama.cpp":
        return "gguf"
    files = manifest.get("files")
    if isinstance(files, dict) and "genai_config.json" in files and "generate.py" in files:
        return "genai"
    return "onnx"


def validate_manifest(manifest: Any, kind: str = "onnx") -> None:
    """Check a manifest against its kind's published JSON Schema (edgeq/bundles/schemas/)."""
    try:
        import jsonschema
    except ImportError:
        raise BundleError("checking a manifest needs the jsonschema package", "pip install 'jsonschema>=4'") from None
    schema = json.loads((SCHEMAS / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(x) for x in e.absolute_path) or "(top level)"
        what = "GGUF manifest schema" if kind == "gguf" else "manifest schema"
        raise BundleError(f"{MANIFEST} does not match the {what} at {where}: {e.message[:200]}",
                          "the bundle is corrupt or was not written by edgeq")


def check_files(root: Path, manifest: dict[str, Any], shown: Path | None = None) -> int:
    """The file-list rules run.py applies on the device: nothing missing, nothing extra, no links, sizes and sha256 match."""
    try:
        return runner_mod.check_files(str(root), manifest)
    except runner_mod.BundleCorrupt as e:
        raise BundleError(f"bundle {shown or root} is corrupt: {e}", CORRUPT_HINT) from None


TARGET_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the schemas' target name: a name, never a path


def _check_target_name(manifest: dict[str, Any], shown: Path) -> None:
    """A manifest names its target, never a file: a path there is refused before anything else reads it."""
    target = manifest.get("target")
    name = target.get("name") if isinstance(target, dict) else None
    if isinstance(name, str) and not TARGET_NAME.fullmatch(name):
        from ..core.safetext import escape_text
        from ..errors import TargetError

        raise TargetError(f"the manifest of bundle {shown} names target '{escape_text(name)[:80]}', which is not a target shipped with edgeq "
                          "(a bundle names its target, never a file)",
                          "the bundle is corrupt or hostile; to profile it anyway pass --target NAME (edgeq targets) or a target file you trust")


def read_bundle(root: Path, *, shown: Path | None = None, pubkey: Path | None = None, min_version: int | None = None,
                archive: str | None = None) -> Bundle:
    """Check the bundle folder ``root``: manifest, signature (with ``pubkey``), version, schema, file list and checksums."""
    root = Path(root)
    shown = Path(shown) if shown is not None else root
    if root.is_symlink() or not root.is_dir():
        raise BundleError(f"bundle not found: {shown}", "pass the folder that holds manifest.json, or a .tar.gz/.zip made by edgeq")
    data, manifest = read_manifest(root)
    signed_by = None
    if pubkey is not None:
        from .signing import check_signature

        signed_by = check_signature(root, data, manifest, pubkey)
    kind = kind_of(manifest)
    _check_target_name(manifest, shown)
    validate_manifest(manifest, kind)
    if min_version is not None:
        if pubkey is None:
            raise BundleError("--min-version needs --pubkey", "without a signature anyone can raise the version number in manifest.json")
        version = manifest.get("bundle_version")
        if not isinstance(version, int) or version < min_version:
            raise BundleError(
                f"bundle version {version} is older than the minimum {min_version} (replayed old bundle?)",
                "install a bundle at least as new as the one on the device",
            )
    check_files(root, manifest, shown)
    _check_external_data(root, manifest, shown)
    return Bundle(root=root, shown=shown, kind=kind, manifest=manifest, manifest_bytes=data, files=tuple(sorted(manifest["files"])),
                  target=manifest["target"]["name"], verdict=runner_mod.export_verdict(manifest), signed_by=signed_by,
                  archive=archive)


def _check_external_data(root: Path, manifest: dict[str, Any], shown: Path) -> None:
    """Every ONNX graph in the bundle reads external data only from plain files inside it: edgeq's rules for any model
    it loads (core/onnxutil.py), checked before onnxruntime opens the graph (onnxruntime before 1.24 follows a
    '../' or absolute location)."""
    from ..core.onnxutil import load_model
    from ..errors import ModelError

    for rel in sorted(manifest["files"]):
        if rel.endswith(".onnx"):
            try:
                load_model(root / rel, load_weights=False)
            except ModelError as e:
                raise BundleError(f"bundle {shown} is corrupt: {rel}: {e.message}", CORRUPT_HINT) from None


@contextlib.contextmanager
def open_bundle(path: Path, *, pubkey: Path | None = None, min_version: int | None = None,
                limits: ExtractLimits = ExtractLimits()) -> Iterator[Bundle]:
    """A bundle folder, or an archive extracted safely into a locked scratch folder (removed on exit)."""
    path = Path(path)
    if path.is_file() and archive_format(path):
        from ..core.fsutil import scratch_dir

        # a locked scratch folder: if this run is killed, the next edgeq run removes the extracted copy
        with scratch_dir() as tmp:
            root = safe_extract(path, tmp / "bundle", limits)
            yield read_bundle(root, shown=path, pubkey=pubkey, min_version=min_version, archive=path.name)
        return
    yield read_bundle(path, pubkey=pubkey, min_version=min_version)


def peek_kind(path: Path) -> str | None:
    """The kind a folder's manifest declares (bounded read, nothing checked), or None when it has no readable one."""
    try:
        return kind_of(read_manifest(Path(path))[1])
    except (BundleError, OSError):
        return None


# ---------------------------------------------------------------- writing


def manifest_files(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of every file under ``root`` but the manifest and its signature."""
    root = Path(root)
    files = {}
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel not in (MANIFEST, SIGNATURE):
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def strict_json_values(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float as null: Python writes them as ``NaN`` / ``Infinity``, which no strict
    JSON reader accepts (the C++ runner refused such a manifest as malformed; a model that outputs NaN gives NaN
    error metrics)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_values(v) for v in obj]
    return obj


def write_manifest(root: Path, manifest: dict[str, Any], *, kind: str, signer=None) -> bytes:
    """Write ``root``/manifest.json: ``files`` from the folder's checksums, the signature record when signing,
    checked against the kind's schema, written atomically; then manifest.json.sig. Returns the manifest's bytes."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}")
    root = Path(root)
    manifest = dict(manifest)
    if signer is not None:
        from .signing import signature_record

        manifest["signature"] = signature_record(signer)
    manifest["files"] = manifest_files(root)
    manifest = strict_json_values(manifest)
    validate_manifest(manifest, kind)
    data = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    _write_atomic(root / MANIFEST, data)
    if signer is not None:
        from .signing import signature_text

        _write_atomic(root / SIGNATURE, signature_text(signer, data).encode("ascii"))
    return data
