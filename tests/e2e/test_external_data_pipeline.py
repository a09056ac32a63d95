"""Models over the single-file threshold keep their weights in ONNX external data through every stage.

``EDGEQ_EXTERNAL_DATA_BYTES`` lowers the threshold (default just under 2 GiB), so tiny models
take the same path a 2 GiB model takes: optimize with the weights left on disk, quantize,
verify, profile and bundle. Each case is compared with the same model run as one file:
the external-data path must give the same numbers, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeq.cli import app
from edgeq.errors import ModelError
from edgeq.core.onnxutil import EXTERNAL_DATA_ENV, artifact_from, load_model, save_model
from edgeq.core.optimization import optimize
from edgeq.core.targets import load_target

from tests.large_models import make_linear_stack
from tests.models import make_mlp, snapshot

WIDTHS = (64, 128, 10)
SMALL = "4096"  # bytes: every weight of the tiny models is over it


def _source(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return make_linear_stack(d / "stack.onnx", WIDTHS)


def _calib(tmp_path: Path, n: int = 64) -> Path:
    """Inputs on which the fp32 model's top-1 class is clear (a random net has many near ties)."""
    x = np.random.default_rng(1).standard_normal((8 * n, WIDTHS[0]), dtype=np.float32)
    y = np.sort(_run(tmp_path / "src" / "stack.onnx", x), axis=1)
    keep = np.sort(np.argsort(y[:, -2] - y[:, -1])[:n])
    p = tmp_path / "calib.npz"
    np.savez(p, x=x[keep])
    return p


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _locations(path: Path) -> set[str]:
    m = onnx.load(str(path), load_external_data=False)
    return {
        e.value
        for t in onnx.external_data_helper._get_all_tensors(m)
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def test_save_model_switches_to_one_external_data_file_at_the_threshold(tmp_path, monkeypatch):
    model = load_model(make_mlp(tmp_path / "mlp.onnx"))
    w1 = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    out = tmp_path / "out"
    out.mkdir()
    save_model(model, out / "one.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["one.onnx"]
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "1024")
    model = load_model(tmp_path / "mlp.onnx")
    save_model(model, out / "two.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["one.onnx", "two.onnx", "two.onnx.data"]
    assert _locations(out / "two.onnx") == {"two.onnx.data"}  # relative, beside the model
    back = load_model(out / "two.onnx")  # locations checked, weights read from the data file
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(back.graph.initializer[0]), w1)
    # saving again over it does not append to the old data file
    size = (out / "two.onnx.data").stat().st_size
    save_model(load_model(tmp_path / "mlp.onnx"), out / "two.onnx")
    assert (out / "two.onnx.data").stat().st_size == size


def test_a_bad_threshold_is_one_clear_error(runner, tmp_path, monkeypatch):
    src = _source(tmp_path)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "1GB")
    r = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "out"), "--quant", "int8-dynamic", "--no-profile"])
    assert r.exit_code == 2, r.output
    assert EXTERNAL_DATA_ENV in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_optimize_leaves_the_weights_on_disk(tmp_path, monkeypatch):
    src = _source(tmp_path)
    before = snapshot(src.parent)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    out = tmp_path / "work"
    out.mkdir()
    art, notes = optimize(artifact_from(src), load_target("cpu-x86_64"), out / "fp32.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["fp32.onnx", "fp32.onnx.data"]  # no staging left
    assert _locations(out / "fp32.onnx") == {"fp32.onnx.data"}
    assert (out / "fp32.onnx").stat().st_size < 4096  # the graph only
    assert any("external data" in n for n in notes), notes
    assert snapshot(src.parent) == before
    x = np.random.default_rng(3).standard_normal((5, WIDTHS[0]), dtype=np.float32)
    np.testing.assert_allclose(_run(out / "fp32.onnx", x), _run(src, x), rtol=1e-5, atol=1e-6)
    assert art.io.inputs[0].name == "x" and art.opset == 17


MODES = {
    "int8-dynamic": lambda ops, m: "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops,
    "int8-static": lambda ops, m: ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4,
    "int4": lambda ops, m: ops.count("MatMulNBits") == 2,
    "fp16": lambda ops, m: any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer),
    "none": lambda ops, m: ops.count("MatMul") == 2 or ops.count("Gemm") == 2,
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_export_with_external_data_matches_the_single_file_run(runner, tmp_path, monkeypatch, mode):
    src = _source(tmp_path)
    calib = _calib(tmp_path)
    before = snapshot(src.parent)
    args = ["--calib", str(calib), "--quant", mode, "--json"] + (["--block-size", "32"] if mode == "int4" else [])
    r1 = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "one"), *args])
    assert r1.exit_code == 0, r1.output
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    r2 = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "ext"), *args])
    assert r2.exit_code == 0, r2.output
    one, ext = json.loads(r1.stdout), json.loads(r2.stdout)
    assert snapshot(src.parent) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["src", "calib.npz", "one", "ext", "one.profile.json", "ext.profile.json"]
    )
    # structure: the single-file bundle is self-contained, the other one names its data file
    assert not (tmp_path / "one" / "model.onnx.data").exists() and _locations(tmp_path / "one" / "model.onnx") == set()
    bundle = tmp_path / "ext"
    assert _locations(bundle / "model.onnx") == {"model.onnx.data"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["onnx_external_data"] == "model.onnx.data"
    data = (bundle / "model.onnx.data").read_bytes()
    assert manifest["files"]["model.onnx.data"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert any("external data" in n for n in ext["notes"]) and not any("external data" in n for n in one["notes"])
    m = load_model(bundle / "model.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert MODES[mode](ops, m), ops
    # numbers: verified, profiled, and the same model as the single-file run, bit for bit
    assert ext["verify"]["passed"] and ext["verify"]["samples"] == 64
    assert ext["verify"]["outputs"] == one["verify"]["outputs"]
    assert ext["profile"]["quantized"]["p50_ms"] > 0 and ext["profile"]["fp32"]["p50_ms"] > 0
    assert ext["size"]["fp32_bytes"] == one["size"]["fp32_bytes"] or abs(ext["size"]["fp32_bytes"] - one["size"]["fp32_bytes"]) < 4096
    x = np.load(calib)["x"]
    np.testing.assert_array_equal(_run(bundle / "model.onnx", x), _run(tmp_path / "one" / "model.onnx", x))
    # the bundle's own check (golden pairs on model.ort) passes
    r = runner.invoke(app, ["verify", str(bundle)])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_quantize_command_writes_the_model_and_its_data_file(runner, tmp_path, monkeypatch):
    src = _source(tmp_path)
    calib = _calib(tmp_path)
    r1 = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "a" / "q.onnx"), "--quant", "int8-static", "--calib", str(calib)])
    assert r1.exit_code == 0, r1.output
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    out = tmp_path / "b" / "q.onnx"
    r2 = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--quant", "int8-static", "--calib", str(calib)])
    assert r2.exit_code == 0, r2.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]  # no temporaries left
    assert _locations(out) == {"q.onnx.data"}
    load_model(out)  # the data file passes the location and range checks
    x = np.load(calib)["x"]
    np.testing.assert_array_equal(_run(out, x), _run(tmp_path / "a" / "q.onnx", x))
    # verify and profile open it from its path (weights read from q.onnx.data)
    r = runner.invoke(app, ["verify", str(out), "--reference", str(src), "--data", str(calib), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["samples"] == 64 and rep["outputs"][0]["cosine"] > 0.99
    r = runner.invoke(app, ["profile", str(out), "--runs", "5", "--budget", "1", "--json"])
    assert r.exit_code == 0, r.output
    prof = json.loads(r.stdout)["results"][0]
    total = sum(p.stat().st_size for p in out.parent.iterdir())
    assert prof["file_bytes"] == total and prof["p50_ms"] > 0
    # moved elsewhere together, it still loads: the location is relative
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in out.parent.iterdir():
        os.replace(p, moved / p.name)
    np.testing.assert_array_equal(_run(moved / "q.onnx", x), _run(tmp_path / "a" / "q.onnx", x))


def test_escaping_external_data_is_still_refused_on_the_large_path(runner, tmp_path, monkeypatch):
    from tests.robustness.failsafe import assert_fails_safely, externalize

    src = _source(tmp_path)
    calib = _calib(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(np.zeros(WIDTHS[1], np.float32).tobytes())
    externalize(src, "b0", "../outside/secret.bin")
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    for cmd in (["export", src, "-o", tmp_path / "out", "--calib", calib],
                ["quantize", src, "-o", tmp_path / "q.onnx", "--quant", "int8-dynamic"]):
        out = Path(cmd[cmd.index("-o") + 1])
        assert_fails_safely(runner, cmd, out, "outside the model folder")
    with pytest.raises(ModelError, match="outside the model folder"):
        optimize(_art(src), load_target("cpu-x86_64"), tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.onnx.data").exists()


def _art(src: Path):
    from edgeq.core.artifact import Artifact, IoSpec

    return Artifact(path=src, io=IoSpec(inputs=(), outputs=()), opset=17)


def test_a_tensor_over_2gib_is_refused_in_one_line(runner, tmp_path):
    # a 2 GiB + 4 MiB tensor in a sparse file: refused from the sizes alone, nothing read
    src = _source(tmp_path)
    m = onnx.load(str(src), load_external_data=False)
    big = 2**29 + 2**20
    t = onnx.TensorProto(name="huge", data_type=onnx.TensorProto.FLOAT, dims=[big])
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "huge.bin"), ("offset", "0"), ("length", str(4 * big))):
        e = t.external_data.add()
        e.key, e.value = k, v
    m.graph.initializer.append(t)
    src.write_bytes(m.SerializeToString())
    with open(src.parent / "huge.bin", "wb") as f:
        f.truncate(4 * big)
    if os.stat(src.parent / "huge.bin").st_blocks * 512 > 2**27:
        pytest.skip("this filesystem has no sparse files")
    from tests.robustness.failsafe import assert_fails_safely

    line = assert_fails_safely(runner, ["export", src, "-o", tmp_path / "out", "--calib", _calib(tmp_path)], tmp_path / "out",
                               "tensor 'huge'", "over the 2 GiB limit for one ONNX tensor")
    assert "split" in line
    with pytest.raises(ModelError, match="2 GiB limit for one ONNX tensor"):
        load_model(src)


def linear_stack_module():
    """A torch factory for the CLI (``tests.e2e.test_external_data_pipeline:linear_stack_module``)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def test_torch_export_over_the_threshold_goes_through_with_external_data(runner, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((16, 64), dtype=np.float32))
    out = tmp_path / "b"
    r = runner.invoke(app, [
        "export", "tests.e2e.test_external_data_pipeline:linear_stack_module", "--example-shape", "input=1x64",
        "--quant", "int8-dynamic", "--calib", str(calib), "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["export"]["passed"] and res["export"]["external_data"] is True
    assert res["export"]["outputs"][0]["max_abs"] < 1e-4
    assert any("weights written as ONNX external data" in n for n in res["notes"])
    assert any("weights kept in ONNX external data" in n for n in res["notes"])
    assert res["verify"]["passed"] and res["verify"]["outputs"][0]["cosine"] > 0.99
    assert _locations(out / "model.onnx") == {"model.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c.npz"]


@pytest.mark.slow
def test_quantize_gate_pick_keeps_its_external_data(tmp_path, monkeypatch):
    # --prefer quantizes three candidates into the scratch folder and copies the pick:
    # a large pick's data file must come along under the output's own name
    from edgeq.quantization import quantize
    from edgeq.core.data import load_samples
    from edgeq.quantization.spec import QuantSpec

    src = _source(tmp_path)
    calib = _calib(tmp_path)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, SMALL)
    work = tmp_path / "work"
    work.mkdir()
    opt, _ = optimize(artifact_from(src), load_target("cpu-x86_64"), work / "fp32.onnx")
    data = load_samples(calib, opt.io)
    spec = QuantSpec(mode="int8-static")
    res = quantize(opt, spec, work / "q.onnx", data=data, prefer="accurate", budget=0.05)
    assert sorted(p.name for p in work.iterdir()) == ["fp32.onnx", "fp32.onnx.data", "q.onnx", "q.onnx.data"]
    assert _locations(work / "q.onnx") == {"q.onnx.data"}
    gate = res.details["gate"]
    assert gate["picked"] != "fp32" and all(c["bytes"] > 4096 for c in gate["candidates"] if c["bytes"])
    x = np.load(calib)["x"]
    np.testing.assert_allclose(_run(work / "q.onnx", x), _run(src, x), atol=0.5)
    assert np.mean(_run(work / "q.onnx", x).argmax(1) == _run(src, x).argmax(1)) >= 0.95
