"""User mistakes: one line naming the problem and the fix, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.cli import app
from tests.models import cnn_data, make_mlp


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.output
    for w in words:
        assert w in lines[0], lines[0]


def test_unknown_target(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(cnn), "--target", "arm65", "--calib", str(cnn_calib), "-o", str(out)])
    _one_line_error(r, "unknown target 'arm65'", "arm64")
    assert not out.exists()


def test_missing_model_file(runner, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(tmp_path / "nope.onnx"), "-o", str(out)])
    _one_line_error(r, "not found", "nope.onnx")
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf at all \xff\xfe", b"\x08\x07"])
def test_non_onnx_file(runner, tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(bad), "-o", str(out), "--quant", "none"])
    _one_line_error(r, "bad.onnx")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


def test_wrong_extension(runner, tmp_path):
    p = tmp_path / "model.tflite"
    p.write_bytes(b"TFL3")
    r = runner.invoke(app, ["export", str(p), "-o", str(tmp_path / "o")])
    _one_line_error(r, "unknown model format .tflite", ".onnx")


def test_int8_static_without_calibration(runner, cnn, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(cnn), "--quant", "int8-static", "-o", str(out)])
    _one_line_error(r, "needs calibration data", "--calib")
    assert not out.exists()


def test_calibration_wrong_input_name(runner, cnn, tmp_path):
    calib = tmp_path / "c.npz"
    np.savez(calib, image=cnn_data(4)["x"])
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(calib), "-o", str(out)])
    _one_line_error(r, "missing input(s) x", "unknown array(s) image", "float32")
    assert not out.exists()


def test_calibration_wrong_shape(runner, cnn, tmp_path):
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((4, 1, 9, 9), np.float32))
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(calib), "-o", str(tmp_path / "o")])
    _one_line_error(r, "'x'", "[1, 1, 9, 9]", "[N, 1, 8, 8]")


def test_calibration_wrong_dtype(runner, cnn, tmp_path):
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((4, 1, 8, 8), np.float64))
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(calib), "-o", str(tmp_path / "o")])
    _one_line_error(r, "float64", "float32", "astype")


def test_calibration_nan(runner, cnn, tmp_path):
    x = cnn_data(6)["x"]
    x[3, 0, 2, 2] = np.nan
    calib = tmp_path / "c.npz"
    np.savez(calib, x=x)
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(calib), "-o", str(tmp_path / "o")])
    _one_line_error(r, "NaN or Inf", "sample 3")


def test_calibration_pickled_object_array_is_refused(runner, cnn, tmp_path):
    calib = tmp_path / "c.npz"
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = {"a": 1}, [2]
    np.savez(calib, x=obj)
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(calib), "-o", str(tmp_path / "o")])
    _one_line_error(r, "pickled")


def test_calibration_mismatched_sample_counts(runner, tmp_path):
    model = make_mlp(tmp_path / "mlp.onnx")
    calib = tmp_path / "c.npz"
    np.savez(calib, a=np.zeros((5, 16), np.float32), c=np.zeros((4, 4), np.float32))
    r = runner.invoke(app, ["export", str(model), "--calib", str(calib), "-o", str(tmp_path / "o")])
    _one_line_error(r, "a=5", "c=4")


def test_bad_static_shape_spec(runner, cnn, cnn_calib, tmp_path):
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(cnn_calib), "--static-shape", "x=1xAx8", "-o", str(tmp_path / "o")])
    _one_line_error(r, "--static-shape", "NAME=1x3x224x224")


def test_unknown_quant_mode(runner, cnn, cnn_calib, tmp_path):
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(cnn_calib), "--quant", "int3", "-o", str(tmp_path / "o")])
    _one_line_error(r, "int3", "int8-static")


def test_debug_env_shows_traceback(runner, tmp_path, monkeypatch):
    from edgeq.errors import ModelError

    monkeypatch.setenv("EDGEQ_DEBUG", "1")
    r = runner.invoke(app, ["inspect", str(tmp_path / "missing.onnx")])
    assert isinstance(r.exception, ModelError)
