"""Classifiers whose output is a probability: the verdict reads the probability, not only the argmax.

The issue's angle classifier (rapidocr's, two classes, softmax) kept every argmax after a bad
calibration while its confidences fell from 0.9998 to 0.69; the app rotates a text line only
when the "180" probability is above 0.9, so a top-1-only verdict passed a broken model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks import infer_all, score
from edgeq.checks.comparison import verify
from edgeq.checks.kinds import Context
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances

TOL = Tolerances()


def _softmax_model(path: Path, temperature: float) -> Path:
    """y = softmax(x / temperature): temperature > 1 flattens the confidences, argmax unchanged."""
    g = helper.make_graph(
        [helper.make_node("Div", ["x", "t"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)], "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])],
        [numpy_helper.from_array(np.float32(temperature), "t")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _logits(n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = np.zeros((n, 2), np.float32)
    x[:, 0] = sign * rng.uniform(3, 9, n)  # confident, either class
    return x


def test_flattened_probabilities_fail_although_every_argmax_agrees(tmp_path):
    x = _logits()
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    ref = _softmax_model(tmp_path / "ref.onnx", 1.0)
    r = verify(ref, _softmax_model(tmp_path / "flat.onnx", 4.0), data, TOL, output_names=("y",))
    t = r.tasks[0]
    assert t["kind"] == "classification" and t["metrics"]["top1_agreement"] == 1.0  # the old verdict: pass
    assert t["metrics"]["probability_error"] > TOL.max_probability_error
    assert not r.passed and any("probability error" in f for f in r.failures), r.failures
    # a healthy candidate (small change of confidence) passes
    r = verify(ref, _softmax_model(tmp_path / "near.onnx", 1.02), data, TOL, output_names=("y",))
    assert r.passed, r.failures
    assert r.tasks[0]["metrics"]["probability_error"] < 0.01


def test_probability_error_only_for_probabilities_and_single_sigmoid():
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(1, 10)) * 3 for _ in range(16)]
    spec = infer_all(("y",), [logits], Context())[0]
    c = score(spec, logits, [v * 0.5 for v in logits], TOL)  # logits: the app's softmax is not the model's
    assert "probability_error" not in c.metrics and c.passed
    p = [1 / (1 + np.exp(-v[:, :1])) for v in logits]
    spec = infer_all(("p",), [p], Context())[0]
    assert spec.kind == "classification"
    squashed = [0.5 + (v - 0.5) * 0.3 for v in p]  # every decision at 0.5 kept, confidence gone
    c = score(spec, p, squashed, TOL)
    assert c.metrics["decision_agreement"] == 1.0 and not c.passed
    assert c.metrics["probability_error"] == pytest.approx(np.mean([np.abs(a - b) for a, b in zip(p, squashed)]), rel=1e-5)


def test_max_probability_error_is_target_data():
    from edgeq.core.targets import load_target
    from edgeq.errors import EdgeqError

    assert load_target("cpu-x86_64").tolerances.max_probability_error == pytest.approx(0.05)
    with pytest.raises(EdgeqError, match="max_probability_error"):
        Tolerances(max_probability_error=-1)
