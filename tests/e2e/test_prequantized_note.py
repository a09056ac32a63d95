"""A model that is already quantized (ddddocr's common_old.onnx: DynamicQuantizeLinear + ConvInteger)
has no float Conv/Gemm/MatMul left; export said "the model has no Conv/Gemm/MatMul nodes", which reads
as if the model had no layers. The note now says it is already quantized and names its int8 ops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from tests.models import save_graph
from edgeq.cli import app


def _prequantized(path: Path) -> Path:
    """x [N, 8] -> DynamicQuantizeLinear -> MatMulInteger (uint8 weights) -> Cast -> Mul(scale) -> y [N, 4]."""
    w = np.random.default_rng(0).integers(0, 255, (8, 4)).astype(np.uint8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    g = helper.make_graph(nodes, "pq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "wz"),
                           numpy_helper.from_array(np.array(0.01, np.float32), "ws")])
    return save_graph(g, path)


def test_an_already_quantized_model_is_named_as_such(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32))
    r = CliRunner().invoke(app, ["export", str(_prequantized(tmp_path / "m.onnx")), "--calib", str(data), "--no-profile",
                                 "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    notes = json.loads((tmp_path / "b" / "manifest.json").read_text())["quantization"]["notes"]
    assert any("already quantized (DynamicQuantizeLinear, MatMulInteger)" in n for n in notes), notes
