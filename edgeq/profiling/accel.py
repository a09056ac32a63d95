"""The accelerator at export time: where the shipped model's nodes run, and how to fix the rest.

``edgeq export`` calls :func:`export_placement` on the model it ships. The provider
is found the way ``edgeq profile`` finds it (``edgeq.profiling.providers``): where it runs here
(the QNN HTP simulator through the onnxruntime-qnn plugin, OpenVINO in its own
environment) the placement is *measured* by the same worker ``profile`` uses; where
it cannot (NNAPI, CoreML) it is a static *estimate* from the target's ``[ops]`` rules,
labelled so. Each node that falls back carries its reason and a fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifact import IoSpec
from .diagnose import failure_hint
from ..errors import EdgeqError
from ..core.targets import Target

# a short measurement: placement and that the provider runs the model, not timing
_PLACEMENT_RUNS = dict(runs=2, warmup=0, budget_s=0.2, profile_runs=0, numerics_samples=1)


def fix_for(reason: str, target: Target) -> str:
    """What the user can do about one fallback reason."""
    if "dynamic shape" in reason:
        return "pin the shapes: --static-shape NAME=1x... (or calibration data with the shapes the app uses)"
    if "dtype" in reason:
        return f"quantize with {target.name}'s recipe (--quant {target.quant.mode}) so tensors have a dtype the accelerator takes"
    named = re.search(r"\(rewrite ([a-z0-9-]+)\)", reason)  # an op condition that names its rewrite ([[ops.conditions]])
    if named and named.group(1) not in target.rewrites:
        return f"add '{named.group(1)}' to {target.name}'s [ops] rewrites (edgeq/core/rewrite.py)"
    if named:
        return f"the node's layout is one rewrite {named.group(1)} does not take (e.g. a non-constant weight or unknown shape): export it in the layout the reason names"
    if reason.startswith("op ") or "supported ops" in reason:
        return f"replace the op in the model, or add a rewrite for it to {target.name}'s [ops] rewrites (edgeq/core/rewrite.py)"
    if target.quant.mode.startswith("int8") and "not taken by" in reason:
        return (f"quantize the node (static QDQ, {'/'.join(target.quant.activation_dtypes or (target.quant.activation_type,))} "
                "activations) or check its attributes and shapes against the provider's op documentation")
    return "check the node's op type, attributes and shapes against the provider's op documentation"


def _with_fixes(pl: dict[str, Any], target: Target) -> dict[str, Any]:
    for f in pl.get("fallback", []):
        f.setdefault("fix", fix_for(f.get("reason", ""), target))
    return pl


def export_placement(model: Path, target: Target, io: IoSpec, feeds: tuple[dict[str, np.ndarray], ...]) -> dict[str, Any] | None:
    """Placement of ``model`` on ``target``'s accelerator; None for targets without one.

    Never raises for a provider problem: the provider's own error becomes the
    placement's ``reason`` (an estimate is added where the target has op rules).
    """
    from .placement import accelerator_of, estimate
    from .profiler import MeasureOptions, ProfileInput, measure, resolve_backend
    from ..core.data import synthetic_feed

    acc = accelerator_of(target.provider_names)
    if acc is None:
        return None
    reason = None
    try:
        backend = resolve_backend(target)
    except EdgeqError as e:
        backend, reason = None, e.message
    if backend is not None and backend.kind != "estimate":
        inp = ProfileInput(label=Path(model).name, model=Path(model), onnx=Path(model), io=io,
                           feeds=tuple(feeds[:1]) or (synthetic_feed(io),), feeds_source="export data")
        try:
            rep = measure(inp, target, backend, MeasureOptions(**_PLACEMENT_RUNS))
        except EdgeqError as e:  # the provider is here and refused the model: that is the measured answer
            if "did not start" in e.message:  # no device for it here (OpenVINO NPU on a host without one)
                return {"kind": "unavailable", "accelerator": acc, "backend": backend.kind, "reason": e.message, "hint": e.hint,
                        "accel_node_share": None, "fallback": []}
            failed = {"kind": "failed", "accelerator": acc, "backend": backend.kind, "reason": e.message, "hint": e.hint,
                      "accel_node_share": None, "fallback": []}
            if target.supported_ops:
                est = estimate(Path(model), target)
                failed["estimate"] = {k: est[k] for k in ("accel_node_share", "accel_partitions", "nodes_total", "basis")}
            return failed
        else:
            pl = rep.get("placement")
            if pl is not None:
                pl = dict(pl, backend=backend.kind, basis=backend.note or f"measured with {acc} on this host")
                if rep.get("notes"):
                    pl["notes"] = list(rep["notes"])
                return _with_fixes(pl, target)
            reason = f"{acc} ran but onnxruntime recorded no placement"
    if target.supported_ops:
        pl = estimate(Path(model), target)
        if reason:
            pl["basis"] += f" ({reason})"
        return _with_fixes(pl, target)
    return {"kind": "unavailable", "accelerator": acc, "reason": reason or f"{acc} is not available here and {target.name} has no [ops] rules",
            "accel_node_share": None, "fallback": []}


def manifest_placement(pl: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the manifest keeps: the figures, partitions and each fallback with reason and fix (no node lists)."""
    if pl is None:
        return None
    keep = ("kind", "accelerator", "nodes_total", "accel_node_share", "accel_partitions", "basis", "reason", "hint", "backend", "estimate")
    out = {k: pl[k] for k in keep if pl.get(k) is not None}
    if pl.get("providers"):
        out["nodes_on_accelerator"] = next((p["nodes"] for p in pl["providers"] if p["provider"] == pl["accelerator"]), 0)
    out["fallback"] = [{k: f[k] for k in ("node", "provider", "reason", "fix") if k in f} for f in pl.get("fallback", [])]
    return out


