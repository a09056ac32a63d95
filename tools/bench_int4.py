"""INT4 benchmark: fp32 vs edgeq weight-only (each algorithm, blocks 32/128, accuracy levels)
vs onnxruntime's MatMulNBitsQuantizer defaults.

    python tools/build_lm.py                            # trained fixture (cached)
    python tools/build_lm.py --preset big               # untrained memory-bound decode model (cached)
    python tools/bench_int4.py [--skip-big] [--markdown BENCH.md]

Quality (perplexity, mean KL, same-top-token %) on the trained fixture's held-out windows;
per-token decode latency with a KV cache on the big untrained model. Each quantization runs
in its own process so its wall time and peak RSS are its own (RSS includes the Python +
onnx + numpy baseline of that process). Prints ratios; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# rows whose file is broken down byte by byte (wsize.size_breakdown)
BREAKDOWN_ROWS = ("onnxruntime MatMulNBitsQuantizer defaults", "edgeq rtn b32 acc4", "edgeq rtn b32 acc4 sym",
                  "edgeq rtn b32 acc4 f16", "edgeq rtn b32 acc4 sym f16")


def _quantize_child(args: dict) -> dict:
    """Run one quantization in this (child) process; report time and peak RSS."""
    import resource

    t0 = time.perf_counter()
    src, out = Path(args["src"]), Path(args["out"])
    if args["kind"] == "ort":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)))  # the defaults: block 128, asymmetric, RTN, accuracy level unset
        q.process()
        q.model.save_model_to_file(str(out), use_external_data_format=False)
    else:
        from edgeq.core.data import load_samples
        from edgeq.core.onnxutil import artifact_from
        from edgeq.quantization import quantize
        from edgeq.quantization.spec import QuantSpec

        art = artifact_from(src)
        spec = QuantSpec(**args["spec"])
        data = load_samples(Path(args["calib"]), art.io) if spec.needs_calibration else None
        quantize(art, spec, out, data=data)
    from edgeq.profiling.worker import memory_status  # VmHWM: ru_maxrss keeps the forked parent's high-water mark

    peak = memory_status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak / 2**20}


def run_child(args: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"quantization failed: {args}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def decode_latency(path: Path, layers: int, heads: int, hd: int, past: int = 64, steps: int = 16, threads: int = 1) -> float:
    """Median ms per generated token with a KV cache (greedy, ``past`` tokens already cached)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    pk = rng.normal(0, 1, (layers, 1, heads, past, hd)).astype(np.float32)
    pv = rng.normal(0, 1, (layers, 1, heads, past, hd)).astype(np.float32)
    tok = np.array([[65]], np.int64)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        logits, nk, nv = s.run(None, {"input_ids": tok, "past_key": pk, "past_value": pv})
        if i >= 3:
            times.append(time.perf_counter() - t0)
        tok = logits[:, -1:].argmax(-1).astype(np.int64)
        pk, pv = nk[:, :, :, -past:], nv[:, :, :, -past:]  # keep the context length fixed
    return 1000 * float(np.median(times))


