"""Tiny causal LMs of each family the KV-cache builder writes, made from a config (random weights).

Weights are drawn wider than transformers' default (``initializer_range``) and the norm
weights and biases are perturbed, so logits are O(1) and a wrong mask, rotary or norm shows up
far above the export tolerance. ``save_lm`` adds a small byte-level BPE tokenizer (trained here
on a few lines of text) so the folder is what an app developer would have.
"""

from __future__ import annotations

from pathlib import Path

COMMON = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.25)
KINDS = ("llama", "qwen2", "phi3", "gemma", "gemma2", "gemma3")
BOS, EOS = "<|bos|>", "<|eos|>"


def make_lm(kind: str, seed: int = 0, **config):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    extra = {"head_dim": 8} if kind.startswith("gemma") else {}
    if kind in ("gemma2", "gemma3"):
        extra["sliding_window"] = 6  # shorter than the checked sequence: the sliding mask matters
    cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM), "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM), "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
    }[kind]
    cfg = cls[0](**{**COMMON, **extra, **config}, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "eager"
    model = cls[1](cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def train_tokenizer(vocab_size: int = 300, pre: str = "gpt2"):
    """Byte-level BPE; ``pre``: "gpt2" (ByteLevel's own regex) or "qwen2" (Qwen2's split regex, then ByteLevel)."""
    from tokenizers import Regex, pre_tokenizers

    from fixtures.lm import train_bpe

    text = ("the quick brown fox jumps over the lazy dog. def main(): return 0\n"
            "import os, sys; print('hello world') # a comment about numbers 0123456789\n") * 20
    pre_tok = None
    if pre == "qwen2":
        from edgeq.llamacpp.gguf import _QWEN2_REGEX

        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    return train_bpe(text, vocab_size, ["<pad>", BOS, EOS], pre_tok)


def save_lm(folder: Path, kind: str = "llama", *, tokenizer: bool = True, chat_template: str | None = None, pre: str = "gpt2",
            **config) -> Path:
    """A save_pretrained folder of a tiny ``kind`` model, with a tokenizer whose ids fit its vocabulary."""
    folder = Path(folder)
    model = make_lm(kind, **config)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        from transformers import PreTrainedTokenizerFast

        tok = train_tokenizer(model.config.vocab_size, pre)
        assert tok.get_vocab_size() <= model.config.vocab_size
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token="<pad>")
        if chat_template:
            fast.chat_template = chat_template
        fast.save_pretrained(folder)
    return folder


def run_script(script: Path, args: list[str], cwd: Path, timeout: float = 300):
    """A bundle's run.py as an app would start it: an isolated interpreter (-I) in a neutral working directory."""
    import subprocess
    import sys

    Path(cwd).mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-I", str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def greedy_json(script: Path, prompt: str, n: int, cwd: Path) -> dict:
    """``run.py --prompt PROMPT --max-new-tokens N --json``, checked to succeed."""
    import json

    p = run_script(script, ["--prompt", prompt, "--max-new-tokens", str(n), "--json"], cwd)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
