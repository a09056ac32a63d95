"""End-to-end export through the CLI on tiny models built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from edgeq.cli import app

from tests.models import cnn_data, make_cnn, make_mlp, snapshot


def _export(runner, model, out, *extra):
    return runner.invoke(app, ["export", str(model), "-o", str(out), *extra])


def test_export_int8_static_writes_verified_bundle(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "bundle"
    ev = tmp_path / "eval.npz"
    np.savez(ev, **cnn_data(40, seed=7, labels_from=cnn))
    r = _export(runner, cnn, out, "--target", "arm64", "--calib", str(cnn_calib), "--eval", str(ev), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # structure: weights quantized per channel, every Conv/Gemm covered
    q = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    assert res["quantization"]["coverage"]["nodes_quantized"] == 3
    int8_weights = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) == 3
    # numbers: close to fp32 on held-out data, labels agree
    v = res["verify"]
    assert v["passed"] and v["samples"] == 40
    assert v["outputs"][0]["cosine"] > 0.99
    assert v["accuracy_reference"] == 1.0  # labels are fp32's own predictions
    assert v["accuracy_drop"] <= 0.05
    # bundle contents
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model.onnx", "model.ort", "required_operators_and_types.config", "manifest.json", "run.py"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == "arm64"
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["quantization"]["mode"] == "int8-static"
    assert manifest["created_by"]["onnxruntime"]
    cfg = (out / "required_operators_and_types.config").read_text()
    assert "QuantizeLinear" in cfg and "Conv" in cfg
    assert len(manifest["golden"]["pairs"]) == 3
    # profile ran on this host's CPU, labelled as not device timing
    prof = res["profile"]["quantized"]
    assert prof["provider"] == "CPUExecutionProvider" and prof["device_measurement"] is False
    assert prof["p50_ms"] > 0 and prof["p90_ms"] >= prof["p50_ms"]


def test_export_table_names_the_figures(runner, cnn, cnn_calib, tmp_path):
    r = _export(runner, cnn, tmp_path / "b", "--target", "cpu-x86_64", "--calib", str(cnn_calib))
    assert r.exit_code == 0, r.output
    for word in ("model size", "max abs error", "cosine", "top-1 agreement", "latency p50", "latency p90", "bundle"):
        assert word in r.stdout


def test_export_dynamic_quantizes_matmuls(runner, tmp_path):
    model = make_mlp(tmp_path / "mlp.onnx")
    calib = tmp_path / "c.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, a=rng.normal(size=(20, 16)).astype(np.float32), c=rng.normal(size=(20, 4)).astype(np.float32))
    r = _export(runner, model, tmp_path / "b", "--quant", "int8-dynamic", "--calib", str(calib), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    q = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in q.graph.node)
    assert res["quantization"]["coverage"]["nodes_quantized"] == 2
    assert res["verify"]["outputs"][0]["cosine"] > 0.99


def test_dynamic_on_conv_only_model_is_an_error_not_a_silent_success(runner, cnn, tmp_path):
    # dynamic INT8 leaves convolutions in float; Gemm has no dynamic kernel: zero coverage
    model = tmp_path / "convonly.onnx"
    m = onnx.load(str(cnn))
    fc = [n for n in m.graph.node if n.op_type == "Gemm"][0]
    m.graph.node.remove(fc)
    m.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, ["N", 16]))
    onnx.save(m, str(model))
    out = tmp_path / "b"
    r = _export(runner, model, out, "--quant", "int8-dynamic", "--no-profile")
    assert r.exit_code == 2
    assert "quantized none" in r.stderr
    assert not out.exists()


def test_fp16_and_none_modes(runner, cnn, cnn_calib, tmp_path):
    r = _export(runner, cnn, tmp_path / "h", "--quant", "fp16", "--calib", str(cnn_calib), "--json")
    assert r.exit_code == 0, r.output
    q = onnx.load(str(tmp_path / "h" / "model.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in q.graph.initializer)
    assert json.loads(r.stdout)["size"]["ratio"] < 0.7
    r = _export(runner, cnn, tmp_path / "n", "--quant", "none", "--calib", str(cnn_calib), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verify"]["outputs"][0]["max_abs"] < 1e-4


def test_existing_bundle_needs_force_and_is_left_intact(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "b"
    assert _export(runner, cnn, out, "--calib", str(cnn_calib), "--no-profile").exit_code == 0
    before = snapshot(out)
    r = _export(runner, cnn, out, "--calib", str(cnn_calib), "--no-profile")
    assert r.exit_code == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert snapshot(out) == before
    r = _export(runner, cnn, out, "--calib", str(cnn_calib), "--no-profile", "--force", "--per-tensor")
    assert r.exit_code == 0, r.output
    assert snapshot(out) != before
    assert [p.name for p in tmp_path.iterdir() if "edgeq-" in p.name] == []


def test_static_shape_target_pins_batch(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "b"
    r = _export(runner, cnn, out, "--target", "qnn-htp", "--calib", str(cnn_calib), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    q = onnx.load(str(out / "model.onnx"))
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert any("pinned batch axis" in n for n in res["notes"])
    # QNN is no in-process provider here: no CPU stand-in timing (the simulator, where installed, gives placement)
    assert res["profile"]["quantized"] is None and res["profile"]["skipped"]
    assert res["placement"]["accelerator"] == "QNNExecutionProvider"


def test_opset_below_13_is_raised_for_per_channel(runner, tmp_path, cnn_calib):
    model = make_cnn(tmp_path / "old.onnx", opset=11)
    out = tmp_path / "b"
    r = _export(runner, model, out, "--calib", str(cnn_calib), "--json", "--no-profile")
    assert r.exit_code == 0, r.output
    q = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in q.opset_import if o.domain in ("", "ai.onnx")][0] >= 13
    import onnxruntime as ort

    ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
