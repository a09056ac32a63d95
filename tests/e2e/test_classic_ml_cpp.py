"""The bundle's C++ example on a classic ML bundle: a ZipMap (sequence of maps) or string output is refused in one
line that points to run.py, never compared as if it were numbers (onnxruntime's own 'Argument is not a tensor')."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tests.e2e.test_bundle import build_cpp_runner, need_cpp_headers
from tests.ml_models import features, tree_classifier


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++")
def test_cpp_runner_refuses_map_and_string_outputs_in_one_line(runner, tmp_path, monkeypatch):
    from edgeq.cli import app

    need_cpp_headers(monkeypatch)
    np.savez(tmp_path / "e.npz", X=features(16))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(tree_classifier(tmp_path / "t.onnx")), "--target", "cpu-x86_64", "--quant", "none",
                            "--eval", str(tmp_path / "e.npz"), "-o", str(out), "--no-profile"])
    assert r.exit_code == 0, r.output
    exe = build_cpp_runner(out, tmp_path)
    res = subprocess.run([str(exe), str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "'output_probability' is not a tensor" in line and "python run.py" in line and "\n" not in line, line
    assert not res.stdout.startswith("PASS")
