"""`edgeq profile MODEL --reference FP32 --data D` judges each output by its task, as export and verify do: a depth map
shifted by a metre has a raw cosine over 0.99 (it used to pass there) and fails on its centred cosine."""

from __future__ import annotations

import json

import numpy as np

from edgeq.cli import app
from tests.unit.test_verdict_review import _save


def test_profile_reference_uses_the_task_check(runner, tmp_path):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (1, 1, 3, 3))
    np.savez(tmp_path / "d.npz", x=rng.uniform(0, 1, (6, 1, 16, 16)).astype(np.float32))
    ref = _save(tmp_path / "ref.onnx", 5.0, w)
    fast = ["--runs", "5", "--warmup", "1", "--budget", "1", "--target", "cpu-x86_64", "--json"]
    r = runner.invoke(app, ["profile", str(_save(tmp_path / "far.onnx", 6.0, w)), "--reference", str(ref),
                            "--data", str(tmp_path / "d.npz"), *fast])
    assert r.exit_code == 1, r.output
    vs = json.loads(r.stdout)["results"][0]["numerics"]["vs_reference"]
    assert vs["outputs"][0]["cosine"] > 0.99 and not vs["passed"]  # raw cosine is information only
    assert vs["tasks"][0]["kind"] == "regression" and any("centred cosine" in f for f in vs["failures"]), vs
    r = runner.invoke(app, ["profile", str(_save(tmp_path / "near.onnx", 5.0, w + rng.normal(0, 0.002, w.shape))),
                            "--reference", str(ref), "--data", str(tmp_path / "d.npz"), *fast])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["numerics"]["vs_reference"]["passed"]
