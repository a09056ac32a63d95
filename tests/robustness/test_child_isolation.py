"""Issue 13 item 1: no child interpreter edgeq starts imports code from the caller's folder or environment.

Modules named like what the children import (``onnx.py``, ``json.py``, ``venv.py``,
``numpy.py``, ``sitecustomize.py``, ...) are planted in the working directory and on
``PYTHONPATH``; each writes a canary file when imported. After edgeq ran its children
(model probe, ORT-format writer, profile worker, venv creation, pip), no canary exists.
A structural test keeps every process start in ``edgeq/core/child.py``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq.core import child
from edgeq.errors import EdgeqError
from tests.models import cnn_data, make_cnn

EDGEQ = Path(child.__file__).resolve().parents[1]
# modules the children import (not the ones the interpreter needs to start: those would only crash it)
PLANTED = ("onnx", "onnxruntime", "numpy", "json", "venv", "ensurepip", "pip", "sitecustomize", "usercustomize", "edgeq")


def plant(folder: Path) -> Path:
    """Modules that write ``folder/CANARY-<name>`` when imported; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLANTED:
        code = f"open({str(folder / ('CANARY-' + name))!r}, 'w').close()\n"
        if name == "edgeq":
            (folder / name).mkdir(exist_ok=True)
            (folder / name / "__init__.py").write_text(code)
        else:
            (folder / f"{name}.py").write_text(code)
    (folder / "startup.py").write_text(f"open({str(folder / 'CANARY-startup')!r}, 'w').close()\n")
    return folder


def canaries(*folders: Path) -> list[str]:
    return sorted(p.name for f in folders for p in f.glob("CANARY-*"))


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """cwd and PYTHONPATH full of planted modules; returns (cwd folder, PYTHONPATH folder)."""
    cwd, env = plant(tmp_path / "cwd"), plant(tmp_path / "envpath")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", str(env))
    monkeypatch.setenv("PYTHONSTARTUP", str(env / "startup.py"))
    monkeypatch.setenv("PYTHONUSERBASE", str(env))
    monkeypatch.delenv("EDGEQ_PROBE", raising=False)
    return cwd, env


def _no_pip_index(monkeypatch) -> None:
    """pip consults no index and no config file: every install fails at once, offline and deterministic."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_the_planted_modules_are_live(hostile):
    """Control: a plain ``python -c`` child in that folder runs the planted code (so the tests below can fail)."""
    cwd, env = hostile
    subprocess.run([sys.executable, "-c", "import json, onnx"], cwd=cwd, capture_output=True, timeout=60)
    assert "CANARY-json" in canaries(cwd, env) and "CANARY-onnx" in canaries(cwd, env)


def test_probe_ort_writer_and_profile_worker_import_nothing_from_cwd_or_env(hostile, tmp_path):
    from edgeq.bundles.bundle import _convert_to_ort
    from edgeq.core.isolate import probe_model
    from edgeq.profiling.profiler import MeasureOptions, load_input, measure, resolve_backend
    from edgeq.core.targets import load_target

    cwd, env = hostile
    work = tmp_path / "work"
    work.mkdir()
    model = make_cnn(work / "cnn.onnx")
    probe_model(model)
    _convert_to_ort(model, work / "cnn.ort", "basic")
    assert (work / "cnn.ort").stat().st_size > 0
    tg = load_target("cpu-x86_64")
    rep = measure(load_input(model), tg, resolve_backend(tg), MeasureOptions(runs=3, warmup=1, budget_s=0.5))
    assert rep["steady"]["runs"] >= 1
    assert canaries(cwd, env) == []


def test_emulation_pip_runs_isolated(hostile, tmp_path, monkeypatch):
    """The arm64 set-up's ``-m pip`` (here with no index, so it fails) imports no planted pip."""
    from edgeq.devices.qemu import EmulationError, _pip_install

    cwd, env = hostile
    _no_pip_index(monkeypatch)
    with pytest.raises(EmulationError) as e:  # the real pip ran and found nothing to install
        try:
            _pip_install(tmp_path / "site", "3.11", "1.0.0", lambda line: None)
        finally:
            assert canaries(cwd, env) == []
    assert "pip install" in e.value.message


@pytest.mark.slow
def test_openvino_venv_creation_runs_isolated(hostile, tmp_path, monkeypatch):
    """``-m venv`` (and its ensurepip) and the venv's ``-m pip`` import no planted venv/pip/ensurepip."""
    from edgeq.profiling import ovenv

    cwd, env = hostile
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    _no_pip_index(monkeypatch)
    steps = []
    with pytest.raises(EdgeqError, match="installing onnxruntime-openvino"):  # venv made; pip has no index
        try:
            ovenv.create(lambda i, n, what: steps.append(what))
        finally:
            assert canaries(cwd, env) == []
    assert steps[0] == "creating the virtual environment" and "installing onnxruntime-openvino" in steps[1]
    assert canaries(cwd, env) == []
    assert not ovenv.managed_env().exists()


