"""The calibration probe finds each tensor's histogram stride inside the graph (``calibrate.step_table``):
no run to learn sizes first, and every sample is sampled at the stride of its own size."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.quantization.int8 import qdq, reduce
from edgeq.quantization.int8.calibrate import HIST_VALUES, STEP_TABLE, Calibration, collect, graph_step, sample_step, step_table


def test_step_table_gives_sample_step():
    t = step_table()
    assert t.shape == (STEP_TABLE,) and t.dtype == np.int64
    sizes = [1, HIST_VALUES, HIST_VALUES + 1, 2 * HIST_VALUES, 2 * HIST_VALUES + 1, 7 * HIST_VALUES + 3, 294_912,
             3 * 736 * 736, 16 * 368 * 368, 1000 * HIST_VALUES, (STEP_TABLE - 1) * HIST_VALUES]
    sizes += list(np.random.default_rng(0).integers(1, (STEP_TABLE - 1) * HIST_VALUES, 200))
    for n in sizes:
        assert graph_step(int(n)) == sample_step(int(n)), n
    assert graph_step(STEP_TABLE * HIST_VALUES * 4) == int(t[-1])  # past the table: its last stride


def _variable_width_model(path):
    """x [1, 4, 128, W] -> Conv(4->8, 1x1) -> y: activations of 4 x 128 x W and 8 x 128 x W values."""
    w = np.random.default_rng(0).normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "var",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 128, "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 128, "W"])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    m = onnx.load(str(path))
    qdq.name_nodes(m)
    return m


def test_samples_of_changing_size_are_sampled_at_their_own_stride(tmp_path):
    """Widths 64, 300, 96: strides 1, 5, 2 for y (8 x 128 x W values). The histograms equal those of the copied-out tensors
    exactly, and there is one run per sample."""
    m = _variable_width_model(tmp_path / "var.onnx")
    names = qdq.plan(m).activations
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 4, 128, w)).astype(np.float32)} for w in (64, 300, 96)]
    assert [sample_step(8 * 128 * w) for w in (64, 300, 96)] == [1, 5, 2]
    cal = Calibration.parse("percentile:99.9")
    probe = reduce.CalibProbe(m, names, histogram=True)
    calls = [0]
    run = probe.sess.run

    def counted(*a, **k):
        calls[0] += 1
        return run(*a, **k)

    probe.sess.run = counted
    new = reduce.calibrate(probe, iter(feeds), cal=cal)
    assert calls[0] == len(feeds) and not any(i.name.endswith(tuple("0123456789")) for i in probe.sess.get_inputs() if i.name != "x")
    old = collect(qdq.ProbeRunner(m, names), iter(feeds), names, cal=cal)
    for k in names:
        a, b = old.tensors[k], new.tensors[k]
        assert (a.lo, a.hi, a.count, a.R) == (b.lo, b.hi, b.count, b.R), k
        assert np.array_equal(a.hist, b.hist), k


def test_auto_picks_the_same_candidate_as_with_the_copying_probe(tmp_path, monkeypatch):
    """``auto`` on statistics from the in-graph probe (strides looked up in the graph) and from the probe that
    copies every tensor out: the same candidate scores, the same choice."""
    from edgeq.core.data import SampleSet
    from edgeq.quantization.int8 import static
    from edgeq.quantization.spec import QuantSpec

    from tests.unit.test_int8_reduce import SIDE, _big_activation_cnn

    src = _big_activation_cnn(tmp_path / "m.onnx", pool=False)
    x = np.random.default_rng(4).normal(size=(6, 1, 1, SIDE, SIDE)).astype(np.float32)
    x[1, 0, 0, 9, 11] = 25.0
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    spec = QuantSpec(calibration="auto", calib_samples=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reduced = static.prepare(src, spec, data, weights_dir=tmp_path / "a")
    monkeypatch.setattr(static, "calibrate_reduced", lambda *a, **k: None)  # every tensor copied out instead
    copied = static.prepare(src, spec, data, weights_dir=tmp_path / "b")
    assert reduced.choice["candidates"] == copied.choice["candidates"]
    assert reduced.choice["chosen"] == copied.choice["chosen"]
    assert len({r.get("sqnr_db") for r in reduced.choice["candidates"]}) > 1  # the candidates differ here