def decode_latency_rounds(paths: list[Path], layers: int, heads: int, hd: int, past: int = 64, rounds: int = 8,
                          per_round: int = 4, threads: int = 1) -> list[float]:
    """Median ms per generated token of each model, timed in interleaved rounds of ``per_round`` tokens."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    rng = np.random.default_rng(0)
    pk0 = rng.normal(0, 1, (layers, 1, heads, past, hd)).astype(np.float32)
    pv0 = rng.normal(0, 1, (layers, 1, heads, past, hd)).astype(np.float32)
    state = []
    for p in paths:
        s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        state.append([s, np.array([[65]], np.int64), pk0, pv0])
    times: list[list[float]] = [[] for _ in paths]

    def step(i: int) -> float:
        s, tok, pk, pv = state[i]
        t0 = time.perf_counter()
        logits, nk, nv = s.run(None, {"input_ids": tok, "past_key": pk, "past_value": pv})
        dt = time.perf_counter() - t0
        state[i][1:] = [logits[:, -1:].argmax(-1).astype(np.int64), nk[:, :, :, -past:], nv[:, :, :, -past:]]
        return dt

    for i in range(len(paths)):  # warm-up
        for _ in range(3):
            step(i)
    for _ in range(rounds):
        for i in range(len(paths)):
            times[i] += [step(i) for _ in range(per_round)]
    return [1000 * float(np.median(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--only", action="append", help="regular expression: run only the quality rows whose name matches (repeatable; fp32 always runs)")
    ap.add_argument("--only-big", action="append", help="run only this decode row (exact name; repeatable; fp32 always runs)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_quantize_child(json.loads(a.child))))
        return
    from edgeq.core.data import load_samples
    from edgeq.checks.lmeval import lm_quality
    from edgeq.core.onnxutil import artifact_from, model_size
    from fixtures.lm import PRESETS, build

    fx = build(PRESETS["default"], a.cache)
    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-int4-"))
    src = fx / "model.onnx"
    art = artifact_from(src)
    ev = load_samples(fx / "eval.npz", art.io)
    fp32_size = model_size(src)
    rows = []
    configs = [("onnxruntime MatMulNBitsQuantizer defaults", {"kind": "ort"})]
    for bs in (32, 128):
        for algo in ("rtn", "hqq", "gptq", "awq"):
            configs.append((f"edgeq {algo} b{bs} acc4", {"kind": "edgeq", "spec": {"mode": "int4", "algo": algo, "block_size": bs, "accuracy_level": 4}}))
    for bs in (32, 128):  # GPTQ without act-order (the default uses it)
        configs.append((f"edgeq gptq in-order b{bs} acc4", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "gptq", "gptq_act_order": False, "block_size": bs, "accuracy_level": 4}}))
    for algo in ("rtn", "gptq"):
        configs.append((f"edgeq {algo} b32 acc0", {"kind": "edgeq", "spec": {"mode": "int4", "algo": algo, "block_size": 32, "accuracy_level": 0}}))
    # float16 scales (MatMulNBits in float16 between Casts) and symmetric codes (no zero points): the size levers at block 32
    for algo in ("rtn", "gptq"):
        configs.append((f"edgeq {algo} b32 acc4 f16", {"kind": "edgeq", "spec": {"mode": "int4", "algo": algo, "block_size": 32, "accuracy_level": 4, "scale_dtype": "float16"}}))
    configs.append(("edgeq rtn b32 acc4 sym", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 4, "symmetric": True}}))
    configs.append(("edgeq rtn b32 acc4 sym f16", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 4, "symmetric": True, "scale_dtype": "float16"}}))
    configs.append(("edgeq rtn b32 keep lm_head,embed", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 4, "keep": ["lm_head", "embed"]}}))
    configs.append(("edgeq int8-weight rtn b32", {"kind": "edgeq", "spec": {"mode": "int8-weight", "algo": "rtn", "block_size": 32, "accuracy_level": 4}}))
    configs.append(("edgeq int2 gptq b16", {"kind": "edgeq", "spec": {"mode": "int2", "algo": "gptq", "block_size": 16, "accuracy_level": 4}}))
    if a.skip_quality:
        configs = []
    if a.only:
        import re

        configs = [c for c in configs if any(re.search(o, c[0]) for o in a.only)]
    q0 = lm_quality(src, src, ev, art.io)
    rows.append({"name": "fp32", "size": fp32_size, "ratio": 1.0, "ppl": q0.perplexity_fp32, "kl": 0.0, "same": 1.0, "seconds": None, "rss": None})
    # the fp32 file with its duplicated constants stored once, as edgeq's weight-only writer stores them
    import onnx

    from edgeq.quantization.weight_only.wsize import dedupe_constants, size_breakdown

    m = onnx.load(str(src))
    dedupe_constants(m)
    onnx.save(m, str(work / "fp32_dedup.onnx"))
    breakdowns = {"fp32": size_breakdown(src), "fp32, duplicated constants stored once": size_breakdown(work / "fp32_dedup.onnx")}
    for name, cfg in configs:
        out = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
        args = {**cfg, "src": str(src), "out": str(out), "calib": str(fx / "calib.npz")}
        if "spec" in args and "keep" in args["spec"]:
            args["spec"]["keep"] = tuple(args["spec"]["keep"])
        m = run_child(args)
        q = lm_quality(src, out, ev, art.io)
        rows.append({"name": name, "size": model_size(out), "ratio": model_size(out) / fp32_size, "ppl": q.perplexity_quant,
                     "kl": q.kl_mean, "same": q.same_top_token, "seconds": m["seconds"], "rss": m["peak_rss_mb"]})
        if name in BREAKDOWN_ROWS:
            breakdowns[name] = size_breakdown(out)
        print(json.dumps(rows[-1]), flush=True)
    lat = []
    if not a.skip_big:
        big_cfg = PRESETS["big"]
        big = build(big_cfg, a.cache)
        dec = big / "decode.onnx"
        hd = big_cfg.hidden // big_cfg.heads
        lat.append({"name": "fp32", "size": model_size(dec), "path": str(dec)})
        for name, cfg in [
            ("onnxruntime MatMulNBitsQuantizer defaults", {"kind": "ort"}),
            ("edgeq rtn b32 acc4", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 4}}),
            ("edgeq rtn b32 acc0", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 0}}),
            ("edgeq rtn b128 acc4", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 128, "accuracy_level": 4}}),
            ("edgeq hqq b32 acc4", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "hqq", "block_size": 32, "accuracy_level": 4}}),
            ("edgeq rtn b32 acc4 f16", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 4, "scale_dtype": "float16"}}),
            ("edgeq rtn b32 acc0 f16", {"kind": "edgeq", "spec": {"mode": "int4", "algo": "rtn", "block_size": 32, "accuracy_level": 0, "scale_dtype": "float16"}}),
        ]:
            if a.only_big and name not in a.only_big:
                continue
            out = work / ("big_" + name.replace(" ", "_") + ".onnx")
            m = run_child({**cfg, "src": str(dec), "out": str(out), "calib": ""})
            lat.append({"name": name, "size": model_size(out), "path": str(out), "seconds": m["seconds"], "rss": m["peak_rss_mb"]})
        # all models timed round-robin (a few tokens each per round) so changing host load hits every row alike
        ms = decode_latency_rounds([Path(d["path"]) for d in lat], big_cfg.layers, big_cfg.heads, hd)
        for d, v in zip(lat, ms):
            d["ms"] = v
            print(json.dumps(d), flush=True)
    result = {"fixture": json.loads((fx / "info.json").read_text()), "quality": rows, "decode": lat, "breakdown": breakdowns, "params": art_params(src)}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def art_params(path: Path) -> int:
    """Parameters in the 2-D float weights the int4 pass would quantize (MatMul/Gemm/Gather)."""
    from edgeq.core.onnxutil import load_model
    from edgeq.quantization.weight_only.quantizer import find_sites

    return sum(int(np.prod(s.shape)) for s in find_sites(load_model(path)))


def breakdown_markdown(r: dict) -> list[str]:
    from edgeq.quantization.weight_only.wsize import CATEGORIES, LABELS

    bd = r.get("breakdown") or {}
    if not bd:
        return []
    names = list(bd)
    lines = ["", f"Where the bytes go ({r['params'] / 1e6:.3f} M weight parameters; bytes, and bits per weight parameter):", "",
             "| part | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for cat in CATEGORIES:
        vals = [bd[n]["bytes"][cat] for n in names]
        if any(vals):
            lines.append(f"| {LABELS[cat]} | " + " | ".join(f"{v:,} ({8 * v / r['params']:.3f})" for v in vals) + " |")
    lines.append("| **whole file** | " + " | ".join(f"**{bd[n]['file_bytes']:,} ({8 * bd[n]['file_bytes'] / r['params']:.3f})**" for n in names) + " |")
    return lines


def markdown(r: dict) -> str:
    info = r["fixture"]
    c = info["config"]
    lines = [
        f"Trained fixture: {c['layers']} layers, width {c['hidden']}, byte vocabulary 259, {info['params'] / 1e6:.2f} M parameters, "
        f"{c['steps']} steps on the standard library's Lib/*.py (tools/build_lm.py); held-out perplexity {r['quality'][0]['ppl']:.3f}; "
        f"{c['n_eval']} windows of {c['seq_len']} tokens.",
        "",
        "| model | file | x fp32 | perplexity | mean KL | same top token | quantize s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["quality"]:
        lines.append(
            f"| {row['name']} | {row['size'] / 1e6:.2f} MB | {row['ratio']:.3f} | {row['ppl']:.4f} | {row['kl']:.5f} | "
            f"{100 * row['same']:.2f} % | {'-' if row['seconds'] is None else format(row['seconds'], '.1f')} | "
            f"{'-' if row['rss'] is None else format(row['rss'], '.0f')} |"
        )
    lines += breakdown_markdown(r)
    if r["decode"]:
        base = r["decode"][0]
        lines += ["", "Decode with KV cache (untrained memory-bound model, 1 thread, past 64 tokens; all models timed round-robin, 8 rounds of 4 tokens, median of 32):", "",
                  "| model | file | x fp32 | ms / token | x fp32 | quantize s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for d in r["decode"]:
            lines.append(
                f"| {d['name']} | {d['size'] / 1e6:.1f} MB | {d['size'] / base['size']:.3f} | {d['ms']:.2f} | {d['ms'] / base['ms']:.2f} | "
                f"{format(d['seconds'], '.1f') if d.get('seconds') else '-'} | {format(d['rss'], '.0f') if d.get('rss') else '-'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
