"""Hints after a failed check that fit the model and the data (found on real models from PyPI):
- a conv-only model (nudenet's YOLOv8 detector) was told "--quant int8-dynamic", which quantizes none of its nodes;
- one borderline sample of 32 changing its decision (openwakeword's hey_jarvis: fp32 0.48 -> int8 0.55) fails a
  0.97 agreement that allows no change at 32 samples: the hint says so, instead of only suggesting other recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeq.checks.hints import one_change_over_a_small_set
from edgeq.cli import app
from tests.models import save_graph


def _model(path: Path, op: str) -> Path:
    rng = np.random.default_rng(0)
    if op == "Conv":
        node, x, y = helper.make_node("Conv", ["x", "w"], ["y"]), ["B", 2, 8, 8], ["B", 4, 8, 8]
        w = rng.normal(size=(4, 2, 1, 1)).astype(np.float32)
    else:
        node, x, y = helper.make_node("MatMul", ["x", "w"], ["y"]), ["B", 8], ["B", 4]
        w = rng.normal(size=(8, 4)).astype(np.float32)
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)], [numpy_helper.from_array(w, "w")])
    return save_graph(g, path)


def _failing_export(tmp_path: Path, op: str):
    """Calibrated on data 100x smaller than the evaluation data: the check fails."""
    model = _model(tmp_path / f"{op}.onnx", op)
    shape = (16, 2, 8, 8) if op == "Conv" else (16, 8)
    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x * 0.01)
    np.savez(tmp_path / "eval.npz", x=x)
    return CliRunner().invoke(app, ["export", str(model), "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
                                    "--calibration", "minmax", "--no-profile", "-o", str(tmp_path / f"b-{op}")])


def test_a_failed_check_offers_int8_dynamic_only_where_it_quantizes_something(tmp_path):
    conv = _failing_export(tmp_path, "Conv")
    assert conv.exit_code == 1 and "outside target" in conv.output, conv.output
    assert "--quant int8-dynamic" not in conv.output and "--quant none" in conv.output
    mm = _failing_export(tmp_path, "MatMul")
    assert mm.exit_code == 1 and "outside target" in mm.output, mm.output
    assert "--quant int8-dynamic" in mm.output


def _task(metric: str, value: float, n: int, limit: float = 0.97, key: str = "rows") -> dict:
    return {"output": "53", "passed": value >= limit, "metrics": {metric: value}, "limits": {metric: f">= {limit:g}"}, "info": {key: n}}


def test_one_changed_sample_of_too_few_asks_for_more_eval_samples():
    tip = one_change_over_a_small_set([_task("decision_agreement", 31 / 32, 32)])
    assert tip is not None and "one of 32 changed" in tip and "34 allow one" in tip
    seq = one_change_over_a_small_set([_task("sequence_match", 15 / 16, 16, 0.95, "sequences")])
    assert seq is not None and "one of 16 changed" in seq and "20 allow one" in seq
    assert one_change_over_a_small_set([_task("top1_agreement", 30 / 32, 32)]) is None  # two changed: not noise
    assert one_change_over_a_small_set([_task("top1_agreement", 96 / 100, 100)]) is None  # 100 allow three at 0.97
    assert one_change_over_a_small_set([_task("top1_agreement", 1.0, 32)]) is None  # passed
    assert one_change_over_a_small_set([_task("mean_cosine", 0.9, 32)]) is None  # not counted over samples
