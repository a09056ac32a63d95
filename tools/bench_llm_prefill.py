#!/usr/bin/env python3
"""Time to first token of a static (NPU) KV-cache decoder: the prefill graph against one token per run.

    python tools/bench_llm_prefill.py [--hidden 256 --layers 4 --prompt 128 --chunk 64 --threads 1]
    python tools/bench_llm_prefill.py --qnn-soc 57     # also placement on the QNN HTP simulator (fp16)

Builds a Llama-shaped model from a config (random weights: timing does not depend on them), writes
its one-token static graph (``build_decoder(..., static_context=SLOTS)``) and the prefill graph
derived from it (``exporters/static_prefill.py``), then feeds the same prompt both ways through the
host code the bundle ships (``exporters/static_decoder.py``) on onnxruntime's CPU provider: through
the prefill graph (chunks of ``--chunk`` tokens) and token by token through the step graph. Rounds
are interleaved; the best round's median is reported (a busy host only slows a round down), with
the ratio of the two measured in the same run.

``--qnn-soc``: where both graphs run on the QNN HTP simulator (onnxruntime-qnn, HTP in fp16
precision for that SoC model; the simulator's times are not device times), measured and as
qnn-htp.toml's op list estimates it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(work: Path, a) -> tuple[Path, Path]:
    from edgeq.exporters import decoder as D
    from edgeq.exporters.static_prefill import write_prefill
    from fixtures.llm import make_lm

    model = make_lm("llama", hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
                    max_position_embeddings=a.slots, initializer_range=0.02)
    arch = D.arch_from_config(model.config)
    step = D.build_decoder(arch, model.state_dict(), work / "model.onnx", static_context=a.slots, chunk=1)
    return step, write_prefill(step, work / "prefill.onnx", a.chunk)


def ttft_ms(step, graph, ids: np.ndarray, reps: int) -> float:
    from edgeq.exporters.static_decoder import StaticCache

    times = []
    for _ in range(reps):
        t = time.perf_counter()
        logits = StaticCache(step).extend(graph, ids)
        int(np.argmax(logits[-1]))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def placement(path: Path, soc: str) -> dict:
    import dataclasses

    from edgeq.core.golden import typical_feed
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import Provider, load_target
    from edgeq.profiling.accel import export_placement
    from edgeq.profiling.placement import estimate

    tg = load_target("qnn-htp")
    qnn = tg.providers[0]
    opts = tuple(sorted(dict(qnn.options, enable_htp_fp16_precision="1", soc_model=soc).items()))
    fp16 = dataclasses.replace(tg, providers=(Provider(qnn.name, opts),) + tg.providers[1:])
    art = artifact_from(path)
    pl = export_placement(path, fp16, art.io, (typical_feed(path, art.io),)) or {}
    est = estimate(path, tg)
    return {"measured_share": pl.get("accel_node_share"), "measured": pl.get("kind"), "reason": pl.get("reason"),
            "fallback": [f["node"] for f in pl.get("fallback", [])], "estimated_share": est["accel_node_share"],
            "nodes": est["nodes_total"], "ops": sorted({n.op_type for n in __import__("onnx").load(str(path), load_external_data=False).graph.node})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--qnn-soc", default="", help="also measure placement on the QNN HTP simulator (fp16) for this soc_model")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeq-prefill-") as tmp:
        step_path, pre_path = build(Path(tmp), a)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.log_severity_level = 3
        step = ort.InferenceSession(str(step_path), so, providers=["CPUExecutionProvider"])
        pre = ort.InferenceSession(str(pre_path), so, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(0, a.vocab, a.prompt, dtype=np.int64)
        same = np.abs(prompt_logits(step, pre, ids) - prompt_logits(step, step, ids)).max()
        ttft_ms(step, pre, ids, 1), ttft_ms(step, step, ids, 1)  # warm-up
        best = {"prefill": float("inf"), "one_token": float("inf")}
        for _ in range(a.rounds):
            best["prefill"] = min(best["prefill"], ttft_ms(step, pre, ids, a.reps))
            best["one_token"] = min(best["one_token"], ttft_ms(step, step, ids, a.reps))
        res = {"config": {k: getattr(a, k) for k in ("hidden", "layers", "heads", "kv_heads", "vocab", "slots", "prompt", "chunk", "threads")},
               "ttft_ms_prefill": best["prefill"], "ttft_ms_one_token_per_run": best["one_token"],
               "speedup": best["one_token"] / best["prefill"], "max_abs_logit_difference": float(same)}
        if a.qnn_soc:
            res["qnn_htp"] = {"step": placement(step_path, a.qnn_soc), "prefill": placement(pre_path, a.qnn_soc)}
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    c = res["config"]
    print(f"llama-shaped hidden {c['hidden']}, {c['layers']} layers, {c['slots']} slots, {c['threads']} thread(s), CPU provider")
    print(f"time to first token at {c['prompt']} prompt tokens: prefill graph ({c['chunk']} per run) {res['ttft_ms_prefill']:.2f} ms, "
          f"one token per run {res['ttft_ms_one_token_per_run']:.2f} ms: x{res['speedup']:.1f} "
          f"(prompt logits agree to {res['max_abs_logit_difference']:.2g})")
    for name, p in res.get("qnn_htp", {}).items():
        meas = f"{100 * p['measured_share']:.1f} %" if p["measured_share"] is not None else f"{p['measured']}: {p['reason']}"
        print(f"QNN HTP simulator, {name} graph: {meas} of {p['nodes']} nodes measured on the HTP, {100 * p['estimated_share']:.1f} % "
              f"by qnn-htp.toml's op list" + (f"; on the CPU: {', '.join(p['fallback'])}" if p["fallback"] else ""))
    return 0


def prompt_logits(step, graph, ids):
    """The prompt's logits through ``graph`` (the step graph's cache)."""
    from edgeq.exporters.static_decoder import StaticCache

    return StaticCache(step).extend(graph, ids)


if __name__ == "__main__":
    sys.exit(main())
