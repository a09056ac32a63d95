"""No-regression gate: candidates measured on this host, pick within the budget, fp32 when none fits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeq.cli import app

from tests.models import cnn_data, make_cnn


@pytest.mark.slow
def test_prefer_measures_candidates_and_ships_the_pick(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    cal, ev = tmp_path / "cal.npz", tmp_path / "ev.npz"
    np.savez(cal, **cnn_data(32, seed=1))
    np.savez(ev, **cnn_data(48, seed=4, labels_from=src))
    out = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--calib", str(cal), "--eval", str(ev),
                            "--prefer", "smallest", "--max-drop", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["quantization"]
    gate = rec["gate"]
    names = [c["name"] for c in gate["candidates"]]
    assert names[0] == "fp32" and len(names) == 4
    ok = [c for c in gate["candidates"] if c["error"] is None]
    assert all(c["p50_ms"] > 0 and c["bytes"] > 0 for c in ok)
    within = [c for c in ok[1:] if c["drop"] <= 0.2]
    pick = next(c for c in gate["candidates"] if c["name"] == gate["picked"])
    assert pick["bytes"] == min(c["bytes"] for c in within)
    # the file shipped is the one measured: its size up to edgeq's producer stamp in the header (a few bytes),
    # a margin no other candidate's size falls within
    from edgeq.core.outputs import PRODUCER, onnx_producer

    assert onnx_producer(out) == PRODUCER
    assert abs(out.stat().st_size - pick["bytes"]) <= 64
    assert all(abs(c["bytes"] - pick["bytes"]) > 64 for c in ok if c["name"] != pick["name"])
    if pick["p50_ms"] > gate["candidates"][0]["p50_ms"]:
        assert any("SLOWER THAN FP32" in n for n in rec["notes"])
    # nothing fits an impossible budget: fp32 ships, and the report says so
    out2 = tmp_path / "q2.onnx"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out2), "--calib", str(cal), "--eval", str(ev),
                            "--prefer", "fastest", "--max-drop", "-1", "--json"])
    rec = json.loads(r.stdout)["quantization"]
    assert rec["gate"]["picked"] == "fp32"
    assert any("shipping fp32 unchanged" in n for n in rec["notes"])
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out2)).graph.node)


def test_bad_prefer_is_exit_2(runner, tmp_path):
    src = make_cnn(tmp_path / "cnn.onnx")
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "random", "--prefer", "cheapest"])
    assert r.exit_code == 2 and "--prefer" in r.output
