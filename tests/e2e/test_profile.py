"""edgeq profile: timing, memory, per-op breakdown, placement (measured and estimated), variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import app
from edgeq.profiling.profiler import MeasureOptions, load_input, measure, resolve_backend
from edgeq.core.targets import load_target

from tests.models import cnn_data, make_cnn

FAST = ["--runs", "20", "--warmup", "2", "--budget", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """fp32 (dynamic and fixed batch) and static QDQ variants of the tiny CNN, built once."""
    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.quantization import quantize

    d = tmp_path_factory.mktemp("models")
    fp32 = make_cnn(d / "cnn.onnx", batch=1)
    dyn = make_cnn(d / "cnn_dyn.onnx")
    calib = d / "calib.npz"
    np.savez(calib, **cnn_data(16, seed=1))
    art = artifact_from(fp32)
    spec = load_target("qnn-htp").quant
    q = quantize(art, spec, d / "cnn_int8.onnx", data=load_samples(calib, art.io))
    art_dyn = artifact_from(dyn)
    qd = quantize(art_dyn, spec, d / "cnn_dyn_int8.onnx", data=load_samples(calib, art_dyn.io))
    return {"fp32": fp32, "dyn": dyn, "int8": q.artifact.path, "dyn_int8": qd.artifact.path, "calib": calib}


def _profile(runner, *args):
    r = runner.invoke(app, ["profile", *map(str, args)])
    return r


def test_profile_reports_cold_start_steady_state_memory_and_ops(runner, models):
    r = _profile(runner, models["fp32"], models["int8"], *FAST, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["target"] == "cpu-x86_64" and len(res["results"]) == 2
    for rep, path in zip(res["results"], (models["fp32"], models["int8"])):
        assert rep["file_bytes"] == path.stat().st_size
        c = rep["cold_start"]
        assert c["session_ms"] > 0 and c["first_run_ms"] > 0
        assert c["total_ms"] == pytest.approx(c["session_ms"] + c["first_run_ms"], rel=1e-6)
        s = rep["steady"]
        assert s["runs"] >= 20 and len(rep["times_ms"]) == s["runs"]
        assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["p50_ci_low_ms"] <= s["p50_ms"] <= s["p50_ci_high_ms"]
        assert s["cv"] == pytest.approx(s["std_ms"] / s["mean_ms"])
        assert np.median(rep["times_ms"]) == pytest.approx(s["p50_ms"], abs=1e-5)
        m = rep["memory"]
        assert m["rss_after_session_bytes"] > m["rss_before_bytes"] > 0
        assert m["peak_bytes"] >= m["session_bytes"] > 0
        # per-op breakdown from onnxruntime's profiler
        ops = rep["ops"]
        assert ops["profiled_runs"] >= 2
        assert sum(o["share"] for o in ops["op_types"]) == pytest.approx(1.0, abs=1e-6)
        kinds = {o["op_type"] for o in ops["op_types"]}  # at the target's level 'all': FusedConv, NchwcConv, QLinearConv...
        assert any("Conv" in k for k in kinds) and any("Gemm" in k for k in kinds), kinds
        assert ops["top_nodes"][0]["share"] >= ops["top_nodes"][-1]["share"]
        # placement measured by onnxruntime: a CPU-only target keeps everything on the CPU
        pl = rep["placement"]
        assert pl["kind"] == "measured" and pl["accelerator"] is None
        assert [p["provider"] for p in pl["providers"]] == ["CPUExecutionProvider"]
        assert pl["providers"][0]["node_share"] == 1.0
    names = {o["node"] for o in res["results"][0]["ops"]["top_nodes"]}
    # the target's level 'all' on x86 renames fused convolutions (NCHWc, named after their Relu outputs)
    assert "fc" in names and {n.removesuffix("_nchwc") for n in names} & {"conv1", "conv2", "r1", "r2"}, names
    assert res["results"][1]["ops"]["nodes_profiled"] > res["results"][0]["ops"]["nodes_profiled"]  # Q/DQ nodes


def test_variant_table_has_ratios_to_first(runner, models):
    r = _profile(runner, models["fp32"], models["int8"], *FAST)
    assert r.exit_code == 0, r.output
    for word in ("cold start", "p99", "peak mem", "vs first", "1.00", "time by op type", "top nodes"):
        assert word in r.stdout


def test_memory_is_attributable_to_the_model(tmp_path, models):
    """A model with 24 MB of weights adds about that much RSS; the tiny CNN adds far less."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3000, 2000)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2000])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    big = tmp_path / "big.onnx"
    onnx.save(m, str(big))
    tg = load_target("cpu-x86_64")
    be = resolve_backend(tg)
    opts = MeasureOptions(runs=10, warmup=1, budget_s=0.5, profile_runs=0)
    rb = measure(load_input(big), tg, be, opts)
    rs = measure(load_input(models["fp32"]), tg, be, opts)
    assert rb["memory"]["session_bytes"] > 0.9 * w.nbytes
    assert rb["memory"]["peak_bytes"] > 0.9 * w.nbytes
    assert rs["memory"]["peak_bytes"] < rb["memory"]["peak_bytes"] - 0.8 * w.nbytes
    assert rb["ops"] is None  # profile_runs=0: no per-op pass


