"""A symbolic axis named by its whole shape formula (torch's exporter does that for a YOLO head's anchor count,
e.g. nudenet's 320n.onnx) is longer than the manifest schema allows for an axis name: the bundle is still written,
that axis recorded as dynamic (null), and the bundle verifies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeq.cli import app
from tests.models import save_graph

FORMULA = " + ".join(f"(floor(floor(floor(height/{s} - 1/2)/2)/2) + 1)*(floor(floor(floor(width/{s} - 1/2)/2)/2) + 1)" for s in (2, 4, 8))


def _head(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, FORMULA])],
        [w, shape],
    )
    return save_graph(graph, path)


def test_an_axis_named_by_a_long_formula_still_bundles_and_verifies(tmp_path):
    assert len(FORMULA) > 128
    model = _head(tmp_path / "head.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", images=rng.random((8, 3, 16, 16), dtype=np.float32))
    np.savez(tmp_path / "eval.npz", images=rng.random((4, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["export", str(model), "--target", "cpu-x86_64", "--calib", str(tmp_path / "calib.npz"),
                                 "--eval", str(tmp_path / "eval.npz"), "--no-profile", "-o", str(out)])
    assert r.exit_code in (0, 1), r.output  # a verdict, not "the bundle is corrupt" (exit 2)
    assert "manifest schema" not in r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"][0]["shape"] == ["batch", 6, None]
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    v = CliRunner().invoke(app, ["verify", str(out)])
    assert v.exit_code == (1 if manifest["verdict"]["status"] == "fail" else 0), v.output
    assert "golden" in v.output


def test_inspect_shortens_an_axis_named_by_a_long_formula(tmp_path):
    model = _head(tmp_path / "head.onnx")
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["inspect", str(model)])
    assert r.exit_code == 0, r.output
    assert FORMULA[:37] + "..." in r.output and FORMULA[:60] not in r.output
    j = CliRunner().invoke(app, ["inspect", str(model), "--json"])
    assert FORMULA in j.output  # the JSON keeps the name whole
