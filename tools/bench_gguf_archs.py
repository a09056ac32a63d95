#!/usr/bin/env python3
"""GGUF per architecture: tiny Phi-3 / Gemma / Gemma 2 / Gemma 3 folders (fixtures/spm.py, random weights)
written by edgeq at f32, q8_0, q4_0 and q4_k (Q4_K_M) and run by llama.cpp against transformers' fp32 logits.

    python tools/bench_gguf_archs.py [--work DIR]

Prints one markdown table: file bytes, mean KL, same top token, perplexity ratio, llama.cpp/Hugging Face
tokenizer agreement, on three prompts. Random weights and hidden size 32: f32 shows the conversion is
exact; the quantized rows show rounding on rows of 32-64 weights (one q4 block per row), not what a
trained model loses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "phi3": dict(partial_rotary_factor=0.5),
    "gemma": {},
    "gemma2": dict(query_pre_attn_scalar=8, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3": dict(query_pre_attn_scalar=8, num_hidden_layers=6),
}
PROMPTS = ["def main(): return 2024 + 12345\n", "the quick brown fox jumps over the lazy dog 0123456789\n",
           "import os, sys; print('hello world') é"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--quants", default="f32,q8_0,q4_0,q4_k")
    a = ap.parse_args()
    from edgeq.llamacpp.gguf import read_llama, verify_gguf, write_gguf
    from fixtures.spm import save_spm_lm

    work = a.work or Path(tempfile.mkdtemp(prefix="edgeq-gguf-archs-"))
    report_only = SimpleNamespace(max_kl=float("inf"), min_top1=0.0, max_ppl_ratio=float("inf"))
    print("| arch | quant | file bytes | mean KL | same top | perplexity x fp32 | tokenizer agreement |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind, cfg in CONFIGS.items():
        folder = work / kind
        if not (folder / "model.safetensors").exists():
            save_spm_lm(folder, kind, **cfg)
        src = read_llama(folder)
        for q in [x.strip() for x in a.quants.split(",") if x.strip()]:
            path = folder / f"model_{q}.gguf"
            path.unlink(missing_ok=True)
            res = write_gguf(src, q, path)
            m = verify_gguf(folder, path, PROMPTS, report_only, q)
            print(f"| {kind} | {q} | {res.bytes} | {m['kl_mean']:.2e} | {100 * m['top1_agreement']:.1f} % | "
                  f"{m['perplexity_ratio']:.4f} | {m['tokenizer_agreement']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
