"""The single-stage commands: targets, inspect, quantize, verify, profile, bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx

from edgeq.cli import app
from tests.models import cnn_data, make_cnn, snapshot


def test_targets_lists_every_target_one_line_each(runner):
    r = runner.invoke(app, ["targets", "--json"])
    assert r.exit_code == 0, r.output
    names = {t["name"] for t in json.loads(r.stdout)}
    assert {"cpu-x86_64", "arm64", "qnn-htp", "nnapi", "coreml", "openvino-npu"} <= names
    r = runner.invoke(app, ["targets"])
    lines = r.stdout.splitlines()
    assert len(lines) == len(names) + 1  # a header, then one line per target
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(names)
    assert any(ln.startswith("arm64 ") and "Xnnpack > CPU" in ln for ln in lines)


def test_targets_show(runner):
    r = runner.invoke(app, ["targets", "show", "qnn-htp", "--json"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert t["providers"][0]["name"] == "QNNExecutionProvider"
    assert t["providers"][0]["options"]["backend_type"] == "htp"
    assert t["static_shapes"] is True
    assert t["quant"]["activation_type"] in ("uint8", "uint16")
    assert t["opset"]["min"] <= t["opset"]["preferred"] <= t["opset"]["max"]
    r = runner.invoke(app, ["targets", "show", "arm64"])
    assert "XnnpackExecutionProvider" in r.stdout and "tolerances" in r.stdout
    r = runner.invoke(app, ["targets", "show", "nope"])
    assert r.exit_code == 2 and "unknown target" in r.stderr


def test_inspect(runner, cnn, tmp_path):
    r = runner.invoke(app, ["inspect", str(cnn), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 1, 8, 8]}]
    assert d["outputs"][0]["shape"] == ["N", 10]
    assert d["opset"] == 17
    assert d["ops"] == {"Conv": 2, "Relu": 2, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1}
    assert d["parameters"] == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 10 * 16 + 10
    assert d["parameter_bytes"] == 4 * d["parameters"]
    assert d["quantized"] is False
    r = runner.invoke(app, ["inspect", str(cnn)])
    assert "[N, 1, 8, 8]" in r.stdout and "Conv" in r.stdout


def test_quantize_then_inspect_says_quantized(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(cnn), "-o", str(out), "--calib", str(cnn_calib), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quantization"]["coverage"]["nodes_quantized"] == 3
    d = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert d["quantized"] is True and d["ops"]["QuantizeLinear"] >= 3
    fp32 = json.loads(runner.invoke(app, ["inspect", str(cnn), "--json"]).stdout)
    assert d["parameter_bytes"] < 0.5 * fp32["parameter_bytes"]  # int8 weights (+ int32 biases, scales)
    # refuses to overwrite without --force, file unchanged
    before = out.read_bytes()
    r = runner.invoke(app, ["quantize", str(cnn), "-o", str(out), "--calib", str(cnn_calib)])
    assert r.exit_code == 2 and out.read_bytes() == before


def test_verify_models_pass_and_fail(runner, cnn, cnn_calib, tmp_path):
    q = tmp_path / "q.onnx"
    assert runner.invoke(app, ["quantize", str(cnn), "-o", str(q), "--calib", str(cnn_calib)]).exit_code == 0
    r = runner.invoke(app, ["verify", str(q), "--reference", str(cnn), "--data", str(cnn_calib), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["outputs"][0]["cosine"] > 0.99
    # a different model (other weights) must fail verification with exit 1
    other = make_cnn(tmp_path / "other.onnx", seed=5)
    r = runner.invoke(app, ["verify", str(other), "--reference", str(cnn), "--data", str(cnn_calib)])
    assert r.exit_code == 1
    assert "tolerances" in r.stderr


def test_profile_compares_models(runner, cnn, cnn_calib, tmp_path):
    q = tmp_path / "q.onnx"
    assert runner.invoke(app, ["quantize", str(cnn), "-o", str(q), "--calib", str(cnn_calib)]).exit_code == 0
    r = runner.invoke(app, ["profile", str(cnn), str(q), "--runs", "20", "--warmup", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert len(res) == 2 and all(x["runs"] >= 10 and x["p50_ms"] > 0 for x in res)
    assert res[1]["file_bytes"] < res[0]["file_bytes"]
    # an accelerator that is not here is never timed on a CPU stand-in
    r = runner.invoke(app, ["profile", str(cnn), "--target", "nnapi", "--json"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)["results"][0]
    assert est["timed"] is False and est["device_measurement"] is False and "p50_ms" not in est
    assert est["placement"]["kind"] == "estimate"


def test_bundle_command_and_bundle_verify(runner, cnn, cnn_calib, tmp_path):
    q = tmp_path / "q.onnx"
    assert runner.invoke(app, ["quantize", str(cnn), "-o", str(q), "--calib", str(cnn_calib)]).exit_code == 0
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["bundle", str(q), "-o", str(out), "--data", str(cnn_calib), "--reference", str(cnn), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verify"]["passed"]
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["passed"] and len(res["pairs"]) == 3 and res["model"] == "model.ort"
    # the golden outputs are the model's: running the bundle's model reproduces them
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.load(out / "golden/000/in_0.npy")})[0]
    np.testing.assert_allclose(got, np.load(out / "golden/000/out_0.npy"), atol=1e-3)


def test_bundle_verify_detects_tampering(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "bundle"
    assert runner.invoke(app, ["export", str(cnn), "-o", str(out), "--calib", str(cnn_calib), "--no-profile"]).exit_code == 0
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "model.onnx").write_bytes(bytes(data))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 2 and "checksum mismatch: model.onnx" in r.stderr
    (out / "model.onnx").unlink()
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 2 and "missing" in r.stderr


def test_golden_out_of_tolerance_is_exit_1(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "bundle"
    assert runner.invoke(app, ["export", str(cnn), "-o", str(out), "--calib", str(cnn_calib), "--no-profile"]).exit_code == 0
    # change a golden output and its checksum consistently: the files check, the numbers do not
    import hashlib

    gold = out / "golden/001/out_0.npy"
    arr = np.load(gold)
    np.save(gold, arr + 1.0)
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["golden/001/out_0.npy"] = {"sha256": hashlib.sha256(gold.read_bytes()).hexdigest(), "bytes": gold.stat().st_size}
    (out / "manifest.json").write_text(json.dumps(m))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "001" in r.stderr


def test_run_py_standalone(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "bundle"
    assert runner.invoke(app, ["export", str(cnn), "-o", str(out), "--calib", str(cnn_calib), "--no-profile"]).exit_code == 0
    # the runner in the bundle needs only numpy + onnxruntime: run it with edgeq not importable
    p = subprocess.run([sys.executable, "-I", str(out / "run.py"), "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["passed"] is True


def test_calibration_folder_of_npy_and_npz(runner, cnn, tmp_path):
    x = cnn_data(12)["x"]
    d1 = tmp_path / "npy"
    d1.mkdir()
    for i in range(12):
        np.save(d1 / f"{i:03d}.npy", x[i])  # one sample per file, no batch axis
    d2 = tmp_path / "npz"
    d2.mkdir()
    for i in range(3):
        np.savez(d2 / f"{i}.npz", x=x[4 * i : 4 * i + 4])  # batches along the batch axis
    outs = []
    for d in (d1, d2):
        q = tmp_path / f"{d.name}.onnx"
        r = runner.invoke(app, ["quantize", str(cnn), "-o", str(q), "--calib", str(d), "--json"])
        assert r.exit_code == 0, r.output
        assert "12 sample(s)" in " ".join(json.loads(r.stdout)["quantization"]["notes"])
        outs.append(q.read_bytes())
    assert outs[0] == outs[1]  # same samples, same calibration, same bytes


def test_failed_export_leaves_previous_bundle_whole(runner, cnn, cnn_calib, tmp_path):
    out = tmp_path / "b"
    assert runner.invoke(app, ["export", str(cnn), "-o", str(out), "--calib", str(cnn_calib), "--no-profile"]).exit_code == 0
    before = snapshot(out)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 1, 8, 8), np.float64))
    r = runner.invoke(app, ["export", str(cnn), "-o", str(out), "--calib", str(bad), "--force"])
    assert r.exit_code == 2
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", "bad.npz", "calib.npz", "cnn.onnx"])  # --no-profile: no sidecar


def test_verify_failure_still_writes_bundle_and_exits_1(runner, cnn, cnn_calib, tmp_path):
    # a target file with impossible tolerances: the check runs and fails
    src = (__import__("edgeq.core.targets", fromlist=["targets_dir"]).targets_dir() / "cpu-x86_64.toml").read_text()
    strict = tmp_path / "strict.toml"
    strict.write_text(src.replace('name = "cpu-x86_64"', 'name = "strict"').replace("min_cosine = 0.99", "min_cosine = 0.9999999"))
    out = tmp_path / "b"
    # cosine decides only where the output's task is regression (declared here): a classifier is judged by top-1
    appt = tmp_path / "app.toml"
    appt.write_text('[outputs.y]\ntask = "regression"\n')
    r = runner.invoke(app, ["export", str(cnn), "--target", str(strict), "-o", str(out), "--calib", str(cnn_calib), "--no-profile",
                            "--preprocess", str(appt)])
    assert r.exit_code == 1, r.output
    assert "cosine" in r.stderr and "strict" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["verify"]["passed"] is False


def test_targets_ship_inside_the_wheel(tmp_path):
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(root)],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next(tmp_path.glob("edgeq-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for t in ("arm64", "cpu-x86_64", "qnn-htp", "nnapi", "coreml", "openvino-npu"):
        assert f"edgeq/targets/{t}.toml" in names
    # the test and benchmark fixtures stay out of the wheel
    assert not [n for n in names if n.split("/")[0] in ("fixtures", "tests", "tools")]


def test_target_with_x86_only_ort_level_is_refused(runner, tmp_path):
    from edgeq.core.targets import targets_dir

    src = (targets_dir() / "arm64.toml").read_text()
    bad = tmp_path / "arm-all.toml"
    assert 'ort_optimization = "extended"' in src
    bad.write_text(src.replace('ort_optimization = "extended"', 'ort_optimization = "all"'))
    r = runner.invoke(app, ["targets", "show", str(bad)])
    assert r.exit_code == 2 and "NCHWc" in r.stderr and "extended" in r.stderr
    ok = tmp_path / "x86-all.toml"
    ok.write_text((targets_dir() / "cpu-x86_64.toml").read_text().replace('ort_optimization = "extended"', 'ort_optimization = "all"'))
    assert runner.invoke(app, ["targets", "show", str(ok)]).exit_code == 0
