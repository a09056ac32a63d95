"""edgeq's static QDQ: CNN, If subgraphs, -inf masks, attention, opset raising, budget search, CLI."""

from __future__ import annotations

import json
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeq.cli import app
from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8.quantizer import quantize
from edgeq.quantization.spec import QuantSpec

from tests.int8_models import make_attention, make_if_model, make_masked_mlp
from tests.models import cnn_data, make_cnn


def _samples(arrays: dict[str, np.ndarray], labels=None, stacked=None) -> SampleSet:
    return SampleSet(arrays=arrays, stacked=stacked or {k: False for k in arrays}, labels=labels, source="test")


def _run(path, feed):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def _ops(model) -> list[str]:
    from edgeq.core.onnxutil import iter_nodes

    return [n.op_type for n in iter_nodes(model.graph)]


def test_cnn_static_qdq_structure_and_numbers(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    data = _samples(cnn_data(64, seed=1))
    res = quantize(artifact_from(src), QuantSpec(calibration="entropy"), tmp_path / "q.onnx", data=data)
    q = onnx.load(str(tmp_path / "q.onnx"))
    ops = _ops(q)
    # Relu after each conv is folded into the output quantizer (range starts at 0)
    assert ops.count("Relu") == 0
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 1
    int8_w = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_w) == 3
    axes = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes.count(0) >= 3  # per-channel weights and int32 biases
    assert res.coverage.nodes_quantized == 3 and res.coverage.weight_bytes_quantized == res.coverage.weight_bytes_total
    d = res.recipe()
    assert d["calibration"]["method"] == "entropy" and d["calibration"]["samples"] == 64
    assert {r["node"] for r in d["layers"]} == {"conv1", "conv2", "fc"}
    assert all(r["sqnr_db"] is not None and r["sqnr_db"] > 15 for r in d["layers"]), d["layers"]
    x = cnn_data(32, seed=9)["x"]
    a, b = _run(src, {"x": x}), _run(tmp_path / "q.onnx", {"x": x})
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.99
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9


