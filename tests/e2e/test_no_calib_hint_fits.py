"""Without --calib, int8-static's refusal offers int8-dynamic only when it can quantize something: a
conv-only model (silero-vad: Conv + an LSTM inside If branches) was told "--quant int8-dynamic", which then
refused with "quantized none of the model's nodes"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from tests.models import save_graph
from edgeq.cli import app


def _model(path: Path, op: str) -> Path:
    rng = np.random.default_rng(0)
    if op == "Conv":
        node, x, y = helper.make_node("Conv", ["x", "w"], ["y"]), [1, 2, 8], [1, 4, 8]
        w = rng.normal(size=(4, 2, 1)).astype(np.float32)
    else:
        node, x, y = helper.make_node("MatMul", ["x", "w"], ["y"]), [1, 8], [1, 4]
        w = rng.normal(size=(8, 4)).astype(np.float32)
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)], [numpy_helper.from_array(w, "w")])
    return save_graph(g, path)


def test_the_no_calibration_hint_offers_int8_dynamic_only_where_it_applies(tmp_path):
    conv = CliRunner().invoke(app, ["export", str(_model(tmp_path / "c.onnx", "Conv")), "-o", str(tmp_path / "b")])
    assert conv.exit_code == 2 and "needs calibration data" in conv.output, conv.output
    assert "int8-dynamic /" not in conv.output and "--quant none (int8-dynamic quantizes MatMul" in conv.output
    mm = CliRunner().invoke(app, ["export", str(_model(tmp_path / "m.onnx", "MatMul")), "-o", str(tmp_path / "b")])
    assert mm.exit_code == 2 and "--quant int8-dynamic / none" in mm.output, mm.output
