"""With --no-profile nothing runs edgeq's typical inputs before the bundle's golden pairs do: a model that refuses
them (openwakeword's melspectrogram.onnx: an STFT Conv of 512 taps over a [1, 16] "audio" input) got onnxruntime's
raw error and "check the input shapes and dtypes", though the user gave no data. Now the same one line as with
profiling: the inputs used, and pass --eval; nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeq.cli import app
from tests.models import save_graph


def _framed(path: Path) -> Path:
    """audio [1, samples] -> Unsqueeze -> Conv(1 -> 4, 64 taps, stride 32): needs at least 64 samples."""
    w = np.random.default_rng(0).normal(size=(4, 1, 64)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Unsqueeze", ["audio", "axes"], ["u"]), helper.make_node("Conv", ["u", "w"], ["spec"], strides=[32])], "stft",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("spec", TensorProto.FLOAT, [1, 4, "frames"])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(w, "w")])
    return save_graph(g, path)


def test_golden_pairs_on_typical_inputs_a_model_refuses_are_one_line(tmp_path):
    model = _framed(tmp_path / "m.onnx")
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["export", str(model), "--quant", "fp16", "--no-profile", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "typical inputs ('audio' [1, 16] float32)" in r.output and "pass --eval" in r.output, r.output
    assert "check the input shapes" not in r.output and not out.exists()
    data = tmp_path / "eval.npz"
    np.savez(data, audio=np.random.default_rng(1).normal(size=(3, 1, 256)).astype(np.float32))
    ok = CliRunner().invoke(app, ["export", str(model), "--quant", "fp16", "--no-profile", "--eval", str(data), "-o", str(out)])
    assert ok.exit_code == 0, ok.output


def test_the_refusal_is_the_only_line_on_stderr(tmp_path):
    """onnxruntime logged the failing kernel ("[E:onnxruntime:, sequential_executor.cc ...] Non-zero status code")
    on stderr before edgeq's one line: sessions edgeq opens log FATAL only (EDGEQ_DEBUG=1 shows library logs)."""
    import os
    import subprocess
    import sys

    model = _framed(tmp_path / "m.onnx")
    env = {k: v for k, v in os.environ.items() if k != "EDGEQ_DEBUG"}
    r = subprocess.run([sys.executable, "-c", "from edgeq.cli import main; main()", "export", str(model), "--quant", "none",
                        "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("done ")]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: the model does not run on edgeq's typical inputs"), r.stderr
