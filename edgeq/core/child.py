"""Every process edgeq starts goes through here; every Python interpreter starts isolated.

A Python started with the caller's working directory or environment imports what lies
there: ``python -c ...`` and ``python -m ...`` put the working directory first on
``sys.path``, so an ``onnx.py``, ``json.py`` or ``venv.py`` next to the user's model would
run; ``PYTHONPATH``, ``PYTHONSTARTUP`` and the user site (``sitecustomize``) do the same
from the environment. Children of Python therefore get:

- ``-I`` (isolated mode: no script folder or working directory on ``sys.path``, every
  ``PYTHON*`` variable ignored, no user site);
- a neutral working directory: a private empty folder made for the call (or an edgeq
  scratch folder the caller names), never the caller's directory, so grandchildren that
  are not isolated (``venv`` running ``ensurepip``, pip's build steps) find nothing there;
- an environment without ``PYTHON*`` variables, and stdin closed.

Children that need edgeq's own modules load them from edgeq's package folder by path
(:func:`edgeq_code`), not through ``sys.path``. :func:`run` and :func:`popen` also start
non-Python tools (ssh, dpkg, qemu); they refuse a command line that starts an interpreter
without ``-I`` (tests/robustness/test_child_isolation.py checks that nothing else in
edgeq starts a process).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

ISOLATED = "-I"
_PYTHON_NAME = re.compile(r"python[0-9.]*(\.exe)?|pythonw[0-9.]*(\.exe)?|pypy[0-9.]*")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the edgeq package folder


def python_argv(python: str | os.PathLike[str], args: Sequence[str | os.PathLike[str]], *,
                launcher: Sequence[str] = (), flags: Sequence[str] = ()) -> list[str]:
    """``[*launcher, python, -I, *flags, *args]``: an interpreter that reads nothing from the caller."""
    return [*map(str, launcher), str(python), ISOLATED, *flags, *map(str, args)]


def edgeq_code(code: str) -> str:
    """``code`` preceded by an import of edgeq from its own package folder (nothing added to ``sys.path``)."""
    init = str(PACKAGE_DIR / "__init__.py")
    boot = (
        "import importlib.util as _u, sys as _s\n"
        "if 'edgeq' not in _s.modules:\n"
        f"    _spec = _u.spec_from_file_location('edgeq', {init!r}, submodule_search_locations=[{str(PACKAGE_DIR)!r}])\n"
        "    _m = _u.module_from_spec(_spec)\n"
        "    _s.modules['edgeq'] = _m\n"
        "    _spec.loader.exec_module(_m)\n"
        "del _u, _s\n"
    )
    return boot + code


def file_with_path_code(entries: Sequence[str]) -> str:
    """``-c`` code that runs ``argv[1]`` as ``__main__`` with ``entries`` first on ``sys.path``.

    For interpreters whose packages live outside their own site (the emulated arm64
    userland): ``-I`` ignores ``PYTHONPATH``, so the folders are named here instead.
    """
    return (
        "import runpy, sys\n"
        f"sys.path[:0] = {list(map(str, entries))!r}\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )


def is_python(arg: str) -> bool:
    """Whether a command-line word names a Python interpreter (by name, or this very interpreter)."""
    name = os.path.basename(str(arg))
    if _PYTHON_NAME.fullmatch(name):
        return True
    try:
        return os.path.realpath(arg) == os.path.realpath(sys.executable) and os.path.isfile(arg)
    except (OSError, ValueError):
        return False


def starts_python(argv: Sequence[str]) -> bool:
    return any(is_python(a) for a in argv)


def check_isolated(argv: Sequence[str]) -> None:
    """Refuse (RuntimeError: a bug in edgeq, not bad input) an interpreter started without ``-I``."""
    for i, a in enumerate(argv):
        if is_python(a) and (i + 1 >= len(argv) or argv[i + 1] != ISOLATED):
            raise RuntimeError(f"edgeq bug: {a} would start without {ISOLATED}; build the command with edgeq.core.child.python_argv")


def clean_env(env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``env`` (default: this process's) without ``PYTHON*`` variables, plus ``extra``."""
    base = dict(os.environ if env is None else env)
    out = {k: v for k, v in base.items() if not k.upper().startswith("PYTHON")}
    out.update(extra)
    return out


@contextlib.contextmanager
def neutral_dir() -> Iterator[str]:
    """A private, empty working directory for one child, removed afterwards."""
    d = tempfile.mkdtemp(prefix="edgeq-child-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _prepare(argv: Sequence[str], kwargs: dict[str, Any]) -> bool:
    argv = [str(a) for a in argv]
    check_isolated(argv)
    python = starts_python(argv)
    if python:
        kwargs["env"] = clean_env(kwargs.get("env"))
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return python


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` for every process edgeq starts; a Python child runs isolated in a neutral folder.

    ``cwd`` may name a folder edgeq made for this work (a scratch or staging folder);
    left out, a Python child gets a fresh empty one.
    """
    argv = [str(a) for a in argv]
    python = _prepare(argv, kwargs)
    if python and kwargs.get("cwd") is None:
        with neutral_dir() as d:
            kwargs["cwd"] = d
            return subprocess.run(argv, **kwargs)
    return subprocess.run(argv, **kwargs)


@contextlib.contextmanager
def popen(argv: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen`` with the same rules as :func:`run`; the neutral folder lives as long as the block."""
    argv = [str(a) for a in argv]
    python = _prepare(argv, kwargs)
    with contextlib.ExitStack() as stack:
        if python and kwargs.get("cwd") is None:
            kwargs["cwd"] = stack.enter_context(neutral_dir())
        proc = subprocess.Popen(argv, **kwargs)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


TimeoutExpired = subprocess.TimeoutExpired
CompletedProcess = subprocess.CompletedProcess
PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL
