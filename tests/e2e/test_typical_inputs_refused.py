"""A model that cannot run on edgeq's made-up inputs (no --calib/--eval) is the user's missing data, not
an edgeq bug. Seen on silero-vad: `edgeq export silero_vad.onnx --quant fp16` ran a reflect Pad over the
dynamic time axis set to 1 and printed "internal error ... this is a bug in edgeq" (exit 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from tests.models import save_graph
from edgeq.cli import app


def _reflect_padded(path: Path) -> Path:
    """x [1, T] -> reflect Pad by 4 on the time axis -> ReduceMean: needs T >= 5, declared dynamic."""
    g = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
         helper.make_node("ReduceMean", ["p"], ["y"], axes=[1], keepdims=1)], "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.array([0, 4, 0, 4], np.int64), "pads")])
    return save_graph(g, path)


def test_no_data_and_a_model_that_refuses_typical_inputs_is_one_line_exit_2(tmp_path):
    model = _reflect_padded(tmp_path / "m.onnx")
    r = CliRunner().invoke(app, ["export", str(model), "--quant", "fp16", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and "typical inputs ('x' [1, 1] float32" in r.output and "--eval" in r.output
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(4, 1, 64)).astype(np.float32))
    ok = CliRunner().invoke(app, ["export", str(model), "--quant", "fp16", "--eval", str(data), "-o", str(tmp_path / "b2")])
    assert ok.exit_code == 0, ok.output
