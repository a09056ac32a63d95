"""Calibration data with a tokenizer array the model does not take (token_type_ids of a model exported
without it): all zeros is dropped with a note; anything else is refused in one line naming the array and
the inputs the model takes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.core.data import load_samples
from edgeq.core.onnxutil import artifact_from
from edgeq.errors import CalibrationError
from tests.unit.test_token_mask import T, _encoder


def _npz(path, token_type_ids):
    rng = np.random.default_rng(0)
    np.savez(path, input_ids=rng.integers(1, 20, (6, T)).astype(np.int64), attention_mask=np.ones((6, T), np.int64),
             token_type_ids=token_type_ids)
    return path


def test_all_zero_token_type_ids_are_dropped_with_a_note(tmp_path):
    io = artifact_from(_encoder(tmp_path / "m.onnx", pad_noise=False)).io
    data = load_samples(_npz(tmp_path / "d.npz", np.zeros((6, T), np.int64)), io)
    assert set(data.arrays) == {"input_ids", "attention_mask"} and len(data) == 6
    assert any("'token_type_ids' dropped" in n for n in data.notes)


def test_non_zero_token_type_ids_are_refused_naming_the_inputs(tmp_path):
    io = artifact_from(_encoder(tmp_path / "m.onnx", pad_noise=False)).io
    tt = np.zeros((6, T), np.int64)
    tt[:, T // 2:] = 1  # sentence pairs: dropping them would change what the model is asked
    with pytest.raises(CalibrationError) as e:
        load_samples(_npz(tmp_path / "d.npz", tt), io)
    assert "token_type_ids" in e.value.message and "input_ids" in str(e.value.hint) and "attention_mask" in str(e.value.hint)


def test_export_prints_the_note(runner, tmp_path):
    from edgeq.cli import app

    model = _encoder(tmp_path / "m.onnx", pad_noise=False)
    r = runner.invoke(app, ["export", str(model), "--calib", str(_npz(tmp_path / "d.npz", np.zeros((6, T), np.int64))),
                            "--quant", "none", "--no-profile", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "'token_type_ids' dropped" in r.stdout


def test_names_are_checked_before_a_slow_export(runner, tmp_path, monkeypatch):
    """A PyTorch source: the inputs are known once forward() is read; an array the model does not take is
    refused then, in one line naming it and the inputs, before torch's exporter runs."""
    pytest.importorskip("torch")
    import edgeq.exporters.torch as et
    from edgeq.cli import app

    def no_export(*a, **k):
        raise AssertionError("the export ran before the data was checked")

    monkeypatch.setattr(et, "export_torch_checked", no_export)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((4, 10), np.float32), token_type_ids=np.ones((4, 10), np.int64), labels=np.zeros(4, np.int64))
    r = runner.invoke(app, ["export", "tests.unit.test_export_torch:tiny_mlp", "--example-shape", "x=1x10", "--calib", str(calib),
                            "--no-profile", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    assert "unknown array(s) token_type_ids" in r.stderr and "the model's inputs are: x" in r.stderr
    assert "labels" not in r.stderr.split("unknown array(s)")[1].split("--")[0]  # the labels key is not an input, and fine


def test_early_name_check_lets_all_zero_token_type_ids_through(tmp_path):
    from edgeq.core.data import check_array_names

    p = _npz(tmp_path / "d.npz", np.zeros((6, T), np.int64))
    check_array_names(p, ("input_ids", "attention_mask"), what="calibration")  # dropped later, with a note
    with pytest.raises(CalibrationError):
        check_array_names(_npz(tmp_path / "e.npz", np.ones((6, T), np.int64)), ("input_ids", "attention_mask"), what="calibration")
