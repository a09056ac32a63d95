#!/usr/bin/env python3
"""One decode step of onnxruntime-genai bundles through plain onnxruntime, KV buffers shared as genai shares them.

    python tools/bench_llm_step.py DIR/edgeq_int4_gptq DIR/builder_int4 --contexts 128,1024
    python tools/bench_llm_step.py DIR/edgeq_int4_gptq --ops     # + where the step's time goes, by op type

For each bundle folder (``tools/bench_llm.py --work DIR`` leaves them there): the decoder's one-token
step with the cache filled to each context length, the past and present of every layer bound to one
max-length OrtValue (IOBinding), as onnxruntime-genai runs a decoder with ``past_present_share_buffer``.
Median over ``--reps`` steps after a warm-up, 1 intra-op thread, bundles interleaved ``--rounds``
times (best round reported: a busy host only ever slows a round down). This isolates the model's
own cost (no sampling, no generation loop) and shows how it grows with the context.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def step_us(model: Path, ctx: int, reps: int, threads: int, profile: dict | None = None) -> float:
    """Median µs of one decode step at ``ctx``; with ``profile`` (a dict), also onnxruntime's per-op-type kernel µs per
    step (its profiler, over the timed steps, on a separate session so the timing itself is unprofiled) into it."""
    import onnxruntime as ort

    cfg = json.loads((model.parent / "genai_config.json").read_text())
    dec, maxlen = cfg["model"]["decoder"], int(cfg["search"]["max_length"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if profile is not None:
        import tempfile

        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edgeq-step-")) / "step")
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    past = next(i for i in sess.get_inputs() if i.name.startswith("past_"))
    # --kv-cache int8: int8 buffers; a 4-bit cache (kv_cache_bit_width 4): uint8, two values a byte (head_size / 2)
    shape = (1, int(dec["num_key_value_heads"]), maxlen, int(past.shape[3]))
    io = sess.io_binding()
    keep = []
    for layer in range(int(dec["num_hidden_layers"])):
        for kind in ("key", "value"):
            rng = np.random.default_rng(layer)
            buf = {"tensor(int8)": lambda: rng.integers(-127, 128, size=shape).astype(np.int8),
                   "tensor(uint8)": lambda: rng.integers(0, 256, size=shape).astype(np.uint8)}.get(
                       past.type, lambda: rng.normal(size=shape).astype(np.float32))()
            v = ort.OrtValue.ortvalue_from_numpy(buf)
            keep.append(v)
            io.bind_ortvalue_input(dec["inputs"][f"past_{kind}_names"] % layer, v)
            io.bind_ortvalue_output(dec["outputs"][f"present_{kind}_names"] % layer, v)
    io.bind_cpu_input("input_ids", np.array([[5]], np.int64))
    io.bind_cpu_input("attention_mask", np.ones((1, ctx), np.int64))
    if "position_ids" in names:
        io.bind_cpu_input("position_ids", np.array([[ctx - 1]], np.int64))
    io.bind_output("logits")
    for _ in range(20):
        sess.run_with_iobinding(io)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run_with_iobinding(io)
        ts.append(time.perf_counter() - t)
    if profile is not None:
        trace = Path(sess.end_profiling())
        nodes: dict[str, tuple[str, list[float]]] = {}
        for ev in json.loads(trace.read_text()):
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                nodes.setdefault(ev["name"], (ev.get("args", {}).get("op_name", "?"), []))[1].append(float(ev["dur"]))
        for op, durs in nodes.values():  # each node's median over the steps: a stalled step does not count
            profile[op] = profile.get(op, 0.0) + float(np.median(durs))
        trace.unlink()
    return float(np.median(ts)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", action="store_true", help="also onnxruntime's profiler: kernel µs per step by op type at each context")
    a = ap.parse_args()
    contexts = [int(x) for x in a.contexts.split(",")]
    if a.ops:
        for b in a.bundles:
            per = [{} for _ in contexts]
            steps = [step_us(b / "model.onnx", c, a.reps, a.threads, profile=p) for c, p in zip(contexts, per)]
            print(f"{b}: kernel µs per step by op type (onnxruntime profiler, {a.threads} thread(s); profiled steps "
                  + " / ".join(f"{u:.0f}" for u in steps) + " µs wall)")
            print("| op type | " + " | ".join(f"µs @{c}" for c in contexts) + f" | added {contexts[0]} -> {contexts[-1]} |")
            print("|---|" + "---:|" * (len(contexts) + 1))
            ops = sorted(set().union(*per), key=lambda o: -per[-1].get(o, 0.0))
            for o in ops + ["(all kernels)"]:
                us = [sum(p.values()) if o == "(all kernels)" else p.get(o, 0.0) for p in per]
                print(f"| {o} | " + " | ".join(f"{u:.1f}" for u in us) + f" | {us[-1] - us[0]:+.1f} |")
            print()
    best: dict[str, list[float]] = {}
    for _ in range(a.rounds):
        for b in a.bundles:
            got = [step_us(b / "model.onnx", c, a.reps, a.threads) for c in contexts]
            best[str(b)] = [min(x, y) for x, y in zip(best.get(str(b), got), got)]
    print("| bundle | " + " | ".join(f"step us @{c}" for c in contexts) + f" | growth {contexts[0]} -> {contexts[-1]} |")
    print("|---|" + "---:|" * (len(contexts) + 1))
    for b, us in best.items():
        print(f"| {Path(b).parent.name}/{Path(b).name} | " + " | ".join(f"{u:.0f}" for u in us) + f" | x{us[-1] / us[0]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
