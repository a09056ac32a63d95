#!/usr/bin/env python3
"""Compare GGUF quant types on one Llama model, each run by llama.cpp against the fp32 PyTorch model.

    python tools/bench_gguf.py                       # the trained tiny Llama from fixtures/lm.py
    python tools/bench_gguf.py --model path/to/hf_llama_folder --quants q8_0,q4_0,q4_k --json

One row per quant type: file size (and ratio to fp32), perplexity of fp32 and llama.cpp on the
same prompts, mean KL divergence, same-top-token %, and llama.cpp prompt-eval time per token on
this host (not device timing). Same columns as the INT4 comparison, so rows can be put side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Hugging Face Llama folder (default: build the tiny trained fixture)")
    ap.add_argument("--quants", default="f16,q8_0,q4_0,q4_k")
    ap.add_argument("--target", default="llamacpp-arm64", help="target whose tolerances judge each row")
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts (fixture only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgeq.llamacpp.gguf import DEFAULT_PROMPTS, export_llamacpp
    from edgeq.core.units import human_bytes
    from edgeq.core.targets import load_target

    err = Console(stderr=True)
    target = load_target(args.target)
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-gguf-") as tmp:
        tmp = Path(tmp)
        if args.model is None:
            from fixtures.lm import heldout_prompts, make_tiny_llama

            t0 = time.perf_counter()
            model = make_tiny_llama(tmp / "tiny-llama")
            err.print(f"trained the tiny Llama fixture in {time.perf_counter() - t0:.0f} s")
            prompts = heldout_prompts(args.prompts, 96)
        else:
            model, prompts = args.model, list(DEFAULT_PROMPTS)
        rows = []
        for q in [q.strip() for q in args.quants.split(",") if q.strip()]:
            t0 = time.perf_counter()
            r = export_llamacpp(model, target, tmp / q, quant=q, prompts=prompts)
            r["seconds"] = time.perf_counter() - t0
            rows.append(r)
            err.print(f"{q}: {r['seconds']:.1f} s")
    if args.json:
        print(json.dumps([{k: r[k] for k in ("quantization", "verify", "size", "passed", "seconds")} for r in rows], indent=2, sort_keys=True, default=str))
        return 0
    t = Table(title=f"GGUF on llama.cpp vs fp32 PyTorch ({rows[0]['verify']['prompts']} prompts, {rows[0]['verify']['positions']} positions)")
    for c in ("quant", "size", "x fp32", "ppl fp32", "ppl", "ppl ratio", "mean KL", "same top token", "ms/token (host)", "tensor types", "verify"):
        t.add_column(c, justify="left" if c in ("quant", "tensor types", "verify") else "right")
    for r in rows:
        v, s = r["verify"], r["size"]
        t.add_row(
            r["quantization"]["mode"], human_bytes(s["model_bytes"]), f"{s['ratio']:.3f}", f"{v['perplexity_fp32']:.3f}",
            f"{v['perplexity']:.3f}", f"{v['perplexity_ratio']:.4f}", f"{v['kl_mean']:.2e}", f"{100 * v['top1_agreement']:.1f} %",
            f"{v['host_ms_per_token']:.3f}", ", ".join(f"{k}:{n}" for k, n in r["quantization"]["tensor_types"].items()),
            "pass" if v["passed"] else "FAIL: " + "; ".join(v["failures"]),
        )
    Console(width=200).print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