def test_if_subgraph_weights_are_quantized_and_reported(tmp_path):
    src = make_if_model(tmp_path / "if.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 1, 16)).astype(np.float32)
    flag = np.ones((32, 1), np.int64)
    data = _samples({"x": x, "flag": flag}, stacked={"x": True, "flag": True})
    res = quantize(artifact_from(src), QuantSpec(calibration="percentile:99.99"), tmp_path / "q.onnx", data=data)
    q = onnx.load(str(tmp_path / "q.onnx"))
    cov = res.coverage
    assert cov.total == {"MatMul": 4} and cov.nodes_quantized == 4
    assert cov.weight_bytes_quantized == cov.weight_bytes_total
    how = {r["node"]: r["quantized_as"] for r in res.recipe()["layers"]}
    # the calibrated branch gets activation QDQ, the branch never taken stays weight-only
    assert how["then_mm1"].startswith("int8 weights") and how["then_mm2"].startswith("int8 weights")
    assert "weight-only" in " ".join(res.notes)
    then_g = next(a.g for n in q.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert [n.op_type for n in then_g.node].count("QuantizeLinear") >= 2
    assert len(q.graph.node[-1].output) == 1  # no probe outputs leak into the written model
    for f in (1, 0):
        feed = {"x": x[:, 0], "flag": np.array([f], np.int64)}
        a, b = _run(src, feed), _run(tmp_path / "q.onnx", feed)
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    # the model file shrinks (onnxruntime's quantizer made such a model larger)
    assert (tmp_path / "q.onnx").stat().st_size < 0.7 * src.stat().st_size


@pytest.mark.slow
def test_inf_masks_stay_float_and_are_reported(tmp_path):
    src = make_masked_mlp(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(40, 1, 16)).astype(np.float32)
    data = _samples({"x": x}, stacked={"x": True})
    for method in ("minmax", "entropy", "percentile:99.9", "mse"):
        res = quantize(artifact_from(src), QuantSpec(calibration=method), tmp_path / f"q_{method[:4]}.onnx", data=data)
        d = res.recipe()
        nf = d["calibration"]["nonfinite_values"]
        assert nf["hm"] == 40 * 16 and nf["z"] == 40 * 4
        assert any("non-finite" in n for n in res.notes)
        how = {r["node"]: r["quantized_as"] for r in d["layers"]}
        assert "mm_masked" not in how and how["mm1"].startswith("int8 weights")
        assert "non-finite" in d["kept_float"]["mm_masked"]
        a = _run(src, {"x": x[:, 0]})
        b = _run(tmp_path / f"q_{method[:4]}.onnx", {"x": x[:, 0]})
        assert np.all(np.isfinite(b))
        assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_attention_block_keeps_attention_float(tmp_path):
    src = make_attention(tmp_path / "att.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 1, 8, 32)).astype(np.float32)
    data = _samples({"x": x}, stacked={"x": True})
    res = quantize(artifact_from(src), QuantSpec(), tmp_path / "q.onnx", data=data)
    d = res.recipe()
    kept = d["kept_float"]
    assert set(kept) == {"scores", "context"} and all("activation x activation" in v for v in kept.values())
    assert {r["node"] for r in d["layers"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "head"}
    q = onnx.load(str(tmp_path / "q.onnx"))
    ops = _ops(q)
    assert ops.count("Softmax") == 1 and ops.count("LayerNormalization") == 2
    # Softmax and LayerNorm read float tensors, not freshly dequantized ones of their own
    by_out = {o: n for n in q.graph.node for o in n.output}
    sm = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert by_out[sm.input[0]].op_type == "Add"
    xs = rng.normal(size=(16, 1, 8, 32)).astype(np.float32)
    agree = []
    for i in range(16):
        a, b = _run(src, {"x": xs[i]}), _run(tmp_path / "q.onnx", {"x": xs[i]})
        agree.append((a.argmax(-1) == b.argmax(-1)).mean())
    assert np.mean(agree) > 0.9


def test_low_opset_is_raised_for_per_channel(tmp_path):
    src = make_cnn(tmp_path / "cnn11.onnx", opset=11)
    res = quantize(artifact_from(src), QuantSpec(), tmp_path / "q.onnx", data=_samples(cnn_data(16)))
    assert any("opset raised from 11 to 13" in n for n in res.notes)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert q.opset_import[0].version == 13
    _run(tmp_path / "q.onnx", {"x": cnn_data(2)["x"]})  # loads and runs


@pytest.mark.slow
def test_max_drop_search_and_cli_exit_codes(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, **cnn_data(32, seed=1))
    ev = tmp_path / "ev.npz"
    np.savez(ev, **cnn_data(64, seed=5, labels_from=src))
    # a reachable budget: met, exit 0, search log written
    out = tmp_path / "ok.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--calib", str(cal), "--eval", str(ev),
                            "--max-drop", "0.5", "--calibration", "mse", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    assert rec["search"]["met"] and rec["search"]["metric"] == "accuracy" and rec["search"]["fp32"] == 1.0
    assert len(rec["worst_layers"]) == 3
    # an impossible budget (negative drop) cannot be met: the best model is still written, exit 1
    out2 = tmp_path / "best.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out2), "--calib", str(cal), "--eval", str(ev),
                            "--max-drop", "-0.1"])
    assert r.exit_code == 1, r.output
    assert "accuracy budget not met" in r.output
    assert out2.exists()
    # searching kept nodes float, one more each step, and the log says so
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "b2.onnx"), "--calib", str(cal), "--eval", str(ev),
                            "--max-drop", "-0.1", "--json"])
    rec = json.loads(r.stdout)["quantization"]
    steps = rec["search"]["steps"]
    ks = [s["kept_float"] for s in steps if s["kept_16bit"] == 0]
    assert ks[:3] == [0, 1, 2] and ks[-1] == 3
    # the default target (cpu-x86_64) allows uint16 activations: each step tries them before fp32
    assert [s["kept_16bit"] for s in steps if s["kept_16bit"]] == ks[1:]
    assert all(steps[i]["kept_16bit"] == steps[i + 1]["kept_float"] for i in range(1, len(steps), 2))
    assert not rec["search"]["met"]
    # every node float at the last step: drop 0 on fp32's own labels
    assert rec["search"]["steps"][-1]["drop"] == 0.0
    assert rec["search"]["best"]["drop"] <= min(s["drop"] for s in rec["search"]["steps"])


def test_cli_bad_calibration_is_exit_2(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, **cnn_data(8))
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(cal), "--calibration", "kl"])
    assert r.exit_code == 2 and "unknown calibration method" in r.output
    assert not (tmp_path / "q.onnx").exists()


def test_loop_body_activations_are_calibrated(tmp_path):
    # was weight-only (activations float) before Loop/Scan bodies were probed for calibration
    from tests.int8_models import make_loop_model

    src = make_loop_model(tmp_path / "loop.onnx")
    x = np.random.default_rng(0).normal(size=(16, 1, 16)).astype(np.float32)
    res = quantize(artifact_from(src), QuantSpec(), tmp_path / "q.onnx", data=_samples({"x": x}, stacked={"x": True}))
    assert res.coverage.nodes_quantized == 1 == res.coverage.nodes_total
    rec = res.recipe()
    rows = {r["node"]: r for r in rec["layers"]}
    assert rows["loop_mm"]["quantized_as"] == "int8 weights per-channel, uint8 activations"
    assert rows["loop_mm"]["sqnr_db"] is not None and rows["loop_mm"]["sqnr_db"] > 25  # measured inside the body
    assert rec["subgraphs"] == {"Loop": {"quantized": 1, "activations_calibrated": 1, "weight_only": 0}}
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert not [i for i in q.graph.initializer if i.name == "w"]  # the fp32 weight is gone
    body = next(a.g for a in q.graph.node[0].attribute if a.name == "body")
    assert [n.op_type for n in body.node].count("QuantizeLinear") == 2  # activation in and out
    assert len(q.graph.node[0].output) == 1  # no calibration probe left behind
    a, b = _run(src, {"x": x[:, 0]}), _run(tmp_path / "q.onnx", {"x": x[:, 0]})
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
