"""``auto``'s noise energies summed in the candidate's session (score_graph) give the figures the numpy
path gave (autocal.output_energies on the copied-out outputs), and the large outputs stay in the session."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8 import autocal, score_graph
from edgeq.quantization.int8.autocal import output_energies
from edgeq.quantization.int8.quantizer import quantize
from edgeq.quantization.spec import QuantSpec

from tests.models import cnn_data, make_cnn


def _three_outputs(seed: int) -> onnx.ModelProto:
    """x [N, 16] -> MatMul -> ``map`` [N, 3, 40]; ``idx`` = ArgMax (int64); ``act`` = Relu(map) float16."""
    w = np.random.default_rng(seed).normal(0, 1, (16, 120)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["map"]),
        helper.make_node("ArgMax", ["map"], ["idx"], axis=2, keepdims=0),
        helper.make_node("Relu", ["map"], ["r"]),
        helper.make_node("Cast", ["r"], ["act"], to=TensorProto.FLOAT16),
    ]
    g = helper.make_graph(
        nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("idx", TensorProto.INT64, None),
         helper.make_tensor_value_info("act", TensorProto.FLOAT16, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1, 3, 40], np.int64), "shape")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _open(m: onnx.ModelProto):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_in_graph_noise_equals_the_numpy_sums_and_only_sums_come_out():
    ref_model, cand_model = _three_outputs(0), _three_outputs(0)
    w = numpy_helper.to_array(cand_model.graph.initializer[0])
    cand_model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w + np.float32(0.01), "w"))  # a "quantized" twin
    xs = [np.random.default_rng(i).normal(size=(1, 16)).astype(np.float32) for i in range(3)]
    ref = [_open(ref_model).run(None, {"x": x}) for x in xs]
    ref[1][0][0, 1, :5] = -np.inf  # a masked reference: compared on its finite entries, in numpy
    cand = [_open(cand_model).run(None, {"x": x}) for x in xs]

    reference = score_graph.Reference(ref)
    assert reference.float_outputs == [0, 2]
    fetched: list[list[str]] = []

    def opener(m):
        sess = _open(m)
        run = sess.run
        sess.run = lambda names, feed: (fetched.append(list(names)), run(names, feed))[1]
        return sess

    scorer = score_graph.scorer(cand_model, reference, opener)
    for k, x in enumerate(xs):
        got = scorer(k, {"x": x})
        want = output_energies(ref[k : k + 1], cand[k : k + 1])
        assert got[1] is None and want[1] is None  # the int64 output is not scored
        for j in (0, 2):
            assert got[j][0] == want[j][0]  # the signal: the same numpy sum
            assert math.isclose(got[j][1], want[j][1], rel_tol=1e-12) and got[j][1] > 0
    # the outputs themselves left the session only for the masked sample's map
    outs = {"map", "idx", "act"}
    assert [sorted(outs & set(f)) for f in fetched] == [[], ["map"], []]
    assert all(any(n.startswith("__edgeq_score/noise") for n in f) for f in fetched)


def test_nan_in_the_candidate_is_infinite_noise_as_before():
    ref_model, cand_model = _three_outputs(1), _three_outputs(1)
    w = numpy_helper.to_array(cand_model.graph.initializer[0]).copy()
    w[0, 7] = np.nan  # one output value of the candidate is NaN
    cand_model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    x = np.ones((1, 16), np.float32)
    ref = [_open(ref_model).run(None, {"x": x})]
    want = output_energies(ref, [_open(cand_model).run(None, {"x": x})])
    got = score_graph.scorer(cand_model, score_graph.Reference(ref), _open)(0, {"x": x})
    assert got[0][1] == want[0][1] == math.inf
    assert got[0][0] == want[0][0]


def _old_scorer(model, reference, open_session):
    """The previous path: every output copied out of the session, energies summed in numpy."""
    sess = open_session(model)
    names = {i.name for i in sess.get_inputs()}
    return lambda k, feed: output_energies(reference.outputs[k : k + 1], [sess.run(None, {n: v for n, v in feed.items() if n in names})])


def test_auto_scores_and_choice_unchanged(tmp_path, monkeypatch):
    src = make_cnn(tmp_path / "cnn.onnx", classes=300)  # 300 logits: racing and convergence both in play
    x = np.concatenate([cnn_data(48, seed=3)["x"], cnn_data(8, seed=9)["x"]])
    x[[5, 20], 0, 2, 2] = 30.0
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    spec = QuantSpec(calibration="auto", calib_samples=48)
    new = quantize(artifact_from(src), spec, tmp_path / "new.onnx", data=data).recipe()["calibration"]
    monkeypatch.setattr(autocal, "scorer", _old_scorer)
    old = quantize(artifact_from(src), spec, tmp_path / "old.onnx", data=data).recipe()["calibration"]
    assert new["method"] == old["method"]
    assert new["auto"] == old["auto"]  # every candidate's score, samples, racing and convergence
    assert len({r["sqnr_db"] for r in new["auto"]["candidates"]}) > 1
