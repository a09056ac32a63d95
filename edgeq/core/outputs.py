"""What edgeq may write over: one rule for every output path (``-o``, archives, sidecars, keys, ``--html``).

``--force`` replaces only what edgeq wrote:

- a folder: empty, or holding an edgeq ``manifest.json`` (``created_by.edgeq``) that lists
  every file in it (plus the manifest and its signature);
- a file: a model ``edgeq quantize`` wrote (ONNX ``producer_name`` "edgeq", stamped in the
  model's first bytes), an Ed25519 key from ``edgeq keygen``, a bundle archive
  (``manifest.json`` among its first members), a profile sidecar, an edgeq HTML report, or
  the external-data file of a model edgeq wrote.

Whatever the flag, edgeq never replaces a symbolic link, the root, the home folder, the
current folder or a folder above it, a path that holds (or lies inside) one of the
command's inputs, a folder where a file is written or a file where a folder is written;
and it refuses an output whose folder it cannot write to. Every refusal is one line,
exit 2, and is raised at argument time, before any work.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputExistsError

PRODUCER = "edgeq"
MAX_MANIFEST_BYTES = 16 << 20
_MAX_WALK = 100_000
_HTML_HEAD = b'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgeq profile'
_SIDECAR_KEYS = {"bundle", "manifest_sha256", "profile"}


class OutputRefused(OutputExistsError):
    """The output path is not something edgeq may write over (exit 2)."""


def _refuse(final: Path, what: str, problem: str, hint: str) -> OutputRefused:
    return OutputRefused(f"{what} '{final}' {problem}", hint)


def check_output_path(
    final: Path, *, force: bool, is_dir: bool, inputs: Iterable[Path | str | None] = (), what: str = "output",
) -> None:
    """Refuse ``final`` unless edgeq may write there; raise OutputExistsError without ``force``."""
    final = Path(final)
    other = "choose another -o path"
    if final.is_symlink():
        raise _refuse(final, what, "is a symbolic link", f"{other}, or pass the link's target itself")
    if not final.exists():
        _check_parent(final, what)
        return
    st = final.stat()
    if is_dir and not stat.S_ISDIR(st.st_mode):
        raise _refuse(final, what, "is a file, but a folder is written here", other)
    if not is_dir and stat.S_ISDIR(st.st_mode):
        raise _refuse(final, what, "is a folder, but a file is written here", other)
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise _refuse(final, what, "is not a regular file (a device, FIFO or socket)", other)
    _check_protected(final, what)
    _check_inputs(final, inputs, what)
    reason = _not_ours(final, is_dir)
    if reason is not None:
        raise _refuse(
            final, what, f"already exists and {reason}",
            f"--force replaces only what edgeq wrote; {other}, or move the files away yourself",
        )
    if not force:
        raise OutputExistsError(f"{what} '{final}' already exists", "pass --force to replace it, or choose another -o path")
    _check_parent(final, what)


def check_bundle_outputs(out: Path, *, force: bool, archive: str | None = None, sidecar: bool = False,
                         inputs: Iterable[Path | str | None] = ()) -> None:
    """A bundle folder and, where written, its archive and profile sidecar."""
    from ..bundles.archive import archive_path

    inputs = list(inputs)
    check_output_path(out, force=force, is_dir=True, inputs=inputs)
    if archive:
        check_output_path(archive_path(out, archive), force=force, is_dir=False, inputs=inputs, what="archive")
    if sidecar:
        check_output_path(sidecar_path(out), force=force, is_dir=False, inputs=inputs, what="profile sidecar")


# ---------------------------------------------------------------- places never replaced


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_protected(final: Path, what: str) -> None:
    real = _real(final)
    hint = "choose a new folder for -o, e.g. -o build/edgeq"
    if real == Path(real.anchor):
        raise _refuse(final, what, "is the root folder", hint)
    home = os.environ.get("HOME")
    if home and _real(Path(home)) == real:
        raise _refuse(final, what, "is your home folder", hint)
    if _within(_real(Path.cwd()), real):
        raise _refuse(final, what, "is the current folder or one above it", hint)


def _check_inputs(final: Path, inputs: Iterable[Path | str | None], what: str) -> None:
    real = _real(final)
    for inp in inputs:
        if inp is None or str(inp) in ("", "random"):
            continue
        p = Path(inp)
        if not p.exists():
            continue
        src = _real(p)
        if _within(src, real) or (src.is_dir() and _within(real, src)):
            raise _refuse(final, what, f"holds or lies inside the input '{inp}'", "write the output somewhere else")


def _check_parent(final: Path, what: str) -> None:
    """The nearest existing folder above ``final`` must be a writable folder."""
    parent = final.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _refuse(final, what, f"cannot be created: '{parent}' is not a folder", "choose another -o path")
    try:
        read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only or not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        raise _refuse(final, what, f"cannot be written: '{parent}' {why}", "choose another -o path")


# ---------------------------------------------------------------- did edgeq write it?


def _not_ours(final: Path, is_dir: bool) -> str | None:
    """None when edgeq wrote ``final`` (or it is an empty folder); else why not."""
    try:
        return _dir_reason(final) if is_dir else _file_reason(final)
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"


def read_edgeq_manifest(folder: Path) -> dict | None:
    """The folder's manifest.json if edgeq wrote it (regular file, bounded size, ``created_by.edgeq``)."""
    from ..bundles.runner import BundleCorrupt, parse_manifest, read_manifest_bytes

    try:  # stat before reading: a regular file of at most 16 MiB
        m = parse_manifest(read_manifest_bytes(str(folder)))
    except (OSError, BundleCorrupt):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("created_by"), dict) or "edgeq" not in m["created_by"]:
        return None
    if not isinstance(m.get("files"), dict):
        return None
    return m


