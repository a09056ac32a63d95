"""Items 1 and 2: external data that escapes the model folder, or lies about its range.

Every case is refused before a byte of external data is read or any output is written;
a model with honest external data inside its folder still exports.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeq.errors import ModelError
from edgeq.core.onnxutil import load_model, load_model_bytes, save_model
from edgeq.core.runtime import create_session

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, externalize, invoke, npz, tree

W2_BYTES = 16 * 8 * 3 * 3 * 4  # make_cnn's second conv weight, float32


def _secret(tmp_path: Path) -> Path:
    """A file outside the model folder holding bytes shaped like w2 (what an attacker would read)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.bin"
    secret.write_bytes(np.arange(W2_BYTES // 4, dtype=np.float32).tobytes())
    return secret


def _model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    return make_cnn(d / "cnn.onnx")


def _escape_cases(tmp_path: Path, case: str) -> Path:
    """Model whose w2 location reaches ``outside/secret.bin`` in the way ``case`` names."""
    secret = _secret(tmp_path)
    model = _model(tmp_path)
    d = model.parent
    if case == "dotdot":
        loc = "../outside/secret.bin"
    elif case == "nested-dotdot":
        (d / "a").mkdir()
        loc = "a/../../outside/secret.bin"
    elif case == "absolute":
        loc = str(secret)
    elif case == "symlink":
        os.symlink(secret, d / "w.bin")
        loc = "w.bin"
    elif case == "symlinked-folder":
        os.symlink(secret.parent, d / "sub")
        loc = "sub/secret.bin"
    elif case == "hardlink":
        os.link(secret, d / "w.bin")
        loc = "w.bin"
    elif case == "nul-byte":
        loc = "w.bin\x00../../outside/secret.bin"
    elif case == "backslash":
        loc = "..\\outside\\secret.bin"
    else:
        raise AssertionError(case)
    return externalize(model, "w2", loc)


ESCAPES = ["dotdot", "nested-dotdot", "absolute", "symlink", "symlinked-folder", "hardlink", "nul-byte", "backslash"]


@pytest.mark.parametrize("case", ESCAPES)
def test_escaping_location_is_refused_when_loading(tmp_path, case):
    model = _escape_cases(tmp_path, case)
    for weights in (False, True):
        with pytest.raises(ModelError, match="outside the model folder"):
            load_model(model, load_weights=weights)
    # from bytes: never resolved against the current directory, nor against a given folder
    with pytest.raises(ModelError, match="given as bytes"):
        load_model_bytes(model.read_bytes())
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model_bytes(model.read_bytes(), base_dir=model.parent)


@pytest.mark.parametrize("case", ["dotdot", "symlink", "hardlink"])
def test_escaping_location_fails_the_cli_safely(runner, tmp_path, case):
    model = _escape_cases(tmp_path, case)
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    out = tmp_path / "out"
    outside_before = tree(tmp_path / "outside")
    assert_fails_safely(runner, ["export", model, "-o", out, "--calib", calib, "--no-profile"], out, "outside the model folder")
    assert_fails_safely(runner, ["inspect", model], None, "outside the model folder")
    assert not out.exists()
    assert tree(tmp_path / "outside") == outside_before


def test_bytes_never_read_external_data_from_the_current_directory(tmp_path, monkeypatch):
    # a plain, in-folder location: fine from the file, refused from bytes (onnxruntime
    # would resolve it against the current directory)
    model = _model(tmp_path)
    secret = _secret(tmp_path)
    externalize(model, "w2", "w.bin", model.parent / "w.bin")
    assert load_model(model).graph.initializer[2].data_location == onnx.TensorProto.DEFAULT
    monkeypatch.chdir(secret.parent)
    (secret.parent / "w.bin").write_bytes(secret.read_bytes())
    with pytest.raises(ModelError, match="given as bytes"):
        create_session(model.read_bytes())
    m = load_model_bytes(model.read_bytes(), base_dir=model.parent)
    w2 = onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "w2"))
    assert not np.array_equal(w2.ravel(), np.frombuffer(secret.read_bytes(), np.float32))


def test_saving_never_writes_where_a_location_points(tmp_path):
    # a model built in memory whose tensor holds its bytes but still names "../escape.bin":
    # onnx.save would write the bytes there; edgeq writes them inline
    model = onnx.load(str(_model(tmp_path)))
    t = next(i for i in model.graph.initializer if i.name == "w2")
    want = onnx.numpy_helper.to_array(t).copy()
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../escape.bin"), ("offset", "0"), ("length", str(W2_BYTES))):
        e = t.external_data.add()
        e.key, e.value = k, v
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    assert [p.name for p in out.iterdir()] == ["m.onnx"]
    back = onnx.load(str(out / "m.onnx"), load_external_data=False)
    t2 = next(i for i in back.graph.initializer if i.name == "w2")
    assert t2.data_location == onnx.TensorProto.DEFAULT
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(t2), want)


def test_saving_refuses_unloaded_external_references(tmp_path):
    model = _model(tmp_path)
    externalize(model, "w2", "w.bin", model.parent / "w.bin")
    m = load_model(model, load_weights=False)
    with pytest.raises(ModelError, match="not loaded"):
        save_model(m, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_honest_external_data_exports_and_the_bundle_is_self_contained(runner, tmp_path):
    model = _model(tmp_path)
    externalize(model, "w2", "weights/w2.bin", model.parent / "weights" / "w2.bin", offset=128, length=W2_BYTES)
    src_before = tree(model.parent)
    calib = npz(tmp_path / "calib.npz", **cnn_data(16))
    out = tmp_path / "out"
    r = invoke(runner, "export", model, "-o", out, "--calib", calib, "--no-profile")
    assert r.exit_code == 0, r.output
    assert tree(model.parent) == src_before
    q = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert all(i.data_location == onnx.TensorProto.DEFAULT for i in q.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "model", "out"]


# --- item 2: offsets, lengths, keys -------------------------------------------------

RANGES = {
    "negative-offset": dict(extra=[("offset", "-8")], words="invalid offset"),
    "negative-length": dict(extra=[("length", "-1")], words="invalid length"),
    "hex-offset": dict(extra=[("offset", "0x10")], words="invalid offset"),
    "spaced-length": dict(extra=[("length", f" {W2_BYTES}")], words="invalid length"),
    "huge-offset": dict(extra=[("offset", str(2**62))], words="past the end"),
    "huge-length": dict(extra=[("length", str(2**62))], words="past the end"),
    "past-end": dict(extra=[("offset", "8"), ("length", str(W2_BYTES))], words="past the end"),
    "short-length": dict(extra=[("length", "16")], words="needs"),
    "unknown-key": dict(extra=[("basepath", "/etc")], words="unknown key"),
    "duplicate-location": dict(extra=[("location", "../outside/secret.bin")], words="repeats the key"),
}


@pytest.mark.parametrize("case", sorted(RANGES))
def test_bad_ranges_and_keys_are_refused_before_reading(runner, tmp_path, case):
    _secret(tmp_path)
    model = _model(tmp_path)
    externalize(model, "w2", "w.bin", model.parent / "w.bin", extra=RANGES[case]["extra"])
    with pytest.raises(ModelError, match=RANGES[case]["words"]):
        load_model(model)
    out = tmp_path / "out"
    calib = npz(tmp_path / "calib.npz", **cnn_data(8))
    assert_fails_safely(runner, ["export", model, "-o", out, "--calib", calib], out, RANGES[case]["words"], budget_s=20)
