"""`edgeq export --task text-generation` on a Phi-3 folder with LongRoPE (as Phi-3-mini-128k / 3.5-mini / 4-mini have):
the export checks both sides of the switch, the bundle generates like transformers, run.py across the switch too."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from fixtures.llm import greedy_json, save_lm  # noqa: E402

SWITCH = 64  # the export's greedy prompts (<= 16 tokens) + 32 new tokens stay below it


@pytest.mark.slow
def test_longrope_phi3_exports_checks_both_sides_and_generates_like_transformers(runner, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    import transformers

    from edgeq.bundles.genai import hf_greedy, prompt_ids

    rng = np.random.default_rng(1)
    scaling = {"type": "longrope", "short_factor": (1.0 + rng.random(8)).tolist(), "long_factor": (2.0 + 6.0 * rng.random(8)).tolist()}
    folder = save_lm(tmp_path / "phi3", "phi3", hidden_size=64, intermediate_size=128, max_position_embeddings=128,
                     original_max_position_embeddings=SWITCH, rope_scaling=scaling)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output  # before: "KV-cache export does not support rope scaling 'longrope' (phi3)", exit 2
    res = json.loads(r.stdout)
    checked = {o["name"]: o["passed"] for o in res["export"]["outputs"]}
    assert checked.get(f"logits (prefill 1x{SWITCH + 1} + 4 cached decode steps)") is True, checked  # long factors checked too
    assert all(checked.values())
    gen = res["generation"]
    assert gen["runtime"] == "onnxruntime-genai" and gen["identical"] == gen["prompts"] == 3 and gen["passed"]
    assert any(n.startswith("LongRoPE: short factors while the total length is <= 64") for n in res["notes"]), res["notes"]
    # run.py across the switch: the loop re-runs the sequence there, as transformers' generate does
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    text = "the quick brown fox jumps over the lazy dog. " * 2
    ids = prompt_ids(out, [text], 300)[0]
    assert len(ids) < SWITCH < len(ids) + 60
    want = hf_greedy(model, [ids], 60)[0]
    want = want[: want.index(2)] if 2 in want else want
    got = greedy_json(out / "run.py", text, 60, tmp_path / "cwd")
    assert got["tokens"] == want and len(ids) + len(want) > SWITCH + 2, (len(ids), len(want))
    r = runner.invoke(app, ["generate", str(out), "--prompt", text, "--max-new-tokens", "60", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tokens"] == want  # edgeq generate: the same loop
    # weight-only int4 keeps the switch in the decoder's metadata (run.py reads it there)
    import onnx

    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int4", "--no-profile", "-o", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False).metadata_props}
    assert meta.get("edgeq_longrope_switch") == str(SWITCH)
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False).graph.node)
