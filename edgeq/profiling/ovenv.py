"""The OpenVINO environment: a separate Python whose onnxruntime is onnxruntime-openvino.

``onnxruntime-openvino`` ships its own ``onnxruntime`` module, so it cannot sit
next to the regular one. edgeq finds a Python for it, in this order:

1. ``EDGEQ_OPENVINO_PYTHON``: the python of an environment you manage yourself;
2. a managed virtual environment in edgeq's cache
   (``$EDGEQ_CACHE_DIR`` or ``~/.cache/edgeq``) ``/envs/openvino-<version>``,
   created on request (``edgeq profile ... --setup-runtime``), never silently: it
   downloads about 100 MB and takes about 450 MB on disk.

The measurement worker (``edgeq/profiling/worker.py``) runs under that Python.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..core import child
from ..errors import ProviderError

OPENVINO_VERSION = "1.24.1"
ENV_VAR = "EDGEQ_OPENVINO_PYTHON"
READY = ".edgeq-ready"


def cache_dir() -> Path:
    base = os.environ.get("EDGEQ_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeq")
    return Path(base)


def managed_env() -> Path:
    return cache_dir() / "envs" / f"openvino-{OPENVINO_VERSION}"


def _python_in(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_python() -> Path | None:
    """The OpenVINO environment's python, or None when there is none yet."""
    named = os.environ.get(ENV_VAR)
    if named:
        p = Path(named)
        if not p.is_file():
            raise ProviderError(f"{ENV_VAR}={named} is not a file", "point it at the python of an environment with onnxruntime-openvino")
        return p
    env = managed_env()
    if (env / READY).is_file() and _python_in(env).is_file():
        return _python_in(env)
    return None


def create(progress=None) -> Path:
    """Create the managed environment (atomically: a failed install leaves nothing behind)."""
    env = managed_env()
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{env.name}.edgeq-tmp-{os.getpid()}-", dir=env.parent))
    steps = [
        ("creating the virtual environment", child.python_argv(sys.executable, ["-m", "venv", tmp])),
        (f"installing onnxruntime-openvino {OPENVINO_VERSION} (about 100 MB download)",
         child.python_argv(_python_in(tmp), ["-m", "pip", "install", "--disable-pip-version-check", "-q",
                                             f"onnxruntime-openvino=={OPENVINO_VERSION}", "numpy"])),
    ]
    try:
        for i, (what, cmd) in enumerate(steps):
            if progress:
                progress(i, len(steps), what)
            r = child.run(cmd, capture_output=True, text=True)  # isolated, in an empty folder (edgeq.core.child)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
                raise ProviderError(f"setting up the OpenVINO environment failed while {what}: {tail[0][:200]}",
                                    f"check network access to PyPI, or set {ENV_VAR} to an existing environment's python")
        if progress:
            progress(len(steps), len(steps), "done")
        (tmp / READY).write_text(OPENVINO_VERSION + "\n")
        if env.exists():
            shutil.rmtree(env)
        os.replace(tmp, env)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _python_in(env)


def require_python(setup: bool, progress=None) -> Path:
    p = find_python()
    if p is not None:
        return p
    if not setup:
        raise ProviderError(
            "OpenVINOExecutionProvider needs its own Python environment (onnxruntime-openvino replaces onnxruntime)",
            f"pass --setup-runtime to create one in {managed_env()} (about 450 MB), or set {ENV_VAR} to a python that has onnxruntime-openvino",
        )
    return create(progress)
