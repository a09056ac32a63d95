#!/usr/bin/env python3
"""NPU targets at export time: placement, partitions, fallbacks, context binary, A8W8 vs A16W8 on the HTP simulator.

For each net (architectures in tools/npu_models.py, seeded random weights) and each
target, runs ``edgeq export``'s pipeline and prints one row: the accelerator's share of
nodes (measured where the provider runs here, else a labelled estimate), partitions,
fallback nodes, whether a QNN context binary was built, and for qnn-htp the agreement of
the A8W8 and A16W8 models with fp32, both run on the HTP simulator.

    python tools/bench_npu.py --size 96 --models mobilenet_v3_small,mobilenet_v2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.npu_models import MODELS, build, sample_inputs, to_onnx  # noqa: E402

TARGETS = ("qnn-htp", "nnapi", "coreml", "openvino-cpu")


def _agreement(model: Path, fp32: Path, data, target, n: int) -> dict:
    """Top-1 agreement and mean cosine of ``model`` on the target's accelerator vs fp32 on the CPU."""
    import onnx

    from edgeq.profiling.accel import accelerator_outputs
    from edgeq.quantization.int8 import static

    from edgeq.errors import EdgeqError

    run = accelerator_outputs(target)
    if run is None:
        return {"on": "-", "top1": None, "cos": None}
    try:
        sim = run(onnx.load(str(model)), data, n)
    except EdgeqError as e:
        return {"on": run.label, "top1": None, "cos": None, "error": _short(e.message)}
    from edgeq.checks.kinds import first_output_task
    from edgeq.checks.metrics import primary

    ref_model = onnx.load(str(fp32))
    ref = static.first_outputs(ref_model, data, n)
    # the task's own metric (edgeq.checks): top-1 agreement for the classifiers, detection F1 for the detector
    metric, value = primary(first_output_task(ref_model, ref), ref, sim)
    cos = float(np.mean([np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12) for a, b in zip(sim, ref)]))
    return {"on": run.label, "top1": value, "metric": metric, "cos": cos}


def _export(src: Path, target, out: Path, calib: Path, spec=None):
    from edgeq.core.onnxutil import artifact_from
    from edgeq.pipeline import ExportOptions, run_export

    return run_export(artifact_from(src), ExportOptions(target=target, spec=spec or target.quant, out=out, calib=calib,
                                                         do_profile=False, force=True)).to_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--calib", type=int, default=8, help="calibration samples (seeded random images)")
    ap.add_argument("--eval", type=int, default=8, help="samples for A8W8/A16W8 agreement on the simulator")
    ap.add_argument("--no-rewrites", action="store_true", help="drop the targets' [ops] rewrites (what they buy)")
    args = ap.parse_args()

    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import load_target

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-npu-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            src = work / f"{name}.onnx"
            model = build(name)
            to_onnx(model, src, args.size)
            calib = work / f"{name}-calib.npz"
            np.savez(calib, x=sample_inputs(model, max(args.calib, args.eval), args.size))
            for tname in args.targets.split(","):
                tg = load_target(tname)
                if args.no_rewrites:
                    tg = replace(tg, rewrites=())
                t0 = time.perf_counter()
                try:
                    res = _export(src, tg, work / f"{name}-{tname}", calib)
                except Exception as e:  # noqa: BLE001 - a row says what failed
                    rows.append((name, tname, "error", "", "", "", "", "", str(e).splitlines()[0][:80]))
                    continue
                pl = res.get("placement") or {}
                ctx = res.get("ep_context")
                share = pl.get("accel_node_share")
                kind = pl.get("kind", "-")
                if kind == "failed":
                    kind = "failed: " + _short(pl.get("reason") or "")
                a8 = a16 = ""
                if tname == "qnn-htp":
                    data = load_samples(calib, artifact_from(work / f"{name}-{tname}" / "model.onnx").io)
                    fp32 = src
                    g8 = _agreement(work / f"{name}-{tname}" / "model.onnx", fp32, data, tg, args.eval)
                    res16 = _export(src, tg, work / f"{name}-{tname}-a16", calib,
                                    replace(tg.quant, activation_type="uint16", activation_dtypes=("uint16",)))
                    g16 = _agreement(work / f"{name}-{tname}-a16" / "model.onnx", fp32, data, tg, args.eval)
                    pl16 = res16.get("placement") or {}
                    a8 = g8.get("error", "-") if g8["top1"] is None else f"{_m(g8)} {100 * g8['top1']:.0f}% / {g8['cos']:.4f}"
                    a16 = g16.get("error", "-") if g16["top1"] is None else (f"{_m(g16)} {100 * g16['top1']:.0f}% / {g16['cos']:.4f} "
                                                                            f"({_pct(pl16.get('accel_node_share'))} on HTP)")
                rows.append((name, tname, f"{_pct(share)} {kind}", str(pl.get("accel_partitions", "-")),
                             str(len(pl.get("fallback", []))),
                             "-" if ctx is None else ("yes" if ctx.get("model") else "no: " + _short(ctx.get("reason", ""))),
                             a8, a16, f"{time.perf_counter() - t0:.0f} s"))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ("model", "target", "accel nodes", "partitions", "fallbacks", "context binary",
            "A8W8 task metric / cos (sim)", "A16W8 task metric / cos (sim)", "export time")
    print(f"input 1x3x{args.size}x{args.size}, seeded random weights and inputs; 'measured' = QNN HTP simulator "
          "(onnxruntime-qnn) or OpenVINO's environment, 'estimate' = target [ops] rules\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


def _short(reason: str) -> str:
    """The provider's error code (QNN_...) or the end of its message."""
    import re

    m = re.search(r"QNN_[A-Z_]+", reason)
    return m.group(0) if m else reason[-60:]


def _m(g: dict) -> str:
    return {"top1_agreement": "top-1", "detection_f1": "det F1"}.get(g.get("metric", ""), g.get("metric", ""))


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
