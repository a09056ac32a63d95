"""--calibration auto on small outputs: a candidate whose score has converged stops before the last scoring
sample (autocal.converged), and the choice stays the one full scoring makes (or one full scoring puts within
the scores' precision of it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8 import autocal
from edgeq.quantization.int8.calibrate import AUTO_CANDIDATES
from edgeq.quantization.int8.quantizer import quantize
from edgeq.quantization.spec import QuantSpec

from tests.models import cnn_data, make_cnn
from tests.unit import test_int8_write_cost as write_cost


def test_converged_needs_enough_samples_and_a_small_spread():
    steady = [1.00e-5, 1.02e-5, 0.98e-5, 1.01e-5]
    assert autocal.CONVERGE_SAMPLES == 4 and autocal.CONVERGED_DB == 0.25
    assert not autocal.converged(steady[:3])  # too few samples, however steady
    assert autocal.converged(steady)
    # two kinds of samples (some clip, some do not): the mean is not known to 0.25 dB after 4 or 8 of them
    assert not autocal.converged([1e-5, 1e-5, 1e-5, 3e-5])
    assert not autocal.converged([1e-5, 3e-5] * 4)
    assert not autocal.converged(steady + [math.inf])  # a sample without signal or with non-finite noise
    assert autocal.converged([0.0] * 4)  # no error at all
    # the bound is the standard error of the mean ratio, in dB
    r = np.array([1.0, 1.3, 0.8, 1.1, 0.9, 1.2])
    se_db = 10 / math.log(10) * r.std(ddof=1) / math.sqrt(r.size) / r.mean()
    assert autocal.converged(list(r)) == (se_db <= 0.25)


def _auto(src, data, tmp_path, monkeypatch, converge):
    """(prep.choice, model runs) of --calibration auto, with or without the convergence stop (racing as shipped)."""
    return write_cost._auto(src, data, tmp_path, monkeypatch, write_cost._RACE_DB, converge=converge)


@pytest.mark.parametrize("classes", [100, 300])
def test_converged_candidates_stop_early_and_the_choice_is_full_scorings(tmp_path, monkeypatch, classes):
    # 100 logits: scored on 8 samples, no racing; 300: raced on the first 4 of 8, then converging
    src = make_cnn(tmp_path / "cnn.onnx", classes=classes)
    x = np.concatenate([cnn_data(64, seed=1)["x"], cnn_data(16, seed=7)["x"]])
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    f, full_runs = _auto(src, data, tmp_path, monkeypatch, converge=False)
    c, conv_runs = _auto(src, data, tmp_path, monkeypatch, converge=True)
    assert f["samples"] == c["samples"] == autocal.SCORE_SAMPLES == autocal.score_samples(classes)
    by_method = {r["method"]: r for r in f["candidates"]}
    # the choice is full scoring's, or one that full scoring puts within its own precision of it: a converged
    # score is within about CONVERGED_DB of its full one, so only candidates that close can change places
    assert c["chosen"] == f["chosen"] or (
        by_method[f["chosen"]]["sqnr_db"] - by_method[c["chosen"]]["sqnr_db"] <= 2 * autocal.CONVERGED_DB)
    stopped = [r for r in c["candidates"] if r.get("converged")]
    assert stopped and all(autocal.CONVERGE_SAMPLES <= r["samples"] < c["samples"] for r in stopped)
    assert not any(r.get("converged") for r in f["candidates"])
    ran = [r for r in c["candidates"] if "same_ranges_as" not in r]
    assert conv_runs == full_runs - sum(c["samples"] - r.get("samples", c["samples"]) for r in ran)
    for r in c["candidates"]:
        if r.get("converged"):  # its score on fewer samples: within a few standard errors of the full one
            assert abs(r["sqnr_db"] - by_method[r["method"]]["sqnr_db"]) <= 3 * autocal.CONVERGED_DB
        else:  # the others: exactly full scoring's figures
            assert r["sqnr_db"] == by_method[r["method"]]["sqnr_db"]


def test_a_ten_class_head_spreads_too_much_to_stop(tmp_path, monkeypatch):
    src = make_cnn(tmp_path / "cnn.onnx")  # 10 logits a sample: the per-sample errors spread by ~1 dB
    x = np.concatenate([cnn_data(64, seed=1)["x"], cnn_data(16, seed=7)["x"]])
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    full, full_runs = _auto(src, data, tmp_path, monkeypatch, converge=False)
    conv, conv_runs = _auto(src, data, tmp_path, monkeypatch, converge=True)
    assert conv_runs == full_runs and conv == full


def test_the_report_says_which_candidates_converged(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx", classes=300)  # candidates converge here
    x = np.concatenate([cnn_data(64, seed=1)["x"], cnn_data(16, seed=7)["x"]])
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=64), tmp_path / "q.onnx", data=data)
    auto = res.recipe()["calibration"]["auto"]
    assert [r["method"] for r in auto["candidates"]] == list(AUTO_CANDIDATES)
    assert any(r.get("converged") for r in auto["candidates"])
    note = next(n for n in res.notes if n.startswith("calibration auto: chose " + auto["chosen"]))
    for r in auto["candidates"]:
        assert (f"{r['method']} {r['sqnr_db']} dB (converged after {r.get('samples')})" in note) == bool(r.get("converged"))
