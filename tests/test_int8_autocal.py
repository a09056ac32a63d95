"""--calibration auto: every range method scored by output error against fp32, the best one used."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

from edgeq.cli import app
from edgeq.data import SampleSet
from edgeq.onnxutil import artifact_from
from edgeq.quantize.autocal import output_sqnr
from edgeq.quantize.calibrate import AUTO_CANDIDATES
from edgeq.quantize.int8 import quantize
from edgeq.quantize.spec import QuantSpec
from edgeq.targets import load_target

from tests.models import cnn_data, make_cnn


def _spiky(n: int, seed: int = 1) -> np.ndarray:
    """make_cnn inputs with three rare 40x pixels (< 0.1 % of values): min-max wastes its levels on them."""
    x = cnn_data(n, seed=seed)["x"]
    x[[3, 17, 30], 0, 4, 4] = 40.0
    return x


def _sqnr(src, q, x) -> float:
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return output_sqnr([[a]], [[b]])[0]


def test_auto_scores_every_method_and_keeps_the_best(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    x = np.concatenate([_spiky(64), cnn_data(32, seed=7)["x"]])  # 64 to calibrate, 32 held out
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=64), tmp_path / "auto.onnx", data=data)
    cal = res.recipe()["calibration"]
    auto = cal["auto"]
    assert auto["held_out"] is True and auto["samples"] == 32
    assert [r["method"] for r in auto["candidates"]] == list(AUTO_CANDIDATES)
    scores = {r["method"]: r["sqnr_db"] for r in auto["candidates"]}
    assert auto["chosen"] == cal["method"] == max(scores, key=scores.get)
    # the outlier-driven min-max range is measurably worse here, and auto did not pick it
    assert auto["chosen"] != "minmax" and scores[auto["chosen"]] > scores["minmax"] + 3.0
    assert any(n.startswith("calibration auto: chose " + auto["chosen"]) for n in res.notes)
    # the written model really is the better one, on fresh data
    mm = quantize(artifact_from(src), QuantSpec(calibration="minmax", calib_samples=64), tmp_path / "mm.onnx", data=data)
    assert "auto" not in mm.recipe()["calibration"]
    fresh = cnn_data(64, seed=11)["x"]
    assert _sqnr(src, tmp_path / "auto.onnx", fresh) > _sqnr(src, tmp_path / "mm.onnx", fresh) + 1.5


def test_auto_without_held_out_samples_says_so(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    data = SampleSet(arrays={"x": cnn_data(16, seed=1)["x"]}, stacked={"x": False}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=256), tmp_path / "q.onnx", data=data)
    auto = res.recipe()["calibration"]["auto"]
    assert auto["held_out"] is False and auto["samples"] == 16
    assert any("no held-out ones" in n for n in res.notes)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 3


def test_auto_is_the_default_of_the_spec_and_targets(runner, tmp_path):
    assert QuantSpec().calibration == "auto"
    for name in ("cpu-x86_64", "arm64"):
        assert load_target(name).quant.calibration == "auto"
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=_spiky(48))
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(cal), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    assert rec["calibration"]["auto"]["chosen"] == rec["calibration"]["method"]
    assert len(rec["calibration"]["auto"]["candidates"]) == len(AUTO_CANDIDATES)
