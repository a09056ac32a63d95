"""--calibration auto: every range method scored by output error against fp32, the best one used."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeq.cli import app
from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8.autocal import SCORE_SAMPLES, output_sqnr
from edgeq.quantization.int8.calibrate import AUTO_CANDIDATES
from edgeq.quantization.int8.quantizer import quantize
from edgeq.quantization.spec import QuantSpec
from edgeq.core.targets import load_target

from tests.models import cnn_data, make_cnn


def _spiky(n: int, seed: int = 1) -> np.ndarray:
    """make_cnn inputs with three rare 40x pixels (< 0.1 % of values): min-max wastes its levels on them."""
    x = cnn_data(n, seed=seed)["x"]
    x[[3, 17, 30], 0, 4, 4] = 40.0
    return x


def _sqnr(src, q, x) -> float:
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return output_sqnr([[a]], [[b]])[0]


def test_auto_scores_every_method_and_keeps_the_best(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    x = np.concatenate([_spiky(64), cnn_data(32, seed=7)["x"]])  # 64 to calibrate, 32 held out
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=64), tmp_path / "auto.onnx", data=data)
    cal = res.recipe()["calibration"]
    auto = cal["auto"]
    assert SCORE_SAMPLES <= 8  # cost: candidates are scored on a few samples, not all held-out ones
    assert auto["held_out"] is True and auto["samples"] == SCORE_SAMPLES
    assert [r["method"] for r in auto["candidates"]] == list(AUTO_CANDIDATES)
    scores = {r["method"]: r["sqnr_db"] for r in auto["candidates"]}
    assert auto["chosen"] == cal["method"] == max(scores, key=scores.get)
    # the outlier-driven min-max range is measurably worse here, and auto did not pick it
    assert auto["chosen"] != "minmax" and scores[auto["chosen"]] > scores["minmax"] + 3.0
    assert any(n.startswith("calibration auto: chose " + auto["chosen"]) for n in res.notes)
    # the written model really is the better one, on fresh data
    mm = quantize(artifact_from(src), QuantSpec(calibration="minmax", calib_samples=64), tmp_path / "mm.onnx", data=data)
    assert "auto" not in mm.recipe()["calibration"]
    fresh = cnn_data(64, seed=11)["x"]
    assert _sqnr(src, tmp_path / "auto.onnx", fresh) > _sqnr(src, tmp_path / "mm.onnx", fresh) + 1.5


def test_output_sqnr_skips_non_float_outputs_and_measures_the_rest():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 10)).astype(np.float32)
    noise = (0.01 * rng.normal(size=f.shape)).astype(np.float32)
    idx = f.argmax(-1)
    got = output_sqnr([[idx, f]], [[idx, f + noise]])
    want = 10 * np.log10((f.astype(np.float64) ** 2).sum() / (noise.astype(np.float64) ** 2).sum())
    assert got[0] is None and abs(got[1] - want) < 1e-3
    assert output_sqnr([[f]], [[f]]) == [float("inf")]
    assert output_sqnr([[f]], [[np.full_like(f, np.nan)]]) == [float("-inf")]


def test_auto_without_held_out_samples_says_so(tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    data = SampleSet(arrays={"x": cnn_data(16, seed=1)["x"]}, stacked={"x": False}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="auto", calib_samples=256), tmp_path / "q.onnx", data=data)
    auto = res.recipe()["calibration"]["auto"]
    assert auto["held_out"] is False and auto["samples"] == min(16, SCORE_SAMPLES)
    assert any("no held-out ones" in n for n in res.notes)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 3


@pytest.mark.slow
def test_auto_is_the_default_of_the_spec_and_targets(runner, tmp_path):
    assert QuantSpec().calibration == "auto"
    for name in ("cpu-x86_64", "arm64"):
        assert load_target(name).quant.calibration == "auto"
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=_spiky(48))
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(cal), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    assert rec["calibration"]["auto"]["chosen"] == rec["calibration"]["method"]
    assert len(rec["calibration"]["auto"]["candidates"]) == len(AUTO_CANDIDATES)


# -- --max-drop on language-model logits ------------------------------------------------------------


def _tiny_token_lm(path, *, vocab: int = 64, d: int = 16, h: int = 64, seed: int = 0):
    """tokens int64 [1, T] -> Gather(embedding) -> MatMul -> Relu -> MatMul -> logits [1, T, vocab]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab, d)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.normal(0, 0.5, (d, h)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.12, (h, vocab)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w1"], ["a"], name="fc1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="head"),
    ]
    g = helper.make_graph(nodes, "tiny_lm", [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "T"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", vocab])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _tokens(n: int, t: int = 32, seed: int = 3, vocab: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (n, 1, t)).astype(np.int64)


def _logits(path, toks):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [s.run(None, {"tokens": t})[0] for t in toks]


def _logsm(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_max_drop_on_lm_logits_is_mean_kl_not_top1(tmp_path):
    from edgeq.quantization.int8 import static

    src = _tiny_token_lm(tmp_path / "lm.onnx")
    cal = SampleSet(arrays={"tokens": _tokens(48, seed=1)}, stacked={"tokens": True}, labels=None, source="cal")
    ev_toks = _tokens(40, seed=5)
    ev = SampleSet(arrays={"tokens": ev_toks}, stacked={"tokens": True}, labels=None, source="eval")
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=cal, evals=ev, max_drop=0.01)
    s = res.recipe()["search"]
    assert s["metric"] == "mean_kl" and "KL" in s["drop_means"] and s["fp32"] == 0.0
    assert any("--max-drop on LM logits" in n for n in res.notes)
    # the drop is the mean KL(fp32 || int8) per token, computed here independently
    ref, q = _logits(src, ev_toks), _logits(tmp_path / "q.onnx", ev_toks)
    kl = np.mean([(np.exp(_logsm(r)) * (_logsm(r) - _logsm(o))).sum(-1).mean() for r, o in zip(ref, q)])
    assert s["met"] and s["best"]["kept_float"] == 0 and res.coverage.nodes_quantized == 2
    assert abs(s["best"]["drop"] - kl) < 1e-4 and 0 < kl < 0.01
    # ...while top-1 token agreement misses the same budget: the old search would have kept nodes float
    agree = np.mean([(r.argmax(-1) == o.argmax(-1)).mean() for r, o in zip(ref, q)])
    assert agree < 0.99
    assert static.metric(q, ref, None).name == "agreement"  # non-LM metric unchanged


@pytest.mark.slow
def test_max_drop_on_lm_with_next_token_labels_is_relative_perplexity(runner, tmp_path):
    src = _tiny_token_lm(tmp_path / "lm.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, tokens=_tokens(32, seed=1)[:, 0])
    toks = _tokens(24, t=33, seed=6)[:, 0]
    ev = tmp_path / "ev.npz"
    np.savez(ev, tokens=toks[:, :-1], labels=toks[:, 1:])  # labels: the next token at every position
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(cal), "--eval", str(ev),
                            "--max-drop", "0.02", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["quantization"]["search"]
    assert s["metric"] == "perplexity" and "relative perplexity" in s["drop_means"]

    def ppl(path):
        nll = [-_logsm(o)[np.arange(32), y].sum() for o, y in zip(_logits(path, toks[:, None, :-1]), toks[:, 1:])]
        return float(np.exp(np.sum(nll) / toks[:, 1:].size))

    p32, pq = ppl(src), ppl(tmp_path / "q.onnx")
    assert abs(s["fp32"] - p32) < 1e-3 * p32
    assert abs(s["best"]["drop"] - (pq / p32 - 1)) < 1e-4
    # an impossible budget on the same metric: exit 1, best model written, metric named in the line
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "b.onnx"), "--calib", str(cal), "--eval", str(ev),
                            "--max-drop", "-0.5"])
    assert r.exit_code == 1 and "perplexity drop" in r.output and (tmp_path / "b.onnx").exists()


