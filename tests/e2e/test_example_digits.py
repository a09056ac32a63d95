"""The README's example: a CNN trained on scikit-learn's digits, taken to an arm64 bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_digits_int8_static_arm64_meets_the_quality_bar(runner, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "test accuracy" in p.stdout
    out = tmp_path / "bundle"
    r = runner.invoke(app, [
        "export", str(tmp_path / "model.onnx"), "--target", "arm64",
        "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
        "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    v = res["verify"]
    assert v["samples"] == 450  # the whole held-out split
    assert v["accuracy_reference"] >= 0.97
    assert v["accuracy_drop"] <= 0.005  # <= 0.5 points
    assert res["size"]["ratio"] <= 0.3
    assert res["quantization"]["coverage"]["nodes_quantized"] == res["quantization"]["coverage"]["nodes_total"] == 5
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["passed"]
