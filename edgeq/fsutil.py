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
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError

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
        if not m or m.group("name") != final.name or _pid_alive(int(m.group("pid"))):
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


def check_output(final: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless ``force``."""
    final = Path(final)
    if (final.exists() or final.is_symlink()) and not force:
        raise OutputExistsError(
            f"output '{final}' already exists",
            "pass --force to replace it, or choose another -o path",
        )


@contextlib.contextmanager
def staging(final: Path, *, force: bool, is_dir: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; publish it on success.

    On any exception (including KeyboardInterrupt) the temporary is removed
    and ``final`` is left exactly as it was.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    check_output(final, force)
    prefix = f".{final.name}.edgeq-tmp-{os.getpid()}-"
    umask = os.umask(0)
    os.umask(umask)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        os.chmod(tmp, 0o777 & ~umask)
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        publish(tmp, final, force=force)
    except BaseException:
        _remove(tmp)
        raise


def publish(tmp: Path, final: Path, *, force: bool) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is replaced only with ``force``."""
    check_output(final, force)
    if final.is_dir() and not final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.edgeq-old-{os.getpid()}-", dir=final.parent))
        old.rmdir()
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def scratch_dir(prefix: str = "edgeq-") -> Iterator[Path]:
    """A private temporary directory for intermediate models (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
