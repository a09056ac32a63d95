"""Shared checks for the robustness suite: how a safe failure looks.

A safe failure is a non-zero exit with exactly one ``error:`` line on stderr naming the
problem, no traceback, nothing created or replaced at the output path, and bounded
time and memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from edgeq.cli import app

from tests.models import snapshot


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (including dot-files and stale temporaries) with its bytes."""
    return snapshot(path) if Path(path).exists() else {}


def bounded(fn) -> tuple[float, int]:
    """Run ``fn``; its wall time and the peak of memory traced by ``tracemalloc`` (numpy's included)."""
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return elapsed, peak


def assert_one_error_line(stderr: str, *words: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    for w in words:
        assert w.lower() in errors[0].lower(), (w, errors[0])
    return errors[0]


def invoke(runner, *args: str, budget_s: float = 60.0):
    """Run the CLI in-process; returns the result after checking the time budget."""
    t0 = time.perf_counter()
    r = runner.invoke(app, [str(a) for a in args])
    elapsed = time.perf_counter() - t0
    assert elapsed < budget_s, f"took {elapsed:.1f} s (budget {budget_s} s)"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"uncaught {type(r.exception).__name__}: {r.exception}\n{r.output}")
    return r


def assert_fails_safely(runner, args: list, out: Path | None, *words: str, code: int = 2, budget_s: float = 60.0) -> str:
    """The command exits ``code`` with one error line holding ``words``; ``out`` is untouched."""
    before = tree(out) if out is not None else None
    siblings = sorted(p.name for p in out.parent.iterdir()) if out is not None and out.parent.exists() else None
    r = invoke(runner, *args, budget_s=budget_s)
    assert r.exit_code == code, (r.exit_code, r.output)
    line = assert_one_error_line(r.stderr, *words)
    if out is not None:
        assert tree(out) == before
        if siblings is not None:
            assert sorted(p.name for p in out.parent.iterdir()) == siblings, "a temporary file was left next to the output"
    return line


@dataclass(frozen=True)
class Proc:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    max_rss: int  # bytes, peak resident set of the child


# Starts the command as its child and reports the child's pid, then its wait status and peak RSS,
# on the pipe whose fd is argv[1]. A process's peak RSS (ru_maxrss) keeps the peak of the memory
# it had before exec, and a child forked from the test run starts with a copy of all of it (a
# full pytest run holds torch and transformers: ~450 MB); forked from this small interpreter
# instead, the command's figure is its own.
_LAUNCHER = """
import os, signal, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test run started in the background ignores SIGINT
    os.execv(argv[0], argv)
os.write(fd, b"%d\\n" % pid)
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d\\n" % (status, usage.ru_maxrss))
"""


def run_edgeq(args: list, *, timeout: float = 120, env: dict | None = None, cwd: Path | None = None,
              on_start=None) -> Proc:
    """Run the real ``edgeq`` CLI in a child process; measure its time and peak memory.

    ``on_start(pid)`` is called once the child runs (to send it signals). The child is started
    and reaped (``wait4``) by a small launcher process, so its peak RSS is its own and not the
    size of the test run it was started from.
    """
    cmd = [sys.executable, "-c", "from edgeq.cli import main; main()", *[str(a) for a in args]]
    rfd, wfd = os.pipe()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe, os.fdopen(rfd, "rb") as report:
        t0 = time.perf_counter()
        try:
            launcher = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(wfd), *cmd], stdout=fo, stderr=fe,
                                        env=env, cwd=cwd, text=True, pass_fds=(wfd,))
        finally:
            os.close(wfd)
        pid = int(report.readline())
        try:
            if on_start is not None:
                on_start(pid)
            while launcher.poll() is None:
                if time.perf_counter() - t0 > timeout:
                    raise AssertionError(f"edgeq {' '.join(map(str, args))} ran past {timeout} s")
                time.sleep(0.01)
        except BaseException:
            for victim in (pid, launcher.pid):
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            launcher.wait()
            raise
        seconds = time.perf_counter() - t0
        status, maxrss = (int(v) for v in report.readline().split())
        rc = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        scale = 1 if sys.platform == "darwin" else 1024
        return Proc(rc, fo.read(), fe.read(), seconds, maxrss * scale)


def externalize(model_path: Path, tensor: str, location: str, data_path: Path | None = None, *,
                offset: int | None = None, length: int | None = None, extra: list[tuple[str, str]] = ()) -> Path:
    """Move ``tensor``'s bytes of the model at ``model_path`` to external data at ``location``.

    The bytes are written to ``data_path`` (default: the location under the model folder);
    ``offset``/``length``/``extra`` entries are written as given, even when they are wrong.
    """
    m = onnx.load(str(model_path))
    t = next(i for i in m.graph.initializer if i.name == tensor)
    raw = onnx.numpy_helper.to_array(t).tobytes()
    if data_path is not None:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        with open(data_path, "wb") as f:
            f.write(b"\0" * (offset or 0) + raw)
    t.ClearField("raw_data")
    del t.float_data[:]
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    for k, v in [*entries, *extra]:
        e = t.external_data.add()
        e.key, e.value = k, v
    with open(model_path, "wb") as f:
        f.write(m.SerializeToString())
    return model_path


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def clean_env(tmpdir: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("EDGEQ_DEBUG", None)
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env