# -- calibration inside Loop / Scan bodies -----------------------------------------------------------


def test_scan_body_activations_are_calibrated_and_reported(tmp_path):
    from edgeq.quantization.int8 import qdq

    from tests.int8_models import make_scan_model

    src = make_scan_model(tmp_path / "scan.onnx")
    x = np.random.default_rng(0).normal(size=(24, 1, 5, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    # the probe exposes body tensors as extra scan outputs, stacked over the 5 steps
    m = onnx.load(str(src))
    qdq.name_nodes(m)
    runner = qdq.ProbeRunner(m, ["xw", "s_out", "x_t", "y_t"])
    got = runner({"x": x[0]})
    assert got["xw"].shape == (5, 1, 16) and got["y_t"].shape == (5, 1, 8)
    ref_y = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x[0]})[1]
    assert np.allclose(got["y_t"][:, 0], ref_y[0])  # step t of the scan output is the body's y_t at t
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data)
    rec = res.recipe()
    assert res.coverage.nodes_quantized == res.coverage.nodes_total == 2
    assert rec["subgraphs"] == {"Scan": {"quantized": 2, "activations_calibrated": 2, "weight_only": 0}}
    assert any("Scan: 2, 2 with calibrated activations" in n for n in res.notes)
    assert all(r["quantized_as"].endswith("uint8 activations") and r["sqnr_db"] > 25 for r in rec["layers"]), rec["layers"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    body = next(a.g for n in q.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body")
    assert [n.op_type for n in body.node].count("QuantizeLinear") == 4  # x_t, xw, s_out, y_t
    # the calibrated range of xw covers every step's values (not only the first step's)
    xs = x[:, 0]
    s32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": xs})
    sq = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xs})
    assert [a.shape for a in s32] == [b.shape for b in sq]
    assert min(output_sqnr([s32], [sq])) > 25.0  # final state and every step's output close to fp32


