"""GGUF for a Llama 3.x-style folder: the Llama 3 pre-tokenizer ('llama-bpe') and "llama3" rope scaling
(llama.cpp's rope_freqs tensor), verified by llama.cpp against transformers past the original context."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from fixtures.spm import export_gguf  # noqa: E402

ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}


def _llama3_folder(folder):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from edgeq.llamacpp.gguf import _LLAMA3_REGEX
    from fixtures.llm import BOS, EOS, save_lm

    save_lm(folder, "llama", tokenizer=False, rope_scaling=dict(ROPE))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    text = ("The quick brown fox DOESN'T jump; it's 2024 and 1234567 foxes.\n\n  def main(): return 0\n") * 20
    tok.train_from_iterator([text], trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", BOS, EOS],
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token="<pad>").save_pretrained(folder)
    return folder


def test_llama3_rope_factors_tensor(tmp_path):
    from edgeq.llamacpp.gguf import read_llama, write_gguf

    folder = _llama3_folder(tmp_path / "l3")
    src = read_llama(folder)
    assert src.vocab.pre == "llama-bpe"
    # head_dim 8, base 1e4: wavelengths 6.3 (between 16/4 and 16/1: interpolated), 63, 628, 6283 (> 16: divided by 4)
    f = src.params.rope_freq_factors
    assert len(f) == 4 and 1.0 < f[0] < 4.0 and f[1:] == (4.0, 4.0, 4.0)
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = AutoConfig.from_pretrained(folder)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    plain = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
    assert np.allclose(plain / scaled.numpy(), f, rtol=1e-5)  # the same divisors transformers applies
    write_gguf(src, "q8_0", tmp_path / "m.gguf")
    t = {x.name: x for x in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert t["rope_freqs.weight"].tensor_type.name == "F32" and np.allclose(np.asarray(t["rope_freqs.weight"].data), f)


@pytest.mark.slow
def test_llama3_style_folder_verified_by_llama_cpp(runner, tmp_path):
    pytest.importorskip("llama_cpp")
    folder = _llama3_folder(tmp_path / "l3")
    v, out = export_gguf(runner, folder, tmp_path,  # > 16 tokens each: past the original context, where the scaling matters
                         "The quick brown fox DOESN'T jump; it's 2024 and 1234567 foxes, 89 of them.\n\n"
                         "  def main(): return 0\n\n\n  THE FOX'S 12345 Jumps!\n")
    assert v["passed"] and v["tokenizer_agreement"] == 1.0 and v["positions"] > 3 * 16
    assert v["kl_mean"] < 1e-5 and v["top1_agreement"] >= 0.99
    assert json.loads((out / "manifest.json").read_text())["model"]["tokenizer"]["pre"] == "llama-bpe"
