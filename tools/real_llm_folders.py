"""Hugging Face folders with the real configs of SmolLM-135M, Qwen2.5-0.5B and TinyLlama-1.1B (random weights).

No hub here: the config values are written out below; weights are transformers' default init, saved in bf16
safetensors sharded at 500 MB as the real checkpoints ship; a byte-level BPE tokenizer from fixtures/llm.py
(its ids fit the vocabulary); plus ``NAME-windows.npz`` (``input_ids`` [32, 128]) beside the folder for
``--calib``. Used for BENCHMARKS.md, "LLM export at real model sizes"; the commands are in docs/llm.md.

    python tools/real_llm_folders.py smollm135 /tmp/llm/smollm135
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "smollm135": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                                max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5)),
    "qwen05": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)),
    "tinyllama": ("llama", dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False,
                                max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(CONFIGS))
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    import numpy as np
    import torch
    import transformers as tf

    from fixtures.llm import BOS, EOS, train_tokenizer

    kind, cfg = CONFIGS[a.name]
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    model = cls[1](cls[0](**cfg, bos_token_id=1, eos_token_id=2, pad_token_id=0)).to(torch.bfloat16).eval()
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="500MB")
    tok = train_tokenizer(2000, "qwen2" if kind == "qwen2" else "gpt2")
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token="<pad>").save_pretrained(a.out)
    ids = np.random.default_rng(0).integers(3, tok.get_vocab_size(), size=(32, 128)).astype(np.int64)
    np.savez(a.out.parent / f"{a.name}-windows.npz", input_ids=ids)
    print(f"{a.out}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
