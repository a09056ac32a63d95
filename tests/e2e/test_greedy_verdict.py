"""The LLM greedy-generation check is part of the one verdict: manifest, table, --json, edgeq verify
and run.py agree when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeq.checks.verdict import verdict_of

GEN_FAIL = {"runtime": "onnxruntime-genai", "agreement": 0.4, "min_agreement": 1.0, "identical": 1, "prompts": 3,
            "first_divergence": 2, "passed": False}


def test_a_failed_greedy_check_fails_the_verdict_with_or_without_a_verify_report():
    ok = {"passed": True, "failures": []}
    assert verdict_of(ok)["status"] == "pass"
    v = verdict_of(ok, generation=GEN_FAIL)
    assert v["status"] == "fail" and "greedy generation" in v["reason"] and "40.0 % < 100 %" in v["reason"]
    v = verdict_of(None, generation=GEN_FAIL)  # no data: still a failed check, never "skipped"
    assert v["status"] == "fail" and "greedy generation" in v["reason"]
    assert verdict_of(None, generation=GEN_FAIL, accept_failed=True)["status"] == "accepted-failed"
    both = verdict_of({"passed": False, "failures": ["output 'logits' (lm-logits): mean kl 0.2 > 0.05"]}, generation=GEN_FAIL)
    assert both["status"] == "fail" and "mean kl" in both["reason"] and "greedy" in both["reason"]
    passed = dict(GEN_FAIL, passed=True, agreement=1.0)
    assert verdict_of(ok, generation=passed)["status"] == "pass"
    assert verdict_of(None, generation=passed)["status"] == "skipped"  # nothing verified on data; said with the greedy result


@pytest.mark.slow
def test_lm_bundle_whose_greedy_check_fails_says_fail_everywhere(runner, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("transformers")
    from edgeq.cli import app
    from fixtures.llm import run_script, save_lm

    strict = tmp_path / "strict.toml"  # cpu-x86_64 with greedy agreement required to be exact
    text = (Path(__file__).resolve().parents[2] / "targets" / "cpu-x86_64.toml").read_text()
    strict.write_text(text.replace('name = "cpu-x86_64"', 'name = "strict-greedy"').replace("[tolerances]\n", "[tolerances]\nmin_greedy_agreement = 1.0\n"))
    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int2", "--target", str(strict),
                            "--no-profile", "-o", str(out), "--json"])
    res = json.loads(r.stdout)
    gen = res["generation"]
    assert gen is not None and gen["min_agreement"] == 1.0 and not gen["passed"], gen
    assert res["verify"] is None  # no data given: only the greedy check ran
    assert res["verdict"]["status"] == "fail" and "greedy generation" in res["verdict"]["reason"]
    assert res["passed"] is False and r.exit_code == 1 and "greedy generation" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verdict"] == res["verdict"]
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "greedy generation" in r.output
    p = run_script(out / "run.py", [], tmp_path / "cwd")
    assert p.returncode == 1 and "FAIL export check" in p.stdout, p.stdout + p.stderr