def _growing_loop(path):
    """A Loop whose carried h grows by one row per step: h @ W changes shape every iteration."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).normal(0, 0.3, (16, 16)) + np.eye(16)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "w"], ["hw"], name="grow_mm"),
            helper.make_node("Slice", ["hw", "m1", "big", "zero"], ["last"], name="grow_last"),
            helper.make_node("Concat", ["h_in", "last"], ["h_out"], name="grow_cat", axis=0),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="grow_cond"),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["K", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["K", 16])],
    )
    g = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], name="loop", body=body)], "grow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array([-1], np.int64), "m1"),
         numpy_helper.from_array(np.array([2**31], np.int64), "big"), numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_loop_body_with_shapes_changing_per_iteration_is_calibrated(tmp_path):
    src = _growing_loop(tmp_path / "grow.onnx")
    x = np.random.default_rng(0).normal(size=(8, 1, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data)
    assert res.coverage.nodes_quantized == 1
    assert res.recipe()["subgraphs"] == {"Loop": {"quantized": 1, "activations_calibrated": 1, "weight_only": 0}}
    # min-max range of hw = the values of all iterations (1, 2 then 3 rows), recomputed here in numpy
    w = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(src)).graph.initializer if i.name == "w"))
    first, every = [], []
    for xi in x[:, 0][:, None]:
        h = xi
        for step in range(3):
            hw = h @ w
            (first if step == 0 else every).append(hw.ravel())
            h = np.concatenate([h, hw[-1:]])
    every += first
    lo, hi = min(0.0, float(np.concatenate(every).min())), max(0.0, float(np.concatenate(every).max()))
    q = onnx.load(str(tmp_path / "q.onnx"))
    body = next(a.g for a in q.graph.node[0].attribute if a.name == "body")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in body.initializer}
    scale, zp = float(inits["hw_qp_s"].ravel()[0]), int(inits["hw_qp_z"].ravel()[0])
    assert abs(scale - (hi - lo) / 255) < 1e-6 * (hi - lo) and abs(zp - round(-lo / scale)) <= 1
    assert hi - lo > 1.05 * (float(np.concatenate(first).max()) - min(0.0, float(np.concatenate(first).min())))
    s32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    a = s32.run(None, {"x": x[0]})[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x[0]})[0]
    assert a.shape == b.shape == (4, 16) and np.abs(a - b).max() < 0.05 * np.abs(a).max()


def _loop_with_if(path):
    """A Loop whose body holds an If: steps 0 and 1 take h @ W (then), later steps pass h through."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).normal(0, 0.3, (16, 16)) + np.eye(16)).astype(np.float32)
    then = helper.make_graph([helper.make_node("MatMul", ["h_in", "w"], ["t_out"], name="inner_mm")], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["h_in"], ["e_out"], name="inner_id")], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [
            helper.make_node("Less", ["i", "two"], ["c"], name="lt"),
            helper.make_node("If", ["c"], ["hh"], name="inner_if", then_branch=then, else_branch=other),
            helper.make_node("Tanh", ["hh"], ["h_out"], name="tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cid"),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 16])],
    )
    g = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], name="loop", body=body)], "loop_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(4, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_if_inside_a_loop_body_is_calibrated(tmp_path):
    src = _loop_with_if(tmp_path / "loop_if.onnx")
    x = np.random.default_rng(1).normal(size=(12, 1, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data)
    rec = res.recipe()
    assert rec["subgraphs"] == {"If": {"quantized": 1, "activations_calibrated": 1, "weight_only": 0}}
    assert rec["layers"][0]["sqnr_db"] > 25
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x[:, 0]})
    b = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x[:, 0]})
    assert output_sqnr([a], [b])[0] > 25


