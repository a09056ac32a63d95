"""Items 8 and 9: hostile calibration data, and int32 bias overflow.

Bad data gives one clear error and no output; odd but valid data (one sample, constant
tensors) gives finite, positive scales. A model whose tiny weights and large bias would
overflow the int32 bias is either re-scaled (onnxruntime raises the weight scale) or the
node is kept in float, and the report says which.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import QuantizationError
from edgeq.core.onnxutil import iter_nodes
from edgeq.quantization.int8.checks import check_operator_scales
from edgeq.quantization.int8.quantizer import check_scales

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, invoke, npz

X = (1, 8, 8)


def _scales(model_path: Path) -> list[np.ndarray]:
    m = onnx.load(str(model_path))
    inits = {i.name: i for i in m.graph.initializer}
    names = set()
    for n in iter_nodes(m.graph):
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            names.add(n.input[1])
        elif n.op_type.startswith("QLinear"):
            names.update(i for i in n.input if "scale" in i)
    return [numpy_helper.to_array(inits[s]) for s in sorted(names) if s in inits]


BAD = {
    "nan": (lambda: _with(cnn_data(8)["x"], (3, 0, 4, 4), np.nan), "NaN or Inf"),
    "inf": (lambda: _with(cnn_data(8)["x"], (0, 0, 0, 0), -np.inf), "NaN or Inf"),
    "empty": (lambda: np.zeros((0, *X), np.float32), "no samples"),
    "wrong-shape": (lambda: np.zeros((4, 1, 9, 9), np.float32), "shape"),
    "wrong-rank": (lambda: np.zeros((4, 8, 8), np.float32), "shape"),
    "float64": (lambda: np.zeros((4, *X), np.float64), "dtype float64"),
    "int32": (lambda: np.zeros((4, *X), np.int32), "dtype int32"),
    "huge-finite": (lambda: np.concatenate([np.full((2, *X), 3e38, np.float32), np.full((2, *X), -3e38, np.float32)]), "non-finite range"),
}


def _with(a: np.ndarray, idx, value) -> np.ndarray:
    a = a.copy()
    a[idx] = value
    return a


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory) -> Path:
    return make_cnn(tmp_path_factory.mktemp("m") / "cnn.onnx")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_calibration_data_fails_safely(runner, tmp_path, cnn_model, case):
    make, words = BAD[case]
    calib = npz(tmp_path / "calib.npz", x=make())
    out = tmp_path / "out"
    assert_fails_safely(runner, ["export", cnn_model, "-o", out, "--calib", calib, "--no-profile"], out, words, budget_s=30)
    # the quantize verb writes a single file: not written either
    q = tmp_path / "q.onnx"
    assert_fails_safely(runner, ["quantize", cnn_model, "-o", q, "--calib", calib], q, words, budget_s=30)
    assert not q.exists()


def test_empty_calibration_folder_and_mismatched_files(runner, tmp_path, cnn_model):
    d = tmp_path / "calib"
    d.mkdir()
    out = tmp_path / "out"
    assert_fails_safely(runner, ["export", cnn_model, "-o", out, "--calib", d], out, "no .npy or .npz")
    np.save(d / "a.npy", np.zeros(X, np.float32))
    np.save(d / "b.npy", np.zeros((1, 4, 4), np.float32))
    assert_fails_safely(runner, ["export", cnn_model, "-o", out, "--calib", d], out, "different shapes")


@pytest.mark.parametrize("case", ["one-sample", "constant-zero", "constant-five", "denormal"])
def test_odd_but_valid_data_gives_finite_positive_scales(runner, tmp_path, cnn_model, case):
    x = {
        "one-sample": cnn_data(1)["x"],
        "constant-zero": np.zeros((4, *X), np.float32),
        "constant-five": np.full((4, *X), 5.0, np.float32),
        "denormal": np.full((4, *X), 1e-40, np.float32),
    }[case]
    calib = npz(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    r = invoke(runner, "export", cnn_model, "-o", out, "--calib", calib, "--no-profile", "--json", budget_s=30)
    assert r.exit_code == 0, r.output
    scales = _scales(out / "model.onnx")
    assert len(scales) >= 6  # input, activations and three weights
    for s in scales:
        assert np.all(np.isfinite(s)) and np.all(s > 0), s
    assert json.loads(r.stdout)["quantization"]["coverage"]["nodes_quantized"] == 3


def test_finite_data_whose_activations_overflow_is_refused(runner, tmp_path):
    # x * 1e30 * 1e30 overflows float32 inside the model although every input is finite
    w = np.random.default_rng(0).normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["m1"]),
        helper.make_node("Mul", ["m1", "k"], ["m2"]),
        helper.make_node("Conv", ["m2", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    g = helper.make_graph(
        nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *X])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(np.array(1e30, np.float32), "k"), numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    model = tmp_path / "overflow.onnx"
    onnx.save(m, str(model))
    calib = npz(tmp_path / "calib.npz", **cnn_data(4))
    out = tmp_path / "out"
    assert_fails_safely(runner, ["export", model, "-o", out, "--calib", calib, "--no-profile"], out, "non-finite range")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -1.0])
def test_a_model_with_a_bad_scale_is_never_accepted(tmp_path, cnn_model, bad):
    # the last gate before writing, for both formats (python -O would skip onnxruntime's own assert)
    from onnxruntime import quantization as q

    class Reader:
        def __init__(self):
            self.it = iter([{"x": a[None]} for a in cnn_data(4)["x"]])

        def get_next(self):
            return next(self.it, None)

    for fmt, check in ((q.QuantFormat.QDQ, check_scales), (q.QuantFormat.QOperator, check_operator_scales)):
        path = tmp_path / f"q{fmt}.onnx"
        q.quantize_static(str(cnn_model), str(path), Reader(), quant_format=fmt)
        m = onnx.load(str(path))
        check(m)  # sound as written
        t = next(i for i in m.graph.initializer if i.name.endswith("scale") and i.data_type == TensorProto.FLOAT)
        t.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(t).shape, bad, np.float32), t.name))
        with pytest.raises(QuantizationError, match="invalid scale"):
            check(m)


# --- item 9: int32 bias overflow -----------------------------------------------------

def _tiny_weights_large_bias(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = (rng.normal(0, 1, (4, 1, 3, 3)) * 1e-7).astype(np.float32)
    b1 = np.full(4, 1000.0, np.float32)
    w2 = rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv_tiny"),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv_ok"),
    ]
    g = helper.make_graph(
        nodes, "bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *X])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _bias_ints(model: onnx.ModelProto) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == TensorProto.INT32 and "b" in i.name]


@pytest.mark.parametrize("fmt,wtype,expect", [
    ("qdq", "int8", "raised"),       # symmetric weights: onnxruntime raises the weight scale
    ("qdq", "uint8", "raised"),      # edgeq writes QDQ itself: raises the weight scale for uint8 weights too
    ("qoperator", "uint8", "float"),
])
def test_int32_bias_overflow_is_handled_and_reported(runner, tmp_path, fmt, wtype, expect):
    model = _tiny_weights_large_bias(tmp_path / "bias.onnx")
    calib = npz(tmp_path / "calib.npz", x=np.random.default_rng(1).random((8, *X), dtype=np.float32))
    out = tmp_path / "out"
    r = invoke(runner, "export", model, "-o", out, "--calib", calib, "--no-profile", "--json",
               "--format", fmt, "--weight-type", wtype, budget_s=60)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    notes = res["quantization"]["notes"]
    manifest = json.loads((out / "manifest.json").read_text())
    q = onnx.load(str(out / "model.onnx"))
    ints = _bias_ints(q)
    assert ints and all(np.abs(b.astype(np.int64)).max() < np.iinfo(np.int32).max for b in ints)  # nothing clipped
    if expect == "raised":
        assert any("'conv_tiny' raised" in n for n in notes)
        assert res["quantization"]["coverage"]["nodes_quantized"] == 2
    else:
        assert any("kept 'conv_tiny' in float" in n for n in notes)
        assert res["quantization"]["nodes_to_exclude"] == ["conv_tiny"]
        assert res["quantization"]["coverage"]["nodes_quantized"] == 1
        float_convs = [n for n in q.graph.node if n.op_type == "Conv" and "w1" in n.input]
        assert len(float_convs) == 1  # conv_tiny reads its float weight directly
    assert notes == manifest["quantization"]["notes"]  # the report in the bundle says which
    out0 = res["verify"]["outputs"][0]
    assert out0["cosine"] > 0.999
