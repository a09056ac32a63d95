"""Metadata a model file declares (ONNX metadata_props): shown by inspect, imgsz used where edgeq needs a size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import app

LONG = "x" * 5000
HOSTILE = "[bold red]owned[/]\x1b[31m\x07 :thumbs_up: \u202eevil"


def make_detector(path: Path, *, imgsz: str | None = "[24, 32]") -> Path:
    """Conv 3x3 (no padding, stride 2) -> GlobalAveragePool -> Flatten on images [N, 3, height, width].

    A 1x1 image (what a dynamic axis is filled with when nothing says better) is too small for it.
    """
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], strides=[2, 2], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["scores"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"stride": "2", "names": "{0: 'person', 1: 'bicycle'}", "description": LONG, "note": HOSTILE}
    if imgsz is not None:
        meta["imgsz"] = imgsz
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def test_inspect_shows_the_metadata_escaped_and_shortened(runner, tmp_path):
    model = make_detector(tmp_path / "det.onnx")
    r = runner.invoke(app, ["inspect", str(model)])
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "imgsz" in text and "[24, 32]" in text and "{0: 'person', 1: 'bicycle'}" in text and "stride" in text
    # shown as text: no markup, emoji code or control character from the file takes effect
    assert "[bold red]owned[/]" in text and ":thumbs_up:" in text
    assert not any(c in text for c in ("\x1b", "\x07", "\u202e", "\U0001f44d"))
    assert LONG not in text and "(5,000 characters)" in text
    assert "imgsz 24x32" in text
    r = runner.invoke(app, ["inspect", str(model), "--json"])
    d = json.loads(r.stdout)
    assert d["metadata"] == {"stride": "2", "names": "{0: 'person', 1: 'bicycle'}", "description": LONG, "note": HOSTILE,
                             "imgsz": "[24, 32]"}
    assert d["declared_imgsz"] == [24, 32]


@pytest.mark.slow
def test_a_declared_imgsz_pins_static_shapes_and_sizes_synthesized_inputs(runner, tmp_path):
    det, plain = make_detector(tmp_path / "det.onnx"), make_detector(tmp_path / "plain.onnx", imgsz=None)
    # a target that needs static shapes: height/width come from imgsz (the calibration inputs are synthesized too)
    q = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(det), "-o", str(q), "--target", "nnapi", "--calib", "random", "--calib-samples", "8",
                            "--calibration", "minmax"])
    assert r.exit_code == 0, r.output
    assert "pinned images to 1x3x24x32 from the model's declared imgsz" in r.stdout
    dims = onnx.load(str(q)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 24, 32]
    r = runner.invoke(app, ["quantize", str(plain), "-o", str(tmp_path / "q2.onnx"), "--target", "nnapi", "--calib", "random"])
    assert r.exit_code == 2 and "needs static shapes" in r.stderr
    # dynamic height/width on a CPU target: profiling synthesizes inputs of the declared size
    r = runner.invoke(app, ["profile", str(det), "--runs", "3", "--warmup", "1", "--budget", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile", str(plain), "--runs", "3", "--warmup", "1", "--budget", "0.2", "--json"])
    assert r.exit_code == 2 and "Invalid input shape" in r.stderr


def test_imgsz_forms():
    from edgeq.core.modelmeta import clean, imgsz_shape, parse_imgsz

    assert parse_imgsz("[640, 640]") == (640, 640) and parse_imgsz("640") == (640, 640) and parse_imgsz("(480, 640)") == (480, 640)
    assert parse_imgsz("[0, 640]") is None and parse_imgsz("99999999") is None and parse_imgsz("640; rm -rf") is None
    assert imgsz_shape(("batch", 3, "h", "w"), (24, 32)) == (1, 3, 24, 32)
    assert imgsz_shape(("batch", "h", "w", 3), (24, 32)) == (1, 24, 32, 3)
    assert imgsz_shape(("batch", 3, 24, 32), (24, 32)) is None
    assert clean("a\x1b[2Jb\nc", 80) == "a[2Jb c" and len(clean("y" * 500)) == 120
