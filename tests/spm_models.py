"""Tiny Phi-3 / Gemma folders with a SentencePiece-style tokenizer (BPE with byte fallback, spaces as '▁').

The tokenizer is trained here on a few lines of text, then handed to transformers' own
``LlamaTokenizer`` (Phi-3, Llama 2: '▁' in front of the text) or ``GemmaTokenizer`` (no prefix)
as vocabulary + merges, so ``tokenizer.json`` has the layout those model families ship.
"""

from __future__ import annotations

from pathlib import Path

TEXT = ("the quick brown fox jumps over the lazy dog. def main(): return 0\n"
        "import os, sys; print('hello world') # a comment about numbers 0123456789\n") * 20
VOCAB = 400  # 3-5 specials + 256 byte tokens + learned pieces


def spm_vocab_merges(specials: list[str], vocab_size: int = VOCAB, prefix: bool = True) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """specials, then <0x00>..<0xFF>, then pieces learned on TEXT (words start with '▁'); and the merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never")
    n_fixed = len(specials) + 256
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    learned = tok.get_vocab()
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for piece, _ in sorted(learned.items(), key=lambda x: x[1]):
        vocab.setdefault(piece, len(vocab))
    import json

    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return vocab, merges


def save_spm_lm(folder: Path, kind: str = "phi3", **config) -> Path:
    """A save_pretrained folder of a tiny ``kind`` model (phi3, gemma, gemma2) with its family's tokenizer."""
    import transformers as tf

    from tests.llm_models import make_lm

    folder = Path(folder)
    gemma = kind.startswith("gemma")
    # Phi-3's vocabulary has <|endoftext|> and <|end|> too (llama.cpp looks the first up by text for models named phi3)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] if gemma else ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>"]
    vocab, merges = spm_vocab_merges(specials, prefix=not gemma)
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2) if gemma else dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = make_lm(kind, **{"vocab_size": VOCAB, **config})
    model.config.update(ids)
    model.generation_config.update(**ids)
    model.save_pretrained(folder, safe_serialization=True)
    if gemma:
        tok = tf.GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    else:
        tok = tf.LlamaTokenizer(vocab=vocab, merges=merges, add_prefix_space=True, add_bos_token=True,
                                extra_special_tokens=specials[3:])
    tok.save_pretrained(folder)
    return folder


def export_gguf(runner, folder: Path, tmp_path: Path, prompts: str, quant: str = "f32") -> tuple[dict, Path]:
    """``edgeq export FOLDER --target llamacpp-x86_64 --quant Q --eval PROMPTS --json``, checked to succeed:
    (the verification figures, the bundle folder)."""
    import json

    from edgeq.cli import app

    pfile = tmp_path / "prompts.txt"
    pfile.write_text(prompts, encoding="utf-8")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--target", "llamacpp-x86_64", "--quant", quant, "--eval", str(pfile),
                            "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["verify"], out
