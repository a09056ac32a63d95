"""KV-cache decoders with static shapes (NPU targets): fixed slots, one-hot cache update, checked against transformers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.exporters import static_decoder as S  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

CONTEXT = 32


def _graphs(model, tmp_path, chunk=4):
    """The one-token step graph and the prefill graph derived from it (exporters/static_prefill.py)."""
    from edgeq.exporters.static_prefill import write_prefill

    arch = D.arch_from_config(model.config)
    step = D.build_decoder(arch, model.state_dict(), tmp_path / "c1.onnx", static_context=CONTEXT, chunk=1)
    paths = [step, write_prefill(step, tmp_path / f"c{chunk}.onnx", chunk)]
    return paths, [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]


def _greedy_reference(model, prompt, n):
    """transformers' greedy tokens, one full forward per token (no cache, no EOS stop)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gemma3"])  # gemma2/3: sliding window 6 over a 32-slot cache, soft-caps
def test_static_decoder_matches_transformers_over_the_fixed_context(kind, tmp_path):
    model = make_lm(kind)
    paths, (step, prefill) = _graphs(model, tmp_path)
    for p, chunk in zip(paths, (1, 4)):
        g = onnx.load(str(p)).graph
        for vi in list(g.input) + list(g.output):  # every dimension fixed: what an NPU compiler needs
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            assert None not in dims and dims[0] == 1, (vi.name, dims)
        assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim] == [1, chunk]
        past = next(vi for vi in g.input if vi.name == "past_key_values.0.key")
        assert [d.dim_value for d in past.type.tensor_type.shape.dim][2] == CONTEXT
        assert not {n.op_type for n in g.node} & {"Shape", "Range", "ConstantOfShape", "Expand", "ScatterND"}
    ids = np.random.default_rng(3).integers(0, 300, 20)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids[None]), use_cache=False).logits.numpy()[0]
    assert ref.std() > 0.3
    # prefill of 7 in chunks of 4 (the second chunk padded), then 13 one-token steps through the slots
    assert np.abs(S.logits_static(step, ids, 7, prefill) - ref).max() < 1e-3
    assert np.abs(S.logits_static(step, ids, 1) - ref).max() < 1e-3
    # greedy over the whole fixed context, identical at fp32: 6 prompt tokens + 26 new fill the 32 slots,
    # and the last slot's logits give a 27th
    prompt = ids[:6]
    want = _greedy_reference(model, prompt, CONTEXT - len(prompt) + 1)
    assert S.greedy_static(step, prompt, 40, prefill) == want  # stops where the slots end
    assert S.greedy_static(step, prompt, 5) == want[:5]


def test_static_step_writes_its_slot_and_reads_only_marked_slots(tmp_path):
    model = make_lm("llama")
    _, (step, _) = _graphs(model, tmp_path)
    ids = np.random.default_rng(4).integers(0, 300, 10)
    cache = S.StaticCache(step)
    for t in ids[:9]:
        cache.run(step, np.array([t]))
    lay = S.StaticLayout.of_session(step)
    host = S.host_inputs(lay, 9, 1)
    feed = {"input_ids": ids[None, 9:], **host, **cache.past}
    outs = [o.name for o in step.get_outputs()]
    res = dict(zip(outs, step.run(None, feed)))
    key0, past0 = res["present.0.key"], cache.past["past_key_values.0.key"]
    assert key0.shape == past0.shape == (1, 2, CONTEXT, 8)
    changed = np.flatnonzero(np.abs(key0 - past0).max(axis=(0, 1, 3)) > 0)
    assert changed.tolist() == [9]  # the new key lands in slot 9, the other slots are the past unchanged
    # the host's bias masks the slots after the token and the empty ones; a slot it masks is not attended
    assert (host[S.BIAS][0, 0, 0, 0] == 0).tolist() == [m <= 9 for m in range(CONTEXT)]
    masked = dict(feed, **{S.BIAS: np.where(np.arange(CONTEXT) == 4, S.MASK_VALUE, host[S.BIAS]).astype(np.float32)})
    assert np.abs(step.run(["logits"], masked)[0] - res["logits"]).max() > 1e-2
    # the same token at another position: other rotary rows, another slot written
    moved = dict(feed, **{k: v for k, v in S.host_inputs(lay, 5, 1).items() if k.startswith("rotary")})
    assert np.abs(step.run(["logits"], moved)[0] - res["logits"]).max() > 1e-2
    with pytest.raises(ValueError, match="do not fit"):
        S.StaticCache(step).run(step, ids[:2])  # two tokens into a one-token graph


