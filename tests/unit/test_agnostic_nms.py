"""Detection checks with the app's own NMS: nudenet's YOLOv8 (320n.onnx) runs one NMS over every class, so an int8
model that swaps the class of overlapping boxes changes what the app reports. edgeq's class-aware NMS kept both boxes
and matched them (F1 0.914 on 64 images, PASS) where the app's own postprocess scored 0.854. ``agnostic_nms = true``
in the app TOML checks what the app runs (0.8539 there)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeq.checks import score
from edgeq.checks.kinds import TaskSpec, parse_override
from edgeq.cli import app
from edgeq.core.targets import Tolerances
from edgeq.errors import EdgeqError
from tests.models import save_graph


def _head(b_score: float) -> np.ndarray:
    """[1, 4+2, 64]: anchor 0 class 0 (score 0.9) and anchor 1 class 1 (``b_score``) on nearly the same box."""
    h = np.zeros((1, 6, 64))
    h[0, :4] = np.array([[300.0], [300.0], [10.0], [10.0]])  # far-away tiny boxes, scores 0
    h[0, :4, 0] = [100, 100, 50, 50]
    h[0, :4, 1] = [102, 101, 50, 50]
    h[0, 4, 0], h[0, 5, 1] = 0.9, b_score
    return h


def test_agnostic_nms_sees_overlapping_boxes_change_class():
    ref, cand = [_head(0.8)], [_head(0.95)]  # int8 lifts the class-1 box above the class-0 one
    aware = TaskSpec("output0", "detection", "test", {"layout": "channels-first"})
    agnostic = TaskSpec("output0", "detection", "test", {"layout": "channels-first", "agnostic_nms": True})
    assert score(aware, ref, cand, Tolerances()).metrics["detection_f1"] == 1.0  # both boxes kept and matched
    c = score(agnostic, ref, cand, Tolerances())
    assert c.metrics["detection_f1"] == 0.0 and not c.passed  # the app shows a class-1 box where fp32 showed class 0
    assert score(agnostic, ref, ref, Tolerances()).passed


def test_agnostic_nms_is_validated_and_reaches_the_manifest(tmp_path):
    assert parse_override("app.toml [outputs.y]", {"task": "detection", "agnostic_nms": True})["agnostic_nms"] is True
    with pytest.raises(EdgeqError, match="agnostic_nms"):
        parse_override("app.toml [outputs.y]", {"task": "detection", "agnostic_nms": "yes"})
    with pytest.raises(EdgeqError, match="does not apply"):
        parse_override("app.toml [outputs.y]", {"task": "prob-map", "agnostic_nms": True})
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["output0"])], "head",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 64])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 6, 64])])
    model = save_graph(g, tmp_path / "head.onnx")
    np.savez(tmp_path / "eval.npz", x=np.concatenate([_head(0.8), _head(0.7)]).astype(np.float32))
    (tmp_path / "app.toml").write_text('[outputs.output0]\ntask = "detection"\nagnostic_nms = true\n')
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["export", str(model), "--quant", "none", "--eval", str(tmp_path / "eval.npz"), "--no-profile",
                                 "--preprocess", str(tmp_path / "app.toml"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    post = json.loads((out / "manifest.json").read_text())["outputs"][0]["postprocess"]
    assert post["agnostic_nms"] is True and post["task"] == "detection"
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