def _dir_reason(folder: Path) -> str | None:
    with os.scandir(folder) as it:
        if next(it, None) is None:
            return None  # empty
    manifest = read_edgeq_manifest(folder)
    if manifest is None:
        return "is not an edgeq bundle (no edgeq manifest.json)"
    allowed = set(manifest["files"]) | {"manifest.json", "manifest.json.sig"}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            seen += 1
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if seen > _MAX_WALK:
                return "holds more files than an edgeq bundle"
            if os.path.islink(full):
                return f"holds a symbolic link '{rel}'"
            if name in filenames and rel not in allowed:
                return f"holds '{rel}', which its edgeq manifest does not list"
    return None


def _file_reason(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    if path.name.endswith(".onnx.data"):
        companion = path.with_name(path.name[: -len(".data")])
        if companion.is_file() and not companion.is_symlink() and onnx_producer(companion) == PRODUCER:
            return None
        return "is not the external data of a model edgeq wrote"
    if head.startswith(b"-----BEGIN ") and size <= 4096:
        return None if _is_ed25519_pem(head) else "is not an Ed25519 key edgeq wrote"
    if head.startswith(_HTML_HEAD):
        return None
    if head[:2] == b"\x1f\x8b":
        return None if _tgz_has_manifest(path) else "is not a bundle archive edgeq wrote"
    if head[:4] == b"PK\x03\x04":
        return None if _zip_has_manifest(path) else "is not a bundle archive edgeq wrote"
    if head[:1] == b"{":
        return None if _is_sidecar(path, size) else "is not a file edgeq wrote"
    if onnx_producer(path) == PRODUCER:
        return None
    return "is not a file edgeq wrote"


def _is_ed25519_pem(data: bytes) -> bool:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is a dependency
        return False
    try:
        if b"PRIVATE KEY" in data.split(b"\n", 1)[0]:
            return isinstance(serialization.load_pem_private_key(data, password=None), ed25519.Ed25519PrivateKey)
        return isinstance(serialization.load_pem_public_key(data), ed25519.Ed25519PublicKey)
    except (ValueError, TypeError):
        return False


def _zip_has_manifest(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist()[:_MAX_WALK])
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return "manifest.json" in names and "run.py" in names


def _tgz_has_manifest(path: Path) -> bool:
    """edgeq archives are sorted: manifest.json comes before model.* (no model bytes are read)."""
    import tarfile
    import zlib

    try:
        with tarfile.open(path, "r:gz") as tf:
            for i, m in enumerate(iter(tf.next, None)):
                tf.members = []
                if m.name == "manifest.json" and m.isreg():
                    return True
                if i > _MAX_WALK or m.name.startswith("model."):
                    return False
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False
    return False


def _is_sidecar(path: Path, size: int) -> bool:
    if size > MAX_MANIFEST_BYTES or not path.name.endswith(".profile.json"):
        return False
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(d, dict) and set(d) == _SIDECAR_KEYS


# ---------------------------------------------------------------- ONNX producer stamp

_GRAPH_FIELD = 7


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _header_fields(buf: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The ModelProto fields before the graph (ir_version, producer, domain, ...): (field, raw bytes), end offset."""
    i, fields = 0, []
    while i < len(buf):
        start = i
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if field == _GRAPH_FIELD or field == 0:
            return fields, start
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            i += n
            if i > len(buf):
                raise ValueError("field past the prefix")
        else:
            raise ValueError("unexpected wire type")
        fields.append((field, buf[start:i]))
    raise ValueError("no graph in the prefix")


def onnx_producer(path: Path, prefix: int = 1 << 16) -> str | None:
    """The producer_name stored before the graph in an ONNX file (edgeq's own models keep it there)."""
    try:
        with open(path, "rb") as f:
            head = f.read(prefix)
        fields, _ = _header_fields(head)
    except (OSError, ValueError):
        return None
    for field, raw in fields:
        if field == 2:
            _, i = _varint(raw, 0)
            n, i = _varint(raw, i)
            return raw[i : i + n].decode("utf-8", "replace")
    return None


def copy_stamped(src: Path, dst: Path) -> None:
    """Copy an ONNX file, setting producer_name/producer_version to edgeq's (so ``--force`` knows it later).

    Only the small fields before the graph are rewritten; the rest is streamed as is. A file
    whose header cannot be parsed that way is copied unchanged.
    """
    import shutil

    from .version import __version__

    with open(src, "rb") as f:
        head = f.read(1 << 16)
    try:
        fields, end = _header_fields(head)
    except ValueError:
        shutil.copyfile(src, dst)
        return
    stamp = b""
    for field, text in ((2, PRODUCER), (3, __version__)):
        data = text.encode("utf-8")
        stamp += _enc_varint(field << 3 | 2) + _enc_varint(len(data)) + data
    first = [raw for field, raw in fields if field == 1]  # ir_version stays first
    rest = [raw for field, raw in fields if field not in (1, 2, 3)]
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(b"".join(first) + stamp + b"".join(rest))
        f.seek(end)
        shutil.copyfileobj(f, out, 1 << 20)


def sidecar_path(out: Path) -> Path:
    """Where measured timings go: next to the bundle, never inside it."""
    return Path(out).with_name(Path(out).name + ".profile.json")
