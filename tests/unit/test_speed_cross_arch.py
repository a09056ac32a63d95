"""The speed decision for a target whose CPU is not this host's (``--target arm64`` on x86_64): the host's
timings never drop quantization; the table, --json and the manifest say where the speed was measured and
what the host found. On the same architecture, a slower int8 model.ort still ships fp32 (unchanged).

Timings are replaced by fixed figures (int8 at twice fp32's time): these tests check the decision and
what is said about it, not the clock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.cli import app
from edgeq.core.onnxutil import artifact_from, copy_model
from edgeq.core.targets import load_target
from edgeq.quantization.int8.quantizer import QuantResult
from edgeq.quantization.selection import speed
from edgeq.quantization.spec import QuantSpec
from tests.models import cnn_data, make_cnn


def _int8_twice_fp32(sessions, feed, opts=None):
    return {k: 1.0 if k == "fp32" else 2.0 for k in sessions}


@pytest.fixture
def x86_host_int8_slower(monkeypatch):
    monkeypatch.setattr(speed, "host_arch", lambda: "x86_64", raising=False)  # the arch this test stands on
    monkeypatch.setattr(speed, "interleaved", _int8_twice_fp32)


def _decide(tmp_path, target: str):
    fp32 = artifact_from(make_cnn(tmp_path / "fp32.onnx"))
    out = tmp_path / "model.onnx"
    copy_model(fp32.path, out)  # stands in for the quantized model
    qres = QuantResult(artifact_from(out), QuantSpec(mode="int8-static"), None, (), {})
    feed = {k: v[:1] for k, v in cnn_data(1).items() if k != "labels"}
    return speed.decide(fp32, qres, load_target(target), feed, tmp_path / "speed")


def test_another_arch_keeps_quantization_and_says_where_it_was_timed(tmp_path, x86_host_int8_slower):
    res, check, lines = _decide(tmp_path, "arm64")
    assert res.spec.mode == "int8-static"  # old behaviour: fp32 shipped on the x86 host's timings
    sp = res.details["speed"]
    assert sp["decision"] == "quantized" and sp["on_target_arch"] is False and sp["target_arch"] == "aarch64"
    assert sp["measured_on"] == "x86_64 host"
    assert any("speed not measured on the aarch64 target" in n and "quantization kept" in n for n in res.notes)
    # the recipe (manifest) says where it was timed, never what the host found: the bundle's bytes do not follow the clock
    assert not any("slower" in n or "x fp32" in n for n in res.notes) and set(sp) == {"decision", "slower_nodes", "measured_on", "target_arch", "on_target_arch"}
    d = check.to_dict()  # terminal, --json and the sidecar: the figures
    assert d["measured_on"] == {"host_arch": "x86_64", "target_arch": "aarch64", "on_target_arch": False}
    assert d["ratio_vs_fp32"] == 2.0 and d["shipped"] == "int8"
    assert "2.00x fp32" in lines[0] and "(slower than fp32)" in lines[0] and "--quant none" in lines[0]


def test_same_arch_still_ships_fp32_when_int8_is_slower(tmp_path, x86_host_int8_slower):
    res, check, lines = _decide(tmp_path, "cpu-x86_64")
    assert res.spec.mode == "none" and res.details["speed"]["decision"] == "fp32"
    assert check.to_dict()["measured_on"]["on_target_arch"] is True


@pytest.mark.slow
def test_export_table_json_and_manifest_say_it(runner, tmp_path, x86_host_int8_slower):
    model = make_cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **cnn_data(16))
    base = ["export", str(model), "--target", "arm64", "--calib", str(tmp_path / "c.npz"), "--calibration", "minmax"]
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "int8-static" and res["quantization"]["speed"]["on_target_arch"] is False
    assert res["profile"]["shipped"]["measured_on"]["target_arch"] == "aarch64"
    assert any(n.startswith("speed: not measured on aarch64") for n in res["notes"])
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["quantization"]["speed"]["on_target_arch"] is False and m["quantization"]["speed"]["target_arch"] == "aarch64"
    assert any("speed not measured on the aarch64 target" in n for n in m["quantization"]["notes"])
    side = json.loads((tmp_path / "b.profile.json").read_text())
    assert side["profile"]["shipped"]["measured_on"]["on_target_arch"] is False and side["profile"]["shipped"]["ratio_vs_fp32"] == 2.0
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "t")], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert "NOT on the aarch64 target" in r.stdout
