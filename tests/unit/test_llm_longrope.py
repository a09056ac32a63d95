"""LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) in the KV-cache decoder: logits and greedy tokens vs transformers,
below and above the switch at original_max_position_embeddings (32 here, context 128), fused and plain-ops graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.runtime import create_session  # noqa: E402
from edgeq.errors import ModelError  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.exporters.static_decoder import StaticLayout  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

SWITCH = 32
TOL = dict(atol=1e-3, rtol=1e-3)


def _phi3(partial: float = 1.0, **extra):
    """A tiny Phi-3 with LongRoPE: head size 16 (32 with partial rotary 0.5: rotary over 16 dims, as Phi-4-mini's 0.75)."""
    heads = 4 if partial == 1.0 else 2
    half = int(64 // heads * partial) // 2
    rng = np.random.default_rng(1)
    scaling = {"type": "longrope", "short_factor": (1.0 + rng.random(half)).tolist(),
               "long_factor": (2.0 + 6.0 * rng.random(half)).tolist()}  # far apart: using the wrong set shows in the logits
    return make_lm("phi3", hidden_size=64, intermediate_size=128, num_attention_heads=heads, num_key_value_heads=heads // 2,
                   partial_rotary_factor=partial, max_position_embeddings=128, original_max_position_embeddings=SWITCH,
                   rope_scaling=scaling, **extra)


def _ref(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.double().numpy()


def _cached_ref(model, ids, split):
    """transformers' forward through its own cache: a prefill of ``split`` tokens, then one token per call."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids[:, :split]), use_cache=True)
        rows, past = [out.logits], out.past_key_values
        for t in range(split, ids.shape[1]):
            out = model(input_ids=torch.from_numpy(ids[:, t : t + 1]), cache=past, use_cache=True,
                        position_ids=torch.full((ids.shape[0], 1), t))
            rows.append(out.logits)
            past = out.past_key_values
    return torch.cat(rows, dim=1).double().numpy()


def _close(ref, got):
    assert np.allclose(got, ref, **TOL), f"max abs {np.abs(got - ref).max():.3g}"


def test_arch_reads_both_factor_sets_the_switch_and_the_attention_factor():
    model = _phi3()
    arch = D.arch_from_config(model.config)
    p = model.config.rope_parameters
    base = 10000.0 ** (-np.arange(0, 16, 2) / 16)
    assert np.allclose(arch.inv_freq, base / np.asarray(p["short_factor"]))
    assert np.allclose(arch.inv_freq_long, base / np.asarray(p["long_factor"]))
    assert arch.rope_switch == SWITCH and arch.context == 128
    assert arch.rope_scale == pytest.approx(np.sqrt(1 + np.log(128 / SWITCH) / np.log(SWITCH)))
    assert arch.rope_scale == pytest.approx(model.model.rotary_emb.attention_scaling)


@pytest.mark.parametrize("fused,partial", [(True, 1.0), (False, 1.0), (True, 0.5)])
def test_logits_match_transformers_below_across_and_above_the_switch(fused, partial, tmp_path):
    model = _phi3(partial)
    arch = D.arch_from_config(model.config)
    path = D.build_decoder(arch, model.state_dict(), tmp_path / "m.onnx", fused=fused)
    sess = create_session(path)
    rng = np.random.default_rng(0)
    short = rng.integers(3, 300, (2, 20))
    _close(_ref(model, short), D.decode_with_cache(sess, short, 20))  # short factors, attention factor
    _close(_ref(model, short), D.decode_with_cache(sess, short, 12))
    long_ = rng.integers(3, 300, (2, 44))
    _close(_ref(model, long_), D.decode_with_cache(sess, long_, 44))  # one prefill past the switch: long factors throughout
    _close(_ref(model, long_), D.decode_with_cache(sess, long_, 38))  # and decode steps after it
    # crossing in the cache: the same numbers as transformers' forward through its own cache (prefill short, steps long)
    _close(_cached_ref(model, long_, 28), D.decode_with_cache(sess, long_, 28))


def test_static_graph_uses_short_rows_with_the_attention_factor_and_ends_at_the_switch(tmp_path):
    model = _phi3()
    arch = D.arch_from_config(model.config)
    step = D.build_decoder(arch, model.state_dict(), tmp_path / "s.onnx", static_context=SWITCH, chunk=1)
    lay = StaticLayout.of_session(create_session(step))
    assert lay.rotary_scale == pytest.approx(arch.rope_scale)
    rows = D.check_static_decoder(model, step, arch.vocab, TOL["atol"], TOL["rtol"], seq=24, split=10)
    assert all(r[3] for r in rows), rows
    with pytest.raises(ValueError, match="at most 32 slots"):
        D.build_decoder(arch, model.state_dict(), tmp_path / "t.onnx", static_context=SWITCH + 1, chunk=1)


def test_bad_factor_lists_and_yarn_are_refused_in_one_line():
    model = _phi3()
    cfg = model.config.to_dict()
    cfg["rope_parameters"] = dict(cfg["rope_parameters"], short_factor=[1.0, 2.0])
    with pytest.raises(ModelError, match="short_factor of phi3 is not 8 positive numbers"):
        D.arch_from_config(cfg)
    llama = make_lm("llama").config.to_dict()
    llama["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(ModelError, match="does not support rope scaling 'yarn'"):
        D.arch_from_config(llama)


@pytest.mark.slow
def test_onnxruntime_genai_greedy_equals_transformers_generate_on_each_side_of_the_switch(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from edgeq.bundles.genai import _genai_greedy, genai_config, hf_greedy

    model = _phi3()
    arch = D.arch_from_config(model.config)
    D.build_decoder(arch, model.state_dict(), tmp_path / "model.onnx", fused=True)
    (tmp_path / "genai_config.json").write_text(json.dumps(genai_config(arch, {}, share_buffer=True)))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 300, 6).tolist(), rng.integers(3, 300, 12).tolist(), rng.integers(3, 300, 40).tolist()]
    new = [SWITCH - 6, SWITCH - 12, 24]  # within the short side; past the switch from the prompt on
    for p, n in zip(prompts, new):
        ref = hf_greedy(model, [p], n)
        assert _genai_greedy(tmp_path, [p], n) == ref


@pytest.mark.parametrize("fused", [True, False])
def test_bundle_generation_loop_crossing_the_switch_equals_transformers_generate(fused, tmp_path):
    """run.py / edgeq generate (bundles/llmgen.py) re-run the sequence once at the switch, as transformers' generate does."""
    from edgeq.bundles.genai import genai_config, hf_greedy
    from edgeq.bundles.llmgen import Decoder, generate

    model = _phi3()
    arch = D.arch_from_config(model.config)
    D.build_decoder(arch, model.state_dict(), tmp_path / "model.onnx", fused=fused)
    (tmp_path / "genai_config.json").write_text(json.dumps(genai_config(arch, {}, share_buffer=fused)))
    dec = Decoder(str(tmp_path))
    assert dec.rope_switch == SWITCH
    prompt = np.random.default_rng(5).integers(3, 300, 20).tolist()
    ref = hf_greedy(model, [prompt], 30)[0]  # 20 + 30 tokens: crosses 32
    got = generate(dec, prompt, max_new_tokens=30)["tokens"]
    assert got == (ref[: ref.index(2)] if 2 in ref else ref)  # EOS (2) ends generate's tokens, not transformers'
    assert len(got) > SWITCH - len(prompt) + 2  # the comparison reaches past the switch
