"""``auto``'s cost: weights quantized once per model, whichever activation ranges each write uses;
candidates raced on a few samples, only those near the best scored on all."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from edgeq.core.data import SampleSet
from edgeq.quantization.int8 import autocal, qdq, static
from edgeq.quantization.int8.calibrate import Calibration
from edgeq.quantization.spec import QuantSpec

from tests.models import cnn_data, make_cnn


def _count_quantize_weight(monkeypatch) -> list[int]:
    calls = [0]
    real = qdq.quantize_weight

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(qdq, "quantize_weight", counting)
    return calls


def test_auto_quantizes_each_weight_once_and_writes_the_same_model(tmp_path, monkeypatch):
    src = make_cnn(tmp_path / "cnn.onnx")
    x = cnn_data(40, seed=3)["x"]
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    calls = _count_quantize_weight(monkeypatch)
    spec = QuantSpec(calibration="auto", calib_samples=32)
    prep = static.prepare(src, spec, data, weights_dir=tmp_path)
    n_weights = len({qn.weight for qn in qdq.plan(prep.model).nodes})
    assert n_weights >= 2
    # every candidate was written (distinct ranges), yet each weight was quantized once
    written = [r for r in prep.choice["candidates"] if "sqnr_db" in r and "same_ranges_as" not in r]
    assert len(written) >= 2
    assert calls[0] == n_weights
    final = static.write(prep, spec)
    assert calls[0] == n_weights  # the chosen model's write reuses them too
    # the same model as a write that quantizes every weight afresh
    fresh = static.write(dataclasses.replace(prep, weight_cache={}), spec)
    assert calls[0] == 2 * n_weights
    a = {i.name: onnx.numpy_helper.to_array(i) for i in final.model.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in fresh.model.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert final.how == fresh.how


def test_cached_weights_do_not_leak_between_ranges(tmp_path, monkeypatch):
    """A write with other activation ranges gets its own activation and bias scales, the same int8 weights."""
    src = make_cnn(tmp_path / "cnn.onnx")
    data = SampleSet(arrays={"x": cnn_data(16, seed=5)["x"]}, stacked={"x": False}, labels=None, source="test")
    spec = QuantSpec(calibration="percentile:99.9", calib_samples=16)
    prep = static.prepare(src, spec, data, weights_dir=tmp_path)
    calls = _count_quantize_weight(monkeypatch)
    mm = static.write(dataclasses.replace(prep, cal=Calibration.parse("minmax")), spec)
    pc = static.write(prep, spec)
    assert calls[0] == len({qn.weight for qn in qdq.plan(prep.model).nodes})
    a = {i.name: onnx.numpy_helper.to_array(i) for i in mm.model.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in pc.model.graph.initializer}
    wq = [k for k in a if k.endswith("_w_q")]
    assert wq and all(np.array_equal(a[k], b[k]) for k in wq)  # the weights: shared
    act_s = [k for k in a if k.endswith("_qp_s")]
    assert any(not np.array_equal(a[k], b[k]) for k in act_s)  # the activation scales: each write's own


_RUNNER = autocal._runner
_SCORER = autocal.scorer
_RACE_DB = autocal.RACE_DB


def _auto(src, data, tmp_path, monkeypatch, race_db, converge=False):
    monkeypatch.setattr(autocal, "RACE_DB", race_db)
    # racing alone unless ``converge`` (the convergence stop: test_int8_autocal_converge.py)
    monkeypatch.setattr(autocal, "CONVERGE_SAMPLES", 4 if converge else 10**9)
    runs = [0]
    real = _RUNNER

    def counting(*a, **k):
        run = real(*a, **k)

        def counted(idx):
            runs[0] += len(idx)
            return run(idx)
        return counted

    monkeypatch.setattr(autocal, "_runner", counting)
    real_scorer = _SCORER  # the candidates' runs (score_graph: energies summed in their sessions)

    def counting_scorer(*a, **k):
        score = real_scorer(*a, **k)

        def counted(i, feed):
            runs[0] += 1
            return score(i, feed)
        return counted

    monkeypatch.setattr(autocal, "scorer", counting_scorer)
    w = tmp_path / f"w{race_db}{'c' if converge else ''}"
    w.mkdir()
    prep = static.prepare(src, QuantSpec(calibration="auto", calib_samples=64), data, weights_dir=w)
    return prep.choice, runs[0]


def test_racing_cuts_clear_losers_early_and_keeps_the_full_scoring_winner(tmp_path, monkeypatch):
    from tests.unit.test_int8_autocal import _spiky

    src = make_cnn(tmp_path / "cnn.onnx", classes=1000)  # 1,000 logits: scored on 5 samples, raced on 2
    x = np.concatenate([_spiky(64), cnn_data(32, seed=7)["x"]])
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    full, full_runs = _auto(src, data, tmp_path, monkeypatch, float("inf"))  # no racing: every candidate on every sample
    raced, raced_runs = _auto(src, data, tmp_path, monkeypatch, _RACE_DB)
    race = autocal.race_samples(1000)
    assert autocal.RACE_DB == _RACE_DB
    assert race == 2 < raced["samples"] == full["samples"] == autocal.score_samples(1000)
    assert raced["chosen"] == full["chosen"]
    out = [r for r in raced["candidates"] if r.get("raced_out")]
    assert out and all(r["samples"] == race for r in out)
    assert raced_runs == full_runs - len(out) * (full["samples"] - race)
    by_method = {r["method"]: r for r in full["candidates"]}
    for r in raced["candidates"]:  # the candidates not raced out: scored exactly as without racing
        if not r.get("raced_out"):
            assert r["sqnr_db"] == by_method[r["method"]]["sqnr_db"]
        else:  # a clear loser: below the winner by more than the race margin on the full scoring too
            assert by_method[r["method"]]["sqnr_db"] < by_method[raced["chosen"]]["sqnr_db"] - _RACE_DB
