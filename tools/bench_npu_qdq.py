#!/usr/bin/env python3
"""Static-shape decoders in QDQ form for an NPU target (edgeq/quantization/npu_qdq.py), on the trained tiny Llama.

    python tools/bench_npu_qdq.py                    # trains fixtures/lm.py's tiny Llama (about a minute on 2 cores)
    python tools/bench_npu_qdq.py --folder DIR --target qnn-htp --algos rtn,gptq,awq

For each mode and algorithm, ``edgeq export DIR --task text-generation --target T --quant Q --algo A --calib ... --eval ...``
(input_ids windows: calibration from the training text, evaluation from the held-out module) and its JSON:
file size vs fp32, perplexity / mean KL / same-top-token of the quantized static decoder vs the fp32 one (each
through its own fixed-slot loop, held-out windows), greedy agreement vs transformers (3 prompts x 32 tokens),
share of nodes on the accelerator (measured on the QNN HTP simulator where onnxruntime-qnn is installed).
Rows for ``--quant int8-weight`` and ``--quant int4``; size is model.onnx's (model.ort holds 4-bit codes as 8-bit).
Quality and placement only: the simulator's timing is not a device's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _windows(folder: Path, out: Path, n: int, length: int) -> tuple[Path, Path]:
    from tokenizers import Tokenizer

    from fixtures.lm import corpus_text

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    paths = []
    for name, text in zip(("calib", "eval"), corpus_text()):
        ids = np.array(tok.encode(text[:200_000]).ids, np.int64)
        step = (len(ids) - length) // n
        np.savez(out / f"{name}.npz", input_ids=np.stack([ids[i * step : i * step + length] for i in range(n)]))
        paths.append(out / f"{name}.npz")
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="a Hugging Face Llama folder (default: train the fixture)")
    ap.add_argument("--target", default="qnn-htp")
    ap.add_argument("--algos", default="rtn,gptq,awq")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--length", type=int, default=48)
    args = ap.parse_args()
    from typer.testing import CliRunner

    from edgeq.cli import app

    with tempfile.TemporaryDirectory(prefix="bench-npu-qdq-") as tmp:
        work = Path(tmp)
        folder = args.folder
        if folder is None:
            from fixtures.lm import make_tiny_llama

            folder = make_tiny_llama(work / "llama")
        calib, evals = _windows(folder, work, args.windows, args.length)
        rows = []
        for quant in ("int8-weight", "int4"):
            for algo in args.algos.split(","):
                out = work / f"b-{quant}-{algo}"
                r = CliRunner().invoke(app, ["export", str(folder), "--task", "text-generation", "--target", args.target,
                                             "--quant", quant, "--algo", algo, "--calib", str(calib), "--eval", str(evals),
                                             "--no-profile", "-o", str(out), "--json"])
                if r.exit_code not in (0, 1):
                    print(f"{quant} {algo}: export failed: {r.output.strip().splitlines()[-1]}")
                    continue
                res = json.loads(r.stdout)
                lm, gen, pl = res["lm_quality"], res["generation"] or {}, res["placement"] or {}
                rows.append((f"{quant} QDQ {algo}", res["size"]["ratio"], lm["perplexity_fp32"], lm["perplexity_quant"], lm["kl_mean"],
                             lm["same_top_token"], gen.get("agreement"), pl.get("accel_node_share"), pl.get("kind")))
    print(f"{args.target}, {folder}: {args.windows} windows of {args.length} tokens")
    print(f"{'row':28s} {'size/fp32':>9s} {'ppl fp32':>9s} {'ppl q':>9s} {'mean KL':>9s} {'same top':>9s} {'greedy':>7s} {'on accel':>9s}")
    for name, ratio, p0, p1, kl, top, greedy, share, kind in rows:
        g = f"{100 * greedy:.0f} %" if greedy is not None else "-"
        s = f"{100 * share:.1f} %" if share is not None else "-"
        print(f"{name:28s} {ratio:9.3f} {p0:9.3f} {p1:9.3f} {kl:9.5f} {100 * top:8.2f}% {g:>7s} {s:>9s} {kind or ''}")


if __name__ == "__main__":
    main()
