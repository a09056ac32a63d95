"""Exceptions from the user's own code are reported as the user's, not as edgeq's bugs.

edgeq runs code it did not write: the module named by ``pkg.module:factory`` (its
import side effects), ``factory()``, the model's ``forward``, and a Hugging Face
folder's custom code. When that code raises, the user gets one line naming their
file, line and exception (exit 2). A frame is the user's when its file lies outside
edgeq, the standard library and installed packages (site-packages), or under a root
the caller names (the user's own package, even when pip-installed).

torch's exporters wrap what ``forward`` raised: the wrapped exception is found
through ``__cause__``/``__context__`` and, failing that, in the traceback text torch
copies into its own message.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeqError

_MAX_CHAIN = 16
_FILE_RE = re.compile(r'File "([^"\n]+)", line (\d+)(?:, in ([^\n]+))?')
_EXC_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)):\s?(.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class UserCodeError(EdgeqError):
    """The user's own code (module, factory, forward, custom model code) raised."""


@dataclass(frozen=True)
class UserFault:
    """Where the user's code failed and with what."""

    file: str
    line: int
    function: str
    exc_type: str
    message: str

    def where(self) -> str:
        path = Path(self.file)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(Path.cwd().resolve())
        return f"{path}:{self.line}" + (f", in {self.function}" if self.function else "")


@functools.lru_cache(maxsize=1)
def _system_roots() -> tuple[str, ...]:
    """edgeq's own folder, the standard library and every site-packages folder."""
    import site
    import sysconfig

    paths = {str(Path(__file__).resolve().parents[1])}  # the edgeq package folder
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    with contextlib.suppress(Exception):
        paths.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        paths.add(site.getusersitepackages())
    return tuple(sorted({os.path.join(os.path.realpath(p), "") for p in paths}))


def is_user_file(filename: str | None, roots: Sequence[str | Path] = (), *, only_roots: bool = False) -> bool:
    """True for a real file outside edgeq, the standard library and installed packages (or under ``roots``);
    with ``only_roots``, only files under ``roots`` count."""
    if not filename or filename.startswith("<"):
        return False
    real = os.path.realpath(filename)
    if any(real.startswith(os.path.join(os.path.realpath(str(r)), "")) or real == os.path.realpath(str(r)) for r in roots):
        return True
    if only_roots or any(real.startswith(r) for r in _system_roots()):
        return False
    parts = Path(real).parts
    return "site-packages" not in parts and "dist-packages" not in parts


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (``__cause__``, else ``__context__``), without loops."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ if cur.__cause__ is not None else cur.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join((text.splitlines() or [""])[0].split())[:200]


def _fault(exc: BaseException, frame: traceback.FrameSummary) -> UserFault:
    return UserFault(frame.filename, frame.lineno or 0, frame.name or "", type(exc).__name__, _first_line(exc))


def _syntax(exc: BaseException, roots: Sequence[str | Path], only: bool) -> UserFault | None:
    if isinstance(exc, SyntaxError) and exc.filename and is_user_file(exc.filename, roots, only_roots=only):
        return UserFault(exc.filename, exc.lineno or 0, "", type(exc).__name__, exc.msg or "")
    return None


def _from_text(exc: BaseException, roots: Sequence[str | Path], only: bool) -> UserFault | None:
    """torch may copy the wrapped traceback into its message: when that text is a Python traceback whose
    last frame is the user's and is directly followed by the exception line, that exception is the user's."""
    for e in _chain(exc):
        text = _ANSI_RE.sub("", str(e))
        frames = list(_FILE_RE.finditer(text))
        if not frames or "Traceback (most recent call last)" not in text[: frames[-1].start()]:
            continue
        last = frames[-1]
        if not is_user_file(last.group(1), roots, only_roots=only):
            continue
        after = [ln for ln in text[last.end():].splitlines()[1:6] if ln.strip() and not ln.startswith(" ")]
        m = _EXC_RE.match(after[0]) if after else None
        if m is None:
            continue
        name = m.group(1).rsplit(".", 1)[-1]
        return UserFault(last.group(1), int(last.group(2)), (last.group(3) or "").strip(), name, " ".join(m.group(2).split())[:200])
    return None


