"""Pre-flight rules from the target files: checked before any work, naming the node and the rule."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeq.cli import app
from edgeq.quantization.int8.preflight import check
from edgeq.quantization.spec import QuantSpec
from edgeq.core.targets import load_target

from tests.int8_models import make_attention, make_if_model
from tests.models import cnn_data, make_cnn, make_mlp


def test_qnn_rejects_int8_activations_before_work(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, **cnn_data(8))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(src), "-o", str(out), "--target", "qnn-htp", "--calib", str(cal),
                            "--activation-type", "int8", "--no-profile"])
    assert r.exit_code == 2, r.output
    assert "qnn-activation-types" in r.output and "conv1" in r.output
    assert not out.exists()


def test_qnn_names_a_dynamic_input_axis(tmp_path):
    model = onnx.load(str(make_mlp(tmp_path / "mlp.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"  # a dynamic feature axis
    tg = load_target("qnn-htp")
    found = check(model, tg.rules, tg.quant, supported_ops=tg.supported_ops)
    lines = [f.line() for f in found]
    assert any("qnn-static-shapes" in x and "input a" in x and "axis 1" in x for x in lines), lines
    # pinning the input with --static-shape satisfies the rule
    found = check(model, tg.rules, tg.quant, supported_ops=tg.supported_ops, static_shapes={"a": (1, 16)})
    assert not [f for f in found if f.rule == "qnn-static-shapes"]


def test_qnn_unsupported_op_is_a_warning_naming_the_node(tmp_path):
    tg = load_target("qnn-htp")
    att = onnx.load(str(make_attention(tmp_path / "att.onnx")))  # every op runs on the HTP
    assert not [f for f in check(att, tg.rules, tg.quant, supported_ops=tg.supported_ops) if f.rule == "qnn-supported-ops"]
    model = onnx.load(str(make_if_model(tmp_path / "if.onnx")))
    found = check(model, tg.rules, tg.quant, supported_ops=tg.supported_ops)
    ops = [f for f in found if f.rule == "qnn-supported-ops"]
    assert len(ops) == 1 and ops[0].severity == "warn" and ops[0].where == "node gt (Greater)"


def test_x86_without_vnni_warns_unless_reduce_range(tmp_path):
    model = onnx.load(str(make_cnn(tmp_path / "cnn.onnx")))
    tg = load_target("cpu-x86_64")
    found = check(model, tg.rules, tg.quant, vnni=False)
    assert [f.rule for f in found] == ["x86-no-vnni"] and "conv1" in found[0].where
    assert check(model, tg.rules, tg.quant, vnni=True) == []
    assert check(model, tg.rules, tg.quant.with_overrides(reduce_range=True), vnni=False) == []
    assert check(model, tg.rules, tg.quant.with_overrides(weight_type="uint8"), vnni=False) == []


@pytest.mark.slow
def test_coreml_int8_is_a_loud_note(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, **cnn_data(8))
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--target", "coreml",
                            "--quant", "int8-static", "--calib", str(cal), "--json"])
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["quantization"]["notes"]
    assert any(n.startswith("WARNING: target rule 'coreml-fp16'") for n in notes)
    assert check(onnx.load(str(src)), load_target("coreml").rules, QuantSpec(mode="fp16")) == []
