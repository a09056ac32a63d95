"""Calibration data for INT8: image folders with a preprocessing spec, and --calib random."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.cli import app
from edgeq.core.data import load_samples
from edgeq.errors import CalibrationError

from tests.models import make_cnn


def _io(shape, dtype="float32"):
    return IoSpec(inputs=(TensorSpec("x", dtype, shape),), outputs=(TensorSpec("y", "float32", ("N", 10)),))


def _images(folder, n=5, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrs = []
    for i in range(n):
        a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
        arrs.append(a)
    return arrs


def test_image_folder_with_spec_nchw_and_nhwc(tmp_path):
    arrs = _images(tmp_path / "imgs")
    (tmp_path / "imgs" / "preprocess.toml").write_text(
        'resize = [10, 12]\ncrop = [8, 8]\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\nlayout = "NCHW"\n'
    )
    s = load_samples(tmp_path / "imgs", _io(("N", 3, 8, 8)))
    assert len(s) == 5 and not s.synthetic
    x = s.feed(2)["x"]
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    # centre crop of the unresized image (resize to the same size is the identity), normalized
    want = (arrs[2][1:9, 2:10].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), want, atol=1e-5)
    # NHWC + uint8 from a spec given on the command line
    spec = tmp_path / "nhwc.toml"
    spec.write_text('crop = [8, 8]\nlayout = "NHWC"\ndtype = "uint8"\n')
    s2 = load_samples(tmp_path / "imgs", _io(("N", 8, 8, 3), "uint8"), preprocess=spec)
    np.testing.assert_array_equal(s2.feed(0)["x"][0], arrs[0][1:9, 2:10])


def test_image_folder_errors_name_the_problem(tmp_path):
    _images(tmp_path / "imgs")
    with pytest.raises(CalibrationError, match="no preprocessing spec"):
        load_samples(tmp_path / "imgs", _io(("N", 3, 8, 8)))
    (tmp_path / "imgs" / "preprocess.toml").write_text('layout = "NCWH"\n')
    with pytest.raises(CalibrationError, match="layout"):
        load_samples(tmp_path / "imgs", _io(("N", 3, 8, 8)))
    (tmp_path / "imgs" / "preprocess.toml").write_text('crop = [8, 8]\n')
    with pytest.raises(CalibrationError, match="sample shape"):
        load_samples(tmp_path / "imgs", _io(("N", 3, 16, 16)))  # checked before any work


@pytest.mark.slow
def test_calib_random_is_loud(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "random",
                            "--calib-samples", "16", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    assert rec["calibration"]["synthetic"] is True and rec["calibration"]["samples"] == 16
    assert any(n.startswith("WARNING: calibrated on RANDOM data") for n in rec["notes"])
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q2.onnx"), "--calib", "random"])
    assert "RANDOM" in r.output
