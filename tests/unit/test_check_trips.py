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
from edgeq.pipeline import BundleConfig, BundleOptions, DeviceOptions, ProfileConfig, VerifyConfig
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
    with pytest.raises(CheckFailed, match="measured outputs outside target cpu-x86_64's tolerances"):
        edgeq.profile(ProfileConfig(models=(other,), runs=2, warmup=0, budget=0.5, reference=model))
    calls = _spy(monkeypatch, "profile_models")
    r = runner.invoke(app, ["profile", str(other), "--runs", "2", "--warmup", "0", "--budget", "0.5", "--reference", str(model), "--json"])
    assert r.exit_code == 1 and "measured outputs outside target" in r.stderr
    assert json.loads(r.stdout)["target"] == "cpu-x86_64"
    assert calls == [ProfileConfig(models=(other,), runs=2, warmup=0, budget=0.5, reference=model)]


class _Captured(EdgeqError):
    pass


def _capture(monkeypatch, trip: str) -> list:
    seen = []

    def fake(cfg, *a, **k):
        seen.append(cfg)
        raise _Captured("trip reached", "test")

    monkeypatch.setattr(pipeline, trip, fake)
    return seen


def test_every_verify_and_profile_option_reaches_its_trip(runner, monkeypatch):
    seen = _capture(monkeypatch, "verify_model")
    r = runner.invoke(app, ["verify", "c.onnx", "--reference", "r.onnx", "--data", "d.npz", "-t", "arm64", "--model", "onnx",
                            "--providers", "CPUExecutionProvider,XnnpackExecutionProvider", "--pubkey", "k.pub", "--min-version", "3",
                            "--labels-key", "y", "--preprocess", "app.toml", "--emulate", "cortex-a53"])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    assert seen == [VerifyConfig(candidate=Path("c.onnx"), reference=Path("r.onnx"), data=Path("d.npz"), target="arm64", model="onnx",
                                 providers=("CPUExecutionProvider", "XnnpackExecutionProvider"), pubkey=Path("k.pub"), min_version=3,
                                 labels_key="y", emulate="cortex-a53", preprocess=Path("app.toml"))]
    seen = _capture(monkeypatch, "profile_models")
    r = runner.invoke(app, ["profile", "a.onnx", "b", "-t", "arm64", "--data", "d.npz", "--runs", "3", "--warmup", "1", "--threads", "2",
                            "--budget", "1.5", "--top", "4", "--reference", "r.onnx", "--min-accel-coverage", "0.5", "--html", "r.html",
                            "--setup-runtime", "--device", "ssh://u@h:2222", "--known-hosts", "kh", "--accept-new-host-key",
                            "--identity", "id", "--device-python", "python3.12", "--device-timeout", "60"])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    assert seen == [ProfileConfig(models=(Path("a.onnx"), Path("b")), target="arm64", data=Path("d.npz"), runs=3, warmup=1, threads=2,
                                  budget=1.5, top=4, reference=Path("r.onnx"), min_accel_coverage=0.5, html=Path("r.html"),
                                  setup_runtime=True, device=DeviceOptions(url="ssh://u@h:2222", known_hosts=Path("kh"),
                                                                           accept_new_host_key=True, identity=Path("id"),
                                                                           python="python3.12", timeout=60))]
