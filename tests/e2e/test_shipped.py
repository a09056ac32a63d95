"""Issue 19: the bundle's model.ort keeps the int8 speed, export times what ships, never slower than fp32 by default."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeq.cli import app
from edgeq.quantization.selection import speed
from edgeq.core.targets import load_target, targets_dir

from tests.models import cnn_data, make_cnn


def test_targets_choose_the_ort_level_and_style(tmp_path):
    for name in ("arm64", "cpu-x86_64"):
        t = load_target(name)
        assert (t.ort_optimization, t.ort_optimization_style) == ("extended", "fixed"), name
    for name in ("qnn-htp", "nnapi", "coreml"):
        t = load_target(name)
        assert t.ort_optimization_style == "runtime" and t.graph_optimization_level in ("extended", "all"), name
    # a target file without the key keeps the old meaning: model.ort saved at the session level
    text = (targets_dir() / "cpu-x86_64.toml").read_text()
    old = next(ln for ln in text.splitlines() if ln.startswith("ort_optimization ="))
    p = tmp_path / "old.toml"
    p.write_text(text.replace(old, "").replace('graph_optimization_level = "all"', 'graph_optimization_level = "basic"'))
    assert load_target(p).ort_optimization == "basic"


def test_bundle_model_ort_has_integer_kernels_and_manifest_says_how_to_load_it(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(cnn), "--target", "arm64", "--calib", str(cnn_calib), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["ort_optimization_level"] == "extended" and m["model"]["ort_optimization_style"] == "fixed"
    assert m["target"]["session_options"]["graph_optimization_level"] == "all"
    config = (out / "required_operators_and_types.config").read_text()
    # Q/DQ fused into integer kernels in the shipped file (at 'basic' they stayed DequantizeLinear -> Conv -> QuantizeLinear)
    assert "QLinearConv" in config or "QGemm" in config, config
    res = json.loads(r.stdout)
    shipped = res["profile"]["shipped"]
    assert shipped["artifact"] == "model.ort"
    assert shipped["session"]["graph_optimization_level"] == m["target"]["session_options"]["graph_optimization_level"]
    assert shipped["shipped"] in ("int8", "mixed", "fp32") and shipped["fp32_ms"] > 0 and shipped["shipped_ms"] > 0
    # the export table's quantized latency is the shipped file, timed with the manifest's options
    q = res["profile"]["quantized"]
    assert q["artifact"].startswith("model.ort") and q["session"]["graph_optimization_level"] == "all"
    assert m["profile"]["quantized"]["artifact"].startswith("model.ort")
    assert res["quantization"]["speed"]["decision"] in ("quantized", "mixed", "fp32")
    side = json.loads((tmp_path / "b.profile.json").read_text())
    assert side["profile"]["shipped"]["ratio_vs_fp32"] > 0
    # edgeq profile BUNDLE times the bundle's model.ort with the session options its manifest records
    r = runner.invoke(app, ["profile", str(out), "--runs", "5", "--budget", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    (rep,) = json.loads(r.stdout)["results"]
    assert rep["model_file"] == "model.ort" and rep["session"]["graph_optimization_level"] == "all"


def test_npu_target_keeps_qdq_and_replays_cpu_fusions(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["bundle", str(cnn), "-o", str(out), "--target", "nnapi", "--data", str(cnn_calib)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["ort_optimization_style"] == "runtime"
    assert m["target"]["session_options"]["saved_runtime_optimizations"] is True
    from edgeq.bundles import runner as runner_mod

    so = runner_mod.session_options(m)
    assert so.get_session_config_entry("session.enable_saved_runtime_optimizations") == "1"
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0


def _fake_times(monkeypatch, table):
    """interleaved() answers from ``table`` (name -> ms); the decision logic is what is under test."""
    def fake(sessions, feed, opts=speed.SpeedOptions()):
        return {k: table[k] for k in sessions}
    monkeypatch.setattr(speed, "interleaved", fake)


def _export(runner, tmp_path, *extra):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, **cnn_data(32, seed=1))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(src), "--target", "cpu-x86_64", "--calib", str(cal), "-o", str(out), "--json", *extra])
    return r, out


@pytest.mark.slow
def test_int8_slower_than_fp32_ships_fp32_and_says_so(runner, tmp_path, monkeypatch):
    _fake_times(monkeypatch, {"fp32": 1.0, "int8": 1.5, "mixed": 1.4, "onnx": 1.0, "fp32 (shipped)": 1.1})
    monkeypatch.setattr(speed, "node_kernel_us", lambda app, path, feed, runs: {"conv1": 5.0 if "fp32" in str(path) else 9.0,
                                                                              "conv2": 1.0, "fc": 1.0})
    r, out = _export(runner, tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "none" and res["quantization"]["speed"]["decision"] == "fp32"
    assert res["profile"]["shipped"]["slower_nodes"] == ["conv1"]
    assert any(n.startswith("WARNING: shipping fp32") for n in res["notes"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["mode"] == "none" and "shipping fp32" in " ".join(m["quantization"]["notes"])
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops


@pytest.mark.slow
def test_nodes_with_slower_integer_kernels_stay_float(runner, tmp_path, monkeypatch):
    _fake_times(monkeypatch, {"fp32": 1.0, "int8": 1.3, "mixed": 0.9, "onnx": 0.9})
    monkeypatch.setattr(speed, "node_kernel_us", lambda app, path, feed, runs: {"conv1": 5.0 if "fp32" in str(path) else 9.0,
                                                                              "conv2": 4.0 if "fp32" in str(path) else 2.0})
    from edgeq.quantization.int8 import autocal

    chose: list[str] = []
    real_choose = autocal.choose

    def counting(*a, **k):
        res = real_choose(*a, **k)
        chose.append(res)
        return res

    monkeypatch.setattr(autocal, "choose", counting)
    r, out = _export(runner, tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    q = res["quantization"]
    assert q["speed"] == {"decision": "mixed", "slower_nodes": ["conv1"]}
    # the mix keeps the ranges --calibration auto chose: raced once, and the record describes the model shipped
    assert len(chose) == 1 and q["calibration"]["method"] == q["calibration"]["auto"]["chosen"], (chose, q["calibration"])
    assert any(f"chose {q['calibration']['method']} " in n for n in res["notes"])
    assert q["nodes_to_exclude"] == ["conv1"]
    assert "conv1" in q["kept_float"] and "conv2" not in q["kept_float"]
    g = onnx.load(str(out / "model.onnx")).graph
    conv1 = next(n for n in g.node if n.name == "conv1")
    producers = {o: n.op_type for n in g.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in conv1.input[1:])  # float weights
    assert res["profile"]["shipped"]["shipped"] == "mixed"


@pytest.mark.slow
def test_shipped_ort_slower_than_its_onnx_is_a_warning(runner, tmp_path, monkeypatch):
    _fake_times(monkeypatch, {"fp32": 1.0, "int8": 0.8, "onnx": 0.5})
    r, _ = _export(runner, tmp_path)
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["notes"]
    assert any(n.startswith("WARNING: the shipped model.ort runs 1.60x the time of the bundle's own model.onnx") for n in notes)


def test_fp32_bundle_is_timed_as_shipped_and_warned_about(runner, tmp_path, monkeypatch):
    # --quant none: no decision to make, but the shipped model.ort is still timed against its own model.onnx
    _fake_times(monkeypatch, {"fp32": 1.0, "fp32 (shipped)": 2.0, "onnx": 1.0})
    r, _ = _export(runner, tmp_path, "--quant", "none")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["profile"]["shipped"]["shipped"] == "fp32" and res["profile"]["shipped"]["ratio_vs_model_onnx"] == 2.0
    assert any(n.startswith("WARNING: the shipped model.ort runs 2.00x") for n in res["notes"])


@pytest.mark.slow
def test_fast_enough_int8_is_kept_without_warnings(runner, tmp_path, monkeypatch):
    _fake_times(monkeypatch, {"fp32": 1.0, "int8": 1.04, "onnx": 1.0})  # inside the noise margin
    r, _ = _export(runner, tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "int8-static" and res["quantization"]["speed"]["decision"] == "quantized"
    assert not [n for n in res["notes"] if "WARNING" in n]


def test_interleaved_timing_orders_models_by_cost():
    class Fake:  # a session whose run costs a known time
        def __init__(self, s):
            self.s = s

        def get_inputs(self):
            return []

        def run(self, names, feed):
            import time

            end = time.perf_counter() + self.s
            while time.perf_counter() < end:
                pass

    ms = speed.interleaved({"a": Fake(0.0004), "b": Fake(0.0012)}, {}, speed.SpeedOptions(rounds=5, round_s=0.01))
    assert 2.0 < ms["b"] / ms["a"] < 4.5


def test_source_node_names():
    assert speed.source_node("fused node_linear") == "node_linear"
    assert speed.source_node("node_Conv_26_token_4") == "node_Conv_26"
    assert speed.source_node("conv1") == "conv1"


@pytest.mark.slow
@pytest.mark.parametrize("prefer", ["fastest"])
def test_prefer_gate_times_the_shipped_files(runner, tmp_path, monkeypatch, prefer):
    seen = []
    real = speed.shipped_ort

    def spy(model, target, folder):
        seen.append(folder.name)
        return real(model, target, folder)

    monkeypatch.setattr(speed, "shipped_ort", spy)
    r, _ = _export(runner, tmp_path, "--prefer", prefer, "--max-drop", "0.5")
    assert r.exit_code == 0, r.output
    gate = json.loads(r.stdout)["quantization"]["gate"]
    assert gate["latency_of"].startswith("each candidate's model.ort")
    assert {f"cand{i}" for i in range(sum(c["error"] is None for c in gate["candidates"][1:]))} <= set(seen)
