#!/usr/bin/env python3
"""An int8 KV cache against the fp32 cache, same weights: next-token KL, same top token, greedy agreement.

    edgeq export FOLDER --task text-generation --quant int4 --algo gptq --calib W.npz -o A                  # fp32 cache
    edgeq export FOLDER --task text-generation --quant int4 --algo gptq --calib W.npz --kv-cache int8 -o B  # int8 cache
    python tools/bench_llm_kv8.py A B --windows EVAL.npz [--split 32] [--prompts 8 --new-tokens 32]

Both bundles' ``model.onnx`` read each ``input_ids`` window of EVAL.npz as an app would: a prefill of the
first ``--split`` tokens, then one token per step through the cache (``exporters.decoder.decode_with_cache``),
so every later position reads keys and values the cache stored. Per position: KL(p_A || p_B) and whether
both rank the same token first. Then greedy generation through the bundles' own loop (``bundles/llmgen.py``,
what run.py runs, KV buffers shared as onnxruntime-genai shares them) from the first ``--prompt-len`` tokens
of each window: the share of new tokens equal to A's and the first divergence. Timing: tools/bench_llm_step.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def through_cache(a: Path, b: Path, windows: np.ndarray, split: int) -> dict:
    from edgeq.checks.lmeval import compare_logits
    from edgeq.core.runtime import create_session
    from edgeq.exporters.decoder import decode_with_cache

    sa, sb = create_session(a / "model.onnx"), create_session(b / "model.onnx")
    kl, same = [], []
    for row in windows:
        la = decode_with_cache(sa, row[None], split)
        lb = decode_with_cache(sb, row[None], split)
        st = compare_logits(la[:, split - 1 :], lb[:, split - 1 :], row[None, split - 1 :])  # decoded positions only
        kl.append(st["kl"])
        same.append(st["same"])
    k, s = np.concatenate(kl), np.concatenate(same)
    return {"positions": int(k.size), "kl_mean": float(k.mean()), "kl_p99": float(np.quantile(k, 0.99)), "same_top_token": float(s.mean())}


def greedy(a: Path, b: Path, prompts: list[list[int]], new: int) -> dict:
    from edgeq.bundles.llmgen import Decoder, generate  # what the bundle's generate.py is

    da, db = Decoder(str(a)), Decoder(str(b))
    same = total = 0
    first: list[int | None] = []
    for p in prompts:
        ta, tb = generate(da, p, max_new_tokens=new)["tokens"], generate(db, p, max_new_tokens=new)["tokens"]
        hits = [x == y for x, y in zip(ta, tb)]
        same += sum(hits)
        total += max(len(ta), len(tb))
        first.append(next((i for i, h in enumerate(hits) if not h), None))
    return {"prompts": len(prompts), "new_tokens": new, "agreement": same / max(total, 1),
            "identical": sum(f is None for f in first), "first_divergence": first}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32_cache", type=Path)
    ap.add_argument("int8_cache", type=Path)
    ap.add_argument("--windows", type=Path, required=True, help=".npz with input_ids [n, T]")
    ap.add_argument("--split", type=int, default=32)
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    with np.load(a.windows, allow_pickle=False) as z:
        ids = np.asarray(z["input_ids"], np.int64)
    res = {"through_cache": through_cache(a.fp32_cache, a.int8_cache, ids[: a.max_windows], a.split),
           "greedy": greedy(a.fp32_cache, a.int8_cache, [r[: a.prompt_len].tolist() for r in ids[: a.prompts]], a.new_tokens)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