def test_unstable_measurement_says_so(models):
    tg = load_target("cpu-x86_64")
    inp = load_input(models["fp32"])
    rep = measure(inp, tg, resolve_backend(tg), MeasureOptions(runs=10, warmup=1, budget_s=0.3, stable_rel=0.0, profile_runs=0))  # 0: never stable (a 7 us model at timer resolution has a CI of width 0)
    assert rep["stable"] is False and rep["steady"]["stable"] is False
    assert "UNSTABLE" in rep["note"]
    from edgeq.profiling.worker import MAX_RUNS

    assert rep["steady"]["elapsed_s"] >= 0.3 or rep["steady"]["runs"] >= MAX_RUNS  # unstable: timed until the budget or the run cap
    ok = measure(inp, tg, resolve_backend(tg), MeasureOptions(runs=30, warmup=1, budget_s=5, stable_rel=2.0, profile_runs=0))
    assert ok["stable"] is True and ok["runs"] == 30  # stable at the first check: stops early
    assert "UNSTABLE" not in ok["note"]


@pytest.mark.slow
def test_profile_bundle_uses_model_ort_and_golden_inputs(runner, models, tmp_path):
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(models["fp32"]), "-o", str(out), "--target", "arm64", "--calib", str(models["calib"]), "--no-profile"])
    assert r.exit_code == 0, r.output
    r = _profile(runner, out, *FAST, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["results"][0]
    assert json.loads(r.stdout)["target"] == "arm64"  # the bundle's own target
    assert rep["model_file"] == "model.ort" and rep["bundle"] == str(out)
    assert rep["file_bytes"] == (out / "model.ort").stat().st_size
    assert "golden" in rep["inputs"]
    assert rep["device_measurement"] is False and "not device timing" in rep["note"]
    r = _profile(runner, out, *FAST, "--data", models["calib"], "--json")  # other inputs than the golden ones
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["inputs"] == str(models["calib"])
    # a tampered bundle is refused
    (out / "model.ort").write_bytes((out / "model.ort").read_bytes() + b"x")
    r = _profile(runner, out, *FAST)
    assert r.exit_code == 2 and "corrupt" in r.stderr


def test_nnapi_is_a_labelled_static_estimate_with_reasons(runner, models, tmp_path):
    r = _profile(runner, models["fp32"], models["dyn"], "--target", "nnapi", "--json")
    assert r.exit_code == 0, r.output
    fixed, dyn = json.loads(r.stdout)["results"]
    for rep in (fixed, dyn):
        assert rep["timed"] is False and rep["p50_ms"] if "p50_ms" in rep else True
        assert rep["placement"]["kind"] == "estimate" and "did not run" in rep["placement"]["basis"]
    assert fixed["placement"]["accel_node_share"] == 1.0 and fixed["placement"]["accel_partitions"] == 1
    assert fixed["placement"]["fallback"] == []
    assert dyn["placement"]["accel_node_share"] == 0.0 and len(dyn["placement"]["fallback"]) == 7
    assert all("dynamic shape" in f["reason"] and "x [N, 1, 8, 8]" in f["reason"] for f in dyn["placement"]["fallback"][:1])
    # an unsupported op in the middle splits the accelerator's work in two partitions; int64 activations fall back
    m = onnx.load(str(models["fp32"]))
    nodes = list(m.graph.node)
    i = [n.name for n in nodes].index("relu1")
    nodes[i] = helper.make_node("Erf", ["c1"], ["r1"], name="erf1")
    cast = [helper.make_node("Cast", ["y0"], ["y64"], to=TensorProto.INT64, name="to_int64"),
            helper.make_node("Cast", ["y64"], ["y"], to=TensorProto.FLOAT, name="to_float")]
    nodes[-1].output[0] = "y0"
    del m.graph.node[:]
    m.graph.node.extend(nodes + cast)
    odd = tmp_path / "odd.onnx"
    onnx.save(m, str(odd))
    r = _profile(runner, odd, "--target", "nnapi", "--json")
    assert r.exit_code == 0, r.output
    pl = json.loads(r.stdout)["results"][0]["placement"]
    why = {f["node"]: f["reason"] for f in pl["fallback"]}
    assert set(why) == {"erf1 (Erf)", "to_int64 (Cast)", "to_float (Cast)"}
    assert "op Erf is not in nnapi's supported ops" in why["erf1 (Erf)"]
    assert "dtype int64" in why["to_int64 (Cast)"]
    assert pl["accel_partitions"] == 2
    assert pl["accel_node_share"] == pytest.approx(6 / 9) and pl["nodes_total"] == 9
    # the human table marks it as an estimate
    r = _profile(runner, odd, "--target", "nnapi")
    assert "ESTIMATE" in r.stdout and "not timed" in r.stdout


def test_min_accel_coverage_fails_below_threshold(runner, models):
    r = _profile(runner, models["dyn"], "--target", "nnapi", "--min-accel-coverage", "0.95")
    assert r.exit_code == 1 and "coverage below 95%" in r.stderr and "0.0% of nodes" in r.stderr
    r = _profile(runner, models["fp32"], "--target", "nnapi", "--min-accel-coverage", "0.95")
    assert r.exit_code == 0, r.output
    r = _profile(runner, models["fp32"], *FAST, "--min-accel-coverage", "0.95")  # cpu target: nothing to cover
    assert r.exit_code == 2 and "no accelerator" in r.stderr
    r = _profile(runner, models["fp32"], "--target", "nnapi", "--min-accel-coverage", "95")
    assert r.exit_code == 2


def test_reference_gives_numerics_and_per_layer_error(runner, models):
    r = _profile(runner, models["int8"], *FAST, "--reference", models["fp32"], "--data", models["calib"], "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["results"][0]
    vs = rep["numerics"]["vs_reference"]
    assert vs["passed"] and vs["outputs"][0]["cosine"] > 0.99 and vs["outputs"][0]["max_abs"] > 0
    layers = {e["tensor"]: e for e in rep["layer_errors"]}
    assert {"r1", "r2", "y"} <= set(layers)
    assert all(0 < e["rel_rms_error"] < 0.1 for e in layers.values())
    # the fp32 model against itself has no error at any layer
    r = _profile(runner, models["fp32"], *FAST, "--reference", models["fp32"], "--json")
    rep = json.loads(r.stdout)["results"][0]
    assert rep["layer_errors"] and all(e["rel_rms_error"] == 0 for e in rep["layer_errors"])


def test_openvino_without_environment_is_a_clear_error(runner, models, monkeypatch, tmp_path):
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has OpenVINO built in")
    monkeypatch.delenv("EDGEQ_OPENVINO_PYTHON", raising=False)
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))
    r = _profile(runner, models["fp32"], "--target", "openvino-cpu")
    assert r.exit_code == 2 and "--setup-runtime" in r.stderr and "EDGEQ_OPENVINO_PYTHON" in r.stderr
    assert not (tmp_path / "cache").exists()  # nothing created without asking
