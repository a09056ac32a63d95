"""Output paths and TMPDIR (issue 13, "low"): a read-only or wrong-kind ``-o``, a symlink, a full TMPDIR.

Each ends in one line, exit 2, before the work (the model is never opened), instead of an
"internal error" after the whole pipeline. Tests that need a tmpfs mount are skipped where
mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, assert_one_error_line, clean_env, invoke, npz, run_edgeq
from tests.robustness.test_force import no_work  # noqa: F401 - fixture: the model is never opened


@pytest.fixture
def inputs(tmp_path):
    return make_cnn(tmp_path / "cnn.onnx"), npz(tmp_path / "calib.npz", **cnn_data(16, seed=1))


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_output_on_a_read_only_file_system_is_refused_before_work(runner, inputs, tmp_path, no_work):
    model, calib = inputs
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        out = ro / "bundle"
        assert_fails_safely(runner, ["export", model, "--calib", calib, "-o", out, "--no-profile"], out, "read-only")
        assert_fails_safely(runner, ["quantize", model, "--calib", calib, "-o", ro / "q.onnx"], ro / "q.onnx", "read-only")
        assert_fails_safely(runner, ["keygen", "-o", ro / "k.pem"], ro / "k.pem", "read-only")


def test_output_that_is_a_file_where_a_folder_is_written(runner, inputs, tmp_path, no_work):
    model, calib = inputs
    f = tmp_path / "out.txt"
    f.write_text("mine")
    for extra in ([], ["--force"]):
        assert_fails_safely(runner, ["export", model, "--calib", calib, "-o", f, "--no-profile", *extra], f, "is a file")
    # -o under an existing file: no folder can be made there
    under = f / "bundle"
    assert_fails_safely(runner, ["export", model, "--calib", calib, "-o", under, "--no-profile"], f, "is not a folder")


def test_output_that_is_a_symlink_is_refused_with_and_without_force(runner, inputs, tmp_path, no_work):
    model, calib = inputs
    target = tmp_path / "elsewhere.onnx"
    target.write_bytes(b"user data")
    link = tmp_path / "q.onnx"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        assert_fails_safely(runner, ["quantize", model, "--calib", calib, "-o", link, *extra], target, "symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"user data"


@pytest.fixture
def archive(runner, inputs, tmp_path):
    model, calib = inputs
    out = tmp_path / "b"
    r = invoke(runner, "export", model, "--calib", calib, "-o", out, "--no-profile", "--golden", "2", "--archive", "zip")
    assert r.exit_code == 0, r.output
    return tmp_path / "b.zip"


def test_verify_with_a_full_tmpdir_is_one_line(archive, tmp_path, monkeypatch):
    with _tmpfs(tmp_path / "small", "size=16k") as small:
        env = clean_env()
        env["TMPDIR"] = str(small)
        p = run_edgeq(["verify", archive], env=env, timeout=60)
        assert p.rc == 2, p.stderr
        assert_one_error_line(p.stderr, "not enough space", "TMPDIR")
        assert not list(small.iterdir())
        # the same when the free-space check is fooled: the failing write itself is one line
        from edgeq.bundles import archive as archive_mod
        from edgeq.bundles.bundle import check_bundle
        from edgeq.errors import BundleError

        monkeypatch.setattr(archive_mod, "_check_room", lambda *a: None)
        monkeypatch.setenv("TMPDIR", str(small))
        monkeypatch.setattr("tempfile.tempdir", None)
        with pytest.raises(BundleError) as e:
            check_bundle(archive)
        assert "No space left" in e.value.one_line() and "TMPDIR" in e.value.one_line()
        assert not list(small.iterdir())


def test_verify_extracts_into_a_locked_scratch_folder_the_next_run_cleans(archive, tmp_path, monkeypatch):
    """A verify killed mid-extraction leaves edgeq-<pid>-*: locked while it runs, removed by the next run."""
    import os
    import re

    from edgeq.bundles import bundle as bundle_mod
    from edgeq.bundles import reader as reader_mod  # bundles are opened (and archives extracted) by the one reader
    from edgeq.core.fsutil import _writer_alive, clean_stale_scratch

    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    seen = {}
    real = reader_mod.safe_extract

    def spy(arc, dest, limits):
        folder = Path(dest).parent
        seen["name"] = folder.name
        seen["alive"] = _writer_alive(folder, os.getpid(), locked=True)
        return real(arc, dest, limits)

    monkeypatch.setattr(reader_mod, "safe_extract", spy)
    assert bundle_mod.check_bundle(archive)["passed"]
    assert re.fullmatch(rf"edgeq-{os.getpid()}-\w+", seen["name"]) and seen["alive"]
    assert not list(tmpdir.iterdir())
    # what a killed verify leaves: the same kind of folder, unlocked, its pid gone
    dead = tmpdir / "edgeq-999999999-abc"
    (dead / "bundle").mkdir(parents=True)
    old = 10**9
    os.utime(dead, (old, old))
    assert clean_stale_scratch(tmpdir) == [dead]
