"""In-graph reductions (edgeq/quantization/int8/reduce.py): calibration and per-layer SQNR pull only
small results out of onnxruntime, and give the statistics the copied-out tensors gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.data import SampleSet
from edgeq.quantization.int8 import qdq, reduce, static
from edgeq.quantization.int8.calibrate import HIST_VALUES, Calibration, collect
from edgeq.quantization.spec import QuantSpec

from tests.int8_models import make_masked_mlp

SIDE = 192  # 8 x 192 x 192 = 294,912 values per activation: more than HIST_VALUES, so the histogram samples it


def _big_activation_cnn(path: Path, pool: bool = True) -> Path:
    """Conv(1->8, 3x3) -> Relu -> Conv(8->4) -> GlobalAveragePool (or not: a [1, 4, SIDE, SIDE] map out); input [1, 1, SIDE, SIDE]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)), ("b1", rng.normal(0, 0.1, 8).astype(np.float32)),
        ("w2", rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)), ("b2", rng.normal(0, 0.1, 4).astype(np.float32)))]
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("GlobalAveragePool" if pool else "Sigmoid", ["c2"], ["y"], name="gap")],
        "big_act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1] if pool else [1, 4, SIDE, SIDE])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _data(n: int, seed: int = 1) -> SampleSet:
    x = np.random.default_rng(seed).normal(size=(n, 1, 1, SIDE, SIDE)).astype(np.float32)
    x[0, 0, 0, 5, 7] = 30.0  # one outlier, off any stride: min/max must see it
    return SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")


def _model(path: Path):
    m = onnx.load(str(path))
    qdq.name_nodes(m)
    return m


@pytest.mark.parametrize("method", ["minmax", "percentile:99.9"])
def test_in_graph_statistics_equal_the_copied_out_ones(tmp_path, method):
    m = _model(_big_activation_cnn(tmp_path / "m.onnx"))
    names = qdq.plan(m).activations
    assert np.prod([8, SIDE, SIDE]) > HIST_VALUES
    cal = Calibration.parse(method)
    data = _data(3)
    old = collect(qdq.ProbeRunner(m, names), static._feeds(data, 3), names, cal=cal)
    new = reduce.calibrate(reduce.CalibProbe(m, names, histogram=cal.needs_histogram), static._feeds(data, 3), cal=cal)
    assert set(new.tensors) == set(names)
    assert new.tensors["x"].hi == 30.0
    for k in names:
        a, b = old.tensors[k], new.tensors[k]
        assert (a.lo, a.hi, a.count, a.R, a.nonfinite) == (b.lo, b.hi, b.count, b.R, b.nonfinite), k
        assert (a.hist is None and b.hist is None) or np.array_equal(a.hist, b.hist), k
    assert old.ranges(cal) == new.ranges(cal)


def test_calibration_pulls_bounded_bytes_out_of_the_session(tmp_path, monkeypatch):
    """Per sample, less leaves onnxruntime than one activation holds (the exposing probe pulled every one)."""
    m = _model(_big_activation_cnn(tmp_path / "m.onnx"))
    names = qdq.plan(m).activations
    pulled: list[int] = []
    real = reduce._session

    def counting(model, base_dir):
        sess = real(model, base_dir)

        class Counted:
            def __getattr__(self, k):
                return getattr(sess, k)

            def run(self, out, feed):
                vals = sess.run(out, feed)
                pulled.append(sum(np.asarray(v).nbytes for v in vals))
                return vals

        return Counted()

    monkeypatch.setattr(reduce, "_session", counting)
    reduce.calibrate(reduce.CalibProbe(m, names, histogram=True), static._feeds(_data(2), 2), cal=Calibration.parse("entropy"))
    one_activation = 8 * SIDE * SIDE * 4
    assert len(pulled) == 2  # one run per sample: the graph looks up its strides from the sizes itself
    assert max(pulled) < one_activation
    assert max(pulled) <= len(names) * (HIST_VALUES * 4 + 64)