def raised_by_user(exc: BaseException, roots: Sequence[str | Path] = (), *, only_roots: bool = False) -> UserFault | None:
    """The user's fault when some exception in ``exc``'s chain was raised by the user's code itself
    (its innermost frame is the user's), else ``None``: an error raised inside torch while running the
    user's ``forward`` (an unsupported op) is not the user's code failing."""
    for e in _chain(exc):
        if isinstance(e, EdgeqError):
            continue
        frames = traceback.extract_tb(e.__traceback__)
        if frames and is_user_file(frames[-1].filename, roots, only_roots=only_roots):
            return _fault(e, frames[-1])
        hit = _syntax(e, roots, only_roots)
        if hit:
            return hit
    return _from_text(exc, roots, only_roots)


def in_user_code(exc: BaseException, roots: Sequence[str | Path] = (), *, only_roots: bool = False) -> UserFault | None:
    """The deepest frame of the user's code that ``exc`` passed through (anywhere in its chain), or ``None``."""
    hit = raised_by_user(exc, roots, only_roots=only_roots)
    if hit:
        return hit
    for e in _chain(exc):
        if isinstance(e, EdgeqError):
            continue
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            if is_user_file(frame.filename, roots, only_roots=only_roots):
                return _fault(e, frame)
    return None


def user_error(fault: UserFault, what: str = "your code", hint: str = "") -> UserCodeError:
    msg = f"{what} raised {fault.exc_type}" + (f": {fault.message}" if fault.message else "") + f" ({fault.where()})"
    return UserCodeError(msg, hint or "the error is in your code, not in edgeq: fix it there (EDGEQ_DEBUG=1 shows the traceback)")


def module_roots(module_name: str) -> tuple[str, ...]:
    """The folder of the user's top-level package (so a pip-installed package still counts as theirs)."""
    top = sys.modules.get(module_name.partition(".")[0])
    path = getattr(top, "__file__", None)
    if not path:
        return ()
    p = Path(path).resolve()
    return (str(p.parent if p.name == "__init__.py" else p),)


_RAN: set[str] = set()  # folders of user code edgeq ran during this command


def reset() -> None:
    """A new command starts: no user code has run yet."""
    _RAN.clear()


def fault_in_ran_code(exc: BaseException) -> UserFault | None:
    """For the CLI's last resort: the exception passed through a folder of user code this command ran."""
    return in_user_code(exc, tuple(_RAN), only_roots=True) if _RAN else None


@contextlib.contextmanager
def user_code(what: str, *, roots: Sequence[str | Path] = (), hint: str = "",
              passthrough: tuple[type[BaseException], ...] = (), require_frame: bool = False) -> Iterator[None]:
    """Run the user's code: whatever it raises (an edgeq error and ``passthrough`` excepted) is reported as the user's;
    with ``require_frame``, only when the traceback passes through the user's files (a library model's own failure is not)."""
    _RAN.update(str(r) for r in roots)
    try:
        yield
    except (EdgeqError, KeyboardInterrupt, *passthrough):
        raise
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        if os.environ.get("EDGEQ_DEBUG"):
            raise
        fault = in_user_code(e, roots) or UserFault("", 0, "", type(e).__name__, _first_line(e))
        if not fault.file and require_frame:
            raise
        if not fault.file:
            msg = f"{what} raised {fault.exc_type}" + (f": {fault.message}" if fault.message else "")
            raise UserCodeError(msg, hint or "the error is in your code, not in edgeq (EDGEQ_DEBUG=1 shows the traceback)") from None
        raise user_error(fault, what, hint) from None
