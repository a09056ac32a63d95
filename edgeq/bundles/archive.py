"""Deterministic bundle archives and safe extraction of untrusted ones.

Writing: members sorted by name, regular files only, fixed mtime, uid/gid 0,
no owner names, fixed modes (0644, 0755 for ``run.py``), no absolute paths,
gzip header without name or time. The same folder gives the same bytes.

Reading (``safe_extract``): every member header is checked *before* anything is
written -- names that escape the folder (``..``, absolute, drive letters,
backslashes), links of any kind, devices, FIFOs, duplicate names (also
case-insensitively), too many members, too much data, too high a compression
ratio. Only then are regular files written, each opened with ``O_EXCL`` and
``O_NOFOLLOW`` and cut off at its declared size.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BundleError

FORMATS = ("tar.gz", "zip")
# 1980-01-01: the earliest time a zip entry can carry; SOURCE_DATE_EPOCH overrides.
DEFAULT_EPOCH = 315532800
EXECUTABLE = frozenset({"run.py"})


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what an archive may hold; anything past them is refused unread."""

    max_members: int = 10_000
    max_total_bytes: int = 8 << 30  # 8 GiB of extracted data
    max_member_bytes: int = 4 << 30
    max_ratio: float = 200.0  # extracted bytes / archive bytes (checked once past 1 MiB)
    max_name_len: int = 255
    max_depth: int = 16


def archive_format(path: Path) -> str | None:
    name = Path(path).name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    return None


