"""GGUF for Qwen2 folders (q/k/v biases, NEOX rotary): written by edgeq, verified by llama.cpp against transformers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from fixtures.llm import greedy_json, run_script, save_lm  # noqa: E402
from fixtures.spm import export_gguf  # noqa: E402


def test_qwen2_params_tensors_and_no_rotary_permutation(tmp_path):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from edgeq.llamacpp.gguf import read_llama, write_gguf

    folder = save_lm(tmp_path / "qwen", "qwen2")
    src = read_llama(folder)
    assert src.params.arch == "qwen2"
    write_gguf(src, "f32", tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "qwen2" and "qwen2.block_count" in r.fields
    t = {x.name: np.asarray(x.data) for x in r.tensors}
    w = load_file(str(folder / "model.safetensors"))
    assert np.array_equal(t["blk.0.attn_q.bias"], w["model.layers.0.self_attn.q_proj.bias"])
    # NEOX rotary in llama.cpp's qwen2: q/k rows keep Hugging Face's order (Llama's are permuted)
    assert np.array_equal(t["blk.1.attn_k.weight"].reshape(w["model.layers.1.self_attn.k_proj.weight"].shape),
                          w["model.layers.1.self_attn.k_proj.weight"])


@pytest.mark.slow
def test_qwen2_f32_verified_by_llama_cpp(runner, tmp_path):
    import llama_cpp  # noqa: F401

    folder = save_lm(tmp_path / "qwen", "qwen2", pre="qwen2")  # Qwen2's own pre-tokenizer regex (digits one at a time)
    v, out = export_gguf(runner, folder, tmp_path, "def main(): return 2024 + 12345\n\nthe quick brown fox jumps over the lazy dog 0123456789\n")
    assert v["passed"] and v["tokenizer_agreement"] == 1.0 and v["n_vocab"] == 300
    assert v["kl_mean"] < 1e-5 and v["top1_agreement"] >= 0.99  # f32: the conversion itself, no rounding
    man = json.loads((out / "manifest.json").read_text())["model"]
    assert man["architecture"] == "qwen2" and man["tokenizer"]["pre"] == "qwen2"
    # the bundle's run.py generates through llama.cpp (isolated child, neutral cwd): greedy = transformers' greedy
    import transformers

    from edgeq.bundles.genai import hf_greedy, prompt_ids

    got = greedy_json(out / "run.py", "def main():", 12, tmp_path / "cwd")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = prompt_ids(folder, ["def main():"], 300)[0]
    want = hf_greedy(model, [ids], 12)[0]
    want = want[: want.index(2)] if 2 in want else want
    assert got["tokens"] == want and len(want) >= 4 and got["stop"] == ("eos" if len(want) < 12 else "max_new_tokens")
    assert not (out / "__pycache__").exists()
    (out / "Modelfile").write_text("FROM ./other.gguf\n")
    p = run_script(out / "run.py", ["--prompt", "x"], tmp_path / "cwd")
    assert p.returncode == 2 and "checksum mismatch: Modelfile" in p.stderr
