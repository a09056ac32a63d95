"""--max-drop and the gate score EVERY output with its task metric (worst drop decides), and the
app TOML's ``[outputs.NAME] task = ...`` reaches them.

The two-output model here has a clean classifier first and a second head that INT8 destroys: its
input is offset by +1000 (removed again by the Gemm bias), so a per-tensor uint8 activation range
that must hold 0 and 1000 has a step of ~4 where the signal is ~1. Scoring only the first output
(the old behaviour) calls every candidate perfect.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from
from edgeq.quantization.int8 import static
from edgeq.quantization.spec import QuantSpec

OFFSET = 1000.0


def _two_heads(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (16, 10)).astype(np.float32)
    w2 = rng.normal(0, 1, (16, 8)).astype(np.float32)
    b2 = (-OFFSET * w2.sum(0)).astype(np.float32)  # head2 = x @ w2 in fp32
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("b1", np.zeros(10, np.float32)), ("w2", w2), ("b2", b2), ("off", np.array([OFFSET], np.float32)))]
    g = helper.make_graph([
        helper.make_node("Gemm", ["x", "w1", "b1"], ["cls"], name="gemm_cls"),
        helper.make_node("Add", ["x", "off"], ["xo"], name="add_offset"),
        helper.make_node("Gemm", ["xo", "w2", "b2"], ["head2"], name="gemm_head2"),
    ], "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("cls", TensorProto.FLOAT, ["B", 10]),
         helper.make_tensor_value_info("head2", TensorProto.FLOAT, ["B", 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _x(n: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 16)).astype(np.float32)


def _data(n: int = 48, seed: int = 1) -> SampleSet:
    return SampleSet(arrays={"x": _x(n, seed)}, stacked={"x": False}, labels=None, source="test")


def test_second_output_damage_counts_and_is_reported_per_output(tmp_path):
    from edgeq.quantization.int8.quantizer import quantize

    src = _two_heads(tmp_path / "m.onnx")
    data = _data()
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data, max_drop=0.05)
    s = res.details["search"]
    first = s["steps"][0]  # every weight node int8
    per = {o["output"]: o for o in first["outputs"]}
    assert per["cls"]["kind"] == per["head2"]["kind"] == "classification"
    assert per["cls"]["drop"] <= 0.05  # what scoring only the first output saw: within budget, nothing kept float
    assert per["head2"]["drop"] > 0.3  # the damage is in the second head
    assert first["drop"] == per["head2"]["drop"] and first["metric"] == "head2: agreement"  # the worst output decides
    assert "cls: agreement" in s["metric"] and "head2: agreement" in s["metric"]
    assert s["met"] and res.budget_met and s["best"]["kept_float"] >= 1  # kept the head's Gemm float to meet it
    assert max(o["drop"] for o in s["best"]["outputs"]) <= 0.05
    assert any("gemm_head2" in n for n in res.details["kept_float"])  # the damaged head's node, by sensitivity
    assert any(n.startswith("--max-drop per output") and "head2 agreement drop 0.0000" in n for n in res.notes)


def test_gate_scores_every_output_and_ships_fp32_when_a_second_head_breaks(tmp_path):
    from edgeq.quantization.selection.gate import select

    src = _two_heads(tmp_path / "m.onnx")
    res = select(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=_data(), evals=_data(48, 2),
                 max_drop=0.05, prefer="accurate")
    gate = res.details["gate"]
    cands = [c for c in gate["candidates"][1:] if c["error"] is None]
    assert cands, gate
    for c in cands:  # the first output alone is within budget for every INT8 candidate; the second is not
        per = {o["output"]: o for o in c["outputs"]}
        assert per["cls"]["drop"] <= 0.05 < per["head2"]["drop"] == c["drop"]
    assert gate["met"] is False and gate["picked"] == "fp32" and res.spec.mode == "none"
    assert any("(cls 0." in n and ", head2 0." in n for n in res.notes)  # each candidate's drop per output, in the notes


def test_app_toml_task_override_reaches_the_search_and_the_gate(tmp_path):
    from edgeq.quantization import quantize

    src = _two_heads(tmp_path / "m.onnx")
    data = _data()
    ref = static.all_outputs(onnx.load(str(src)), data, len(data))
    declared = {"head2": {"task": "regression"}}
    specs = static.output_tasks(onnx.load(str(src)), ref, declared)
    assert [s.kind for s in specs] == ["classification", "regression"] and specs[1].declared
    res = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=data, max_drop=0.05, tasks=declared)
    s = res.details["search"]
    assert {o["output"]: o["metric"] for o in s["outputs"]} == {"cls": "agreement", "head2": "centred_cosine"}
    assert s["steps"][0]["outputs"][1]["metric"] == "centred_cosine"
    g = quantize(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "g.onnx", data=data, max_drop=0.05,
                 prefer="accurate", tasks=declared).details["gate"]
    assert "head2: centred_cosine" in g["metric"]
    assert all(c["outputs"][1]["metric"] == "centred_cosine" for c in g["candidates"] if c["error"] is None)


def test_quantize_cli_takes_the_app_toml(runner, tmp_path):
    from edgeq.cli import app

    src = _two_heads(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=_x())
    toml = tmp_path / "app.toml"
    toml.write_text('[outputs.head2]\ntask = "embedding"\n')
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "c.npz"),
                            "--calibration", "minmax", "--max-drop", "0.05", "--preprocess", str(toml), "--json"])
    rec = json.loads(r.stdout)["quantization"]
    assert {o["output"]: o["metric"] for o in rec["search"]["outputs"]} == {"cls": "agreement", "head2": "mean_cosine"}
    toml.write_text('[outputs.nope]\ntask = "embedding"\n')
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q2.onnx"), "--calib", str(tmp_path / "c.npz"),
                            "--max-drop", "0.05", "--preprocess", str(toml)])
    assert r.exit_code == 2 and "nope" in r.stderr and not (tmp_path / "q2.onnx").exists()


@pytest.mark.slow
def test_budget_hints_fit_the_per_output_result(runner, tmp_path):
    """The deciding output's task is offered for declaring only when it was inferred; --eval only when absent."""
    from edgeq.checks.hints import after_budget_missed
    from edgeq.cli import app

    src = _two_heads(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=_x())
    args = ["quantize", str(src), "--calib", str(tmp_path / "c.npz"), "--calibration", "minmax", "--max-drop", "0.05", "--prefer", "accurate"]
    r = runner.invoke(app, args + ["-o", str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and "[outputs.head2] task" in r.stderr and "--eval" in r.stderr, r.stderr
    toml = tmp_path / "app.toml"
    toml.write_text('[outputs.head2]\ntask = "classification"\n')
    np.savez(tmp_path / "e.npz", x=_x(32, 3))
    r = runner.invoke(app, args + ["-o", str(tmp_path / "q2.onnx"), "--preprocess", str(toml), "--eval", str(tmp_path / "e.npz")])
    assert r.exit_code == 1 and "raise --max-drop" in r.stderr
    hint = r.stderr.split("raise --max-drop")[1]
    assert "task = ..." not in hint and "--eval" not in hint, r.stderr  # both on already
    one = {"best": {"outputs": [{"output": "y", "kind": "classification", "drop": 0.3, "declared": False}]}}
    assert "declare" not in after_budget_missed(one, has_eval=True)  # a single output: nothing to tell apart
    two = {"best": {"outputs": [dict(one["best"]["outputs"][0], drop=0.0), {"output": "z", "kind": "regression", "drop": 0.0}]}}
    assert "declare" not in after_budget_missed(two, has_eval=True)  # nothing dropped: no output to blame


def test_gate_offers_no_candidate_the_target_cannot_run(tmp_path):
    from edgeq.core.targets import load_target, targets_dir
    from edgeq.quantization.selection.gate import select

    text = (targets_dir() / "cpu-x86_64.toml").read_text().replace('name = "cpu-x86_64"', 'name = "qdq-only"')
    tfile = tmp_path / "qdq-only.toml"
    tfile.write_text(text + '\n[[rules]]\nid = "qdq-only"\ncheck = "activation_types"\nallowed = ["uint8"]\nformat = "qdq"\n')
    src = _two_heads(tmp_path / "m.onnx")
    res = select(artifact_from(src), QuantSpec(calibration="minmax"), tmp_path / "q.onnx", data=_data(), evals=None,
                 max_drop=1.0, prefer="fastest", target=load_target(str(tfile)))
    by = {c["name"]: c for c in res.details["gate"]["candidates"]}
    assert by["onnxruntime dynamic"]["error"] == "target qdq-only runs static INT8 only"
    assert by["onnxruntime QOperator (static)"]["error"] == "target qdq-only runs QDQ models only"
    assert by["edgeq QDQ (static)"]["error"] is None and res.details["gate"]["picked"] in ("edgeq QDQ (static)", "fp32")


@pytest.mark.slow
def test_export_search_and_verdict_judge_the_same_declared_task(runner, tmp_path):
    from edgeq.cli import app

    src = _two_heads(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=_x())
    (tmp_path / "app.toml").write_text('[outputs.head2]\ntask = "regression"\n')
    r = runner.invoke(app, ["export", str(src), "-o", str(tmp_path / "b"), "--calib", str(tmp_path / "c.npz"), "--calibration", "minmax",
                            "--max-drop", "0.05", "--preprocess", str(tmp_path / "app.toml"), "--no-profile", "--json"])
    res = json.loads(r.stdout)
    searched = {o["output"]: (o["kind"], o["declared"]) for o in res["quantization"]["search"]["outputs"]}
    judged = {t["output"]: t["kind"] for t in res["verify"]["tasks"]}
    assert searched == {"cls": ("classification", False), "head2": ("regression", True)}
    assert judged == {"cls": "classification", "head2": "regression"}