def coverage_report(bundle: Path, target: Target, pl: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The shape ``profile.check_coverage`` reads, for one exported bundle (a provider that refused the model ran 0 %)."""
    if pl and pl["kind"] == "failed":
        pl = dict(pl, accel_node_share=0.0)
    return [{"model": str(bundle), "target": target.name, "placement": pl if pl and pl.get("accel_node_share") is not None else None}]


class AcceleratorOutputs:
    """Runs ``--max-drop`` search candidates on the target's accelerator here (the QNN HTP simulator,
    OpenVINO's environment) in the measurement worker; same arguments as ``static.first_outputs``
    (``every``: every output, as ``static.all_outputs``)."""

    def __init__(self, target: Target, backend: Any):
        self.target, self.backend = target, backend
        self.label = f"{backend.accelerator} ({backend.kind})"

    def __call__(self, model: Any, data: Any, n: int, base_dir: Any = None) -> list[np.ndarray]:
        every = self.every(model, data, n, base_dir)
        return every[0] if every else []

    def every(self, model: Any, data: Any, n: int, base_dir: Any = None) -> list[list[np.ndarray]]:
        """Every output of ``model`` on the first ``n`` samples, ``[output][sample]``."""
        import tempfile

        from ..errors import ProviderError
        from .profiler import MeasureOptions, ProfileInput, run_worker

        feeds = tuple(data.feed(i) for i in range(min(n, len(data))))
        with tempfile.TemporaryDirectory(prefix="edgeq-candidate-", dir=str(base_dir) if base_dir else None) as tmp:
            work = Path(tmp)
            # beside its external weights (base_dir), so the worker's session finds them
            path = (Path(base_dir) if base_dir else work) / f"{work.name}.onnx"
            try:
                path.write_bytes(model.SerializeToString())
                inp = ProfileInput(label="search candidate", model=path, onnx=path, io=IoSpec((), ()), feeds=feeds,
                                   feeds_source="search data")
                opts = MeasureOptions(runs=1, warmup=0, budget_s=0.05, profile_runs=0, numerics_samples=len(feeds))
                result, outputs = run_worker(self.backend, inp, self.target, opts, work=work)
            finally:
                path.unlink(missing_ok=True)
        if "error" in result:
            raise ProviderError(f"{self.label} could not run a candidate model: {result['error']}",
                                failure_hint(None, self.target))
        n_out = sum(1 for k in outputs if k.startswith("0:"))
        return [[outputs[f"{i}:{k}"] for i in range(len(feeds))] for k in range(n_out)]


def accelerator_outputs(target: Target) -> AcceleratorOutputs | None:
    """The search's candidate runner for ``target`` where its accelerator runs here outside this process, else None."""
    from .profiler import resolve_backend

    try:
        backend = resolve_backend(target)
    except EdgeqError:
        return None
    if backend.kind in ("estimate", "local") or backend.accelerator is None:
        return None
    return AcceleratorOutputs(target, backend)


def compare_activation_types(fp32: Any, spec: Any, calib: Any, check: Any, target: Target, work: Path,
                             *, samples: int = 64) -> dict[str, Any] | None:
    """A8W8 and A16W8 side by side on the target's accelerator here: agreement with fp32 and placement.

    For targets whose ``activation_dtypes`` name a 16-bit type, when the accelerator runs
    here (QNN HTP simulator). Both models are plain static QDQ (no search), calibrated alike;
    the fp32 reference runs on the CPU provider. None when there is nothing to compare here.
    """
    from dataclasses import replace

    from ..quantization import quantize
    from ..quantization.int8.static import first_outputs
    from ..checks.comparison import compare

    wide = spec.wide_activation_type
    run = accelerator_outputs(target)
    if not wide or run is None or check is None or calib is None:
        return None
    import onnx

    ref = first_outputs(onnx.load(str(fp32.path)), check, samples)
    rows = {}
    for label, act in (("A8W8", spec.activation_type), (f"A16W8 ({wide})", wide)):
        q = quantize(fp32, replace(spec, activation_type=act, activation_dtypes=()), work / f"cmp-{act}.onnx", data=calib)
        try:
            out = run(onnx.load(str(q.artifact.path)), check, samples)
        except EdgeqError as e:
            rows[label] = {"activation_type": act, "error": e.message}
            continue
        m = compare("output 0", np.concatenate([np.atleast_2d(r) for r in ref]), np.concatenate([np.atleast_2d(o) for o in out]))
        pl = export_placement(q.artifact.path, target, q.artifact.io, (check.feed(0),))
        rows[label] = {"activation_type": act, "cosine": m.cosine, "top1_agreement": m.top1_agreement, "max_abs": m.max_abs,
                       "accel_node_share": (pl or {}).get("accel_node_share"), "accel_partitions": (pl or {}).get("accel_partitions"),
                       "placement": (pl or {}).get("kind")}
    return {"run_on": run.label, "reference": "fp32 on CPUExecutionProvider", "samples": min(samples, len(check)), "models": rows}
