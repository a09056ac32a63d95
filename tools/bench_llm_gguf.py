#!/usr/bin/env python3
"""GGUF rows for tools/bench_llm.py: edgeq's GGUF (q4_0, q4_k = Q4_K_M through llama.cpp's quantizer) run by llama.cpp.

Quality: llama.cpp's prefill logits (llama-cpp-python, every position) against the fp32 PyTorch
logits bench_llm.py already holds, on the same token windows. Timing, in an isolated child per
model (loaded as the bundle's run.py loads it: extra buffer types off on AMX hosts): time to first
token = the median of three prefills of a random prompt of each context length; decode tokens/s = 1 / the median
one-token ``eval`` with the cache filled to each context length; per thread setting (0 = all cores);
peak RSS (VmHWM) of that child.

    python tools/bench_llm_gguf.py --child JSON   # used by bench_llm.py; not meant to be run by hand
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GGUF_QUANTS = ("q4_0", "q4_k")
LABEL = {"q4_k": "q4_k_m"}


def _greedy(llm) -> int:
    """The most likely next token after the last eval (llama-cpp-python keeps no scores without logits_all)."""
    import llama_cpp

    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))))


def child_timing(args: dict[str, Any]) -> dict[str, Any]:
    """In a child: llama.cpp load, then prefill / decode timings per thread setting; peak RSS."""
    import resource

    from edgeq.llamacpp.gguf_run import load

    contexts, steps = args["contexts"], args["steps"]
    n_ctx = max(contexts) + steps + 8
    res: dict[str, Any] = {"timing": {}}
    for threads in args["threads"]:
        llm, extra = load(args["gguf"], n_ctx=n_ctx, threads=threads or (os.cpu_count() or 1), seed=0)
        res["extra_buffer_types"] = extra
        llm.eval([3 + i % (args["vocab"] - 3) for i in range(max(contexts))])  # warm-up: the first evals size llama.cpp's buffers
        llm.reset()
        rng = np.random.default_rng(0)
        rows = []
        for ctx in contexts:
            ids = rng.integers(3, args["vocab"], ctx).tolist()
            pre = []
            for _ in range(3):  # the median of three prefills: a busy host's stalls do not count
                llm.reset()
                t = time.perf_counter()
                llm.eval(ids)
                tok = _greedy(llm)
                pre.append(time.perf_counter() - t)
            ttft = float(np.median(pre))
            per = []
            for _ in range(steps):
                t = time.perf_counter()
                llm.eval([tok])
                tok = _greedy(llm)
                per.append(time.perf_counter() - t)
            med = float(np.median(per))  # the median step: a busy host's stalls do not count
            rows.append({"context": ctx, "ttft_ms": ttft * 1e3, "decode_tokens_per_s": 1 / med if med > 0 else None})
        res["timing"][str(threads)] = rows
        llm.close() if hasattr(llm, "close") else None
    from edgeq.profiling.worker import memory_status  # VmHWM: ru_maxrss keeps the forked parent's high-water mark

    res["peak_rss_bytes"] = memory_status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


def _run_child(args: dict[str, Any]) -> dict[str, Any]:
    from edgeq.core import child

    p = child.run(child.python_argv(sys.executable, [str(Path(__file__).resolve()), "--child", json.dumps(args)]),
                  capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "child failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def gguf_rows(folder: Path, ids: list[list[int]], ref: list[np.ndarray], *, quants: list[str], contexts: list[int],
              threads: list[int], steps: int, vocab: int, work: Path, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    """One row per GGUF quant type, in bench_llm.py's row format (name, bytes, compare_logits figures, timing, peak RSS)."""
    from edgeq.llamacpp.gguf import compare_logits, llama_cpp_logits, read_llama, write_gguf

    src = read_llama(folder)
    rows = []
    for q in quants:
        t0 = time.perf_counter()
        path = work / f"model_{q}.gguf"
        path.unlink(missing_ok=True)
        res = write_gguf(src, q, path)
        logits, _ = llama_cpp_logits(path, ids)
        m = compare_logits(ref, logits, ids)
        r = _run_child({"gguf": str(path), "contexts": contexts, "threads": threads, "steps": steps, "vocab": vocab})
        name = f"GGUF {LABEL.get(q, q)} (llama.cpp)"
        rows.append({"name": name, "bytes": res.bytes, **m, "timing": r["timing"], "peak_rss_bytes": r["peak_rss_bytes"],
                     "tensor_types": res.tensor_types})
        log(f"{name}: KL {m['kl_mean']:.2e}, same top {100 * m['top1_agreement']:.2f} %, types {res.tensor_types} "
            f"({time.perf_counter() - t0:.0f} s)")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child_timing(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
