#!/usr/bin/env python3
"""The fp32 decoder of a tied-embedding model: the table stored once vs twice, on file and in onnxruntime.

    python tools/bench_llm_tied.py                     # SmolLM-135M's table (49,152 x 576), 1 layer, random weights
    python tools/bench_llm_tied.py --vocab 151936 --hidden 896 --heads 14 --kv-heads 2   # Qwen2.5-0.5B's table

Forms, each written by edgeq's decoder builder and then through edgeq's optimize stage (onnxruntime's offline
folding, as in an export):

- ``shared``: what edgeq writes: lm_head is ``Gemm(x, E, transB=1)`` between two Reshapes, over the embedding's own
  initializer;
- ``apart``: the earlier graph: lm_head a MatMul over its own copy ``E^T``;
- ``transpose``: ``MatMul(x, Transpose(E))``: one copy on file before optimize; onnxruntime folds the Transpose.

Per form: model file size, and in an isolated child interpreter (1 thread): peak RSS while creating the session
(VmHWM), RSS after it and one prefill (VmRSS), and the largest logit difference to ``apart``; then the one-token
decode step of the three forms in one child, taking turns (median and 10th percentile of 100 each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(args: dict) -> None:
    """Memory of one form (``path``), or the decode step of every form in ``paths``, interleaved (``time``)."""
    import time

    import onnxruntime as ort

    from edgeq.exporters.decoder import empty_past, prefill_feed
    from edgeq.profiling.worker import memory_status

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ids = (np.arange(16, dtype=np.int64)[None] * 7919) % args["vocab"]
    if "time" in args:  # one process, the forms taking turns: a busy host slows them alike
        sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in args["time"]]
        feeds = []
        for s in sessions:
            feeds.append({**prefill_feed(s.get_inputs(), ids[:, :1]), **empty_past(s.get_inputs(), 1)})
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(100):
            for s, f, t in zip(sessions, feeds, times):
                t0 = time.perf_counter()
                s.run(["logits"], f)
                t.append(time.perf_counter() - t0)
        print(json.dumps([{"step_ms": 1e3 * float(np.median(t)), "step_p10_ms": 1e3 * float(np.percentile(t, 10))} for t in times]))
        return
    s = ort.InferenceSession(args["path"], so, providers=["CPUExecutionProvider"])
    load_peak = memory_status().get("VmHWM", 0)
    np.save(args["logits"], s.run(["logits"], prefill_feed(s.get_inputs(), ids))[0])
    st = memory_status()
    print(json.dumps({"load_peak_bytes": load_peak, "rss_bytes": st.get("VmRSS", 0), "peak_bytes": st.get("VmHWM", 0)}))


def _run_child(args: dict) -> Any:
    from edgeq.core import child

    p = child.run(child.python_argv(sys.executable, [str(Path(__file__).resolve()), "--child", json.dumps(args)]),
                  capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "child failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _transpose_form(src: Path, dst: Path) -> None:
    """``apart`` with lm_head reading ``Transpose(embed_tokens.weight)`` instead of its own copy."""
    import onnx
    from onnx import helper

    m = onnx.load(str(src))
    head = next(n for n in m.graph.node if "lm_head.weight" in n.input)
    head.input[1] = "lm_head.weight_t"
    m.graph.node.insert(list(m.graph.node).index(head),
                        helper.make_node("Transpose", ["embed_tokens.weight"], ["lm_head.weight_t"], perm=[1, 0], name="lm_head.T"))
    keep = [t for t in m.graph.initializer if t.name != "lm_head.weight"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.save(m, str(dst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        return _child(json.loads(a.child))
    from edgeq.core.artifact import Artifact
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.optimization import optimize
    from edgeq.core.targets import load_target
    from edgeq.exporters.decoder import arch_from_config, build_decoder
    from fixtures.llm import make_lm

    model = make_lm("llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, tie_word_embeddings=True, max_position_embeddings=256)
    arch = arch_from_config(model.config)
    state = model.state_dict()
    apart_state = {**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}
    target = load_target("cpu-x86_64")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        build_decoder(arch, state, d / "shared.raw.onnx", fused=True)
        build_decoder(dataclasses.replace(arch, tied=False), apart_state, d / "apart.raw.onnx", fused=True)
        _transpose_form(d / "apart.raw.onnx", d / "transpose.raw.onnx")
        del model, state, apart_state
        for form in ("apart", "shared", "transpose"):
            raw = d / f"{form}.raw.onnx"
            art: Artifact = artifact_from(raw)
            opt, _ = optimize(art, target, d / f"{form}.onnx")
            r = _run_child({"path": str(opt.path), "vocab": a.vocab, "logits": str(d / f"{form}.npy")})
            r.update(raw_bytes=raw.stat().st_size, file_bytes=Path(opt.path).stat().st_size)
            rows[form] = r
        for form, t in zip(rows, _run_child({"time": [str(d / f"{f}.onnx") for f in rows], "vocab": a.vocab})):
            rows[form].update(t)
        ref = np.load(d / "apart.npy")
        for form in rows:
            rows[form]["max_abs_vs_apart"] = float(np.abs(np.load(d / f"{form}.npy") - ref).max())
    mib = 1 << 20
    print(f"table {a.vocab} x {a.hidden} fp32 = {4 * a.vocab * a.hidden / mib:.1f} MiB; {a.layers} layer(s); 1 thread")
    print(f"{'form':<10} {'file MiB':>9} {'(before optimize)':>18} {'load peak MiB':>14} {'RSS after MiB':>14} {'step ms p50 / p10':>18} {'max |dlogit|':>13}")
    for form, r in rows.items():
        print(f"{form:<10} {r['file_bytes'] / mib:>9.1f} {r['raw_bytes'] / mib:>18.1f} {r['load_peak_bytes'] / mib:>14.1f} "
              f"{r['rss_bytes'] / mib:>14.1f} {r['step_ms']:>9.2f} / {r['step_p10_ms']:<6.2f} {r['max_abs_vs_apart']:>13.2e}")
    s, p = rows["shared"], rows["apart"]
    print(f"shared / apart: file x{s['file_bytes'] / p['file_bytes']:.2f}, load peak x{s['load_peak_bytes'] / p['load_peak_bytes']:.2f}, "
          f"RSS after x{s['rss_bytes'] / p['rss_bytes']:.2f}, step p10 x{s['step_p10_ms'] / p['step_p10_ms']:.2f}")


if __name__ == "__main__":
    main()
