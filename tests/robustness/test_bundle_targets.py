"""Issue 13 item 2: a bundle never chooses a target file, so never a library onnxruntime loads.

A bundle's manifest may name only a target shipped with edgeq (by name); any path
(``targets/../x.toml``, an absolute path, ``x.toml`` in the working directory) is refused
with one line, exit 2, before a provider starts. Provider options that name files or
libraries (``backend_path``, ``*_dir``, ``ep.context_file_path``, ...) are taken only from
a target file the user passes with ``--target``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeq.core import targets as targets_mod
from edgeq.cli import app
from edgeq.errors import TargetError
from edgeq.core.targets import bundle_target, load_target, names_a_file, target_names
from tests.bundles import build
from tests.robustness.failsafe import assert_one_error_line, invoke

FAST = ["--runs", "3", "--warmup", "1", "--budget", "0.5", "--json"]


def _canary_library(tmp_path: Path) -> tuple[Path, Path]:
    """A shared library whose constructor writes a canary file when anything loads it."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the canary library")
    canary = tmp_path / "LIBRARY-LOADED"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void boom(void) {'
                   f' FILE *f = fopen("{canary}", "w"); if (f) fclose(f); }}\n')
    lib = tmp_path / "libevil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True, timeout=60)
    return lib, canary


def _evil_toml(path: Path, lib: Path) -> Path:
    path.write_text(
        'name = "evil"\ndescription = "loads a library"\n[[providers]]\nname = "QNNExecutionProvider"\n'
        f'options = {{ backend_path = "{lib}" }}\n[[providers]]\nname = "CPUExecutionProvider"\n'
    )
    return path


def _name_in_manifest(bundle: Path, name: str) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["target"]["name"] = name
    (bundle / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("b") / "bundle", target="cpu-x86_64")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "cwd-toml", "relative-toml", "shipped-with-suffix"])
def test_a_manifest_naming_a_target_file_is_refused(runner, bundle, tmp_path, monkeypatch, how):
    lib, canary = _canary_library(tmp_path)
    evil = _evil_toml(tmp_path / "x.toml", lib)
    b = tmp_path / "bundle"
    shutil.copytree(bundle, b)
    depth = len(targets_mod.targets_dir().resolve().parts)
    name = {
        "dotdot": "targets/" + "../" * depth + str(evil).lstrip("/"),
        "absolute": str(evil),
        "cwd-toml": "x.toml",
        "relative-toml": "../x.toml",
        "shipped-with-suffix": "cpu-x86_64.toml",
    }[how]
    if how == "dotdot":  # the path really reaches the file from edgeq's targets folder
        assert (targets_mod.targets_dir() / name).resolve() == evil.resolve()
    monkeypatch.chdir(tmp_path if how != "relative-toml" else b)
    _name_in_manifest(b, name)
    r = invoke(runner, "profile", str(b), *FAST)
    assert r.exit_code == 2, r.output
    assert_one_error_line(r.stderr, "not a target shipped with edgeq", "--target")
    assert not canary.exists()


def test_a_toml_and_library_shipped_inside_the_bundle_are_never_used(runner, bundle, tmp_path):
    """The issue's case: x.toml and its library inside the bundle, listed with checksums, the manifest naming x.toml."""
    import hashlib

    b = tmp_path / "bundle"
    shutil.copytree(bundle, b)
    lib, canary = _canary_library(tmp_path)
    shutil.copy(lib, b / "libevil.so")
    _evil_toml(b / "x.toml", b / "libevil.so")
    m = json.loads((b / "manifest.json").read_text())
    for f in ("x.toml", "libevil.so"):
        data = (b / f).read_bytes()
        m["files"][f] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    depth = len(targets_mod.targets_dir().resolve().parts)
    for name in (str(b / "x.toml"), "targets/" + "../" * depth + str(b / "x.toml").lstrip("/")):
        m["target"]["name"] = name
        (b / "manifest.json").write_text(json.dumps(m))
        r = invoke(runner, "profile", str(b), *FAST)
        assert r.exit_code == 2, r.output
        assert_one_error_line(r.stderr, "not a target shipped with edgeq")
    assert not canary.exists()


def test_the_library_is_live_when_the_user_chooses_that_target(runner, bundle, tmp_path):
    """Control: the same TOML passed by the user with --target is accepted, and its library really loads."""
    pytest.importorskip("onnxruntime_qnn")
    lib, canary = _canary_library(tmp_path)
    evil = _evil_toml(tmp_path / "x.toml", lib)
    assert load_target(str(evil)).providers[0].options_dict()["backend_path"] == str(lib)
    invoke(runner, "profile", str(bundle), "--target", str(evil), *FAST, budget_s=300)
    assert canary.exists()


def test_a_shipped_target_name_in_the_manifest_still_works(runner, bundle):
    r = invoke(runner, "profile", str(bundle), *FAST)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["target"] == "cpu-x86_64"


@pytest.mark.parametrize("name", ["../targets/arm64", "arm64/../arm64", "/etc/passwd", "arm64.toml", "", "..", ".",
                                  "a\x1b]0;x\x07", None, 3])
def test_bundle_target_takes_shipped_names_only(name):
    with pytest.raises(TargetError, match="not a target shipped with edgeq") as e:
        bundle_target(name, "the manifest")
    assert "\x1b" not in e.value.message and "\x07" not in e.value.message


def test_every_shipped_target_loads_through_the_bundle_route():
    assert [bundle_target(n, "m").name for n in target_names()] == [load_target(n).name for n in target_names()]


def test_user_target_names_cannot_leave_the_targets_folder(tmp_path, monkeypatch):
    (tmp_path / "evil.toml").write_text('name = "evil"\ndescription = "x"\n[[providers]]\nname = "CPUExecutionProvider"\n')
    monkeypatch.chdir(tmp_path)
    depth = len(targets_mod.targets_dir().resolve().parts)
    with pytest.raises(TargetError, match="unknown target"):
        load_target("../" * depth + str(tmp_path / "evil").lstrip("/"))  # would be targets/<..>/evil.toml
    assert load_target("evil.toml").name == "evil"  # a path the user gives is theirs


@pytest.mark.parametrize("option", ["backend_path", "ep.context_file_path", "cache_dir", "qnn_context_cache_path",
                                    "trt_engine_cache_path", "load_config", "profiling_file_path", "json_qnn_graph_dir"])
def test_file_options_come_only_from_a_file_the_user_passed(tmp_path, monkeypatch, option):
    assert names_a_file(option)
    shipped = tmp_path / "targets"
    shipped.mkdir()
    (shipped / "npu.toml").write_text(
        f'name = "npu"\ndescription = "x"\n[[providers]]\nname = "QNNExecutionProvider"\noptions = {{ "{option}" = "/x/lib.so" }}\n'
    )
    assert load_target(str(shipped / "npu.toml")).providers[0].options_dict()[option] == "/x/lib.so"
    monkeypatch.setattr(targets_mod, "targets_dir", lambda: shipped)
    with pytest.raises(TargetError, match=f"provider option '{option}' names a file or library"):
        bundle_target("npu", "the manifest")


@pytest.mark.parametrize("option", ["backend_type", "htp_performance_mode", "device_type", "precision", "num_of_threads"])
def test_plain_options_are_not_file_options(option):
    assert not names_a_file(option)
