"""NaN / Inf outputs (found with fp16 of openwakeword's melspectrogram.onnx: the power spectrum overflows fp16, every
output value is inf):
- a candidate writing NaN/Inf where fp32 is finite fails, whatever its metric made of the finite rest (cosine over no
  finite value read 1.0: PASS), and --max-drop reads it as the worst candidate;
- a bundle whose model writes the same NaN/Inf as its golden outputs reproduces them: its self-check passed as
  "report this to edgeq: the ORT-format model disagrees" (inf - inf is NaN), and its manifest held NaN error
  metrics, which the C++ runner refused as malformed JSON: they are null now."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeq.checks.comparison import verify
from edgeq.checks.metrics import primary
from edgeq.checks import infer_all
from edgeq.checks.kinds import Context
from edgeq.cli import app
from edgeq.core.data import SampleSet
from edgeq.core.targets import Tolerances


def _scaled(path: Path, k: np.ndarray, shape: list) -> Path:
    """y = x * k (float32): k = 1e30 twice over overflows to inf; a zero in a divisor makes inf/NaN in fp32 itself."""
    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Mul", ["t", "k"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [numpy_helper.from_array(k, "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_a_candidate_writing_inf_where_fp32_is_finite_fails(tmp_path):
    x = np.random.default_rng(0).normal(0, 1, (4, 1, 8, 8)).astype(np.float32)
    data = SampleSet(arrays={"x": x}, stacked={"x": False}, labels=None, source="test")
    ref = _scaled(tmp_path / "ref.onnx", np.float32(1.0), ["B", 1, 8, 8])
    inf = _scaled(tmp_path / "inf.onnx", np.float32(1e30), ["B", 1, 8, 8])
    r = verify(ref, inf, data, Tolerances(), output_names=("y",))
    assert not r.passed and "NaN/Inf where fp32's are finite" in " ".join(r.failures), r.failures
    assert r.tasks[0]["metrics"]["non_finite_share"] == 1.0
    ok = verify(ref, _scaled(tmp_path / "same.onnx", np.float32(1.0), ["B", 1, 8, 8]), data, Tolerances(), output_names=("y",))
    assert ok.passed
    # the CLI's --json is strict JSON (CI pipelines): the NaN error metrics are null
    np.savez(tmp_path / "d.npz", x=x)
    j = CliRunner().invoke(app, ["verify", str(inf), "--reference", str(ref), "--data", str(tmp_path / "d.npz"), "--json"])
    assert j.exit_code == 1, j.output

    def strict(token: str):
        raise AssertionError(f"--json printed {token}")

    report = json.loads(j.stdout, parse_constant=strict)
    assert report["outputs"][0]["max_abs"] is None and report["passed"] is False
    # --max-drop / the gate: the deciding metric of such a candidate is the worst, never 1.0
    logits = [np.random.default_rng(i).normal(size=(1, 10)) for i in range(8)]
    spec = infer_all(("y",), [logits], Context())[0]
    assert primary(spec, logits, [np.full_like(v, np.inf) for v in logits])[1] == 0.0
    assert primary(spec, logits, logits)[1] == 1.0


def _non_finite_bundle(tmp_path: Path):
    k = np.ones((1, 1, 8, 8), np.float32)
    k[0, 0, 0, 0] = np.inf  # x * inf * inf: inf (or NaN where x is 0) in fp32 too
    model = _scaled(tmp_path / "m.onnx", k, ["B", 1, 8, 8])
    x = np.random.default_rng(1).normal(0, 1, (3, 1, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # 0 * inf: NaN
    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "b"
    return out, CliRunner().invoke(app, ["export", str(model), "--quant", "none", "--eval", str(tmp_path / "eval.npz"), "--no-profile",
                                         "-o", str(out)])


def test_golden_outputs_holding_inf_and_nan_are_reproduced(tmp_path):
    out, r = _non_finite_bundle(tmp_path)
    assert r.exit_code == 0, r.output  # was exit 2: "the bundle failed its own golden check ... report this to edgeq"
    def strict(token: str):
        raise AssertionError(f"manifest.json holds {token}: not JSON for strict readers (the C++ runner)")

    manifest = json.loads((out / "manifest.json").read_text(), parse_constant=strict)
    assert manifest["verdict"]["status"] == "pass" and manifest["verify"]["outputs"][0]["max_abs"] is None  # NaN -> null
    golden = np.load(out / "golden" / "000" / "out_0.npy")
    assert np.isnan(golden[0, 0, 0, 0]) and np.isinf(np.load(out / "golden" / "001" / "out_0.npy")[0, 0, 0, 0])
    v = CliRunner().invoke(app, ["verify", str(out)])
    assert v.exit_code == 0 and "PASS" in v.output, v.output
    run = subprocess.run([sys.executable, "-I", str(out / "run.py")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and "PASS" in run.stdout and "Warning" not in run.stderr, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++")
def test_the_cpp_runner_reproduces_inf_and_nan_golden_outputs(tmp_path, monkeypatch):
    from tests.e2e.test_bundle import build_cpp_runner, need_cpp_headers

    need_cpp_headers(monkeypatch)
    out, r = _non_finite_bundle(tmp_path)
    assert r.exit_code == 0, r.output
    run = subprocess.run([str(build_cpp_runner(out, tmp_path)), str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("PASS golden 000"), run.stdout + run.stderr
