"""GGUF for Phi-3, Gemma and Gemma 2 folders with SentencePiece-style vocabularies (BPE with byte
fallback): vocabulary scores/types, tensor layouts, refusals, and (slow) llama.cpp verification
against transformers plus the bundle's run.py generating the same greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from edgeq.errors import ModelError  # noqa: E402
from edgeq.cli import app  # noqa: E402
from fixtures.llm import greedy_json  # noqa: E402
from fixtures.spm import export_gguf, save_spm_lm  # noqa: E402

GEMMA2 = dict(query_pre_attn_scalar=8, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)  # sliding_window 6 (make_lm)
GEMMA3 = dict(query_pre_attn_scalar=8, num_hidden_layers=6)  # layers 0-4 slide (rotary base 1e4), layer 5 is global (1e6)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    return {
        "phi3": save_spm_lm(root / "phi3", "phi3", partial_rotary_factor=0.5),
        "gemma": save_spm_lm(root / "gemma", "gemma"),
        "gemma2": save_spm_lm(root / "gemma2", "gemma2", **GEMMA2),
        "gemma3": save_spm_lm(root / "gemma3", "gemma3", **GEMMA3),
    }


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return r, {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def test_sentencepiece_vocab_scores_types_and_space_prefix(folders, tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    for kind, prefix in (("phi3", True), ("gemma", False)):
        folder = folders[kind]
        tj = json.loads((folder / "tokenizer.json").read_text())
        src = read_llama(folder)
        v = src.vocab
        assert v.model == "llama" and v.add_space_prefix is prefix and not v.merges
        vocab = tj["model"]["vocab"]
        # merge priority as llama.cpp reads it: the piece of merge rank r scores -r (first merge making it)
        seen = set()
        for r, (a, b) in enumerate(tuple(m.split(" ", 1)) if isinstance(m, str) else m for m in tj["model"]["merges"]):
            if a + b not in seen:
                seen.add(a + b)
                assert v.scores[vocab[a + b]] == -r
        assert len(seen) > 50
        assert v.scores[v.bos_id] == 0.0 and v.scores[vocab["<0x41>"]] == 0.0
        assert all(v.types[vocab[f"<0x{b:02X}>"]] == 6 for b in range(256))  # BYTE
        unk = tj["model"].get("unk_token")  # Gemma's BPE names it; transformers' LlamaTokenizer leaves it unset
        assert (v.types[vocab[unk]] == 2) if unk else 2 not in v.types
        assert v.types[v.bos_id] == v.types[v.eos_id] == 3 and v.types.count(1) > 100
        assert v.add_bos and v.tokens[v.bos_id] == ("<bos>" if kind == "gemma" else "<s>")
        write_gguf(src, "f32", tmp_path / f"{kind}.gguf")
        _, f, _ = _fields(tmp_path / f"{kind}.gguf")
        assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.add_space_prefix"] is prefix
        assert f["tokenizer.ggml.scores"] == pytest.approx(list(v.scores)) and "tokenizer.ggml.merges" not in f
        assert f["tokenizer.ggml.tokens"] == list(v.tokens)


def test_tensor_layouts(folders, tmp_path):
    from safetensors.numpy import load_file

    from edgeq.llamacpp.gguf import read_llama, write_gguf

    # Phi-3: fused qkv and gate/up kept fused, partial rotary, NEOX rows unpermuted
    folder = folders["phi3"]
    write_gguf(read_llama(folder), "f32", tmp_path / "p.gguf")
    _, f, t = _fields(tmp_path / "p.gguf")
    w = load_file(str(folder / "model.safetensors"))
    assert f["general.architecture"] == "phi3" and f["phi3.rope.dimension_count"] == 4  # head_dim 8 x 0.5
    qkv = w["model.layers.1.self_attn.qkv_proj.weight"]
    assert qkv.shape == (32 + 2 * 16, 32)
    assert np.array_equal(np.asarray(t["blk.1.attn_qkv.weight"].data).reshape(qkv.shape), qkv)
    assert list(t["blk.0.ffn_up.weight"].shape) == [32, 128] and "blk.0.ffn_gate.weight" not in t
    assert "output.weight" in t
    # Gemma: every RMSNorm weight written as 1 + w, tied embeddings (no output.weight)
    for kind in ("gemma", "gemma2"):
        folder = folders[kind]
        write_gguf(read_llama(folder), "f32", tmp_path / f"{kind}.gguf")
        _, f, t = _fields(tmp_path / f"{kind}.gguf")
        w = load_file(str(folder / "model.safetensors"))
        assert f["general.architecture"] == kind and "output.weight" not in t
        assert np.allclose(np.asarray(t["output_norm.weight"].data), w["model.norm.weight"] + 1)
        assert np.allclose(np.asarray(t["blk.1.attn_norm.weight"].data), w["model.layers.1.input_layernorm.weight"] + 1)
        assert np.array_equal(np.asarray(t["blk.0.attn_q.weight"].data).reshape(32, 32), w["model.layers.0.self_attn.q_proj.weight"])
    # Gemma 2: post norms, soft-caps and the sliding window
    assert np.allclose(np.asarray(t["blk.0.post_ffw_norm.weight"].data), w["model.layers.0.post_feedforward_layernorm.weight"] + 1)
    assert np.allclose(np.asarray(t["blk.0.ffn_norm.weight"].data), w["model.layers.0.pre_feedforward_layernorm.weight"] + 1)
    assert np.allclose(np.asarray(t["blk.0.post_attention_norm.weight"].data), w["model.layers.0.post_attention_layernorm.weight"] + 1)
    assert f["gemma2.attn_logit_softcapping"] == 5.0 and f["gemma2.final_logit_softcapping"] == 3.0
    assert f["gemma2.attention.sliding_window"] == 6
    # Gemma 3: q/k norms (also 1 + w), the global layers' rotary base from rope_parameters
    folder = folders["gemma3"]
    write_gguf(read_llama(folder), "f32", tmp_path / "g3.gguf")
    _, f, t = _fields(tmp_path / "g3.gguf")
    w = load_file(str(folder / "model.safetensors"))
    assert f["general.architecture"] == "gemma3" and f["gemma3.rope.freq_base"] == 1e6 and f["gemma3.attention.sliding_window"] == 6
    assert np.allclose(np.asarray(t["blk.5.attn_k_norm.weight"].data), w["model.layers.5.self_attn.k_norm.weight"] + 1)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_refusals_name_the_setting(folders, tmp_path):
    from edgeq.llamacpp.gguf import read_llama

    def refused(folder, pattern):
        with pytest.raises(ModelError, match=pattern) as e:
            read_llama(folder)
        assert "\n" not in str(e.value)

    g2 = _copy(folders["gemma2"], tmp_path / "g2")
    _edit_json(g2 / "config.json", lambda c: c.update(query_pre_attn_scalar=256))
    refused(g2, "query_pre_attn_scalar 256 differs from head_dim 8")
    g3 = _copy(folders["gemma3"], tmp_path / "g3")
    _edit_json(g3 / "config.json", lambda c: c["rope_parameters"]["full_attention"].update(rope_type="linear", factor=8.0))
    refused(g3, "Gemma 3 rope scaling 'linear' \\(full attention\\)")
    _edit_json(g3 / "config.json", lambda c: c.update(rope_parameters=None, rope_local_base_freq=20000.0))
    refused(g3, "Gemma 3 sliding-layer rope base 20000 is not 10000")
    _edit_json(g3 / "config.json", lambda c: c.update(rope_local_base_freq=None, layer_types=["full_attention"] * 6))
    refused(g3, "gemma3 layer_types .* are not llama.cpp's pattern")
    g = _copy(folders["gemma"], tmp_path / "g")
    _edit_json(g / "config.json", lambda c: c.update(hidden_activation="relu"))
    refused(g, "Gemma activation 'relu'")
    p = _copy(folders["phi3"], tmp_path / "p")
    _edit_json(p / "config.json", lambda c: c.update(tie_word_embeddings=True))
    refused(p, "Phi-3 with tied embeddings")
    # a Phi-3-named model lacking the tokens llama.cpp's Phi-3 loader looks up by text
    p2 = _copy(folders["phi3"], tmp_path / "phi3-mini")
    _edit_json(p2 / "tokenizer.json", lambda t: t["added_tokens"].pop(3))
    _edit_json(p2 / "tokenizer.json", lambda t: t["model"]["vocab"].pop("<|endoftext|>", None))
    refused(p2, r"no <\|endoftext\|> token")
    # byte fallback without the 256 byte tokens; a Unigram model
    b = _copy(folders["gemma"], tmp_path / "b")
    _edit_json(b / "tokenizer.json", lambda t: t["model"]["vocab"].pop("<0x41>"))
    refused(b, r"1 of the 256 byte tokens \(first <0x41>\) are missing")
    u = _copy(folders["gemma"], tmp_path / "u")
    _edit_json(u / "tokenizer.json", lambda t: t.update(model={"type": "Unigram", "vocab": [["a", 0.0]]}))
    refused(u, "tokenizer model 'Unigram' is not supported")
    # architectures llama.cpp has but edgeq does not convert: one line naming them
    m = _copy(folders["gemma"], tmp_path / "m")
    _edit_json(m / "config.json", lambda c: c.update(model_type="mistral", architectures=["MistralForCausalLM"]))
    refused(m, "model_type 'mistral' .* is not a model edgeq converts to GGUF")


def test_phi3_sliding_window_is_reported(folders, tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    p = _copy(folders["phi3"], tmp_path / "p")
    _edit_json(p / "config.json", lambda c: c.update(sliding_window=64))
    res = write_gguf(read_llama(p), "f32", tmp_path / "m.gguf")
    assert any("without its sliding window" in n and "up to 64 tokens" in n for n in res.notes)
    assert not write_gguf(read_llama(folders["phi3"]), "f32", tmp_path / "n.gguf").notes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["phi3", "gemma", "gemma2", "gemma3"])
def test_f32_verified_by_llama_cpp_and_run_py_generates(kind, folders, runner, tmp_path):
    pytest.importorskip("llama_cpp")
    import transformers

    from edgeq.bundles.genai import hf_greedy

    folder = folders[kind]
    v, out = export_gguf(runner, folder, tmp_path, "def main(): return 2024 + 12345\n\nthe quick brown fox jumps over the lazy dog é!\n")
    # llama.cpp tokenizes like the Hugging Face tokenizer (scores, byte fallback, '▁' prefix) and computes the same logits
    assert v["passed"] and v["tokenizer_agreement"] == 1.0 and v["n_vocab"] == 400
    assert v["kl_mean"] < 1e-5 and v["top1_agreement"] >= 0.99
    man = json.loads((out / "manifest.json").read_text())["model"]
    assert man["architecture"] == kind and man["tokenizer"]["model"] == "llama"
    # edgeq verify re-runs the golden prompts through llama.cpp
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["passed"] and len(json.loads(r.stdout)["pairs"]) == 2
    # run.py generates through llama.cpp: greedy tokens = transformers' greedy
    got = greedy_json(out / "run.py", "the quick", 12, tmp_path / "cwd")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("the quick").ids
    want = hf_greedy(model, [ids], 12)[0]
    eos = model.config.eos_token_id
    want = want[: want.index(eos)] if eos in want else want
    assert got["tokens"] == want and len(want) >= 4
    # run.py's context: the target's (2048) capped by the model's (128), or --ctx
    assert json.loads((out / "manifest.json").read_text())["model"]["context"] == 128
    from fixtures.llm import run_script

    p = run_script(out / "run.py", ["--prompt", "the quick", "--max-new-tokens", "50", "--ctx", "8", "--json"], tmp_path / "cwd")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["stop"] == "context" and len(r["tokens"]) == 8 - len(ids) and r["tokens"] == want[: len(r["tokens"])]


@pytest.mark.slow
def test_phi3_longrope_short_and_long_factors(runner, tmp_path):
    """LongRoPE: rope_factors_short/long and the cos/sin scale; llama.cpp picks the long factors when its (256-rounded)
    context exceeds the original one, transformers when the sequence does: checked on both sides of that line."""
    pytest.importorskip("llama_cpp")
    rope = {"rope_type": "longrope", "long_factor": [1.0, 3.0, 7.0, 13.0], "short_factor": [1.0, 1.5, 2.0, 2.5]}
    text = ("the quick brown fox jumps over the lazy dog. def main(): return 0 import os, sys; print('hello world')\n\n"
            "import os, sys; print('hello world') # a comment about numbers 0123456789 the quick brown fox\n")
    for orig, maxpos in ((24, 128), (512, 1024)):  # prompts of ~30 tokens: long factors for orig 24, short ones for orig 512
        folder = save_spm_lm(tmp_path / f"lr{orig}", "phi3", rope_scaling=dict(rope), original_max_position_embeddings=orig,
                             max_position_embeddings=maxpos)
        (tmp_path / f"o{orig}").mkdir()
        v, out = export_gguf(runner, folder, tmp_path / f"o{orig}", text)
        assert v["passed"] and v["kl_mean"] < 1e-5 and v["tokenizer_agreement"] == 1.0, v["failures"]
        _, f, t = _fields(out / "model.gguf")
        assert np.allclose(np.asarray(t["rope_factors_long.weight"].data), rope["long_factor"])
        assert np.allclose(np.asarray(t["rope_factors_short.weight"].data), rope["short_factor"])
        assert f["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(maxpos / orig) / np.log(orig)))
        assert f["phi3.rope.scaling.original_context_length"] == orig


def test_piece_without_merge_scores_lowest(folders, tmp_path):
    from edgeq.llamacpp.gguf import read_llama

    g = _copy(folders["gemma"], tmp_path / "g")
    tj = json.loads((g / "tokenizer.json").read_text())
    merges = tj["model"]["merges"]
    a, b = merges[-1].split(" ", 1) if isinstance(merges[-1], str) else merges[-1]
    tj["model"]["merges"] = merges[:-1]  # the last merge's piece stays in the vocabulary, unreachable for transformers
    (g / "tokenizer.json").write_text(json.dumps(tj))
    v = read_llama(g).vocab
    assert v.scores[tj["model"]["vocab"][a + b]] == -1e9 and min(s for s in v.scores if s > -1e9) == -(len(merges) - 2)
