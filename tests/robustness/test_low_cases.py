"""Issue 13, "low": live scratch folders in another pid namespace, ``tar -C bundle .`` archives,
``--golden`` vs archive limits, a deeply nested manifest in run.py, onnxruntime telemetry files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.errors import BundleError
from edgeq.core.fsutil import clean_stale, clean_stale_scratch

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, assert_one_error_line, clean_env, invoke, npz, run_edgeq

NO_SUCH_PID = 999_999_999  # above any pid_max: what a pid from another namespace looks like here


def _hold_lock(path: Path) -> subprocess.Popen:
    """A process that holds the flock on ``path``, as a live edgeq run does."""
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_live_scratch_folder_of_another_pid_namespace_is_kept(tmp_path):
    scratch = tmp_path / f"edgeq-{NO_SUCH_PID}-live"
    staged = tmp_path / f".bundle.edgeq-tmp-{NO_SUCH_PID}-live"
    for d in (scratch, staged):
        (d / "work").mkdir(parents=True)
        os.utime(d, (10**9, 10**9))  # old: no grace period
    holders = [_hold_lock(scratch), _hold_lock(staged)]
    try:
        assert clean_stale_scratch(tmp_path) == []
        assert clean_stale(tmp_path / "bundle") == []
        assert (scratch / "work").is_dir() and (staged / "work").is_dir()
    finally:
        for p in holders:
            p.kill()
            p.wait()
    # once the holder is gone (the run died), the next run removes them
    assert clean_stale_scratch(tmp_path) == [scratch]
    assert clean_stale(tmp_path / "bundle") == [staged]


@pytest.fixture
def bundle(runner, tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    out = tmp_path / "bundle"
    r = invoke(runner, "export", model, "--calib", calib, "-o", out, "--no-profile", "--golden", "2")
    assert r.exit_code == 0, r.output
    return out


def test_tar_of_the_bundle_folder_dot_is_accepted(runner, bundle, tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    arc = tmp_path / "b.tgz"
    subprocess.run(["tar", "czf", str(arc), "-C", str(bundle), "."], check=True)
    names = subprocess.run(["tar", "tzf", str(arc)], check=True, capture_output=True, text=True).stdout.split()
    assert "./" in names and "./manifest.json" in names
    r = invoke(runner, "verify", arc)
    assert r.exit_code == 0, r.output
    # the same with zip's "./" folder entry
    import zipfile

    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("./", b"")
        for p in sorted(bundle.rglob("*")):
            if p.is_file():
                zf.write(p, "./" + p.relative_to(bundle).as_posix())
    assert invoke(runner, "verify", z).exit_code == 0


def test_golden_pairs_the_archive_could_not_hold_are_refused_up_front(runner, tmp_path):
    from edgeq.bundles.archive import check_golden_archivable

    model = make_cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "b"
    assert_fails_safely(runner, ["bundle", model, "-o", out, "--golden", "5100", "--archive", "tar.gz"], out,
                        "10000", "verify", budget_s=20)
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    assert_fails_safely(runner, ["export", model, "--calib", calib, "-o", out, "--golden", "5100", "--archive", "zip"], out,
                        "10000", budget_s=20)
    check_golden_archivable(4990, 2, "zip")  # 9996 files: within the limit verify applies
    check_golden_archivable(5100, 2, None)  # no archive: no limit
    with pytest.raises(BundleError):
        check_golden_archivable(4993, 2, "zip")


def test_the_archive_writer_refuses_what_verify_would(tmp_path):
    from edgeq.bundles.archive import ExtractLimits, write_archive

    root = tmp_path / "root"
    root.mkdir()
    for i in range(ExtractLimits().max_members + 1):
        (root / f"{i:05d}").write_bytes(b"")
    with pytest.raises(BundleError) as e:
        write_archive(root, tmp_path / "a.zip", "zip")
    assert "10000" in e.value.one_line() and not (tmp_path / "a.zip").exists()


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100 + "1" + "}" * 100])
def test_run_py_reports_a_deeply_nested_manifest_in_one_line(bundle, text):
    (bundle / "manifest.json").write_text(text)
    r = subprocess.run([sys.executable, str(bundle / "run.py"), str(bundle)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "nested" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _env_without_the_switch(tmp_path: Path) -> tuple[dict, Path, Path]:
    env = clean_env(tmp_path / "tmp")
    env.pop("ORT_DISABLE_TELEMETRY", None)  # the test process itself imported edgeq, which set it
    home = tmp_path / "home"
    home.mkdir()
    env["HOME"] = str(home)
    return env, tmp_path / "tmp", home


@pytest.mark.slow
def test_onnxruntime_writes_no_telemetry_files_outside_the_output(tmp_path):
    env, tmpdir, home = _env_without_the_switch(tmp_path)
    # control: onnxruntime on its own writes them (so the check below can fail)
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, check=True, cwd=tmp_path)
    control = sorted(p.name for p in tmpdir.iterdir()) + sorted(p.name for p in home.rglob("*"))
    if not control:
        pytest.skip("this onnxruntime writes no telemetry files")
    shutil.rmtree(home)
    shutil.rmtree(tmpdir)
    tmpdir.mkdir()
    home.mkdir()
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    out = tmp_path / "out"
    p = run_edgeq(["export", model, "--calib", calib, "-o", out, "--golden", "1"], env=env, timeout=300)
    assert p.rc == 0, p.stderr
    r = subprocess.run([sys.executable, str(out / "run.py")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(tmpdir.iterdir()) == [] and list(home.rglob("*")) == [], (list(tmpdir.iterdir()), list(home.rglob("*")))


def test_fifo_calibration_data_weights_and_prompts_are_one_line(tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    fifo = tmp_path / "calib.npz"
    os.mkfifo(fifo)
    hf = tmp_path / "hf"
    hf.mkdir()
    env = clean_env(tmp_path / "t")
    for args, words in (
        (["export", model, "--calib", fifo, "-o", tmp_path / "out"], ("calibration data", "FIFO")),
        (["export", "tests.models:make_cnn", "--weights", fifo, "-o", tmp_path / "out"], ("--weights", "FIFO")),
        (["export", hf, "--target", "llamacpp-x86_64", "--eval", fifo, "-o", tmp_path / "out"], ("prompt file", "FIFO")),
    ):
        p = run_edgeq(args, timeout=60, env=env)
        assert p.rc == 2, (args, p.stderr)
        assert_one_error_line(p.stderr, *words)