def _cli(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """The real CLI in a child whose own start is isolated (the user's shell is not the attack here)."""
    return subprocess.run([sys.executable, "-I", "-c", "from edgeq.cli import main; main()", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("profile", [False, True], ids=["no-profile", "with-profile"])
def test_export_in_a_hostile_folder_runs_no_planted_code(tmp_path, profile):
    """The issue's reproduction: ``edgeq export model.onnx --calib calib.npz -o out`` in a folder with onnx.py & co."""
    cwd, envp = plant(tmp_path / "cwd"), plant(tmp_path / "envpath")
    make_cnn(cwd / "model.onnx")
    np.savez(cwd / "calib.npz", **cnn_data(32, seed=1))
    env = dict(os.environ, PYTHONPATH=str(envp), PYTHONSTARTUP=str(envp / "startup.py"))
    env.pop("EDGEQ_PROBE", None)
    args = ["export", "model.onnx", "--calib", "calib.npz", "-o", "out"] + ([] if profile else ["--no-profile"])
    r = _cli(args, cwd, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (cwd / "out" / "model.ort").is_file()
    assert (cwd / "out.profile.json").is_file() == profile
    assert canaries(cwd, envp) == []


# ------------------------------------------------------------------ structural

_SPAWNERS = {"subprocess", "multiprocessing", "pty", "pexpect", "asyncio.subprocess", "concurrent.futures.process"}
_OS_SPAWN = {"system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp"}


def _starts_processes(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in {s.split(".")[0] for s in _SPAWNERS}]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {s.split(".")[0] for s in _SPAWNERS}:
            found.append(f"from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"from os import {a.name}" for a in node.names if a.name.startswith(("exec", "spawn")) or a.name in _OS_SPAWN]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr.startswith(("exec", "spawn")) or node.attr in _OS_SPAWN:
                found.append(f"os.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "os.exec" in node.value:
            # child code shipped as a string (bundle.py's ORT writer re-executes itself): it must stay isolated
            if '"-I"' not in node.value and "'-I'" not in node.value:
                found.append("os.exec* without -I in child code")
    return found


def test_only_edgeq_child_starts_processes():
    """Every process edgeq starts goes through edgeq/core/child.py (which enforces -I for interpreters)."""
    offenders = {}
    for path in sorted(EDGEQ.rglob("*.py")):
        rel = path.relative_to(EDGEQ).as_posix()
        if rel == "core/child.py":
            continue
        hits = _starts_processes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if hits:
            offenders[rel] = hits
    assert offenders == {}, f"start processes through edgeq.core.child (run/popen/python_argv): {offenders}"


def test_the_structural_check_sees_a_bypass():
    """Control: the scan above flags the forms a new child would take."""
    for src in ("import subprocess\nsubprocess.run(['python', '-c', 'x'])", "import os\nos.execv('/usr/bin/python3', [])",
                "from subprocess import Popen", "import multiprocessing", "import os\nos.system('python3 x.py')",
                "CODE = 'import os, sys; os.execv(sys.executable, [sys.executable, \"-c\", C])'"):
        assert _starts_processes(ast.parse(src)), src


def test_the_helper_refuses_an_interpreter_without_isolation(tmp_path):
    for argv in ([sys.executable, "-c", "pass"], ["python3", "-m", "venv", str(tmp_path / "v")],
                 ["qemu-aarch64", "-L", "/r", "/r/usr/bin/python3.11", "-s", "run.py"]):
        with pytest.raises(RuntimeError, match="without -I"):
            child.run(argv)
    assert child.python_argv("/r/usr/bin/python3.11", ["x.py"], launcher=["qemu"]) == ["qemu", "/r/usr/bin/python3.11", "-I", "x.py"]
    r = child.run(child.python_argv(sys.executable, ["-c", "import os, sys; print(os.getcwd()); print(sys.flags.isolated)"]),
                  capture_output=True, text=True, timeout=60)
    cwd, isolated = r.stdout.split()
    assert isolated == "1" and Path(cwd).name.startswith("edgeq-child-") and not Path(cwd).exists()


def test_edgeq_code_loads_edgeq_from_its_package_folder(hostile):
    """A child that needs edgeq gets this edgeq, not an ``edgeq`` planted on the path or in the folder."""
    cwd, env = hostile
    r = child.run(child.python_argv(sys.executable, ["-c", child.edgeq_code("import edgeq.core.isolate, sys; print(edgeq.__file__)")]),
                  capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == EDGEQ / "__init__.py"
    assert canaries(cwd, env) == []
