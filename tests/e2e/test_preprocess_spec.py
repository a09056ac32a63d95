"""One preprocessing format: the app's --preprocess file also drives image calibration, and
image calibration's spec is what the manifest tells the app."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgeq.core.artifact import IoSpec, TensorSpec
from edgeq.bundles.bundle import validate_manifest
from edgeq.cli import app
from edgeq.core.data import load_samples
from edgeq.errors import CalibrationError

from tests.models import make_cnn

APP = """
[inputs.x]
layout = "NCHW"
color = "GRAY"
resize = [10, 12]
crop = [8, 8]
scale = 0.00392156862745098
mean = [0.5]
std = [0.25]

[outputs.y]
activation = "softmax"
"""

SHORT = 'resize = [10, 12]\ncrop = [8, 8]\ncolor = "L"\nmean = [0.5]\nstd = [0.25]\nlayout = "NCHW"\n'


def _io():
    return IoSpec(inputs=(TensorSpec("x", "float32", ("N", 1, 8, 8)),), outputs=(TensorSpec("y", "float32", ("N", 10)),))


def _gray_images(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrs = []
    for i in range(n):
        a = rng.integers(0, 256, (11, 13), dtype=np.uint8)  # height 11, width 13: resize matters
        Image.fromarray(a, mode="L").save(folder / f"img{i:02d}.png")
        arrs.append(a)
    return arrs


def test_app_table_and_short_form_give_the_same_pixels(tmp_path):
    _gray_images(tmp_path / "imgs")
    (tmp_path / "app.toml").write_text(APP)
    (tmp_path / "short.toml").write_text(SHORT)
    a = load_samples(tmp_path / "imgs", _io(), preprocess=tmp_path / "app.toml")
    b = load_samples(tmp_path / "imgs", _io(), preprocess=tmp_path / "short.toml")
    assert len(a) == len(b) == 12
    for i in (0, 7):
        xa, xb = a.feed(i)["x"], b.feed(i)["x"]
        assert xa.shape == (1, 1, 8, 8)
        np.testing.assert_array_equal(xa, xb)
    # normalisation applied: (p/255 - 0.5) / 0.25 spans about [-2, 2], not [0, 255]
    assert -2.01 <= float(a.feed(0)["x"].min()) < -1.0 and 1.0 < float(a.feed(0)["x"].max()) <= 2.01


def test_app_table_without_scale_or_for_another_input_is_refused(tmp_path):
    _gray_images(tmp_path / "imgs", n=2)
    p = tmp_path / "app.toml"
    p.write_text(APP.replace("scale = 0.00392156862745098\n", ""))
    with pytest.raises(CalibrationError, match="no scale"):
        load_samples(tmp_path / "imgs", _io(), preprocess=p)
    p.write_text(APP.replace("[inputs.x]", "[inputs.image]"))
    with pytest.raises(CalibrationError, match=r"no \[inputs\.x\] table"):
        load_samples(tmp_path / "imgs", _io(), preprocess=p)


def _export(runner, tmp_path, *extra):
    src = make_cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(src), "--target", "cpu-x86_64", "--calib", str(tmp_path / "imgs"),
                            "-o", str(out), "--no-profile", "--json", *extra])
    return r, out


def test_export_calibrates_with_the_app_file_and_records_it(runner, tmp_path):
    _gray_images(tmp_path / "imgs")  # no preprocess.toml in the folder: --preprocess alone must do
    (tmp_path / "app.toml").write_text(APP)
    r, out = _export(runner, tmp_path, "--preprocess", str(tmp_path / "app.toml"))
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    validate_manifest(m)
    assert m["inputs"][0]["preprocess"] == {"layout": "NCHW", "color": "GRAY", "resize": [10, 12], "crop": [8, 8],
                                            "scale": 0.00392156862745098, "mean": [0.5], "std": [0.25]}


@pytest.mark.slow
def test_export_records_the_calibration_spec_in_the_manifest(runner, tmp_path):
    _gray_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "preprocess.toml").write_text(SHORT)
    r, out = _export(runner, tmp_path)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    validate_manifest(m)
    pre = m["inputs"][0]["preprocess"]
    assert pre["resize"] == [10, 12] and pre["crop"] == [8, 8] and pre["color"] == "GRAY"
    assert pre["scale"] == pytest.approx(1 / 255) and pre["mean"] == [0.5] and pre["std"] == [0.25]
    assert any("recorded from the calibration images" in n for n in json.loads(r.stdout)["notes"])


@pytest.mark.slow
def test_export_warns_when_calibration_and_app_preprocessing_differ(runner, tmp_path):
    _gray_images(tmp_path / "imgs")
    (tmp_path / "calib.toml").write_text(SHORT.replace("mean = [0.5]", "mean = [0.4]"))
    (tmp_path / "app.toml").write_text(APP)
    r, out = _export(runner, tmp_path, "--preprocess", str(tmp_path / "app.toml"), "--image-preprocess", str(tmp_path / "calib.toml"))
    assert r.exit_code == 0, r.output
    warn = [n for n in json.loads(r.stdout)["notes"] if n.startswith("WARNING: calibration images were preprocessed differently")]
    assert warn and "mean" in warn[0]
    # the manifest keeps what the user told the app
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["preprocess"]["mean"] == [0.5]