def archive_path(out: Path, fmt: str) -> Path:
    """Where ``--archive FMT`` writes the archive of bundle folder ``out``."""
    if fmt not in FORMATS:
        raise BundleError(f"unknown archive format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
    return Path(out).with_name(Path(out).name + "." + fmt)


def _epoch() -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    return max(int(env), DEFAULT_EPOCH) if env.isdigit() else DEFAULT_EPOCH


def _members(root: Path) -> list[tuple[str, Path]]:
    out = []
    for p in root.rglob("*"):
        if p.is_symlink() or (not p.is_file() and not p.is_dir()):
            raise BundleError(f"bundle holds a link or special file: {p.relative_to(root)}", "a bundle holds regular files only")
        if p.is_file():
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _mode(name: str) -> int:
    return 0o755 if name in EXECUTABLE else 0o644


FIXED_BUNDLE_FILES = 16  # model.onnx/.ort/.data, ops config, run.py, cpp/*, labels, manifest, signature, EP context ...


def check_archivable(members: int, sizes=(), limits: ExtractLimits = ExtractLimits()) -> None:
    """An archive edgeq writes must pass its own ``verify``: the same limits, refused before writing."""
    hint = "use fewer --golden pairs, or ship the bundle folder without --archive"
    if members > limits.max_members:
        raise BundleError(f"the archive would hold {members} files, more than the {limits.max_members} edgeq verify accepts", hint)
    big = [s for s in sizes if s > limits.max_member_bytes]
    if big or sum(sizes) > limits.max_total_bytes:
        raise BundleError(f"the archive would hold more data than edgeq verify accepts ({limits.max_member_bytes >> 30} GiB a file, "
                          f"{limits.max_total_bytes >> 30} GiB in all)", "ship the bundle folder without --archive")


def check_golden_archivable(golden: int, tensors_per_pair: int, archive: str | None) -> None:
    """Before any work: ``--golden N --archive FMT`` must give an archive ``verify`` accepts."""
    if archive:
        check_archivable(max(golden, 0) * tensors_per_pair + FIXED_BUNDLE_FILES)


def write_archive(root: Path, dest: Path, fmt: str) -> Path:
    """Write folder ``root`` as a deterministic archive at ``dest`` (a path the caller stages)."""
    members = _members(Path(root))
    check_archivable(len(members), [p.stat().st_size for _, p in members])
    mtime = _epoch()
    if fmt == "tar.gz":
        with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for name, path in members:
                    info = tarfile.TarInfo(name)
                    info.size = path.stat().st_size
                    info.mtime = mtime
                    info.mode = _mode(name)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.type = tarfile.REGTYPE
                    with open(path, "rb") as f:
                        tf.addfile(info, f)
    elif fmt == "zip":
        import time

        dt = time.gmtime(mtime)[:6]
        with zipfile.ZipFile(dest, "w") as zf:
            for name, path in members:
                info = zipfile.ZipInfo(name, date_time=dt)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so the mode below is honoured
                info.external_attr = (stat.S_IFREG | _mode(name)) << 16
                with open(path, "rb") as f, zf.open(info, "w") as w:
                    while block := f.read(1 << 20):
                        w.write(block)
    else:
        raise BundleError(f"unknown archive format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
    return Path(dest)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Entry:
    name: str
    size: int
    is_dir: bool
    ref: object  # TarInfo or ZipInfo


def _refuse(archive: Path, what: str) -> BundleError:
    return BundleError(f"archive {archive.name} refused: {what}", "nothing was extracted; use an archive made by edgeq bundle --archive")


def _is_root(raw: str) -> bool:
    """``.`` or ``./``: the folder itself, as ``tar czf b.tgz -C bundle .`` writes it."""
    return bool(raw) and not raw.startswith("/") and all(p in ("", ".") for p in raw.split("/"))


def _clean_name(raw: str, archive: Path, limits: ExtractLimits) -> str:
    shown = repr(raw[:80])
    if not raw or "\x00" in raw:
        raise _refuse(archive, f"member with an empty or NUL name {shown}")
    if "\\" in raw:
        raise _refuse(archive, f"member name with a backslash {shown}")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _refuse(archive, f"absolute member path {shown}")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _refuse(archive, f"member path escapes the folder {shown}")
    if not parts:
        raise _refuse(archive, f"member with an empty name {shown}")
    if len(raw) > 4096 or any(len(p) > limits.max_name_len for p in parts) or len(parts) > limits.max_depth:
        raise _refuse(archive, f"member name too long or too deep {shown}")
    return "/".join(parts)


MAX_EXTENDED_HEADER = 1 << 20  # pax / GNU long-name headers: tarfile reads them whole into memory


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256: only for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _prescan_tar(path: Path, fmt: str, limits: ExtractLimits, archive_bytes: int) -> None:
    """Walk the raw 512-byte headers before tarfile does: tarfile reads extended headers whole
    into memory and keeps every member, so counts and header sizes are bounded here first."""
    opener = gzip.open if fmt == "tar.gz" else open
    n = total = 0
    try:
        with opener(path, "rb") as f:
            while True:
                hdr = f.read(512)
                if len(hdr) < 512 or hdr == b"\0" * 512:
                    return
                try:
                    size = _octal(hdr[124:136])
                except ValueError:
                    raise _refuse(path, "a member header has an unreadable size") from None
                kind = hdr[156:157]
                if kind in (b"x", b"g", b"L", b"K"):
                    if size > MAX_EXTENDED_HEADER:
                        raise _refuse(path, f"extended header of {size} bytes (limit {MAX_EXTENDED_HEADER})")
                else:
                    n += 1
                    if n > limits.max_members:
                        raise _refuse(path, f"more than {limits.max_members} members")
                    name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                    total = _count(path, limits, name, size, total, archive_bytes)
                skip = -(-size // 512) * 512
                while skip > 0:
                    got = len(f.read(min(skip, 1 << 20)))
                    if not got:
                        return  # truncated: tarfile reports it
                    skip -= got
    except (OSError, EOFError, zlib.error) as e:
        raise _refuse(path, f"unreadable tar data ({str(e)[:120]})") from None


def _tar_entries(path: Path, limits: ExtractLimits, archive_bytes: int, tf: tarfile.TarFile):
    n = 0
    total = 0
    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise _refuse(path, f"unreadable tar data ({str(e)[:120]})") from None
        if m is None:
            _drain(path, tf)
            return
        n += 1
        if n > limits.max_members:
            raise _refuse(path, f"more than {limits.max_members} members")
        if m.isdir() and _is_root(m.name):
            tf.members = []
            continue  # the folder itself: nothing to create
        name = _clean_name(m.name, path, limits)
        if m.issym() or m.islnk():
            raise _refuse(path, f"link member {name!r} -> {m.linkname[:80]!r}")
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise _refuse(path, f"device or FIFO member {name!r}")
        if not (m.isreg() or m.isdir()) or m.issparse():
            raise _refuse(path, f"member {name!r} is not a regular file or folder")
        total = _count(path, limits, name, m.size, total, archive_bytes)
        yield _Entry(name, m.size, m.isdir(), m)
        # keep memory bounded on archives with many members
        tf.members = []


def _drain(path: Path, tf: tarfile.TarFile) -> None:
    """Read what follows the end of the tar, so that gzip's checksum is checked; a little padding only."""
    left = 0
    try:
        while block := tf.fileobj.read(1 << 16):
            left += len(block)
            if left > 1 << 20:
                raise _refuse(path, "more than 1 MiB of data after the end of the tar")
    except (OSError, EOFError, zlib.error) as e:
        raise _refuse(path, f"unreadable tar data ({str(e)[:120]})") from None


def _count(path: Path, limits: ExtractLimits, name: str, size: int, total: int, archive_bytes: int) -> int:
    if size < 0 or size > limits.max_member_bytes:
        raise _refuse(path, f"member {name!r} is {size} bytes (limit {limits.max_member_bytes})")
    total += size
    if total > limits.max_total_bytes:
        raise _refuse(path, f"more than {limits.max_total_bytes} bytes of data")
    if total > (1 << 20) and total > limits.max_ratio * max(archive_bytes, 1):
        raise _refuse(path, f"compression ratio above {limits.max_ratio:g} (decompression bomb?)")
    return total


def _zip_entries(path: Path, limits: ExtractLimits, archive_bytes: int, zf: zipfile.ZipFile):
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise _refuse(path, f"more than {limits.max_members} members")
    total = 0
    for zi in infos:
        if zi.is_dir() and _is_root(zi.filename):
            continue  # the folder itself
        name = _clean_name(zi.filename, path, limits)
        mode = (zi.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _refuse(path, f"link member {name!r}")
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise _refuse(path, f"device or FIFO member {name!r}")
        if zi.flag_bits & 0x1:
            raise _refuse(path, f"encrypted member {name!r}")
        if zi.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(path, f"member {name!r} uses an unsupported compression method")
        total = _count(path, limits, name, zi.file_size, total, archive_bytes)
        yield _Entry(name, zi.file_size, zi.is_dir(), zi)


def _zip_count_first(path: Path, limits: ExtractLimits) -> None:
    """Read the member count from the end record before zipfile parses (and holds) the whole directory."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # noqa: SLF001 - the stdlib's own end-record reader
    except OSError as e:
        raise _refuse(path, f"not a readable zip ({str(e)[:120]})") from None
    if end is None:
        raise _refuse(path, "not a zip file (no end of central directory)")
    total = end[zipfile._ECD_ENTRIES_TOTAL]  # noqa: SLF001
    if total > limits.max_members:
        raise _refuse(path, f"more than {limits.max_members} members ({total} declared)")
    if end[zipfile._ECD_SIZE] > limits.max_members * (46 + 2 * limits.max_name_len + 1024):  # noqa: SLF001
        raise _refuse(path, "central directory too large")


def _plan(path: Path, entries) -> list[_Entry]:
    """Check every header; refuse duplicates and file/folder clashes."""
    seen: dict[str, bool] = {}
    folded: set[str] = set()
    plan = []
    for e in entries:
        key = e.name.casefold()
        if e.name in seen or key in folded:
            if e.is_dir and seen.get(e.name) is True:
                continue  # a folder listed twice is harmless
            raise _refuse(path, f"duplicate member name {e.name!r}")
        seen[e.name] = e.is_dir
        folded.add(key)
        plan.append(e)
    files = {e.name for e in plan if not e.is_dir}
    for e in plan:
        parts = e.name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise _refuse(path, f"member {e.name!r} lies under a file of the same name")
    return plan


def _write_member(dest: Path, e: _Entry, src: io.BufferedIOBase, archive: Path) -> None:
    target = dest / e.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.parent.resolve() != (dest.resolve() / e.name).parent:
        raise _refuse(archive, f"member {e.name!r} would be written outside the folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, 0o755 if e.name.split("/")[-1] in EXECUTABLE else 0o644)
    left = e.size
    with os.fdopen(fd, "wb") as out:
        while left > 0:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise _refuse(archive, f"member {e.name!r} is truncated")
            out.write(block)
            left -= len(block)
        if src.read(1):
            raise _refuse(archive, f"member {e.name!r} holds more data than it declares")


import errno as _errno

_WRITE_ERRNOS = {_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EACCES, _errno.EFBIG}


def _no_room(archive: Path, dest: Path, err: OSError) -> BundleError:
    return BundleError(f"cannot extract {archive.name} into {dest.parent}: {err.strerror or err}",
                       "free space there, or set TMPDIR to a folder with room")


def _check_room(archive: Path, dest: Path, plan: list[_Entry]) -> None:
    """Before writing: the declared sizes must fit in the free space where they go."""
    import shutil

    need = sum(e.size for e in plan if not e.is_dir) + 4096 * len(plan)
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if need > free:
        raise BundleError(f"not enough space to extract {archive.name} in {parent} ({need} bytes needed, {free} free)",
                          "free space there, or set TMPDIR to a folder with room")


def safe_extract(archive: Path, dest: Path, limits: ExtractLimits = ExtractLimits()) -> Path:
    """Extract ``archive`` into ``dest`` (which must not exist) after checking every member.

    On any refusal nothing has been written: ``dest`` is created only after all
    headers passed, and removed again if writing fails part-way.
    """
    import shutil

    archive, dest = Path(archive), Path(dest)
    fmt = archive_format(archive)
    if fmt is None:
        raise BundleError(f"{archive.name} is not a .tar.gz, .tgz, .tar or .zip archive", "pass a bundle folder or an archive made by edgeq")
    if not archive.is_file():
        raise BundleError(f"archive not found: {archive}", "check the path")
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"extraction folder {dest} already exists", "extract into a new folder")
    size = archive.stat().st_size
    if fmt == "zip":
        _zip_count_first(archive, limits)
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise _refuse(archive, f"not a readable zip ({str(e)[:120]})") from None
        with zf:
            plan = _plan(archive, _zip_entries(archive, limits, size, zf))
            _check_room(archive, dest, plan)
            dest.mkdir(parents=True)
            try:
                for e in plan:
                    if e.is_dir:
                        (dest / e.name).mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(e.ref) as src:
                        _write_member(dest, e, src, archive)
            except zipfile.BadZipFile as err:
                shutil.rmtree(dest, ignore_errors=True)
                raise _refuse(archive, f"corrupt member data ({str(err)[:120]})") from None
            except OSError as err:
                shutil.rmtree(dest, ignore_errors=True)
                if isinstance(err, BundleError):
                    raise
                raise _no_room(archive, dest, err) from None
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
        return dest
    mode = "r:gz" if fmt == "tar.gz" else "r:"
    _prescan_tar(archive, fmt, limits, size)
    try:
        tf = tarfile.open(archive, mode)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _refuse(archive, f"not a readable {fmt} ({str(e)[:120]})") from None
    with tf:
        plan = _plan(archive, _tar_entries(archive, limits, size, tf))
    _check_room(archive, dest, plan)
    # second pass: stream the data of the members the first pass accepted
    wanted = {e.name: e for e in plan}
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, mode) as tf:
            while (m := tf.next()) is not None:
                tf.members = []
                if m.isdir() and _is_root(m.name):
                    continue
                name = _clean_name(m.name, archive, limits)
                e = wanted.pop(name, None)
                if e is None:
                    raise _refuse(archive, "archive changed while it was read")
                if e.is_dir:
                    (dest / name).mkdir(parents=True, exist_ok=True)
                    continue
                src = tf.extractfile(m)
                if src is None:
                    raise _refuse(archive, f"member {name!r} has no data")
                _write_member(dest, e, src, archive)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(err, BundleError):
            raise
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            raise _no_room(archive, dest, err) from None
        raise _refuse(archive, f"unreadable tar data ({str(err)[:120]})") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
