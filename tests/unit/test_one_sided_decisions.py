"""A one-probability output (a voice-activity or binary detector) whose fp32 decisions on the data are all
on one side of 0.5: decision agreement then proves little, and the check says so in the line it prints
(found on silero-vad with non-speech data: every fp32 probability < 0.02, "decision agreement 1.0")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.models import save_graph
from edgeq.checks.comparison import verify
from edgeq.checks.metrics import task_note
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances


def _sigmoid_head(path: Path, bias: float) -> Path:
    """x [1, 4] -> sigmoid(x @ w + bias) [1, 1]: one probability per sample."""
    w = numpy_helper.from_array(np.full((4, 1), 0.5, np.float32), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["za"]),
             helper.make_node("Sigmoid", ["za"], ["p"])]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])], [w, b])
    return save_graph(g, path)


def _data(x: np.ndarray) -> SampleSet:
    return SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")


def test_all_fp32_decisions_one_side_is_flagged_both_sides_is_not(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 1, 4)).astype(np.float32)
    low = _sigmoid_head(tmp_path / "low.onnx", -8.0)  # every probability far below 0.5
    r = verify(low, _sigmoid_head(tmp_path / "low2.onnx", -7.5), _data(x), Tolerances(), output_names=("p",))
    (c,) = r.tasks
    assert c["kind"] == "classification" and c["passed"]  # the verdict is unchanged: fp32 is the ground truth
    line = task_note(c)
    assert "every fp32 value on the data is at or below 0.5 (12 rows)" in line and "both outcomes" in line
    mixed = verify(_sigmoid_head(tmp_path / "mid.onnx", 0.0), _sigmoid_head(tmp_path / "mid2.onnx", 0.0), _data(x),
                   Tolerances(), output_names=("p",))
    (m,) = mixed.tasks
    assert "note" not in m["info"] and task_note(m) == f"output 'p' checked as classification: {m['why']}"
