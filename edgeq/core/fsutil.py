"""Atomic file and directory writes.

Everything edgeq writes under a user's final path is first built in a
temporary sibling (same directory, so ``os.replace`` is atomic) and renamed
into place at the end. Names of temporaries carry the writer's pid, so a
later run can clean up after one that was killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputExistsError

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.edgeq-(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A writer holds an exclusive flock on its temporary for as long as it lives; the kernel
# drops it when the process dies, even by SIGKILL. A recycled pid therefore cannot keep
# a dead run's temporaries alive. Young entries whose writer has not locked them yet are
# left alone.
_LOCK_GRACE_S = 60.0


def _lock(path: Path) -> int | None:
    """Take an exclusive lock on ``path`` (file or folder); returns the fd to keep open."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: pid check only
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _writer_alive(entry: Path, pid: int, locked: bool) -> bool:
    """A held flock means alive whatever the pid says (a writer in another pid namespace has a pid
    that means nothing here); without one, a dead pid means dead, and a live pid gets the grace
    period a writer needs between creating its temporary and locking it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: pid check only
        return _pid_alive(pid)
    if not locked:
        return _pid_alive(pid)
    try:
        fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # someone holds it: the writer is alive
    finally:
        os.close(fd)
    if not _pid_alive(pid):
        return False
    try:
        age = time.time() - os.lstat(entry).st_mtime
    except OSError:
        return False
    return age < _LOCK_GRACE_S


def clean_stale(final: Path) -> list[Path]:
    """Remove temporaries left next to ``final`` by runs that died.

    If a run died between moving the old output aside and moving the new one
    in, the old output is restored first.
    """
    final = Path(final)
    parent = final.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        m = _TMP_RE.match(entry.name)
        if not m or m.group("name") != final.name:
            continue
        if _writer_alive(entry, int(m.group("pid")), locked=m.group("kind") == "tmp"):
            continue
        if m.group("kind") == "old" and not final.exists() and not final.is_symlink():
            os.replace(entry, final)
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_output(final: Path, force: bool, *, is_dir: bool | None = None, replace_any: bool = False) -> None:
    """Refuse to overwrite an existing output unless ``force``, and then only what edgeq wrote.

    ``is_dir``: what will be written there (None: whatever is there now). ``replace_any`` is
    for edgeq's own caches only (never a user's path): the old exists-or-force rule.
    """
    final = Path(final)
    if replace_any:
        if (final.exists() or final.is_symlink()) and not force:
            raise OutputExistsError(
                f"output '{final}' already exists",
                "pass --force to replace it, or choose another -o path",
            )
        return
    from .outputs import check_output_path

    if is_dir is None:
        is_dir = final.is_dir() and not final.is_symlink()
    check_output_path(final, force=force, is_dir=is_dir)


@contextlib.contextmanager
def staging(final: Path, *, force: bool, is_dir: bool, replace_any: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; publish it on success.

    On any exception (including KeyboardInterrupt) the temporary is removed
    and ``final`` is left exactly as it was. ``force`` replaces only what edgeq
    wrote (edgeq/core/outputs.py); ``replace_any`` is for edgeq's own caches.
    """
    final = Path(final).absolute()
    check_output(final, force, is_dir=is_dir, replace_any=replace_any)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    check_output(final, force, is_dir=is_dir, replace_any=replace_any)
    prefix = f".{final.name}.edgeq-tmp-{os.getpid()}-"
    umask = os.umask(0)
    os.umask(umask)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        lock = _lock(tmp)
        os.chmod(tmp, 0o777 & ~umask)
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        lock = _lock(tmp)
        os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        publish(tmp, final, force=force, is_dir=is_dir, replace_any=replace_any)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unlock(lock)


def publish(tmp: Path, final: Path, *, force: bool, is_dir: bool | None = None, replace_any: bool = False) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is replaced only with ``force`` (and only if edgeq wrote it)."""
    check_output(final, force, is_dir=tmp.is_dir() if is_dir is None else is_dir, replace_any=replace_any)
    if final.is_dir() and not final.is_symlink():
        if _exchange(tmp, final):
            # one atomic step: ``final`` is the whole old or the whole new bundle at every
            # moment; ``tmp`` now holds the old one (cleaned at the next run if we die here)
            _remove(tmp)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.edgeq-old-{os.getpid()}-", dir=final.parent))
        old.rmdir()
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SCRATCH_RE = re.compile(r"^edgeq-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def clean_stale_scratch(root: Path | None = None) -> list[Path]:
    """Remove scratch folders of edgeq runs that died (named ``edgeq-<pid>-*``, ours, unlocked)."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        m = _SCRATCH_RE.match(entry.name)
        if not m:
            continue
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        if uid is not None and st.st_uid != uid:
            continue
        if _writer_alive(entry, int(m.group("pid")), locked=True):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str = "edgeq-") -> Iterator[Path]:
    """A private temporary directory for intermediate models (removed afterwards).

    Named ``<prefix><pid>-*`` and locked while in use, so the next run removes the
    scratch folder of a run that was killed.
    """
    if prefix == "edgeq-":
        clean_stale_scratch()
        prefix = f"edgeq-{os.getpid()}-"
    try:
        d = Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as e:
        from ..errors import EdgeqError

        raise EdgeqError(f"cannot create a scratch folder in {tempfile.gettempdir()}: {e.strerror or e}",
                         "set TMPDIR to a writable folder with room") from None
    lock = _lock(d)
    try:
        yield d
    finally:
        _unlock(lock)
        shutil.rmtree(d, ignore_errors=True)


def require_regular_file(path: Path, what: str, error: type | None = None) -> Path:
    """Refuse a path that exists but is not a regular file (``/dev/zero``, a FIFO, a socket): reading one
    would never end, or hang. Checked with ``stat`` before anything opens it; missing paths pass
    (the caller reports them). Symbolic links to regular files are fine."""
    import stat as _stat

    from ..errors import EdgeqError

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return path
    if not _stat.S_ISREG(st.st_mode) and not _stat.S_ISDIR(st.st_mode):
        kind = "a FIFO" if _stat.S_ISFIFO(st.st_mode) else "a device" if _stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode) else "a socket or special file"
        raise (error or EdgeqError)(f"{what} {path} is {kind}, not a regular file", "pass a regular file")
    return path


MAX_JSON_BYTES = 64 << 20  # config.json, tokenizer.json (tens of MiB for large vocabularies), weight indexes


def read_json_object(path: Path, what: str, error: type | None = None, *, hint: str = "re-save the model folder",
                     limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file a stranger wrote (a model folder's config.json, tokenizer files): a regular file of
    at most ``limit`` bytes (``stat`` first, then at most ``limit`` bytes read), parsed with nesting too deep for the
    parser, bad UTF-8 and non-objects refused as one ``error`` naming ``what``. A missing file raises FileNotFoundError
    for the caller to word."""
    import json
    import stat as _stat

    from ..errors import EdgeqError

    err = error or EdgeqError
    st = os.stat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise err(f"{what} is not a regular file", hint)
    if st.st_size > limit:
        raise err(f"{what} is larger than {limit >> 20} MiB", hint)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise err(f"{what} is larger than {limit >> 20} MiB", hint)
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise err(f"{what} is nested too deeply to be JSON edgeq reads", hint) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise err(f"{what} is not valid JSON ({type(e).__name__})", hint) from None
    if not isinstance(obj, dict):
        raise err(f"{what} is not a JSON object", hint)
    return obj
