"""--max-drop gives sensitive nodes 16-bit activations before fp32, where the target allows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import app
from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8.quantizer import quantize
from edgeq.quantization.spec import QuantSpec
from edgeq.core.targets import load_target


def _outlier_mlp(path: Path) -> Path:
    """x[:, 0] is a +-1000 outlier the model ignores (zero weights); the other 15 features carry the
    signal at scale ~1. A uint8 quantizer on x spends its 256 levels on the outlier (step ~8) and
    wipes the signal out; uint16 (step ~0.03) keeps it. Only mm1 reads x."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) / 4
    w1[0] = 0.0
    w2 = rng.standard_normal((32, 32)).astype(np.float32) / 6
    w3 = rng.standard_normal((32, 10)).astype(np.float32) / 6
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
            helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
            helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
            helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="mm3"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _x(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 16)).astype(np.float32)
    x[:, 0, 0] = rng.choice([-1000.0, 1000.0], n)
    return x


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": xi})[0] for xi in x])


def _sets(tmp_path: Path, src: Path) -> tuple[SampleSet, SampleSet, np.ndarray]:
    cal, ev = _x(64, 1), _x(300, 2)
    labels = _logits(src, ev).argmax(-1)
    np.savez(tmp_path / "cal.npz", x=cal)
    np.savez(tmp_path / "ev.npz", x=ev, labels=labels)
    mk = lambda a, lab=None: SampleSet(arrays={"x": a}, stacked={"x": True}, labels=lab, source="test")  # noqa: E731
    return mk(cal), mk(ev, labels), ev


def test_targets_declare_16bit_activations_from_facts():
    assert load_target("qnn-htp").quant.activation_dtypes == ("uint8", "uint16")
    assert load_target("cpu-x86_64").quant.activation_dtypes == ("uint8", "uint16")
    assert load_target("qnn-htp").quant.wide_activation_type == "uint16"
    # XNNPACK (arm64) has no 16-bit QDQ kernels: its search goes straight to fp32
    assert load_target("arm64").quant.wide_activation_type is None


@pytest.mark.slow
def test_sensitive_node_gets_uint16_activations_and_meets_the_budget(runner, tmp_path):
    src = _outlier_mlp(tmp_path / "m.onnx")
    _, _, ev = _sets(tmp_path, src)
    fp32 = _logits(src, ev)
    # all-int8 reference: the outlier ruins mm1's input
    out8 = tmp_path / "q8.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out8), "--calib", str(tmp_path / "cal.npz"), "--json"])
    assert r.exit_code == 0, r.output
    acc8 = float(np.mean(_logits(out8, ev).argmax(-1) == fp32.argmax(-1)))
    assert acc8 < 0.9  # the model is sensitive: int8 alone misses a 2 % budget by far
    # default target cpu-x86_64 allows uint16: the search takes the 16-bit step first
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--calib", str(tmp_path / "cal.npz"),
                            "--eval", str(tmp_path / "ev.npz"), "--max-drop", "0.02", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    s = rec["search"]
    assert s["met"] and s["activation_16bit"] == "uint16"
    assert s["best"]["kept_16bit"] >= 1 and s["best"]["kept_float"] == 0
    assert s["steps"][0]["kept_16bit"] == 0 and s["steps"][0]["kept_float"] == 0  # all-int8 first
    assert "mm1" in rec["activations_16bit"] and rec["kept_float"] == {}
    assert any("uint16 activations instead of fp32" in n for n in rec["notes"])
    rows = {r["node"]: r["quantized_as"] for r in rec["layers"]}
    assert "uint16 activations" in rows["mm1"] and "int8 weights" in rows["mm1"]
    # structure: mm1's input is quantized to uint16 (com.microsoft Q/DQ at opset 17), weights stay int8
    m = onnx.load(str(out))
    inits = {i.name: i for i in m.graph.initializer}
    q_of = {n.output[0]: n for n in m.graph.node if n.op_type == "QuantizeLinear"}
    mm1 = next(n for n in m.graph.node if n.name == "mm1")
    dq_in = next(n for n in m.graph.node if n.output[0] == mm1.input[0])
    assert dq_in.op_type == "DequantizeLinear" and dq_in.domain == "com.microsoft"
    assert inits[dq_in.input[2]].data_type == TensorProto.UINT16
    assert q_of[dq_in.input[0]].domain == "com.microsoft"
    dq_w = next(n for n in m.graph.node if n.output[0] == mm1.input[1])
    assert inits[dq_w.input[0]].data_type == TensorProto.INT8
    assert any(o.domain == "com.microsoft" for o in m.opset_import)
    # the untouched part of the graph keeps 8-bit activations
    mm3 = next(n for n in m.graph.node if n.name == "mm3")
    dq3 = next(n for n in m.graph.node if n.output[0] == mm3.input[0])
    assert inits[dq3.input[2]].data_type == TensorProto.UINT8 and dq3.domain == ""
    # numbers: it runs, within budget, closer to fp32 than all-int8, same weight storage
    q = _logits(out, ev)
    acc = float(np.mean(q.argmax(-1) == fp32.argmax(-1)))
    assert acc >= 0.98
    assert np.abs(q - fp32).mean() < 0.5 * np.abs(_logits(out8, ev) - fp32).mean()
    assert abs(out.stat().st_size - out8.stat().st_size) < 1024


