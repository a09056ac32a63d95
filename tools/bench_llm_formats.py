#!/usr/bin/env python3
"""One Llama model, two formats: edgeq ONNX int4 vs GGUF on llama.cpp, on the same token windows.

    python tools/bench_llm_formats.py                  # builds the tiny trained Llama of fixtures/lm.py
    python tools/bench_llm_formats.py --model path/to/hf_llama_folder --algos rtn --quants q4_0,q8_0

Every row is compared with the fp32 PyTorch model (transformers) on the same token ids:
file size (and ratio to the fp32 ONNX file), perplexity on the windows' own next tokens, mean
KL(p_fp32 || p_row) of the next-token distributions, and same-top-token %. ONNX rows run on
onnxruntime (CPU); GGUF rows on llama.cpp (llama-cpp-python). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def onnx_logits(path: Path, ids: list[list[int]]) -> list[np.ndarray]:
    from edgeq.core.runtime import create_session, run

    from edgeq.exporters.decoder import prefill_feed

    s = create_session(path)
    out = []
    for t in ids:
        feed = prefill_feed(s.get_inputs(), np.asarray([t], dtype=np.int64))  # attention_mask / positions / empty past as the graph takes
        out.append(np.asarray(run(s, feed)[0])[0].astype(np.float32))
    return out


def calib_set(ids: list[list[int]], seq: int, io):
    """Token windows as an edgeq SampleSet (input_ids, plus the other LM inputs ``io`` takes, one window per sample)."""
    from edgeq.core.data import SampleSet
    from edgeq.core.lmdata import fill_lm_inputs

    x = np.asarray([t[:seq] for t in ids if len(t) >= seq], dtype=np.int64)
    arrays, _ = fill_lm_inputs({"input_ids": x}, io)
    return SampleSet(arrays=arrays, stacked={k: False for k in arrays}, labels=None, source=f"{len(x)} training windows of {seq} tokens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Hugging Face Llama folder (default: build the tiny trained fixture)")
    ap.add_argument("--algos", default="rtn,gptq", help="edgeq int4 algorithms (block --block)")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--quants", default="q4_0,q8_0", help="GGUF quant types")
    ap.add_argument("--prompts", type=int, default=16, help="held-out windows (fixture only)")
    ap.add_argument("--chars", type=int, default=256, help="characters per held-out window (fixture only)")
    ap.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    a = ap.parse_args()

    from edgeq.exporters import SourceOptions, export_source
    from edgeq.llamacpp.gguf import (DEFAULT_PROMPTS, compare_logits, llama_cpp_logits, read_llama, reference_logits, tokenize_hf, write_gguf)
    from edgeq.core.onnxutil import model_size
    from edgeq.quantization import quantize
    from edgeq.quantization.spec import QuantSpec
    from edgeq.core.targets import load_target

    work = a.work or Path(tempfile.mkdtemp(prefix="edgeq-bench-llm-"))
    work.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t00 = time.perf_counter()
    if a.model is None:
        from fixtures.lm import corpus_text, heldout_prompts, make_tiny_llama

        folder = work / "tiny-llama"
        if not (folder / "model.safetensors").exists():
            t0 = time.perf_counter()
            make_tiny_llama(folder)
            log(f"trained the tiny Llama fixture in {time.perf_counter() - t0:.0f} s")
        texts = heldout_prompts(a.prompts, a.chars)
        train, _ = corpus_text()
        calib_texts = [train[i : i + 4 * a.chars] for i in range(0, 32 * 4 * a.chars, 4 * a.chars)]
        what = "tiny trained Llama fixture (fixtures/lm.py: 2 layers, hidden 128, BPE vocabulary 320), held-out module windows"
    else:
        folder, texts = a.model, list(DEFAULT_PROMPTS)
        calib_texts = texts  # no other text at hand: GPTQ calibrates on the evaluation prompts (in-sample)
        what = f"{folder.name}, edgeq's default prompts (GPTQ calibrated on the same prompts)"
    ids = [t for t in tokenize_hf(folder, texts) if len(t) >= 2]
    ref = reference_logits(folder, ids)
    rows = []

    def add(name: str, path: Path, logits: list[np.ndarray]) -> None:
        m = compare_logits(ref, logits, ids)
        rows.append({"name": name, "bytes": path.stat().st_size if path.suffix == ".gguf" else model_size(path), **m})
        log(f"{name}: ppl {m['perplexity']:.4f}, KL {m['kl_mean']:.2e}, same top {100 * m['top1_agreement']:.2f} %  ({time.perf_counter() - t00:.0f} s)")

    # ONNX: export (checked against PyTorch by edgeq), then weight-only int4
    target = load_target("cpu-x86_64")
    art, _ = export_source(folder, SourceOptions(target=target, task="text-generation"), work)
    # the same optimize stage `edgeq export` runs: folds, and strips the exporter's per-node
    # debug metadata (stack traces) that would otherwise dominate a small model's file size
    from edgeq.core.optimization import optimize

    art, _ = optimize(art, target, work / "fp32_opt.onnx")
    add("fp32 ONNX (onnxruntime)", art.path, onnx_logits(art.path, ids))
    for algo in [x.strip() for x in a.algos.split(",") if x.strip()]:
        spec = QuantSpec(mode="int4", algo=algo, block_size=a.block)
        data = None
        if spec.needs_calibration:
            cids = tokenize_hf(folder, calib_texts)
            data = calib_set(cids, min(len(t) for t in cids), art.io)
        out = work / f"int4_{algo}_b{a.block}.onnx"
        quantize(art, spec, out, data=data)
        add(f"edgeq ONNX int4 {algo} b{a.block} (onnxruntime)", out, onnx_logits(out, ids))
    # GGUF via edgeq's writer, evaluated by llama.cpp
    src = read_llama(folder)
    for q in [x.strip() for x in a.quants.split(",") if x.strip()]:
        out = work / f"model_{q}.gguf"
        write_gguf(src, q, out)
        logits, _ = llama_cpp_logits(out, ids)
        add(f"GGUF {q} (llama.cpp)", out, logits)

    base = rows[0]["bytes"]
    n_pos = rows[0]["positions"]
    print(f"{what}: {len(ids)} windows, {n_pos} positions; every row vs fp32 PyTorch on the same token ids; "
          f"perplexity of fp32 PyTorch {rows[0]['perplexity_fp32']:.4f}.\n")
    print("| model | file | x fp32 | perplexity | mean KL | same top token |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['bytes'] / 1e6:.3f} MB | {r['bytes'] / base:.3f} | {r['perplexity']:.4f} | {r['kl_mean']:.2e} | "
              f"{100 * r['top1_agreement']:.2f} % |")
    log(f"total {time.perf_counter() - t00:.0f} s; files in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