def test_nonfinite_tensors_are_pulled_whole_and_counted(tmp_path):
    m = _model(make_masked_mlp(tmp_path / "mlp.onnx"))
    names = qdq.plan(m).activations
    x = np.random.default_rng(0).normal(size=(4, 1, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    cal = Calibration.parse("entropy")
    old = collect(qdq.ProbeRunner(m, names), static._feeds(data, 4), names, cal=cal)
    probe = reduce.CalibProbe(m, names, histogram=True)
    new = reduce.calibrate(probe, static._feeds(data, 4), cal=cal)
    assert "hm" in probe.whole and "x" not in probe.whole
    assert new.nonfinite() == old.nonfinite() and new.nonfinite()["hm"] == 4 * 16
    for k in names:
        a, b = old.tensors[k], new.tensors[k]
        assert (a.lo, a.hi, a.count) == (b.lo, b.hi, b.count), k


def test_paired_sqnr_equals_two_probe_sessions(tmp_path):
    src = _big_activation_cnn(tmp_path / "m.onnx")
    data = _data(2)
    spec = QuantSpec(calibration="minmax")
    prep = static.prepare(src, spec, data, weights_dir=tmp_path)
    written = static.write(prep, spec)
    names = list(dict.fromkeys(t for qn in written.plan.nodes for t in (qn.output, qn.act_input) if t))
    old = static._exposed_sqnr(prep, written, names, data, 2)
    new = reduce.paired_sqnr(prep.model, written.model, names, static._feeds(data, 2), base_dir=prep.weights_dir)
    assert set(new) == set(old)
    for k in names:
        assert new[k].signal == pytest.approx(old[k].signal, rel=1e-4), k
        assert new[k].noise == pytest.approx(old[k].noise, rel=1e-3, abs=1e-6), k
    assert 20 < new["c2"].db < 80  # quantized: some noise, not none


def test_auto_runs_each_distinct_set_of_ranges_once(tmp_path):
    """All-zero activations: every method gives the same ranges, so one candidate model is written and run."""
    src = _big_activation_cnn(tmp_path / "m.onnx")
    data = SampleSet(arrays={"x": np.zeros((3, 1, 1, SIDE, SIDE), np.float32)}, stacked={"x": True}, labels=None, source="test")
    spec = QuantSpec(calibration="minmax", calib_samples=2)
    prep = static.prepare(src, spec, data, weights_dir=tmp_path)
    import dataclasses

    from edgeq.quantization.int8.autocal import choose

    calls: list[str] = []

    def write(p, s):
        calls.append(str(p.cal))
        return static.write(p, s)

    got = choose(dataclasses.replace(prep, cal=Calibration.parse("auto")), spec, data, 2, write=write)
    assert calls == ["minmax"]
    rows = got.choice["candidates"]
    assert [r.get("same_ranges_as") for r in rows] == [None] + ["minmax"] * (len(rows) - 1)
    assert len({r["sqnr_db"] for r in rows}) == 1 and str(got.cal) == "minmax"


def test_auto_scores_large_outputs_on_fewer_samples(tmp_path, monkeypatch):
    """A [1, 4, 192, 192] map per sample is enough output for a steady SQNR: 2 scoring samples, not 8;
    a 4-value output scores on 8. The per-layer SQNR report of 8 x 192 x 192 feature maps runs on 1."""
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization.int8.autocal import SCORE_SAMPLES
    from edgeq.quantization.int8.quantizer import quantize

    layer_runs: list[int] = []
    real = static.layer_sqnr
    monkeypatch.setattr(static, "layer_sqnr", lambda p, w, d, n: layer_runs.append(n) or real(p, w, d, n))
    data = _data(12)
    got = {}
    for pool in (False, True):
        src = _big_activation_cnn(tmp_path / f"m{pool}.onnx", pool=pool)
        res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=2), tmp_path / f"q{pool}.onnx", data=data)
        got[pool] = res.details["calibration"]["auto"]["samples"]
    assert got == {False: 2, True: SCORE_SAMPLES}
    assert layer_runs == [1, 1]


def test_paired_sqnr_compares_finite_entries_of_nonfinite_tensors(tmp_path):
    """``hm`` holds -inf (a mask): its energies are not finite in the graph, so it is pulled out whole and
    compared on finite entries, as the two-session measurement does."""
    src = make_masked_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).normal(size=(3, 1, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    spec = QuantSpec(calibration="minmax")
    prep = static.prepare(src, spec, data, weights_dir=tmp_path)
    written = static.write(prep, spec)
    names = ["h", "hm", "y0"]
    old = static._exposed_sqnr(prep, written, names, data, 3)
    probe = reduce.SqnrProbe(prep.model, written.model, names, base_dir=prep.weights_dir)
    from collections import defaultdict

    new: dict = defaultdict(qdq.Sqnr)
    for feed in static._feeds(data, 3):
        reduce.run_exposing(probe, feed, new)
    assert probe.whole == {"hm"}
    for k in names:
        assert np.isfinite(new[k].signal) and new[k].signal == pytest.approx(old[k].signal, rel=1e-4), k
        assert new[k].noise == pytest.approx(old[k].noise, rel=1e-3, abs=1e-6), k