def test_loop_probe_refused_by_onnxruntime_falls_back_to_weight_only(tmp_path, monkeypatch):
    from edgeq.quantization.int8 import qdq

    from tests.int8_models import make_loop_model

    class Refusing(qdq.ProbeRunner):  # stands in for a body onnxruntime cannot run with probes
        def __call__(self, feed):
            if self.loops:
                raise RuntimeError("Inconsistent shape in loop output")
            return super().__call__(feed)

    monkeypatch.setattr(qdq, "ProbeRunner", Refusing)
    src = make_loop_model(tmp_path / "loop.onnx")
    x = np.random.default_rng(0).normal(size=(8, 1, 16)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": True}, labels=None, source="test")
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data)
    assert res.coverage.nodes_quantized == 1
    assert res.recipe()["subgraphs"] == {"Loop": {"quantized": 1, "activations_calibrated": 0, "weight_only": 1}}
    assert any("could not be exposed for calibration (Inconsistent shape" in n for n in res.notes)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x[:, 0]})[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x[:, 0]})[0]
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_prefer_gate_measures_lm_logits_as_mean_kl(runner, tmp_path):
    src = _tiny_token_lm(tmp_path / "lm.onnx")
    cal, ev = tmp_path / "cal.npz", tmp_path / "ev.npz"
    np.savez(cal, tokens=_tokens(24, seed=1)[:, 0])
    np.savez(ev, tokens=_tokens(24, seed=5)[:, 0])
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--calib", str(cal), "--eval", str(ev),
                            "--prefer", "accurate", "--max-drop", "0.01", "--json"])
    assert r.exit_code == 0, r.output
    gate = json.loads(r.stdout)["quantization"]["gate"]
    assert gate["metric"] == "mean_kl"
    cands = {c["name"]: c for c in gate["candidates"]}
    assert cands["fp32"]["drop"] == 0.0 and cands["fp32"]["metric"] == 0.0
    ok = [c for n, c in cands.items() if n != "fp32" and c["error"] is None]
    assert ok and all(0.0 <= c["drop"] == c["metric"] < 0.01 for c in ok)  # KL, within this budget
    assert any(c["drop"] > 0 for c in ok)
    assert gate["picked"] != "fp32"
