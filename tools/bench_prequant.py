#!/usr/bin/env python3
"""Pre-quantized import vs edgeq's own GPTQ, on the same trained tiny Llama.

    python tools/bench_prequant.py                  # trains the fixture from fixtures/lm.py (a minute or two)
    python tools/bench_prequant.py --model FOLDER   # any float Llama save_pretrained folder

Rows (same calibration windows, same held-out windows, MatMulNBits at accuracy level 0, embeddings
and lm_head kept float in both so the rows differ only in who chose the codes):

- ``edgeq gptq``: ``edgeq export FLOAT --quant int4 --algo gptq --block-size 32 --asymmetric``;
- ``GPTQ folder imported``: the float folder quantized outside edgeq's pipeline (GPTQ codes from the
  same Hessians, collected here with torch hooks) and packed by this tool into a gptq_v2 folder
  (``qweight``/``qzeros``/``scales``/``g_idx``), then ``edgeq export GPTQ_FOLDER --quant none --reference FLOAT``.

Columns: file size, perplexity, KL and same-top-token vs fp32, KL vs the model's own dequantized
weights (0 up to float noise for an exact import), wall time of the export. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = 32


def _windows(tok, text: str, n: int, length: int, seed: int) -> np.ndarray:
    ids = np.asarray(tok.encode(text).ids, np.int64)
    starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, n)
    return np.stack([ids[s : s + length] for s in starts])


def _save_tokens(path: Path, ids: np.ndarray) -> Path:
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids))
    return path


def _hessians(folder: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """E[x^T x] of every decoder linear's input over the calibration windows (float model, torch hooks)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    acc: dict[str, list] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            def hook(m, inp, out, name=name):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                h, n = acc.get(name, (0, 0))
                acc[name] = (h + x.T @ x, n + x.shape[0])
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for row in ids:
            model(input_ids=torch.from_numpy(row[None]))
    for h in hooks:
        h.remove()
    return {k: (2 * h / n).numpy() for k, (h, n) in acc.items()}


def _pack(codes: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """uint codes -> int32 words along ``axis``, code j of a word at bit ``bits * j`` (the GPTQ layout)."""
    per = 32 // bits
    c = np.moveaxis(codes.astype(np.uint64), axis, -1)
    c = c.reshape(*c.shape[:-1], -1, per)
    words = np.zeros(c.shape[:-1], np.uint64)
    for j in range(per):
        words |= c[..., j] << np.uint64(bits * j)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), -1, axis)


def make_gptq_folder(float_folder: Path, out: Path, calib_ids: np.ndarray) -> float:
    """A gptq_v2 folder (4-bit, group 32, asymmetric, in order) packed by this tool; returns seconds spent."""
    from safetensors.numpy import load_file, save_file

    from edgeq.quantization.weight_only.blockwise import gptq

    t0 = time.perf_counter()
    hs = _hessians(float_folder, calib_ids)
    tensors = {k: v for p in sorted(float_folder.glob("*.safetensors")) for k, v in load_file(str(p)).items()}
    out.mkdir(parents=True)
    written = {}
    for name, h in sorted(hs.items()):
        w = tensors.pop(name + ".weight").astype(np.float32)  # [N, K]
        c = gptq(w.T, h, 4, BLOCK, False, act_order=False)
        k = w.shape[1]
        written[name + ".qweight"] = _pack(c.q[:k], 4, 0)
        written[name + ".qzeros"] = _pack(c.zero, 4, 1)  # gptq_v2: zeros as they are (v1's zero - 1 overflows at 0)
        written[name + ".scales"] = c.scale.astype(np.float16)
        written[name + ".g_idx"] = (np.arange(k) // BLOCK).astype(np.int32)
    for k2, v in tensors.items():
        written[k2] = v.astype(np.float16)
    save_file({k: np.ascontiguousarray(v) for k, v in written.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((float_folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": BLOCK, "desc_act": False, "sym": False,
                                  "checkpoint_format": "gptq_v2"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for p in float_folder.iterdir():
        if p.is_file() and p.suffix in (".json", ".txt") and p.name != "config.json":
            shutil.copy(p, out / p.name)
    return time.perf_counter() - t0


def _export(args: list[str]) -> tuple[dict, float]:
    from typer.testing import CliRunner

    from edgeq.cli import app

    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["export", *args, "--task", "text-generation", "--no-profile", "--json", "--accuracy-level", "0"])
    if r.exit_code != 0:
        raise SystemExit(f"edgeq export failed ({r.exit_code}): {r.output[-2000:]}")
    return json.loads(r.stdout), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="float Llama folder (default: train the tiny fixture)")
    ap.add_argument("--calib", type=int, default=32, help="calibration windows")
    ap.add_argument("--eval", type=int, default=32, help="held-out windows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table
    from tokenizers import Tokenizer

    from fixtures.lm import corpus_text, make_tiny_llama

    err = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-prequant-") as tmp:
        tmp = Path(tmp)
        if args.model is None:
            t0 = time.perf_counter()
            folder = make_tiny_llama(tmp / "tiny-llama")
            err.print(f"trained the tiny Llama fixture in {time.perf_counter() - t0:.0f} s")
        else:
            folder = args.model
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        train, held = corpus_text()
        calib = _save_tokens(tmp / "calib.npz", _windows(tok, train, args.calib, 64, 1))
        evals = _save_tokens(tmp / "eval.npz", _windows(tok, held, args.eval, 64, 2))
        common = ["--calib", str(calib), "--eval", str(evals)]
        rows = []
        res, secs = _export([str(folder), "-o", str(tmp / "b-edgeq"), "--quant", "int4", "--algo", "gptq", "--block-size", str(BLOCK),
                             "--asymmetric", "--keep", "embed,lm_head", *common])
        lm = res["lm_quality"]
        rows.append({"row": "edgeq gptq b32 asym (float model in)", "bytes": res["size"]["model_bytes"], "ppl": lm["perplexity_quant"],
                     "ppl_fp32": lm["perplexity_fp32"], "kl_fp32": lm["kl_mean"], "top_fp32": lm["same_top_token"],
                     "kl_own": None, "seconds": secs})
        pack_s = make_gptq_folder(folder, tmp / "gptq", np.load(calib)["input_ids"])
        err.print(f"GPTQ folder packed outside edgeq in {pack_s:.1f} s")
        res, secs = _export([str(tmp / "gptq"), "-o", str(tmp / "b-import"), "--quant", "none", "--reference", str(folder), *common])
        lm, vs = res["lm_quality"], res["lm_quality_vs_reference"]
        rows.append({"row": "GPTQ folder imported (codes kept)", "bytes": res["size"]["model_bytes"], "ppl": vs["perplexity_quant"],
                     "ppl_fp32": vs["perplexity_fp32"], "kl_fp32": vs["kl_mean"], "top_fp32": vs["same_top_token"],
                     "kl_own": lm["kl_mean"], "seconds": secs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title="pre-quantized import vs edgeq GPTQ (tiny Llama, held-out windows)")
    for c in ("row", "model bytes", "ppl (fp32)", "KL vs fp32", "same top vs fp32", "KL vs own dequantized", "export s (import: + --reference)"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["row"], f"{r['bytes']:,}", f"{r['ppl']:.3f} ({r['ppl_fp32']:.3f})", f"{r['kl_fp32']:.5f}",
                  f"{100 * r['top_fp32']:.2f} %", "-" if r["kl_own"] is None else f"{r['kl_own']:.2e}", f"{r['seconds']:.1f}")
    Console(width=180).print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
