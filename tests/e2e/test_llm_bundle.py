"""LLM bundles: genai_config.json and tokenizer beside the KV-cache decoder; onnxruntime-genai generates from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from edgeq.bundles.genai import compare_tokens, hf_greedy, prompt_ids  # noqa: E402
from edgeq.bundles.llmgen import choose, printable  # noqa: E402
from fixtures.llm import greedy_json, run_script, save_lm  # noqa: E402

TEMPLATE = "{% for m in messages %}<|bos|>{{ m['content'] }}{% endfor %}"


def test_compare_tokens_reports_agreement_and_first_divergence():
    c = compare_tokens([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]], 4, 0.8, "x")
    assert c.identical == 1 and c.first_divergence == 2 and c.agreement == pytest.approx(5 / 6) and c.passed
    assert not compare_tokens([[1, 2]], [[1]], 2, 0.8, "x").passed  # a sequence that stopped early counts as a miss
    # a split where the reference's top two logits were (nearly) equal is a tie: compared up to the split only
    tie = compare_tokens([[1, 2, 3, 4]], [[1, 2, 7, 8]], 4, 1.0, "x", margins=[[5.0, 5.0, 1e-5, 3.0]], tie_atol=1e-3)
    assert tie.ties == 1 and tie.agreement == 1.0 and tie.passed and tie.first_divergence is None
    real = compare_tokens([[1, 2, 3, 4]], [[1, 2, 7, 8]], 4, 1.0, "x", margins=[[5.0, 5.0, 0.5, 3.0]], tie_atol=1e-3)
    assert real.ties == 0 and real.first_divergence == 2 and not real.passed


def test_choose_greedy_topk_topp_and_seed():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0])
    rng = np.random.default_rng(0)
    assert choose(logits, rng) == 1  # greedy
    assert {choose(logits, rng, temperature=1.0, top_k=1) for _ in range(20)} == {1}
    assert {choose(logits, rng, temperature=1.0, top_p=0.3) for _ in range(20)} == {1}
    assert {choose(logits, rng, temperature=1.0, top_k=2) for _ in range(200)} == {1, 2}
    a = [choose(logits, np.random.default_rng(7), temperature=2.0) for _ in range(5)]
    assert a == [choose(logits, np.random.default_rng(7), temperature=2.0) for _ in range(5)]
    assert printable("a\x07b\n") == "a\\x07b\n"


@pytest.mark.slow
def test_fp32_bundle_generates_with_onnxruntime_genai_like_transformers(runner, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    folder = save_lm(tmp_path / "qwen", "qwen2", chat_template=TEMPLATE)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    gen = res["generation"]
    assert gen["runtime"] == "onnxruntime-genai" and gen["identical"] == gen["prompts"] == 3 and gen["new_tokens"] == 32
    assert gen["first_divergence"] is None and gen["passed"]
    names = {p.name for p in out.iterdir()}
    assert {"genai_config.json", "tokenizer.json", "tokenizer_config.json", "model.onnx"} <= names
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert "chat_template" in tc or "chat_template.jinja" in names
    cfg = json.loads((out / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "qwen2" and cfg["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "genai_config.json" in manifest["files"] and "tokenizer.json" in manifest["files"]
    # independently of the export's own check: a new prompt, through the tokenizer shipped in the bundle
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = prompt_ids(out, ["print('hello"], 300)[0]
    m = og.Model(str(out))
    params = og.GeneratorParams(m)
    params.set_search_options(do_sample=False, max_length=len(ids) + 32)
    g = og.Generator(m, params)
    g.append_tokens(ids)
    while not g.is_done():
        g.generate_next_token()
    want = hf_greedy(model, [ids], 32)[0]
    want = want[: want.index(2)] if 2 in want else want  # transformers returns the EOS token, onnxruntime-genai does not
    assert list(g.get_sequence(0))[len(ids):] == want and len(want) >= 8
    # the bundle's run.py (isolated child: -I, neutral cwd) and edgeq generate, greedy: the same tokens
    got = greedy_json(out / "run.py", "print('hello", 32, tmp_path / "cwd")
    assert got["tokens"] == want[:32] and got["stop"] == ("eos" if len(want) < 32 else "max_new_tokens")
    assert not (out / "__pycache__").exists()
    r = runner.invoke(app, ["generate", str(out), "--prompt", "print('hello", "--max-new-tokens", "32", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tokens"] == want[:32]
    # sampling: seeded (same seed, same text), stops at --max-new-tokens
    runs = [json.loads(runner.invoke(app, ["generate", str(out), "--prompt", "the", "--max-new-tokens", "5", "--temperature", "1.5",
                                           "--top-k", "50", "--top-p", "0.95", "--seed", str(s), "--json"]).stdout)["tokens"] for s in (1, 1, 2)]
    assert runs[0] == runs[1] and len(runs[0]) <= 5 and runs[0] != runs[2]
    # streaming: the plain form prints the prompt and then the new text
    r = runner.invoke(app, ["generate", str(out), "--prompt", "print('hello", "--max-new-tokens", "8"])
    assert r.exit_code == 0 and r.stdout.startswith("print('hello")
    # a tampered generate.py is refused before it runs
    (out / "generate.py").write_text((out / "generate.py").read_text() + "\n# changed\n")
    p = run_script(out / "run.py", ["--prompt", "x"], tmp_path / "cwd")
    assert p.returncode == 2 and "corrupt" in p.stderr


@pytest.mark.slow
def test_int4_bundle_reports_greedy_agreement(runner, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64)  # head size 16: fused GroupQueryAttention
    np.savez(tmp_path / "c.npz", input_ids=np.random.default_rng(0).integers(3, 300, (8, 16)).astype(np.int64))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int4", "--calib", str(tmp_path / "c.npz"),
                            "--no-profile", "-o", str(out), "--json"])
    res = json.loads(r.stdout)
    gen = res["generation"]
    assert gen["min_agreement"] == 0.0 and 0 < gen["agreement"] <= 1 and gen["prompts"] == 3 and gen["passed"]
    assert (r.exit_code == 0) == res["passed"]
    assert res["lm_quality"]["kl_mean"] > 0
    assert any("GroupQueryAttention" in n for n in res["notes"])
    # LLM profile of the bundle (child interpreter): TTFT, decode tokens/s by context, peak RSS, KV bytes per token
    html = tmp_path / "p.html"
    r = runner.invoke(app, ["profile", str(out), "--json", "--budget", "0.2", "--html", str(html)])
    assert r.exit_code == 0, r.output
    llm = json.loads(r.stdout)["results"][0]["llm"]
    page = html.read_text()
    assert 'id="llm-decode-0"' in page and "32 tokens of context" in page and "64 tokens of context" in page
    assert llm["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # 2 (k, v) x layers x kv heads x head dim x fp32
    assert llm["ttft_ms"] > 0 and llm["prompt_tokens"] == 127 and llm["context_length"] == 128
    assert [d["context"] for d in llm["decode"]] == [32, 64] and all(d["decode_tokens_per_s"] > 0 for d in llm["decode"])
    assert 20 << 20 < llm["peak_rss_bytes"] < 2 << 30
