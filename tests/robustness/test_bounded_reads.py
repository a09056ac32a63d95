"""Bounded reads (issue 13, item 4): npz bombs, image sizes, manifest size, non-regular files, --calib-bins.

Each refusal is one line, exit 2, before the data is read: time and memory stay small.
Cases that would hang on a broken build (FIFOs) run the real CLI in a child with a timeout.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.core import data as data_mod
from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.errors import CalibrationError

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, bounded, assert_one_error_line, clean_env, npz, run_edgeq

IO = IoSpec((TensorSpec("x", "float32", ("N", 1, 8, 8)),), (TensorSpec("y", "float32", ("N", 10)),))


def _refusal(fn, *args) -> tuple[str, float, int]:
    """The CalibrationError line ``fn(*args)`` raises, with the time and traced peak memory it took."""
    box = {}

    def run():
        with pytest.raises(CalibrationError) as e:
            fn(*args)
        box["line"] = e.value.one_line()

    elapsed, peak = bounded(run)
    return box["line"], elapsed, peak


def _npz_bomb(path: Path, gib: float = 1.0) -> Path:
    """A valid .npz of float32 zeros shaped [N, 1, 8, 8]: about 1 MB on disk, ``gib`` GiB inflated."""
    n = int(gib * (1 << 30)) // 256
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 8, 8), np.float32))
    header["shape"] = (n, 1, 8, 8)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as w:
            np.lib.format.write_array_header_1_0(w, header)
            block = b"\0" * (4 << 20)
            left = n * 256
            while left > 0:
                w.write(block[: min(left, len(block))])
                left -= len(block)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = _npz_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz")
    assert path.stat().st_size < 1_100_000  # the 1 MB
    return path


def test_npz_zip_bomb_is_refused_before_inflating(bomb):
    line, elapsed, peak = _refusal(data_mod.load_samples, bomb, IO)
    assert "compression ratio" in line
    assert elapsed < 5 and peak < 32 << 20, (elapsed, peak)


def test_npz_zip_bomb_fails_the_cli_in_one_line_with_small_memory(bomb, tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "out"
    p = run_edgeq(["export", model, "--calib", bomb, "-o", out, "--no-profile"], timeout=120, env=clean_env(tmp_path / "tmp"))
    assert p.rc == 2, p.stderr
    assert_one_error_line(p.stderr, "bomb.npz", "compression ratio")
    assert p.max_rss < 400 << 20, p.max_rss  # measured 79 MiB; before the fix: 1.4 GB and the export went on
    assert not out.exists()


def test_an_array_larger_than_the_input_can_use_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "MAX_SAMPLES", 10)
    ok = npz(tmp_path / "ok.npz", x=cnn_data(10)["x"])
    assert len(data_mod.load_samples(ok, IO)) == 10
    big = npz(tmp_path / "big.npz", x=cnn_data(40)["x"])
    with pytest.raises(CalibrationError) as e:
        data_mod.load_samples(big, IO)
    assert "more than 10 samples of float32[N, 1, 8, 8]" in e.value.one_line()


@pytest.mark.parametrize("spec", ['resize = [16000, 16000]\nscale = 0.0039', 'resize = 224\ncrop = [9000, 9000]'])
def test_huge_preprocess_sizes_are_refused_before_allocating(tmp_path, spec):
    from PIL import Image

    from edgeq.core.artifact import IoSpec as Io

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    (folder / "preprocess.toml").write_text(spec + "\n")
    io = Io((TensorSpec("x", "float32", ("N", 3, 224, 224)),), ())
    line, elapsed, peak = _refusal(data_mod.load_samples, folder, io)
    assert "larger than 8192 pixels a side" in line
    assert peak < 32 << 20, peak


def test_resizing_a_thin_image_past_the_bound_is_refused(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (4000, 2)).save(folder / "thin.png")
    (folder / "preprocess.toml").write_text("resize = 224\n")  # shorter side 2 -> 224: 448000 x 224
    io = IoSpec((TensorSpec("x", "float32", ("N", 3, 224, 224)),), ())
    line, elapsed, peak = _refusal(data_mod.load_samples, folder, io)
    assert "448000x224" in line and peak < 32 << 20, (line, peak)


def _bundle_with_manifest(tmp_path: Path, size: int) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    with open(b / "manifest.json", "wb") as f:  # sparse: no disk used
        f.write(b"{")
        f.truncate(size)
    return b


def test_a_huge_manifest_is_refused_by_its_size_before_reading(tmp_path):
    b = _bundle_with_manifest(tmp_path, 1 << 30)
    for args in (["verify", b], ["profile", b]):
        p = run_edgeq(args, timeout=60, env=clean_env(tmp_path / "tmp"))
        assert p.rc == 2, (args, p.stderr)
        assert_one_error_line(p.stderr, "larger than 16 MiB")
        assert p.max_rss < 400 << 20, (args, p.max_rss)  # before: the GGUF probe read 1 GiB first


def test_a_deeply_nested_manifest_is_one_line(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    p = run_edgeq(["verify", b], timeout=60, env=clean_env(tmp_path / "tmp"))
    assert p.rc == 2 and "Traceback" not in p.stderr, p.stderr
    assert_one_error_line(p.stderr, "nested")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.slow
def test_non_regular_files_are_refused_up_front_without_hanging(tmp_path):
    """A FIFO blocks a reader for ever and /dev/zero never ends: all refused by stat first."""
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    fifo_model = _fifo(tmp_path / "fifo.onnx")
    fifo_calib = _fifo(tmp_path / "fifo.npz")
    fifo_key = _fifo(tmp_path / "key.pub")
    bundle = tmp_path / "b"
    bundle.mkdir()
    _fifo(bundle / "manifest.json")
    env = clean_env(tmp_path / "tmp")
    cases = [
        (["export", fifo_model, "-o", tmp_path / "o1", "--calib", calib], "is a FIFO"),
        (["export", "/dev/zero", "-o", tmp_path / "o2"], "is a device"),
        (["inspect", "/dev/zero"], ""),
        (["export", model, "-o", tmp_path / "o3", "--calib", fifo_calib], "is a FIFO"),
        (["quantize", model, "-o", tmp_path / "q.onnx", "--calib", "/dev/zero"], "is a device"),
        (["verify", bundle], "not a regular file"),
        (["keygen", "-o", tmp_path / "k"], None),  # a real key to sign with below
    ]
    for args, words in cases:
        p = run_edgeq(args, timeout=60, env=env)
        if words is None:
            assert p.rc == 0, p.stderr
            continue
        assert p.rc == 2, (args, p.rc, p.stderr)
        assert_one_error_line(p.stderr, *([words] if words else []))
    # --pubkey and --sign
    good = tmp_path / "good"
    assert run_edgeq(["export", model, "-o", good, "--calib", calib, "--no-profile", "--golden", "1"], env=env).rc == 0
    for args in (["verify", good, "--pubkey", fifo_key], ["verify", good, "--pubkey", "/dev/zero"],
                 ["export", model, "-o", tmp_path / "o4", "--calib", calib, "--sign", fifo_key]):
        p = run_edgeq(args, timeout=60, env=env)
        assert p.rc == 2, (args, p.stderr)
        assert_one_error_line(p.stderr, "not a regular file")


def test_calib_bins_has_an_upper_bound(runner, tmp_path):
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    out = tmp_path / "out"
    line = assert_fails_safely(runner, ["export", model, "--calib", calib, "-o", out, "--calibration", "entropy",
                                        "--calib-bins", "4000000"], out, "4000000", "65536", budget_s=10)
    assert "bins" in line
