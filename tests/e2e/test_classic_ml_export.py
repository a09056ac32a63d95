"""A tree ensemble (ai.onnx.ml TreeEnsembleClassifier + ZipMap, string labels) through `edgeq export` as a user runs it:
int8-static has nothing to quantize in it, so without data it says so (and offers --quant none, not --calib); with
data the bundle ships labelled fp32 (mode none, never int8), its ZipMap and string outputs are judged by their task,
and the golden pairs of those outputs pass in `edgeq verify` and run.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from edgeq.cli import app
from tests.ml_models import features, tree_classifier


def test_without_data_a_tree_model_is_told_there_is_nothing_to_quantize(tmp_path):
    m = tree_classifier(tmp_path / "trees.onnx")
    r = CliRunner().invoke(app, ["export", str(m), "--target", "cpu-x86_64", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    assert "nothing to quantize" in r.output and "TreeEnsembleClassifier" in r.output and "--quant none" in r.output
    assert "pass --calib" not in r.output  # calibration data would calibrate nothing
    ok = CliRunner().invoke(app, ["export", str(m), "--target", "cpu-x86_64", "--quant", "none", "-o", str(tmp_path / "n")])
    assert ok.exit_code == 0, ok.output


def test_a_tree_model_with_zipmap_and_string_labels_ships_fp32_and_its_golden_pairs_pass(tmp_path):
    m = tree_classifier(tmp_path / "trees.onnx", strings=True)
    np.savez(tmp_path / "calib.npz", X=features(32, seed=1))
    np.savez(tmp_path / "eval.npz", X=features(48, seed=2))
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["export", str(m), "--target", "cpu-x86_64", "--calib", str(tmp_path / "calib.npz"),
                                 "--eval", str(tmp_path / "eval.npz"), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["quantization"]["mode"] == "none" and rep["quantization"]["requested_mode"] == "int8-static"
    assert rep["profile"]["shipped"] is None or rep["profile"]["shipped"]["shipped"] == "fp32"
    tasks = {t["output"]: t for t in rep["verify"]["tasks"]}
    assert tasks["label"]["kind"] == "index" and tasks["label"]["metrics"]["exact_match"] == 1.0
    assert tasks["output_probability"]["kind"] == "classification" and tasks["output_probability"]["metrics"]["top1_agreement"] == 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "none"
    assert np.load(out / manifest["golden"]["pairs"][0]["outputs"][0]).dtype.kind == "U"
    v = CliRunner().invoke(app, ["verify", str(out)])
    assert v.exit_code == 0 and "PASS" in v.output, v.output
    run = subprocess.run([sys.executable, "-I", str(out / "run.py"), str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and "PASS" in run.stdout, run.stdout + run.stderr
    prof = CliRunner().invoke(app, ["profile", str(m), str(out), "--target", "cpu-x86_64", "--json"])
    assert prof.exit_code == 0, prof.output  # was: internal error (an object array of maps saved by the worker)
    assert len(json.loads(prof.output[prof.output.index("{"):])["results"]) == 2


def _recipe(tmp_path, target: str, quant: str, **model) -> dict:
    """`edgeq export` of the tiny trees with --eval data, --json: the quantization recipe (exit 0 asserted)."""
    m = tree_classifier(tmp_path / "trees.onnx", zipmap=False, **model)
    np.savez(tmp_path / "eval.npz", X=features(32, seed=2))
    r = CliRunner().invoke(app, ["export", str(m), "--target", target, "--quant", quant,
                                 "--eval", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])["quantization"]


def test_int8_dynamic_on_a_tree_model_ships_fp32_labelled_so(tmp_path):
    """It said "only activations were quantized", "convolutions kept in float" and, for arm64, "quantization kept", and
    shipped mode int8-dynamic."""
    q = _recipe(tmp_path, "arm64", "int8-dynamic")
    assert q["mode"] == "none" and q["requested_mode"] == "int8-dynamic", q
    assert any("nothing to quantize" in n for n in q["notes"]), q["notes"]
    assert not any("only activations" in n or "convolutions kept" in n or "quantization kept" in n for n in q["notes"]), q["notes"]
    assert q["speed"]["decision"] == "fp32"  # arm64 from an x86 host: not "quantized ... kept (host timings do not decide)"


def test_fp16_on_a_tree_model_keeps_fp32_labelled_so(tmp_path):
    """It shipped the fp32 trees wrapped in Casts as "fp16: weights and compute in fp16" (1.004 x the fp32 size)."""
    q = _recipe(tmp_path, "cpu-x86_64", "fp16", impute=True)
    assert q["mode"] == "none" and q["requested_mode"] == "fp16", q
    assert any("fp16 has nothing to convert" in n and "TreeEnsembleClassifier" in n for n in q["notes"]), q["notes"]
