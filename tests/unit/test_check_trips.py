"""verify and profile are trips of edgeq.pipeline too: the CLI and the public API run the same ones (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq import pipeline
from edgeq.cli import app
from edgeq.errors import BundleError, CheckFailed, EdgeqError
from edgeq.pipeline import BundleConfig, BundleOptions, ProfileConfig, VerifyConfig
from tests.models import cnn_data, make_cnn


@pytest.fixture
def models(tmp_path: Path):
    model = make_cnn(tmp_path / "m.onnx")
    other = make_cnn(tmp_path / "other.onnx", seed=5)  # another model: outside any tolerance
    data = tmp_path / "d.npz"
    np.savez(data, **cnn_data(6))
    return model, other, data


def _spy(monkeypatch, trip: str) -> list:
    calls = []
    real = getattr(pipeline, trip)
    monkeypatch.setattr(pipeline, trip, lambda cfg, *a, **k: calls.append(cfg) or real(cfg, *a, **k))
    return calls


def test_verify_a_model_from_the_api_and_the_cli_through_the_same_trip(runner, tmp_path, monkeypatch, models):
    model, other, data = models
    calls = _spy(monkeypatch, "verify_model")
    ok = edgeq.verify(VerifyConfig(candidate=model, reference=model, data=data))
    assert isinstance(ok, pipeline.VerifyOutcome) and ok.kind == "models" and ok.passed and ok.result["samples"] == 6
    bad = VerifyConfig(candidate=other, reference=model, data=data)
    with pytest.raises(CheckFailed, match="candidate outside target cpu-x86_64's tolerances"):
        edgeq.verify(bad)
    kept = edgeq.verify(bad, check=False)  # check=False: the outcome of a failed comparison
    assert kept.kind == "models" and not kept.passed and kept.result["failures"]
    r = runner.invoke(app, ["verify", str(other), "--reference", str(model), "--data", str(data), "--json"])
    assert r.exit_code == 1 and "candidate outside target cpu-x86_64's tolerances" in r.stderr
    assert json.loads(r.stdout)["failures"] == kept.result["failures"]  # the table (JSON) first, then exit 1
    assert calls[-1] == bad  # the CLI built the same config the API was given
    with pytest.raises(EdgeqError, match="needs --reference REF.onnx and --data DATA"):
        edgeq.verify(VerifyConfig(candidate=model, data=data))
    with pytest.raises(TypeError, match="or a VerifyConfig"):  # neither a config nor a candidate
        edgeq.verify(model)


def test_verify_a_bundle_through_the_trip_and_a_tampered_one_is_refused(runner, tmp_path, models):
    model, _, data = models
    edgeq.bundle(BundleConfig(model=model, out=tmp_path / "b", data=data, bundle=BundleOptions(golden=2)))
    outcome = edgeq.verify(VerifyConfig(candidate=tmp_path / "b", model="onnx"))
    assert outcome.kind == "bundle" and outcome.passed and len(outcome.result["pairs"]) == 2
    r = runner.invoke(app, ["verify", str(tmp_path / "b"), "--model", "onnx"])
    assert r.exit_code == 0 and "PASS" in r.stdout and "2 golden pairs" in r.stdout
    (tmp_path / "b" / "model.onnx").write_bytes((tmp_path / "b" / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError):
        edgeq.verify(VerifyConfig(candidate=tmp_path / "b", model="onnx"))


def test_profile_from_the_api_and_its_failed_check(runner, tmp_path, monkeypatch, models):
    model, other, _ = models
    outcome = edgeq.profile(ProfileConfig(models=(model,), runs=2, warmup=0, budget=0.5))
    assert isinstance(outcome, pipeline.ProfileOutcome) and outcome.target == "cpu-x86_64"
    assert outcome.to_dict()["results"][0]["p50_ms"] > 0 and outcome.results[0]["runs"] >= 2
    with pytest.raises(TypeError, match="or a ProfileConfig"):  # neither a config nor a target
        edgeq.profile(model)
    with pytest.raises(CheckFailed, match="measured outputs outside target cpu-x86_64's tolerances"):
        edgeq.profile(ProfileConfig(models=(other,), runs=2, warmup=0, budget=0.5, reference=model))
    calls = _spy(monkeypatch, "profile_models")
    r = runner.invoke(app, ["profile", str(other), "--runs", "2", "--warmup", "0", "--budget", "0.5", "--reference", str(model), "--json"])
    assert r.exit_code == 1 and "measured outputs outside target" in r.stderr
    assert json.loads(r.stdout)["target"] == "cpu-x86_64"
    assert calls == [ProfileConfig(models=(other,), runs=2, warmup=0, budget=0.5, reference=model)]


class _Reached(Exception):
    pass


def test_the_trip_modules_leave_every_name_of_edgeq_pipeline_in_place(tmp_path, monkeypatch):
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(pipeline.__path__):  # importing each trip module replaces no name of the package
        importlib.import_module(f"edgeq.pipeline.{m.name}")
    assert all(callable(getattr(pipeline, n)) for n in pipeline.__all__ if n[0].islower())
    assert callable(edgeq.verify) and callable(edgeq.profile) and callable(edgeq.quantize)

    def patched(*a, **k):  # a patch of edgeq.pipeline.run_export is the one the export trip calls
        raise _Reached("patched run_export reached")

    monkeypatch.setattr(pipeline, "run_export", patched)
    src = make_cnn(tmp_path / "m.onnx")
    with pytest.raises(_Reached, match="patched run_export reached"):
        edgeq.export(pipeline.ExportConfig(source=pipeline.SourceConfig(path=src), out=tmp_path / "b", do_profile=False))