def test_without_16bit_in_the_target_the_search_keeps_fp32(tmp_path):
    src = _outlier_mlp(tmp_path / "m.onnx")
    cal, ev, _ = _sets(tmp_path, src)
    res = quantize(artifact_from(src), QuantSpec(activation_dtypes=()), tmp_path / "q.onnx", data=cal, evals=ev, max_drop=0.02)
    s = res.details["search"]
    assert s["activation_16bit"] is None
    assert all(st["kept_16bit"] == 0 for st in s["steps"])
    assert s["met"] and s["best"]["kept_float"] >= 1 and "mm1" in res.details["kept_float"]
    assert res.details["activations_16bit"] == {}
    m = onnx.load(str(tmp_path / "q.onnx"))
    assert not any(o.domain == "com.microsoft" for o in m.opset_import)


@pytest.mark.slow
def test_opset_21_uses_default_domain_16bit_qdq(tmp_path):
    src = _outlier_mlp(tmp_path / "m.onnx")
    m = onnx.load(str(src))
    m = onnx.version_converter.convert_version(m, 21)
    onnx.save(m, str(src))
    cal, ev, x = _sets(tmp_path, src)
    res = quantize(artifact_from(src), QuantSpec(activation_dtypes=("uint8", "uint16")), tmp_path / "q.onnx",
                   data=cal, evals=ev, max_drop=0.02)
    assert res.details["search"]["best"]["kept_16bit"] >= 1 and res.budget_met
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert not any(n.domain == "com.microsoft" for n in q.graph.node)
    wide_zp = [i for i in q.graph.initializer if i.data_type == TensorProto.UINT16]
    assert wide_zp
    _logits(tmp_path / "q.onnx", x[:4])  # runs


def test_preflight_refuses_16bit_types_the_target_does_not_run(tmp_path):
    import dataclasses

    from edgeq.quantization.int8.preflight import check

    model = onnx.load(str(_outlier_mlp(tmp_path / "m.onnx")))
    tg = load_target("qnn-htp")
    ok = check(model, tg.rules, tg.quant, static_shapes={"x": (1, 16)})
    assert not [f for f in ok if f.rule == "qnn-activation-types"]
    bad = dataclasses.replace(tg.quant, activation_dtypes=("uint8", "int16"))
    found = [f for f in check(model, tg.rules, bad, static_shapes={"x": (1, 16)}) if f.rule == "qnn-activation-types"]
    assert found and "int16" in found[0].message and found[0].severity == "error"
