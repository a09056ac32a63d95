"""GGUF export for llama.cpp targets: file structure (gguf reader), rotary permutation, errors,
and the trained tiny Llama verified by llama.cpp itself (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.cli import app
from edgeq.errors import ModelError, QuantizationError, TargetError
from edgeq.core.fsutil import sha256_file
from fixtures.lm import SPECIALS, TinyLlamaSpec, heldout_prompts, make_tiny_llama
from tests.models import make_cnn, snapshot

gguf = pytest.importorskip("gguf")  # part of edgeq[gguf]; the llama.cpp tests below fail instead of skipping


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("untrained") / "llama", train=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("trained") / "llama")


def _field(reader, key):
    f = reader.fields[key]
    if len(f.types) and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))] if f.types[-1] != gguf.GGUFValueType.STRING else f.contents()
    return f.contents()


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_metadata_tokenizer_and_tensor_types(untrained, tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    src = read_llama(untrained)
    res = write_gguf(src, "q8_0", tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.context_length") == 256
    assert _field(r, "llama.embedding_length") == 128
    assert _field(r, "llama.feed_forward_length") == 256
    assert _field(r, "llama.block_count") == 2
    assert _field(r, "llama.attention.head_count") == 4
    assert _field(r, "llama.attention.head_count_kv") == 2
    assert _field(r, "llama.rope.dimension_count") == 32
    assert _field(r, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(r, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    # tokenizer written by edgeq from tokenizer.json
    tj = json.loads((untrained / "tokenizer.json").read_text())
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert len(tokens) == 320
    assert all(tokens[i] == t for t, i in tj["model"]["vocab"].items())
    merges = r.fields["tokenizer.ggml.merges"].contents()
    hf_merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert merges == hf_merges and len(merges) == 320 - 256 - len(SPECIALS)
    types = r.fields["tokenizer.ggml.token_type"].contents()
    bos, eos = tokens.index(SPECIALS[0]), tokens.index(SPECIALS[1])
    assert types[bos] == types[eos] == 3 and types.count(1) == 318
    assert _field(r, "tokenizer.ggml.bos_token_id") == bos and _field(r, "tokenizer.ggml.eos_token_id") == eos
    # tensors: 1-D norms in F32, every matrix in Q8_0
    by_name = {t.name: t for t in r.tensors}
    assert len(by_name) == 3 + 9 * 2
    for t in r.tensors:
        want = "F32" if len(t.shape) == 1 or t.name.endswith("norm.weight") else "Q8_0"
        assert t.tensor_type.name == want, t.name
    assert list(by_name["blk.0.attn_k.weight"].shape) == [128, 64]  # ggml order: (in, out)
    assert res.tensor_types == {"F32": 5, "Q8_0": 16}
    assert res.bytes < 0.35 * res.source_bytes


def test_q_and_k_weights_carry_the_rotary_permutation(untrained, tmp_path):
    from edgeq.llamacpp.gguf import read_llama, rotary_permute, write_gguf

    write_gguf(read_llama(untrained), "f32", tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    got = {t.name: np.array(t.data).reshape(list(reversed(t.shape.tolist()))) for t in r.tensors}
    hf = _hf_tensors(untrained)
    q, k = hf["model.layers.1.self_attn.q_proj.weight"], hf["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(got["blk.1.attn_q.weight"], rotary_permute(q, 4))
    np.testing.assert_array_equal(got["blk.1.attn_k.weight"], rotary_permute(k, 2))  # kv heads, not query heads
    assert not np.array_equal(got["blk.1.attn_q.weight"], q)
    np.testing.assert_array_equal(got["blk.1.attn_v.weight"], hf["model.layers.1.self_attn.v_proj.weight"])


def test_rotary_permutation_turns_rotate_half_into_interleaved_pairs():
    """Scores q.k under HF's rotate-half RoPE equal scores under llama.cpp's interleaved RoPE
    on the permuted weights (the reason for the permutation), and differ without it."""
    from edgeq.llamacpp.gguf import rotary_permute

    rng = np.random.default_rng(0)
    heads, d, hidden, pos_q, pos_k = 2, 8, 16, 5, 2
    wq, wk = rng.normal(size=(heads * d, hidden)), rng.normal(size=(heads * d, hidden))
    x, y = rng.normal(size=hidden), rng.normal(size=hidden)
    inv = 10000.0 ** (-np.arange(0, d, 2) / d)

    def rope_half(v, pos):  # Hugging Face: pairs (i, i + d/2)
        v = v.reshape(heads, d)
        c, s = np.cos(pos * inv), np.sin(pos * inv)
        a, b = v[:, : d // 2], v[:, d // 2 :]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=1)

    def rope_pairs(v, pos):  # llama.cpp (LLAMA_ROPE_TYPE_NORM): pairs (2i, 2i + 1)
        v = v.reshape(heads, d).copy()
        c, s = np.cos(pos * inv), np.sin(pos * inv)
        a, b = v[:, 0::2].copy(), v[:, 1::2].copy()
        v[:, 0::2], v[:, 1::2] = a * c - b * s, b * c + a * s
        return v

    ref = (rope_half(wq @ x, pos_q) * rope_half(wk @ y, pos_k)).sum(1)
    got = (rope_pairs(rotary_permute(wq, heads) @ x, pos_q) * rope_pairs(rotary_permute(wk, heads) @ y, pos_k)).sum(1)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    wrong = (rope_pairs(wq @ x, pos_q) * rope_pairs(wk @ y, pos_k)).sum(1)
    assert np.abs(wrong - ref).max() > 1e-3


def test_same_input_same_bytes_and_low_bit_keeps_output_in_q8(untrained, tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    src = read_llama(untrained)
    a = write_gguf(src, "q4_0", tmp_path / "a.gguf")
    b = write_gguf(src, "q4_0", tmp_path / "b.gguf")
    assert sha256_file(a.path) == sha256_file(b.path)
    assert a.tensor_types == {"F32": 5, "Q4_0": 15, "Q8_0": 1}
    r = gguf.GGUFReader(str(a.path))
    assert {t.name: t.tensor_type.name for t in r.tensors}["output.weight"] == "Q8_0"
    assert any("output projection" in n for n in a.notes)


def test_tied_embeddings_write_no_output_tensor(tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    folder = make_tiny_llama(tmp_path / "tied", TinyLlamaSpec(tie_embeddings=True), train=False)
    res = write_gguf(read_llama(folder), "q4_0", tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(res.path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert "output.weight" not in types and types["token_embd.weight"] == "Q8_0"


def test_unsupported_quant_type_is_a_clear_error_and_writes_nothing(runner, untrained, tmp_path):
    from edgeq.llamacpp.gguf import check_quant

    with pytest.raises(QuantizationError) as e:
        check_quant("q6_k")
    assert "q8_0" in e.value.hint and "q4_k" in e.value.hint
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(untrained), "--target", "llamacpp-arm64", "--quant", "iq2_xs", "-o", str(out)])
    assert r.exit_code == 2 and "iq2_xs" in r.stderr and "not supported" in r.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if "edgeq-" in p.name] == []


def test_bad_sources_are_refused(runner, untrained, tmp_path):
    from edgeq.llamacpp.gguf import read_llama

    # pickle weights only: never loaded
    pk = tmp_path / "pickled"
    pk.mkdir()
    (pk / "config.json").write_text((untrained / "config.json").read_text())
    (pk / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickle files are never loaded"):
        read_llama(pk)
    # not a Llama
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="is not a model edgeq converts to GGUF"):
        read_llama(other)
    # a BPE vocabulary without merges (llama.cpp refuses it)
    nm = tmp_path / "nomerges"
    nm.mkdir()
    for f in untrained.iterdir():
        (nm / f.name).write_bytes(f.read_bytes())
    tj = json.loads((nm / "tokenizer.json").read_text())
    tj["model"]["merges"] = []
    (nm / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ModelError, match="no merges"):
        read_llama(nm)
    # an .onnx file given to a llama.cpp target
    model = make_cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(model), "--target", "llamacpp-x86_64", "-o", str(out)])
    assert r.exit_code == 2 and "Hugging Face Llama folder" in r.stderr and not out.exists()


def test_llamacpp_targets_load_and_onnx_targets_are_unchanged(tmp_path):
    from edgeq.core.targets import load_target

    arm = load_target("llamacpp-arm64")
    assert arm.runtime == "llama.cpp" and arm.arch == "aarch64" and arm.gguf.quant == "q4_0"
    assert load_target("llamacpp-x86_64").gguf.quant == "q4_k"
    tq8, tq4 = arm.gguf.tolerance("q8_0"), arm.gguf.tolerance("q4_0")
    assert tq8.max_kl < tq4.max_kl and tq8.min_top1 > tq4.min_top1
    assert arm.to_dict()["gguf"]["tolerances"]["q8_0"]["max_kl"] == tq8.max_kl
    cpu = load_target("cpu-x86_64")
    assert cpu.runtime == "onnxruntime" and cpu.gguf is None and cpu.provider_names == ("CPUExecutionProvider",)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "x"\nruntime = "llama.cpp"\n[gguf]\nquant = "q3_k"\n')
    with pytest.raises(TargetError, match="q3_k"):
        load_target(bad)
    bad.write_text('name = "x"\ndescription = "x"\nruntime = "llama.cpp"\n[gguf]\n[[providers]]\nname = "CPUExecutionProvider"\n')
    with pytest.raises(TargetError, match="do not apply"):
        load_target(bad)
    bad.write_text('name = "x"\ndescription = "x"\n[gguf]\nquant = "q4_0"\n[[providers]]\nname = "CPUExecutionProvider"\n')
    with pytest.raises(TargetError, match="needs runtime"):
        load_target(bad)


# ------------------------------------------------------------------ llama.cpp itself (slow)


@pytest.mark.slow
def test_trained_llama_q8_0_and_q4_0_verified_by_llama_cpp(runner, trained, tmp_path):
    import llama_cpp  # noqa: F401 - edgeq[gguf] installs it; a missing install must fail here, not skip

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n\n".join(p.replace("\n\n", "\n") for p in heldout_prompts(4, 96)), encoding="utf-8")
    res = {}
    for q in ("q8_0", "q4_0"):
        out = tmp_path / q
        r = runner.invoke(app, ["export", str(trained), "--target", "llamacpp-arm64", "--quant", q,
                                "--eval", str(prompts), "-o", str(out), "--json"])
        assert r.exit_code == 0, r.output
        res[q] = json.loads(r.stdout)
        v = res[q]["verify"]
        assert v["passed"], v["failures"]
        assert v["tokenizer_agreement"] == 1.0  # llama.cpp tokenizes the prompts exactly like the HF tokenizer
        assert v["n_vocab"] == 320 and v["prompts"] == 4 and v["positions"] > 100
        # the model is trained: far better than uniform over 320 tokens (held-out text)
        assert v["perplexity_fp32"] < 100
        # bundle: gguf + Modelfile + manifest with checksums
        names = sorted(p.name for p in out.iterdir())
        assert names == ["Modelfile", "golden", "manifest.json", "model.gguf", "run.py"]
        man = json.loads((out / "manifest.json").read_text())
        assert man["runtime"] == "llama.cpp" and man["target"]["name"] == "llamacpp-arm64"
        assert man["files"]["model.gguf"]["sha256"] == sha256_file(out / "model.gguf")
        assert man["quantization"]["mode"] == q and man["verify"]["kl_mean"] == v["kl_mean"]
        assert "FROM ./model.gguf" in (out / "Modelfile").read_text()
    # the bundle re-checks itself: checksums, then llama.cpp on the golden prompts
    r = runner.invoke(app, ["verify", str(tmp_path / "q8_0"), "--json"])
    assert r.exit_code == 0, r.output
    chk = json.loads(r.stdout)
    assert chk["passed"] and len(chk["pairs"]) == 4 and chk["files_checked"] == 3 + 8
    (tmp_path / "q8_0" / "Modelfile").write_text("FROM ./other.gguf\n")
    r = runner.invoke(app, ["verify", str(tmp_path / "q8_0")])
    assert r.exit_code == 2 and "checksum mismatch: Modelfile" in r.stderr
    q8, q4 = res["q8_0"]["verify"], res["q4_0"]["verify"]
    assert q8["kl_mean"] < 1e-3 and q8["top1_agreement"] >= 0.98 and q8["max_abs_logit_error"] < 0.2
    assert q4["kl_mean"] < 0.02 and q4["top1_agreement"] >= 0.85
    assert q8["kl_mean"] < q4["kl_mean"] / 3  # 8-bit much closer to fp32 than 4-bit
    assert res["q4_0"]["size"]["model_bytes"] < 0.7 * res["q8_0"]["size"]["model_bytes"]


@pytest.mark.slow
def test_q4_k_through_llama_cpp_quantizer_and_existing_bundle_kept(runner, trained, tmp_path):
    import llama_cpp  # noqa: F401

    out = tmp_path / "k"
    r = runner.invoke(app, ["export", str(trained), "--target", "llamacpp-x86_64", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "q4_k"  # the target's default
    types = res["quantization"]["tensor_types"]
    assert types.get("Q4_K", 0) + types.get("Q6_K", 0) + types.get("Q5_0", 0) >= 14 and "F32" in types
    assert res["verify"]["passed"], res["verify"]["failures"]
    before = snapshot(out)
    r = runner.invoke(app, ["export", str(trained), "--target", "llamacpp-x86_64", "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert snapshot(out) == before
