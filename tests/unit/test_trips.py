"""One orchestration module: the CLI and the public API run the same trips from edgeq.pipeline (issue 17)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeq
from edgeq import pipeline
from edgeq.cli import app
from edgeq.errors import CheckFailed
from edgeq.pipeline import BundleConfig, BundleOptions, ExportConfig, QuantizeConfig, QuantOptions, SourceConfig
from tests.models import cnn_data, make_cnn


def _ops(path: Path) -> list[str]:
    return sorted(n.op_type for n in onnx.load(str(path)).graph.node)


def test_the_api_and_the_cli_quantize_through_the_same_trip(runner, tmp_path, monkeypatch):
    src = make_cnn(tmp_path / "m.onnx")
    calls = []
    real = pipeline.quantize_model
    monkeypatch.setattr(pipeline, "quantize_model", lambda cfg, *a, **k: calls.append(cfg) or real(cfg, *a, **k))
    q = QuantOptions(quant="int8-dynamic")
    outcome = edgeq.quantize(QuantizeConfig(model=src, out=tmp_path / "api.onnx", quant=q))
    assert isinstance(outcome, pipeline.QuantizeOutcome) and outcome.mode == "int8-dynamic"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "cli.onnx"), "--quant", "int8-dynamic", "--json"])
    assert r.exit_code == 0, r.output
    assert [c.quant for c in calls] == [q, q]  # both went through pipeline.quantize_model with the same options
    assert json.loads(r.stdout)["quantization"]["mode"] == outcome.recipe["mode"]
    assert _ops(tmp_path / "api.onnx") == _ops(tmp_path / "cli.onnx")
    assert "DynamicQuantizeLinear" in _ops(tmp_path / "api.onnx")


def test_the_bundle_trip_raises_its_failed_check_after_writing_as_the_cli_exits_1(tmp_path):
    model = make_cnn(tmp_path / "m.onnx")
    other = make_cnn(tmp_path / "other.onnx", seed=5)  # a different model: outside any tolerance
    data = tmp_path / "d.npz"
    np.savez(data, **cnn_data(8))
    cfg = BundleConfig(model=other, out=tmp_path / "b", data=data, reference=model, bundle=BundleOptions(golden=2))
    kept = edgeq.bundle(cfg, check=False)
    assert isinstance(kept, pipeline.BundleOutcome) and kept.verify["passed"] is False and not kept.golden_random
    assert len(json.loads((tmp_path / "b" / "manifest.json").read_text())["golden"]["pairs"]) == 2
    with pytest.raises(CheckFailed, match="outside target cpu-x86_64's tolerances"):
        edgeq.bundle(dataclasses.replace(cfg, force=True))
    assert (tmp_path / "b" / "manifest.json").is_file()  # written first, then the check failed


def test_the_export_trip_from_the_api_writes_a_verified_bundle(tmp_path):
    src = make_cnn(tmp_path / "m.onnx")
    data = tmp_path / "eval.npz"
    np.savez(data, **cnn_data(16, labels_from=src))
    cfg = ExportConfig(source=SourceConfig(path=src), out=tmp_path / "b", quant=QuantOptions(quant="int8-dynamic", eval=data),
                       bundle=BundleOptions(golden=1), do_profile=False)
    outcome = edgeq.export(cfg)
    assert isinstance(outcome, pipeline.ExportOutcome)
    r = outcome.result
    assert r["passed"] and r["quantization"]["mode"] == "int8-dynamic" and r["verify"]["samples"] == 16
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "int8-dynamic" and len(manifest["golden"]["pairs"]) == 1
    assert not (tmp_path / "b.profile.json").exists()  # do_profile=False: no sidecar, as --no-profile
