"""What ships vs fp32: time fp32 .onnx, a bundle's model.onnx and its model.ort in one process.

For each bundle: the fp32 model at onnxruntime's default level, the bundle's model.onnx at the
default level, and the bundle's model.ort with the session options its manifest records
(what the app runs), in interleaved rounds; the figure is the median, as a ratio to fp32.

Run:
  python tools/bench_shipped.py --fp32 FP32.onnx --bundle build/b [--bundle build/other ...] [--threads 1]
  python tools/bench_shipped.py --build [--edgeq PATH/TO/edgeq] [--targets arm64,cpu-x86_64]
      (--build: trains nothing; builds the digits model if examples/digits/model.onnx exists,
       a small conv net and a MobileNetV3-style net, exports each with the given edgeq and times them)
This is a benchmark, not a test: it prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _session(path: Path, level: str, threads: int, runtime_opt: bool = False, off: tuple[str, ...] = ()):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if threads:
        so.intra_op_num_threads = threads
    if runtime_opt:
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    kw = {"disabled_optimizers": list(off)} if off else {}
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)


def bench(fp32: Path, bundle: Path, threads: int, rounds: int) -> dict:
    from edgeq.quantization.selection.speed import SpeedOptions, interleaved

    from edgeq.bundles.reader import read_bundle

    m = read_bundle(bundle).manifest  # the one reader: schema, file list and checksums first
    so = m["target"]["session_options"]
    feed = {m["inputs"][0]["name"]: np.load(bundle / m["golden"]["pairs"][0]["inputs"][0])}
    sessions = {
        "fp32 .onnx (default level)": _session(fp32, "all", threads),
        "bundle model.onnx (default level)": _session(bundle / "model.onnx", "all", threads),
        "bundle model.ort (manifest options)": _session(bundle / "model.ort", so["graph_optimization_level"], threads,
                                                        bool(so.get("saved_runtime_optimizations"))),
    }
    from edgeq.profiling.profiler import device_optimizers_off
    from edgeq.core.targets import load_target, target_names

    off = tuple(device_optimizers_off(load_target(m["target"]["name"]))) if m["target"]["name"] in target_names() else ()
    if off:  # the device's view: no x86-only NCHWc layouts at load time, for any of the three
        sessions["fp32 (device view)"] = _session(fp32, "all", threads, off=off)
        sessions["model.ort (device view)"] = _session(bundle / "model.ort", so["graph_optimization_level"], threads,
                                                       bool(so.get("saved_runtime_optimizations")), off)
    ms = interleaved(sessions, feed, SpeedOptions(rounds=rounds, round_s=0.1))
    base = ms["fp32 .onnx (default level)"]
    ratios = {k: v / base for k, v in ms.items()}
    if off:
        ratios["device view"] = ms["model.ort (device view)"] / ms["fp32 (device view)"]
    return {"bundle": str(bundle), "target": m["target"]["name"], "quant": (m.get("quantization") or {}).get("mode"),
            "ort_level": m["model"]["ort_optimization_level"], "session": so, "fp32_ms": base, "ratios": ratios}


def table(rows: list[dict]) -> str:
    lines = ["| bundle | target | shipped mode | model.ort saved at | fp32 ms | bundle model.onnx × fp32 | model.ort × fp32 | model.ort × model.onnx "
             "| model.ort × fp32, NCHWc off (Arm device view) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rt = r["ratios"]
        o, t = rt["bundle model.onnx (default level)"], rt["bundle model.ort (manifest options)"]
        lines.append(f"| {Path(r['bundle']).name} | {r['target']} | {r['quant']} | {r['ort_level']} "
                     f"(app: {r['session']['graph_optimization_level']}) | {r['fp32_ms']:.3f} | {o:.2f} | {t:.2f} | {t / o:.2f} | "
                     + (f"{rt['device view']:.2f} |" if "device view" in rt else "- |"))
    return "\n".join(lines)


def build(edgeq: str, targets: list[str], work: Path) -> list[tuple[Path, Path]]:
    from fixtures.shipped import image_data, make_convnet, make_mbv3

    models = []
    digits = ROOT / "examples" / "digits"
    if (digits / "model.onnx").exists():
        models.append(("digits", digits / "model.onnx", digits / "calib.npz", digits / "eval.npz"))
    for name, fn, size in (("convnet", make_convnet, 32), ("mbv3", make_mbv3, 96)):
        p = fn(work / f"{name}.onnx", size=size)
        np.savez(work / f"{name}_cal.npz", **image_data(64, size, seed=1))
        np.savez(work / f"{name}_ev.npz", **image_data(32, size, seed=2))
        models.append((name, p, work / f"{name}_cal.npz", work / f"{name}_ev.npz"))
    out = []
    for name, p, cal, ev in models:
        for t in targets:
            b = work / f"{name}-{t}"
            r = subprocess.run([edgeq, "export", str(p), "--target", t, "--calib", str(cal), "--eval", str(ev), "-o", str(b),
                                "--force", "--json"], capture_output=True, text=True)
            if r.returncode not in (0, 1):
                print(f"[{name} {t}] export failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            out.append((p, b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", type=Path)
    ap.add_argument("--bundle", type=Path, action="append", default=[])
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--edgeq", default=str(Path(sys.executable).with_name("edgeq")))
    ap.add_argument("--targets", default="arm64,cpu-x86_64")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    pairs = [(args.fp32, b) for b in args.bundle]
    if args.build:
        work = args.work or Path(tempfile.mkdtemp(prefix="edgeq-bench-shipped-"))
        work.mkdir(parents=True, exist_ok=True)
        pairs += build(args.edgeq, args.targets.split(","), work)
    rows = [bench(fp, b, args.threads, args.rounds) for fp, b in pairs]
    print(table(rows))


if __name__ == "__main__":
    main()
