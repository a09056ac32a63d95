"""--prefer times and scores candidates with the target's session settings, not onnxruntime's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeq.cli import app
from edgeq.core.targets import targets_dir

from tests.models import cnn_data, make_cnn


def _target_file(tmp_path: Path) -> Path:
    """cpu-x86_64 with a graph level and thread count that differ from onnxruntime's defaults."""
    text = (targets_dir() / "cpu-x86_64.toml").read_text()
    text = text.replace('name = "cpu-x86_64"', 'name = "cpu-test"', 1)
    text = text.replace('graph_optimization_level = "all"\nintra_op_num_threads = 0',
                        'graph_optimization_level = "extended"\nintra_op_num_threads = 1', 1)
    assert 'intra_op_num_threads = 1' in text
    p = tmp_path / "cpu-test.toml"
    p.write_text(text)
    return p


def test_prefer_uses_the_targets_session_settings(runner, tmp_path, monkeypatch):
    seen: list[tuple[str, object, int, list]] = []
    real = ort.InferenceSession

    class Spy(real):  # records every session onnxruntime is asked to open
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kw):
            if isinstance(path_or_bytes, str):
                so = sess_options or ort.SessionOptions()
                seen.append((path_or_bytes, so.graph_optimization_level, so.intra_op_num_threads, list(providers or [])))
            super().__init__(path_or_bytes, sess_options, providers, provider_options, **kw)

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    src = make_cnn(tmp_path / "cnn.onnx")
    cal, ev = tmp_path / "cal.npz", tmp_path / "ev.npz"
    np.savez(cal, **cnn_data(24, seed=1))
    np.savez(ev, **cnn_data(24, seed=4, labels_from=src))
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--target", str(_target_file(tmp_path)),
                            "--calib", str(cal), "--eval", str(ev), "--prefer", "fastest", "--max-drop", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    gate = json.loads(r.stdout)["quantization"]["gate"]
    assert gate["sessions"]["graph_optimization_level"] == "extended"
    assert gate["sessions"]["intra_op_num_threads"] == 1
    assert gate["sessions"]["providers"] == ["CPUExecutionProvider"]
    # the sessions that measured the candidates (fp32 = the optimized model, cand0..2) got those settings
    measured = [s for s in seen if Path(s[0]).name in ("fp32.onnx", "cand0.onnx", "cand1.onnx", "cand2.onnx")]
    names = {Path(s[0]).name for s in measured}
    assert {"fp32.onnx", "cand0.onnx"} <= names and len(names) == 1 + sum(c["error"] is None for c in gate["candidates"][1:])
    for path, level, threads, providers in measured:
        assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, path
        assert threads == 1, path
        assert providers == ["CPUExecutionProvider"], path
    ok = [c for c in gate["candidates"] if c["error"] is None]
    assert all(c["p50_ms"] > 0 for c in ok)