def test_npu_target_exports_a_static_kv_bundle_that_generates_like_transformers(runner, tmp_path):
    import json

    import transformers

    from edgeq.bundles.genai import hf_greedy, prompt_ids
    from edgeq.cli import app
    from fixtures.llm import greedy_json, save_lm

    folder = save_lm(tmp_path / "llama", "llama")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--quant", "none",
                            "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    gen = res["generation"]  # the export's own greedy check ran the fixed-slot loop
    assert gen["runtime"] == "onnxruntime (static slots)" and gen["identical"] == gen["prompts"] == 3 and gen["passed"]
    # the user is told that onnxruntime-genai cannot run this form (the genai_config.json stays for run.py)
    assert any("static-shape decoder" in n and "onnxruntime-genai cannot run it" in n for n in res["notes"]), res["notes"]
    g = onnx.load(str(out / "model.onnx")).graph
    dims = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim] for vi in g.input}
    assert dims["input_ids"] == [1, 1] and dims["attention_bias"] == [1, 1, 1, 1, 128] and dims["past_key_values.0.key"] == [1, 2, 128, 8]
    # the export checked the prefill graph against transformers too (a full chunk of 64, a padded one, then steps)
    assert any("prefill graph (64 per run)" in o["name"] and o["passed"] for o in res["export"]["outputs"])
    # the bundle: the step graph, the prefill graph derived from it, one weights file both read, the host code beside
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["prefill"] == {"onnx": "prefill.onnx", "chunk": 64, "external_data": "model.onnx.data"}
    assert manifest["model"]["onnx_external_data"] == "model.onnx.data"
    assert {"model.onnx", "prefill.onnx", "model.onnx.data", "static_decoder.py"} <= set(manifest["files"])
    weights = _weights_stored_once(out)
    # no other file of the bundle holds them again (the ORT format would: none is written, its kernel list is)
    assert manifest["model"]["ort"] is None and "required_operators_and_types.config" in manifest["files"]
    assert [f for f, rec in manifest["files"].items() if rec["bytes"] > weights // 2] == ["model.onnx.data"]
    r = runner.invoke(app, ["verify", str(out), "--json"])  # checksums of both graphs, and the prefill graph against the step graph
    assert r.exit_code == 0, r.output
    pre = json.loads(r.stdout)["prefill"]
    assert pre["passed"] and pre["chunk"] == 64 and pre["prompt_tokens"] == 67 and pre["max_abs_error"] < 1e-4
    # independently: the bundle's run.py and edgeq generate give transformers' greedy tokens, the prompt through the prefill graph
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    long = "print('hello world') # the quick brown fox jumps over the lazy dog " * 2  # 84 tokens
    for text in ("print('hello", long):
        ids = prompt_ids(out, [text], 300)[0]
        want = hf_greedy(model, [ids], 40)[0]
        want = want[: want.index(2)] if 2 in want else want
        assert len(want) >= 8
        got = greedy_json(out / "run.py", text, 40, tmp_path / "cwd")
        assert got["tokens"] == want and got["prefill_chunk"] == 64
        r = runner.invoke(app, ["generate", str(out), "--prompt", text, "--max-new-tokens", "40", "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["tokens"] == want
    assert 64 < len(ids) < 128 - 40  # the long prompt takes two prefill runs (the second padded)
    # the LLM profile: time to first token through the prefill graph, and one token per run beside it
    r = runner.invoke(app, ["profile", str(out), "--target", "cpu-x86_64", "--json", "--budget", "0.2"])
    assert r.exit_code == 0, r.output
    llm = json.loads(r.stdout)["results"][0]["llm"]
    assert llm["prefill_chunk"] == 64 and llm["prompt_tokens"] == 127 and 0 < llm["ttft_ms"] < llm["ttft_ms_step_only"]


def _weights_stored_once(out):
    """model.onnx and prefill.onnx read every large initializer from model.onnx.data at the same offsets; neither holds a copy."""
    def external(path):
        m = onnx.load(str(path), load_external_data=False)
        return {t.name: {e.key: e.value for e in t.external_data} for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}

    step, pre = external(out / "model.onnx"), external(out / "prefill.onnx")
    assert step == pre and "embed_tokens.weight" in step and sum(n.endswith(".weight") for n in step) >= 15
    assert {e["location"] for e in step.values()} == {"model.onnx.data"}
    weights = sum(int(e["length"]) for e in step.values())
    assert (out / "model.onnx.data").stat().st_size == weights
    for f in ("model.onnx", "prefill.onnx"):  # graph and small tensors only
        assert (out / f).stat().st_size < 0.15 * weights, f
    return weights
