"""Item 12: SIGINT, SIGTERM and SIGKILL during a real ``edgeq export`` over an existing bundle.

The old bundle stays whole, nothing partial appears under the final name, and what a
killed run left behind (staging folder next to the output, scratch folder in TMPDIR)
is removed by the next run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from edgeq.core.fsutil import _lock, _unlock, clean_stale, clean_stale_scratch

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_one_error_line, clean_env, invoke, npz, run_edgeq, tree

GOLDEN = 600  # enough golden pairs that writing the bundle takes a while


@pytest.fixture
def setup(runner, tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(GOLDEN, seed=3))
    out = tmp_path / "site" / "bundle"
    r = invoke(runner, "export", model, "-o", out, "--calib", calib, "--no-profile", "--golden", "2")
    assert r.exit_code == 0, r.output
    return model, calib, out


def _signal_mid_bundle(out: Path, sig: int):
    """on_start hook: wait until the new bundle is half written in its staging folder, then signal."""

    def hook(pid: int) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            staged = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.edgeq-tmp-{pid}-")]
            if staged and (staged[0] / "golden" / "010").exists():
                os.kill(pid, sig)
                return
            time.sleep(0.005)
        raise AssertionError("the export never reached the bundle stage")

    return hook


def _ours(tmpdir: Path) -> list[str]:
    """edgeq's scratch folders in a TMPDIR (other tools may put their own files there)."""
    return [q.name for q in tmpdir.iterdir() if q.name.startswith("edgeq-")]


def _export_args(model, calib, out, golden=GOLDEN):
    return ["export", model, "-o", out, "--force", "--calib", calib, "--calib-samples", "16", "--no-profile", "--golden", str(golden)]


@pytest.mark.slow
def test_interrupts_keep_the_old_bundle_and_the_next_run_cleans_up(runner, setup, tmp_path):
    model, calib, out = setup
    before = tree(out)
    scratch = tmp_path / "scratch"
    # SIGINT (Ctrl-C) and SIGTERM: one line, exit 130, old bundle whole, nothing left behind
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = run_edgeq(_export_args(model, calib, out), env=clean_env(scratch), on_start=_signal_mid_bundle(out, sig), timeout=120)
        assert p.rc == 130, (sig, p.rc, p.stderr)
        assert_one_error_line(p.stderr, "interrupted", "unchanged")
        assert tree(out) == before
        assert [q.name for q in out.parent.iterdir()] == ["bundle"]
        assert _ours(scratch) == []
        assert p.max_rss < 1.5 * 2**30
    # SIGKILL: no cleanup possible; the old bundle is still whole and nothing partial is under its name
    p = run_edgeq(_export_args(model, calib, out), env=clean_env(scratch), on_start=_signal_mid_bundle(out, signal.SIGKILL), timeout=120)
    assert p.rc == -signal.SIGKILL
    assert tree(out) == before
    left = sorted(q.name for q in out.parent.iterdir())
    assert left[0].startswith(".bundle.edgeq-tmp-") and left[1:] == ["bundle"], left  # the kill hit mid-write
    assert len(_ours(scratch)) == 1
    # the next run (a real one, same TMPDIR) removes both and publishes a whole new bundle
    p2 = run_edgeq(_export_args(model, calib, out, golden=2) + ["--per-tensor"], env=clean_env(scratch), timeout=120)
    assert p2.rc == 0, p2.stderr
    assert [q.name for q in out.parent.iterdir()] == ["bundle"]
    assert _ours(scratch) == []
    assert tree(out) != before
    r = invoke(runner, "verify", out)
    assert r.exit_code == 0, r.output


def test_stale_temporaries_with_a_recycled_pid_are_cleaned(tmp_path):
    # a temporary named after a live pid (ours) but not locked and old: its writer is gone
    final = tmp_path / "b"
    stale = tmp_path / f".b.edgeq-tmp-{os.getpid()}-abc"
    stale.mkdir()
    (stale / "x").write_text("partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = tmp_path / f".b.edgeq-tmp-{os.getpid()}-def"
    live.mkdir()
    fd = _lock(live)
    try:
        assert clean_stale(final) == [stale]
        assert live.exists() and not stale.exists()
    finally:
        _unlock(fd)
    os.utime(live, (time.time() - 3600, time.time() - 3600))
    assert clean_stale(final) == [live]


def test_dead_writer_between_renames_gets_the_old_output_back(tmp_path):
    # a run killed after moving the old bundle aside (non-Linux fallback path) left only ".b.edgeq-old-*"
    final = tmp_path / "b"
    old = tmp_path / ".b.edgeq-old-999999999-xyz"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    clean_stale(final)
    assert (final / "manifest.json").read_text() == "{}" and not old.exists()


def test_stale_scratch_folders_are_removed_but_live_ones_kept(tmp_path):
    dead = tmp_path / "edgeq-999999999-aaa"
    dead.mkdir()
    (dead / "fp32.onnx").write_bytes(np.zeros(10).tobytes())
    live = tmp_path / f"edgeq-{os.getpid()}-bbb"
    live.mkdir()
    other = tmp_path / "edgeq-notours"
    other.mkdir()
    fd = _lock(live)
    try:
        assert clean_stale_scratch(tmp_path) == [dead]
    finally:
        _unlock(fd)
    assert live.exists() and other.exists()


def test_an_interrupt_a_library_swallowed_is_still_reported_as_one(runner, tmp_path, monkeypatch):
    # numpy.save can turn a KeyboardInterrupt into a TypeError: still "interrupted", exit 130
    import edgeq.cli as cli
    import edgeq.pipeline as pipeline

    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(4))

    def interrupted(*a, **k):
        cli._INTERRUPTED.append(signal.SIGINT)
        raise TypeError("expected str, bytes or os.PathLike object, not BufferedWriter")

    monkeypatch.setattr(cli, "_INTERRUPTED", [])
    monkeypatch.setattr(pipeline, "run_export", interrupted)
    r = invoke(runner, "export", model, "-o", tmp_path / "b", "--calib", calib)
    assert r.exit_code == 130
    assert_one_error_line(r.stderr, "interrupted")

    def bug(*a, **k):
        raise RuntimeError("boom")

    cli._INTERRUPTED.clear()
    monkeypatch.setattr(pipeline, "run_export", bug)
    r = invoke(runner, "export", model, "-o", tmp_path / "b", "--calib", calib)
    assert r.exit_code == 1
    assert_one_error_line(r.stderr, "internal error (RuntimeError: boom)", "EDGEQ_DEBUG=1")
    assert not (tmp_path / "b").exists()
