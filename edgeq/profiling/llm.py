"""LLM profile of a KV-cache decoder bundle: time to first token, decode tokens/s per context, peak RSS, KV bytes/token.

Measured in a child interpreter (isolated: ``-I``, a neutral working directory) so its peak
RSS is the model's and the runtime's, not edgeq's. Inputs are seeded random token ids (the
timings do not depend on which tokens). For each context length the cache is filled by one
prefill of that many tokens, then ``steps`` one-token decode steps are timed; tokens/s is
steps / time, and a flat curve over context means decode reads the cache instead of re-running
the prefix.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import BundleError

CONTEXTS = (128, 512, 2048)
PROMPT = 128
STEPS = 16
TIMEOUT_S = 600.0


def is_llm_bundle(path: Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "genai_config.json").is_file() and (p / "generate.py").is_file()


def measure(root: str, *, prompt: int = PROMPT, contexts: tuple[int, ...] = CONTEXTS, steps: int = STEPS, threads: int = 0,
            repeats: int = 3) -> dict[str, Any]:
    """In this process: the figures for ``root`` (edgeq's own generation code, not the bundle's)."""
    import resource

    import numpy as np

    from ..bundles.llmgen import Decoder

    dec = Decoder(root, threads=threads)
    vocab = int(dec.session.get_outputs()[0].shape[-1] or 100) if isinstance(dec.session.get_outputs()[0].shape[-1], int) else 100
    rng = np.random.default_rng(0)
    limit = dec.context
    prompt = min(prompt, limit - 1)
    ids = rng.integers(0, vocab, (1, prompt), dtype=np.int64)
    dec.step(ids[:, :8], None, 8)  # warm-up
    ttft = []
    for _ in range(repeats):
        t = time.perf_counter()
        logits, _ = dec.step(ids, None, prompt)
        int(np.argmax(logits))
        ttft.append(time.perf_counter() - t)
    static = {}
    if getattr(dec, "prefill", None) is not None:  # static decoder: the prompt through the prefill graph; also one token per run
        static["prefill_chunk"] = dec.prefill_chunk
        static["ttft_ms_step_only"] = _ttft_step_only(dec, ids, repeats)
    usable = [c for c in contexts if c + steps <= limit] or sorted({max(8, limit // 4), max(8, limit // 2)})
    if len(usable) < len(contexts):  # a longer context was asked for than fits: also the longest power of two that does
        top = 1 << int(np.log2(max(limit - steps, 1)))  # (a 1,280-token model: 1,024 beside 128 and 512)
        usable = sorted(set(usable) | ({top} if top > max(usable) else set()))
    rows = []
    for ctx in usable:
        ctx_ids = rng.integers(0, vocab, (1, ctx), dtype=np.int64)
        logits, cache = dec.step(ctx_ids, None, ctx)
        per = []
        total = ctx
        for _ in range(steps):
            tok = np.asarray([[int(np.argmax(logits))]], np.int64)
            t = time.perf_counter()
            logits, cache = dec.step(tok, cache, total + 1)
            per.append(time.perf_counter() - t)
            total += 1
        med = float(np.median(per))
        rows.append({"context": ctx, "decode_ms_per_token": med * 1e3, "decode_tokens_per_s": 1.0 / med if med > 0 else None})
    from .worker import memory_status

    # VmHWM: ru_maxrss would keep the high-water mark of the parent copy this child was forked from
    peak = memory_status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    flat = rows[-1]["decode_ms_per_token"] / rows[0]["decode_ms_per_token"] if len(rows) > 1 and rows[0]["decode_ms_per_token"] else None
    return {
        "prompt_tokens": prompt,
        "ttft_ms": float(np.median(ttft)) * 1e3,
        **static,
        "decode": rows,
        "decode_growth": flat,  # ms/token at the longest context over the shortest
        "peak_rss_bytes": int(peak),
        "kv_bytes_per_token": dec.kv_bytes_per_token(),
        "kv_cache_dtype": "int8" if dec.kv_int8 else "fp32",
        "context_length": limit,
        "steps": steps,
        "threads": threads,
        "note": "peak RSS of a child interpreter that loaded only numpy, onnxruntime and the model",
    }


def _ttft_step_only(dec: Any, ids: Any, repeats: int) -> float:
    """Median time to first token (ms) with the prompt fed one token per run through the step graph."""
    import numpy as np

    pre, dec.prefill = dec.prefill, None
    try:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            logits, _ = dec.step(ids, None, ids.shape[1])
            int(np.argmax(logits))
            times.append(time.perf_counter() - t)
    finally:
        dec.prefill = pre
    return float(np.median(times)) * 1e3


def profile_llm(bundle: Path, *, prompt: int = PROMPT, contexts: tuple[int, ...] = CONTEXTS, steps: int = STEPS,
                threads: int = 0) -> dict[str, Any]:
    """``measure`` in an isolated child interpreter (``-I``, neutral cwd); its checksums are checked first."""
    from ..bundles.reader import read_bundle

    root = str(Path(bundle).resolve())
    read_bundle(Path(root), shown=Path(bundle))  # the one reader: manifest, schema, file list, checksums
    args = json.dumps({"root": root, "prompt": prompt, "contexts": list(contexts), "steps": steps, "threads": threads})
    from ..core import child

    code = child.edgeq_code("import json, sys; from edgeq.profiling.llm import measure; a = json.loads(sys.argv[1]); r = a.pop('root'); "
                            "a['contexts'] = tuple(a['contexts']); print(json.dumps(measure(r, **a)))")
    proc = child.run(child.python_argv(sys.executable, ["-c", code, args]), capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise BundleError(f"LLM profile of {Path(bundle).name} failed: {last}", "check the bundle with edgeq verify")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llm_lines(label: str, r: dict[str, Any]) -> list[str]:
    rows = ", ".join(f"{d['context']}: {d['decode_tokens_per_s']:.1f} tok/s ({d['decode_ms_per_token']:.2f} ms)" for d in r["decode"])
    growth = f"; decode time x{r['decode_growth']:.2f} from shortest to longest context" if r.get("decode_growth") else ""
    return [
        f"LLM {label}: time to first token {r['ttft_ms']:.1f} ms at {r['prompt_tokens']} prompt tokens"
        + (f" (prefill graph, {r['prefill_chunk']} tokens per run; {r['ttft_ms_step_only']:.1f} ms one token per run)"
           if r.get("prefill_chunk") else ""),
        f"  decode by context: {rows}{growth}",
        f"  peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB, KV cache {r['kv_bytes_per_token']} bytes/token ({r.get('kv_cache_dtype', 'fp32')}), context length {r['context_length']}",
    ]
