"""A tiny trained Llama, saved as a Hugging Face folder (safetensors + tokenizer.json).

Used by the GGUF tests and by ``tools/bench_gguf.py``. Everything is built here, offline:

- text: sources of a few Python standard-library modules (code, comments, docstrings);
- tokenizer: a byte-level BPE (the 256 byte symbols, two special tokens, and merges learned
  on that text) trained with the ``tokenizers`` package, saved as ``tokenizer.json``;
- model: ``LlamaForCausalLM`` with 2 layers, hidden 128, 4 query heads and 2 key/value heads
  (grouped-query attention, so the rotary permutation of k differs from q), trained for a fixed
  number of steps so its next-token predictions are far from uniform.

The same arguments give the same folder (seeded; fixed step count, not a time budget).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

SPECIALS = ("<|bos|>", "<|eos|>")
_MODULES = ("textwrap", "argparse", "difflib", "shlex", "fnmatch", "calendar")


@dataclass(frozen=True)
class TinyLlamaSpec:
    vocab_size: int = 320  # 2 specials + 256 bytes + 62 merges
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    context: int = 256
    seq: int = 64
    batch: int = 8
    steps: int = 200
    lr: float = 3e-3
    tie_embeddings: bool = False
    seed: int = 0


def corpus_text() -> tuple[str, str]:
    """(training text, held-out text) from standard-library sources; the last module is held out."""
    import importlib

    parts = [inspect.getsource(importlib.import_module(m)) for m in _MODULES]
    return "\n".join(parts[:-1]), parts[-1]


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE over ``text`` (GPT-2 pre-tokenizer regex), as a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def make_tiny_llama(folder: Path, spec: TinyLlamaSpec = TinyLlamaSpec(), *, train: bool = True) -> Path:
    """Write a trained (or, with ``train=False``, randomly initialised) tiny Llama to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text, _ = corpus_text()
    tok = train_tokenizer(text, spec.vocab_size)
    assert tok.get_vocab_size() == spec.vocab_size, tok.get_vocab_size()
    bos, eos = (tok.token_to_id(s) for s in SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1])
    fast.save_pretrained(folder)

    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.context, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=spec.tie_embeddings, bos_token_id=bos, eos_token_id=eos,
    )
    model = LlamaForCausalLM(cfg)
    if train:
        ids = torch.tensor(tok.encode(text).ids, dtype=torch.long)
        gen = torch.Generator().manual_seed(spec.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
        model.train()
        for _ in range(spec.steps):
            starts = torch.randint(0, len(ids) - spec.seq - 1, (spec.batch,), generator=gen)
            batch = torch.stack([ids[s : s + spec.seq] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    info = {"spec": spec.__dict__, "trained": train, "modules": list(_MODULES), "bos": bos, "eos": eos}
    (folder / "edgeq_fixture.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return folder


def heldout_prompts(n: int = 4, length: int = 64) -> list[str]:
    """``n`` snippets of the held-out module's source, each about ``length`` characters."""
    _, held = corpus_text()
    step = max(1, (len(held) - length) // n)
    return [held[i * step : i * step + length] for i in range(n)]
