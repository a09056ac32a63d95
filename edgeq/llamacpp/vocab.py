"""SentencePiece-style vocabularies for GGUF (llama.cpp tokenizer model ``llama``).

Phi-3, Gemma and Llama 2 tokenizers are a BPE with byte fallback over text whose spaces are
``▁`` (U+2581). ``tokenizer.json`` stores them as a merge list; llama.cpp's ``llama`` tokenizer
instead merges the adjacent pair whose joined piece has the highest *score*. A piece's score is
therefore minus the rank of the first merge that makes it, which gives the same merge order.
Single characters, ``<0xNN>`` bytes and specials score 0 (never merge results); a longer normal
piece that no merge makes (transformers' BPE never produces it) gets the lowest score, so
llama.cpp forms it only when nothing else merges. Token types follow llama.cpp: NORMAL 1,
UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.

This module reads only the parsed ``tokenizer.json`` it is given (no files, no imports of the
tokenizer library); ``gguf.read_vocab`` decides which vocabulary kind a folder has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError

SPACE = "\u2581"
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
NO_MERGE = -1e9  # score of a multi-character piece no merge makes (below every merge rank)


@dataclass(frozen=True)
class SpmVocab:
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    add_space_prefix: bool


def is_spm(tj: dict[str, Any]) -> bool:
    """A SentencePiece-style BPE: ``byte_fallback`` on (GPT-2 / Llama 3 style byte-level BPEs have it off)."""
    model = tj.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def space_prefix(tj: dict[str, Any], where: str) -> bool:
    """Whether the tokenizer puts ``▁`` in front of a text, read from its normalizer / pre-tokenizer.

    Llama 2 (legacy): normalizer Prepend("▁") + Replace(" ", "▁"); Llama 2 (current transformers):
    pre-tokenizer Metaspace(prepend_scheme "first"/"always"); Gemma: Replace(" ", "▁") only.
    """
    def parts(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
        if not node:
            return []
        return list(node.get(key) or []) if node.get("type") == "Sequence" else [node]

    norms = parts(tj.get("normalizer"), "normalizers")
    pres = parts(tj.get("pre_tokenizer"), "pretokenizers")
    prepend = any(n.get("type") == "Prepend" and n.get("prepend") == SPACE for n in norms)
    replaces = any(n.get("type") == "Replace" and (n.get("pattern") or {}).get("String") == " " and n.get("content") == SPACE for n in norms)
    for p in pres:
        if p.get("type") == "Metaspace":
            if p.get("replacement", SPACE) != SPACE:
                raise ModelError(f"{where}: Metaspace replacement {p.get('replacement')!r} is not '▁'", "llama.cpp's SentencePiece tokenizer writes spaces as '▁'")
            scheme = p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never")
            if scheme == "always" and p.get("split", True):
                raise ModelError(f"{where}: a Metaspace pre-tokenizer that splits words with a '▁' before each one is not supported",
                                 "llama.cpp's SentencePiece tokenizer adds '▁' once, at the start of the text")
            prepend = prepend or scheme in ("first", "always")
            replaces = True
        elif p.get("type") == "Split" and (p.get("pattern") or {}).get("String") == " ":
            continue  # Gemma: splits on spaces, which its normalizer has already replaced by '▁'
        else:
            raise ModelError(f"{where}: pre-tokenizer '{p.get('type')}' is not part of a SentencePiece-style tokenizer edgeq knows",
                             "supported: Llama 2 / Phi-3 / Gemma tokenizers (BPE with byte fallback, spaces as '▁')")
    if not replaces:
        raise ModelError(f"{where}: the tokenizer does not write spaces as '▁'", "llama.cpp's SentencePiece tokenizer needs Llama 2 / Gemma style '▁' spaces")
    return prepend


def spm_vocab(tj: dict[str, Any], n: int, where: str) -> SpmVocab:
    """tokens / scores / types for ``n`` ids from a BPE-with-byte-fallback ``tokenizer.json``."""
    model = tj.get("model") or {}
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in tj.get("added_tokens") or []}
    for content, t in added.items():
        vocab[content] = int(t["id"])
    tokens: list[str | None] = [None] * n
    for tok, i in vocab.items():
        if not 0 <= i < n:
            raise ModelError(f"{where}: token id {i} is outside the model's vocabulary of {n}", "the tokenizer does not belong to this model")
        if tokens[i] is not None and tokens[i] != tok:
            raise ModelError(f"{where}: id {i} is used by two tokens", "the tokenizer file is inconsistent")
        tokens[i] = tok
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise ModelError(f"{where}: byte fallback is on but {len(missing)} of the 256 byte tokens (first {missing[0]}) are missing",
                         "llama.cpp's SentencePiece tokenizer needs all 256 <0xNN> tokens")
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges") or []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    unk = model.get("unk_token")
    out_tokens, scores, types = [], [], []
    for i, tok in enumerate(tokens):
        if tok is None:
            out_tokens.append(f"[PAD{i}]")
            scores.append(-1e9)
            types.append(UNUSED)
            continue
        out_tokens.append(tok)
        if tok in rank:
            scores.append(-float(rank[tok]))
        else:
            scores.append(NO_MERGE if len(tok) > 1 and tok not in added and tok != unk and not _BYTE.fullmatch(tok) else 0.0)
        if tok in added and tok != unk:
            types.append(CONTROL if added[tok].get("special") else USER_DEFINED)
        elif tok == unk:
            types.append(UNKNOWN)
        elif _BYTE.fullmatch(tok):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return SpmVocab(tuple(out_tokens), tuple(scores), tuple(types), space_prefix(tj, where))
