"""profile: latency on this host with the target's providers, labelled honestly.

A measurement says which provider ran it and on which machine. When the
target's accelerator is not here, edgeq does not time a CPU stand-in for it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import child
from ..core.artifact import IoSpec
from ..core.data import SampleSet
from ..errors import CheckFailed, ModelError, ProviderError, first_line
from ..core.onnxutil import model_size
from .providers import OPENVINO, QNN  # noqa: F401 - names shared with provider discovery (and importers of profile)
from ..core.runtime import available_providers, create_session, run
from ..core.targets import Target, arch_name, host_arch as host_cpu
from ..core.data import synthetic_feed

from .placement import CPU_FAMILY  # noqa: E402 - re-exported name used here


@dataclass(frozen=True)
class ProfileResult:
    model: str
    provider: str
    host: str
    device_measurement: bool
    cold_start_ms: float
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    file_bytes: int
    note: str
    artifact: str = ""
    """the file timed (model.ort: what the bundle ships) and the session options it was timed with"""
    session: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProfilePlan:
    providers: tuple[str, ...]
    device_measurement: bool
    note: str


def plan(target: Target) -> ProfilePlan | None:
    """Which providers to time with here, or None (with reason) when nothing honest can be timed."""
    here = set(available_providers())
    usable = tuple(p for p in target.provider_names if p in here)
    host_arch = platform.machine().lower()
    same_arch = arch_name(target.arch) in ("any", host_cpu())
    primary = target.provider_names[0]
    if primary in here:
        note = "" if same_arch else f"host {host_arch}, target {target.arch}: not device timing"
        return ProfilePlan(usable, same_arch, note)
    if primary in CPU_FAMILY and "CPUExecutionProvider" in here:
        return ProfilePlan(
            ("CPUExecutionProvider",),
            False,
            f"{primary} not in this onnxruntime; timed with CPUExecutionProvider on {host_arch}: not device timing",
        )
    return None


X86_ONLY_OPTIMIZERS = ("NchwcTransformer",)


def device_optimizers_off(target: Target) -> list[str]:
    """Optimizers to turn off when this host stands in for a target of another architecture.

    On x86, onnxruntime's level 'all' adds NCHWc layouts for float convolutions at load time;
    an Arm device never gets them, so timing fp32 with them would flatter fp32 against int8.
    """
    return list(X86_ONLY_OPTIMIZERS) if host_cpu() == "x86_64" and arch_name(target.arch) not in ("any", "x86_64") else []


def skip_reason(target: Target) -> str:
    from .providers import available_providers as reachable, find_provider

    found = find_provider(target.provider_names[0])
    if found is not None:  # a plugin or an own environment: measured in a child process, not timed in-process
        return f"{found.note or found.name + ' (' + found.kind + ')'}: no latency from export (edgeq profile BUNDLE); placement below"
    return (
        f"{target.provider_names[0]} is not available on this host ({', '.join(reachable())}); "
        "no timing rather than a CPU stand-in"
    )


def profile(
    path: Path | str,
    target: Target,
    *,
    feed: dict[str, np.ndarray] | None = None,
    io: IoSpec | None = None,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 0,
    budget_s: float = 3.0,
) -> ProfileResult | None:
    """Time one model; ``None`` when the target's providers are not on this host."""
    p = plan(target)
    if p is None:
        return None
    if feed is None:
        from ..core.onnxutil import artifact_from

        feed = synthetic_feed(io or artifact_from(Path(path)).io)
    opts = [dict(pr.options) if pr.name in p.providers else {} for pr in target.providers if pr.name in p.providers]
    from ..core.runtime import session_options

    # the session options the bundle's manifest tells the app to use
    level, threads = target.graph_optimization_level, threads or target.intra_op_num_threads
    so = session_options(level=level, threads=threads)
    runtime_opt = target.ort_optimization_style == "runtime" and Path(path).suffix == ".ort"
    if runtime_opt:
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    t0 = time.perf_counter()
    sess = create_session(path, providers=list(p.providers), provider_options=opts, so=so,
                          disabled_optimizers=device_optimizers_off(target))
    run(sess, feed)
    cold = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        run(sess, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        run(sess, feed)
        times.append((time.perf_counter() - t) * 1e3)
    arr = np.asarray(times)
    note = p.note
    if len(times) < runs:
        note = (note + "; " if note else "") + f"time budget ended after {len(times)} runs"
    return ProfileResult(
        model=str(path),
        provider=sess.get_providers()[0],
        host=f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        device_measurement=p.device_measurement,
        cold_start_ms=round(cold, 3),
        runs=len(times),
        p50_ms=round(float(np.percentile(arr, 50)), 4),
        p90_ms=round(float(np.percentile(arr, 90)), 4),
        mean_ms=round(float(arr.mean()), 4),
        file_bytes=model_size(Path(path)) if Path(path).suffix == ".onnx" else Path(path).stat().st_size,
        note=note,
        artifact="model.ort as the bundle ships it" if Path(path).suffix == ".ort" else Path(path).name,
        session={"graph_optimization_level": level, "intra_op_num_threads": threads, "saved_runtime_optimizations": runtime_opt},
    )


def feed_from(data: SampleSet | None) -> dict[str, np.ndarray] | None:
    return data.feed(0) if data is not None and len(data) else None


# --------------------------------------------------------------------------------------
# Full measurement (``edgeq profile``): a child process per model, so memory and cold
# start belong to the model; placement from onnxruntime's own record; per-op times from
# its profiler; a static estimate where no package brings the target's provider here.
# --------------------------------------------------------------------------------------

_FALLBACK_REFUSED = "fallback to CPU EP has been explicitly disabled"


@dataclass(frozen=True)
class MeasureOptions:
    runs: int = 50  # timed runs at least; more until the median is stable or the budget ends
    warmup: int = 5
    threads: int = 0
    budget_s: float = 10.0
    stable_rel: float = 0.05  # stable: the 95 % CI of the median is narrower than this share of it
    profile_runs: int = 10  # runs under onnxruntime's profiler (0: no per-op breakdown)
    top: int = 10
    numerics_samples: int = 8


@dataclass(frozen=True)
class Backend:
    """How this host can run the target's providers."""

    kind: str  # local | qnn-plugin | openvino-env | estimate
    python: str
    providers: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    plugin: str | None
    accelerator: str | None
    device_measurement: bool
    note: str


@dataclass(frozen=True)
class ProfileInput:
    """A model to profile: an .onnx file, or a bundle's model.ort with its golden inputs."""

    label: str
    model: Path  # what runs
    onnx: Path  # the ONNX graph (static estimates, reference comparisons)
    io: IoSpec
    feeds: tuple[dict[str, np.ndarray], ...]
    feeds_source: str
    bundle: Path | None = None
    bundle_target: str | None = None
    session: dict[str, Any] | None = None
    """a bundle's recorded session options (manifest target.session_options): the app's, so the ones timed"""


def resolve_backend(target: Target, *, setup_runtime: bool = False, progress=None) -> Backend:
    """Decide how to run ``target`` here; never a CPU stand-in for an absent accelerator."""
    from .placement import accelerator_of
    from .providers import find_provider

    acc = accelerator_of(target.provider_names)
    primary = target.providers[0]
    host = platform.machine().lower()
    found = find_provider(primary.name)
    if found is not None and found.kind == "plugin":
        return Backend(f"{found.plugin}-plugin", sys.executable, ((primary.name, primary.options),), found.plugin, acc, False,
                       f"QNN HTP simulator on {host} (onnxruntime-qnn): placement and numerics, not device timing")
    if primary.name == OPENVINO and (found is None or found.kind == "environment"):
        from . import ovenv

        py = found.python if found is not None else ovenv.require_python(setup_runtime, progress)
        provs = ((primary.name, primary.options), ("CPUExecutionProvider", ()))
        same = target.arch in ("any", host)
        return Backend("openvino-env", str(py), provs, None, acc, same,
                       "" if same else f"host {host}, target {target.arch}: not device timing")
    p = plan(target)
    if p is not None:
        provs = tuple((pr.name, pr.options) for pr in target.providers if pr.name in p.providers)
        return Backend("local", sys.executable, provs, None, acc if acc in p.providers else None, p.device_measurement, p.note)
    if target.supported_ops:
        return Backend("estimate", "", (), None, acc, False,
                       f"{primary.name} is not available here: placement is a static estimate, nothing was timed")
    raise ProviderError(skip_reason(target), f"profile on a host that has {primary.name}, or choose another target")


def load_input(path: Path, *, data: Path | None = None, samples: int = 8) -> ProfileInput:
    """An .onnx model (inputs from ``data`` or seeded random) or a bundle folder (golden inputs)."""
    from ..core.onnxutil import artifact_from

    path = Path(path)
    if path.is_dir():
        return _bundle_input(path, data=data, samples=samples)
    from ..core.fsutil import require_regular_file

    require_regular_file(path, "model", ModelError)
    if not path.exists():
        raise ModelError(f"model not found: {path}", "pass an .onnx file or a bundle folder")
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"{path} is neither an .onnx file nor a bundle folder", "pass an .onnx file or a bundle folder")
    art = artifact_from(path)
    if data is not None:
        from ..core.data import load_samples

        s = load_samples(data, art.io, what="profiling")
        feeds = tuple(s.feed(i) for i in range(min(samples, len(s))))
        src = str(data)
    else:
        feeds = tuple(synthetic_feed(art.io, seed=i) for i in range(max(1, min(samples, 3))))
        src = "seeded random inputs"
    return ProfileInput(label=str(path), model=path, onnx=path, io=art.io, feeds=feeds, feeds_source=src)


def _inside(root: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ModelError(f"bundle {root}: manifest names no model file", "rebuild the bundle with edgeq export")
    full = (root / rel).resolve()
    if root.resolve() not in full.parents:
        raise ModelError(f"bundle {root}: manifest path {rel!r} leaves the bundle", "refusing to read outside the bundle")
    return full


def _bundle_input(root: Path, *, data: Path | None = None, samples: int = 8) -> ProfileInput:
    from ..bundles.reader import read_bundle
    from ..core.artifact import TensorSpec

    b = read_bundle(root)  # the one reader: manifest, schema, file list, checksums
    if b.kind == "gguf":
        raise ModelError(f"bundle {root} is a llama.cpp (GGUF) bundle", "profile ONNX bundles; check a GGUF bundle with edgeq verify")
    manifest = b.manifest
    files = manifest.get("model", {})

    def listed(rel: Any) -> Path:  # a checksummed file, inside the bundle
        b.path(rel)
        return _inside(root, rel)

    onnx_path = listed(files.get("onnx"))
    model = listed(files.get("ort")) if files.get("ort") else onnx_path
    spec = lambda t: TensorSpec(t["name"], t["dtype"], tuple(t["shape"]))  # noqa: E731
    io = IoSpec(tuple(spec(t) for t in manifest["inputs"]), tuple(spec(t) for t in manifest["outputs"]))
    feeds = []
    if data is not None:
        from ..core.data import load_samples

        s = load_samples(data, io, what="profiling")
        feeds = [s.feed(i) for i in range(min(samples, len(s)))]
        source = str(data)
    else:
        for pair in manifest["golden"]["pairs"]:
            feed = {}
            for i, t in enumerate(io.inputs):
                listed(pair["inputs"][i])
                feed[t.name] = b.array(pair["inputs"][i])  # the .npy header checked against the file's size first
            feeds.append(feed)
        source = f"{len(feeds)} golden inputs of the bundle"
    if not feeds:
        raise ModelError(f"bundle {root} has no golden inputs", "rebuild it with edgeq export, or pass --data")
    return ProfileInput(label=str(root), model=model, onnx=onnx_path, io=io, feeds=tuple(feeds),
                        feeds_source=source, bundle=root,
                        bundle_target=manifest.get("target", {}).get("name"),
                        session=_recorded_session(manifest))


def _recorded_session(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The level and replay flag a bundle's manifest records (schema-checked values only; nothing else is taken)."""
    so = (manifest.get("target") or {}).get("session_options") or {}
    level = so.get("graph_optimization_level")
    if level not in ("disable", "basic", "extended", "all"):
        return None
    return {"graph_optimization_level": level, "saved_runtime_optimizations": so.get("saved_runtime_optimizations") is True}


def _run_worker(backend: Backend, inp: ProfileInput, target: Target, opts: MeasureOptions, *,
                disable_fallback: bool, work: Path, context_path: Path | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from . import worker

    feeds_npz = work / "feeds.npz"
    np.savez(feeds_npz, **{f"{i}:{k}": v for i, f in enumerate(inp.feeds[: max(1, opts.numerics_samples)]) for k, v in f.items()})
    spec = {
        "model": str(inp.model.resolve()),
        "placement_model": str(inp.onnx.resolve()) if inp.onnx != inp.model else None,
        "feeds": str(feeds_npz),
        "providers": [[n, dict(o)] for n, o in backend.providers],
        "plugin": backend.plugin,
        "level": inp.session["graph_optimization_level"] if inp.session else target.graph_optimization_level,
        "saved_runtime_optimizations": inp.session["saved_runtime_optimizations"] if inp.session
        else target.ort_optimization_style == "runtime" and inp.model.suffix == ".ort",
        "threads": opts.threads or target.intra_op_num_threads,
        "disabled_optimizers": device_optimizers_off(target),
        "warmup": opts.warmup,
        "runs": opts.runs,
        "budget_s": opts.budget_s,
        "stable_rel": opts.stable_rel,
        "profile_runs": opts.profile_runs,
        "disable_cpu_fallback": disable_fallback,
        "require_provider": backend.accelerator,
        "outputs_npz": str(work / "outputs.npz"),
        "out": str(work / "result.json"),
        "context_path": str(context_path) if context_path else None,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    timeout = opts.budget_s * 2 + 300
    try:  # isolated (-I, edgeq.core.child): worker.py needs only numpy and onnxruntime; cwd is edgeq's private work folder
        proc = child.run(child.python_argv(backend.python, [worker.__file__, work / "spec.json"], flags=("-B",)),
                         capture_output=True, text=True, timeout=timeout, cwd=work)
    except child.TimeoutExpired:
        raise ProviderError(f"measuring {inp.label} took longer than {timeout:.0f} s", "lower --budget or --runs") from None
    out = work / "result.json"
    if not out.is_file():
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ProviderError(f"the measurement process died ({tail[:200]})", "run with EDGEQ_DEBUG=1, or check the provider install")
    result = json.loads(out.read_text())
    outputs: dict[str, np.ndarray] = {}
    if (work / "outputs.npz").is_file():
        with np.load(work / "outputs.npz", allow_pickle=False) as z:
            outputs = {k: z[k] for k in z.files}
    return result, outputs


def run_worker(backend: Backend, inp: ProfileInput, target: Target, opts: MeasureOptions, *,
               work: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``inp`` once per feed in the measurement worker with ``backend`` (CPU fallback allowed):
    the worker's result and the outputs (``"<feed>:<output>"``)."""
    return _run_worker(backend, inp, target, opts, disable_fallback=False, work=work)


def _ops_breakdown(ops: dict[str, Any] | None, top: int) -> dict[str, Any] | None:
    if not ops or not ops.get("nodes"):
        return None
    runs = max(1, ops["runs"])
    total = sum(n["us"] for n in ops["nodes"]) or 1.0
    for n in ops["nodes"]:
        if "ExecutionProvider" in n["op_type"] or n["name"].startswith(n["provider"] + "_"):  # a compiled partition
            n["op_type"] = n["provider"].replace("ExecutionProvider", "") + " partition"
    nodes = [{"node": n["name"], "op_type": n["op_type"], "provider": n["provider"], "ms_per_run": n["us"] / runs / 1e3,
              "share": n["us"] / total} for n in ops["nodes"]]
    by_type: dict[str, dict[str, Any]] = {}
    for n in ops["nodes"]:
        key = n["op_type"]
        d = by_type.setdefault(key, {"op_type": key, "nodes": 0, "us": 0.0, "providers": set()})
        d["nodes"] += 1
        d["us"] += n["us"]
        d["providers"].add(n["provider"])
    types = sorted(by_type.values(), key=lambda d: -d["us"])
    return {
        "profiled_runs": runs,
        "kernel_ms_per_run": total / runs / 1e3,
        "top_nodes": nodes[:top],
        "op_types": [{"op_type": d["op_type"], "nodes": d["nodes"], "ms_per_run": d["us"] / runs / 1e3, "share": d["us"] / total,
                      "providers": sorted(d["providers"])} for d in types[:top]],
        "nodes_profiled": len(nodes),
    }


def _numerics(inp: ProfileInput, outputs: dict[str, np.ndarray], backend: Backend, target: Target,
              reference: Path | None) -> dict[str, Any] | None:
    """The measured provider's outputs against the same model on the CPU provider and against a reference."""
    from ..checks.comparison import compare

    if not outputs:
        return None
    n = 1 + max(int(k.split(":")[0]) for k in outputs)
    k_out = 1 + max(int(k.split(":")[1]) for k in outputs)
    names = inp.io.output_names or tuple(f"output_{k}" for k in range(k_out))

    def stack(d: dict[str, np.ndarray], k: int) -> np.ndarray:
        return np.concatenate([np.atleast_1d(d[f"{i}:{k}"]) for i in range(n)], axis=0)

    def outs_of(model: Path) -> dict[str, np.ndarray]:
        sess = create_session(model, level=target.graph_optimization_level)
        return {f"{i}:{k}": np.asarray(o) for i in range(n) for k, o in enumerate(run(sess, inp.feeds[i]))}

    res: dict[str, Any] = {"samples": n, "inputs": inp.feeds_source}
    if backend.accelerator:
        try:
            cpu = outs_of(inp.model)
            res["vs_cpu_provider"] = [asdict(compare(names[k], stack(cpu, k), stack(outputs, k))) for k in range(k_out)]
        except ModelError as e:  # e.g. a compiled EPContext model has no CPU form
            res["vs_cpu_provider"] = None
            res["cpu_provider_skipped"] = e.message
    if reference is not None:
        # the same task-aware judgement as export and verify (checks.comparison.judge): raw cosine is information
        from ..checks.comparison import judge
        from ..checks.kinds import context_from
        from ..core.onnxutil import artifact_from

        ref = outs_of(reference)
        per = lambda d: [[np.asarray(d[f"{i}:{k}"]) for i in range(n)] for k in range(k_out)]  # noqa: E731 - [output][sample]
        try:
            metrics, checks, _ = judge(names, per(ref), per(outputs), context_from(reference, artifact_from(Path(reference)).io),
                                       target.tolerances)
            fails = [f for c in checks for f in c["failures"]]
        except ModelError as e:  # no output of the same element type: nothing to compare
            metrics, checks, fails = (), [], [e.message]
        apart = {c["output"]: c["why"] for c in checks if c["kind"] == "not-compared"}
        res["vs_reference"] = {"reference": str(reference), "outputs": [asdict(m) for m in metrics if m.name not in apart],
                               "tasks": checks, "passed": not fails, "failures": fails,
                               "not_compared": apart}  # e.g. an int8 KV cache's present codes against fp32 values: reported only
    return res


def measure(inp: ProfileInput, target: Target, backend: Backend, opts: MeasureOptions = MeasureOptions(), *,
            reference: Path | None = None, context_dir: Path | None = None) -> dict[str, Any]:
    """Profile one model with ``backend``; a JSON-ready report."""
    from .placement import estimate, summarize_measured

    if inp.model.suffix.lower() == ".onnx":
        from ..core.onnxutil import model_size

        file_bytes = model_size(inp.model)  # external data included
    else:
        file_bytes = inp.model.stat().st_size
    base: dict[str, Any] = {
        "model": inp.label, "model_file": inp.model.name, "bundle": str(inp.bundle) if inp.bundle else None,
        "session": inp.session or {"graph_optimization_level": target.graph_optimization_level},
        "target": target.name, "backend": backend.kind, "accelerator": backend.accelerator,
        "host": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "file_bytes": file_bytes, "inputs": inp.feeds_source, "notes": [],
    }
    if backend.kind == "estimate":
        base.update({"provider": None, "providers_active": [], "device_measurement": False, "timed": False,
                     "note": backend.note, "placement": estimate(inp.onnx, target)})
        return base
    notes: list[str] = [backend.note] if backend.note else []
    fallback_off = backend.plugin is not None
    with tempfile.TemporaryDirectory(prefix="edgeq-profile-") as tmp:
        work = Path(tmp)
        ctx = context_dir / "model_ctx.onnx" if context_dir else None
        result, outputs = _run_worker(backend, inp, target, opts, disable_fallback=fallback_off, work=work, context_path=ctx)
        if fallback_off and _FALLBACK_REFUSED in result.get("error", ""):
            notes.append(f"{backend.accelerator} cannot run every node: measured again with CPU fallback allowed")
            fallback_off = False
            result, outputs = _run_worker(backend, inp, target, opts, disable_fallback=False, work=work, context_path=ctx)
    if "error" in result:
        if backend.accelerator is None:
            raise ModelError(f"onnxruntime cannot run {inp.model.name}: {result['error']}", "check that the model is valid (edgeq inspect)")
        from .diagnose import failure_hint

        if "did not start" in result["error"]:
            raise ProviderError(f"{target.name}: {result['error']}",
                                f"this host has no device for {backend.accelerator}: profile where it has one (--device ssh://...)")
        raise ProviderError(f"{target.name}: {backend.accelerator} refused {inp.model.name}: {result['error']}",
                            failure_hint(inp.onnx if inp.onnx.suffix == ".onnx" else None, target, inp.bundle,
                                         result["error"]))
    steady = result["steady"]
    if not steady["stable"]:
        notes.append(f"UNSTABLE: p50 95% CI is ±{50 * steady['p50_ci_rel']:.1f}% after {steady['runs']} runs "
                     f"({steady['elapsed_s']:.1f} s budget): close other programs or raise --budget")
    ops = _ops_breakdown(result.get("ops"), opts.top)
    placement = summarize_measured(result.get("placement", []), (result.get("ops") or {}).get("nodes"), backend.accelerator) \
        if result.get("placement") else None
    if placement and placement["fallback"] and target.supported_ops and inp.onnx.suffix == ".onnx":
        _explain_fallback(placement, inp.onnx, target)
    if any(t == "EPContext" for sg in result.get("placement", []) for _, t in sg["nodes"]):
        notes.append("compiled model: each EPContext node stands for a whole partition, so node shares undercount the accelerator")
    if placement is not None and result.get("placement_from"):
        placement["from"] = result["placement_from"]
        notes.append(f"placement read from {result['placement_from']} (onnxruntime records none for {inp.model.name})")
    active = result["providers_active"]
    used = {p["provider"] for p in placement["providers"] if p["nodes"]} if placement else set(active)
    provider = next((p for p in active if p in used), active[0])  # a registered provider that took no node is not "the" provider
    base.update({
        "provider": provider,
        "providers_active": active,
        "onnxruntime": result.get("onnxruntime"),
        "cpu_fallback_disabled": fallback_off,
        "device_measurement": backend.device_measurement,
        "timed": True,
        "cold_start": result["cold"],
        "steady": steady,
        "memory": result["memory"],
        "times_ms": result.get("times_ms", []),
        "ops": ops,
        "placement": placement,
        "numerics": _numerics(inp, outputs, backend, target, reference),
        "context_files": result.get("context"),
        # flat figures, as in the earlier table
        "cold_start_ms": result["cold"]["total_ms"],
        "p50_ms": steady["p50_ms"], "p90_ms": steady["p90_ms"], "p99_ms": steady["p99_ms"],
        "mean_ms": steady["mean_ms"], "cv": steady["cv"], "runs": steady["runs"], "stable": steady["stable"],
        "peak_bytes": result["memory"].get("peak_bytes"),
    })
    if reference is not None:
        from ..checks.layers import layer_errors

        try:
            base["layer_errors"] = layer_errors(reference, inp.onnx, inp.feeds[: max(1, opts.numerics_samples)])
        except Exception as e:  # noqa: BLE001 - a diagnostic; the figures above stand without it
            notes.append(f"per-layer error not computed: {first_line(e, 120)}")
    base["notes"] = notes
    base["note"] = "; ".join(notes)
    return base


def check_coverage(reports: list[dict[str, Any]], minimum: float) -> None:
    """Raise CheckFailed when a model's accelerator node share is below ``minimum``."""
    low = []
    for r in reports:
        pl = r.get("placement")
        share = pl.get("accel_node_share") if pl else None
        if share is None:
            raise ProviderError(
                f"--min-accel-coverage: {r['model']} has no accelerator placement on target {r['target']}",
                "use a target with an accelerator provider (qnn-htp, nnapi, coreml, openvino-*)",
            )
        if share < minimum:
            kind = " (estimate)" if pl["kind"] == "estimate" else ""
            low.append(f"{r['model']}: {100 * share:.1f}% of nodes on {pl['accelerator']}{kind}")
    if low:
        raise CheckFailed(f"accelerator coverage below {100 * minimum:.0f}%: {'; '.join(low)}",
                          "see the fallback list: pin shapes (--static-shape), quantize with the target's recipe, or replace the ops named")


def write_ep_context(model: Path, out_dir: Path, target: Target, name: str = "model_ctx.onnx") -> dict[str, Any] | None:
    """Compile the provider's context binary next to the bundle's model (QNN, when onnxruntime-qnn is here), as
    ``name`` (a static decoder's prefill graph gets its own: ``prefill_ctx.onnx``).

    Returns what the manifest records: the context files, or (``built: False``) the
    provider's own reason why it could not compile here, so the bundle is marked as
    needing on-device compilation. None when the target has no such step here.
    """
    from . import worker

    from .providers import find_provider

    primary = target.providers[0]
    found = find_provider(primary.name) if primary.name == QNN else None
    if found is None:
        return None
    plugin = found.plugin
    with tempfile.TemporaryDirectory(prefix="edgeq-ctx-") as tmp:
        work = Path(tmp)
        ctx_dir = work / "ctx"
        ctx_dir.mkdir()
        spec = {"mode": "context", "model": str(Path(model).resolve()), "plugin": plugin,
                "providers": [[primary.name, dict(primary.options)], ["CPUExecutionProvider", {}]],
                "level": target.graph_optimization_level, "context_path": str(ctx_dir / name),
                "out": str(work / "result.json")}
        (work / "spec.json").write_text(json.dumps(spec))
        try:
            proc = child.run(child.python_argv(sys.executable, [worker.__file__, work / "spec.json"], flags=("-B",)),
                             capture_output=True, text=True, timeout=600, cwd=work)
        except child.TimeoutExpired:
            return _no_context(primary.name, "compiling the context took longer than 600 s")
        result = json.loads((work / "result.json").read_text()) if (work / "result.json").is_file() else {}
        if "error" in result or not result:
            return _no_context(primary.name, provider_reason(result.get("error"), proc.stderr, proc.returncode))
        if not (ctx_dir / name).is_file():
            return _no_context(primary.name, f"{primary.name} wrote no context model")
        import onnx

        ctx_model = onnx.load(str(ctx_dir / name), load_external_data=False)
        if not any(n.op_type == "EPContext" for n in ctx_model.graph.node):
            return _no_context(primary.name, f"{primary.name} took no node of the model, so there is nothing to compile")
        files = []
        for f in sorted(ctx_dir.iterdir()):
            os.replace(f, Path(out_dir) / f.name)
            files.append(f.name)
    acc = sum(len(sg["nodes"]) for sg in result["placement"] if sg["ep"] == primary.name)
    total = sum(len(sg["nodes"]) for sg in result["placement"])
    return {"provider": primary.name, "model": name, "files": files, "nodes_on_provider": acc, "nodes_total": total,
            "onnxruntime_qnn": _qnn_version()}


def _no_context(provider: str, reason: str) -> dict[str, Any]:
    return {"provider": provider, "built": False, "reason": reason, "needs_on_device_compilation": True,
            "onnxruntime_qnn": _qnn_version()}


def provider_reason(error: str | None, stderr: str | None, returncode: int | None = None) -> str:
    """The provider's own words: the exception text and the error lines it logged (bounded, one line)."""
    parts = [error] if error else []
    for line in (stderr or "").splitlines()[-40:]:
        line = line.strip()
        if ("QNN_" in line or " E:" in line or "[E:" in line or "error" in line.lower()) and line not in parts:
            parts.append(line)
    if not parts:
        parts.append(f"the process ended with exit code {returncode}")
    text = " | ".join(parts[:4])
    return text[:800]


def _qnn_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("onnxruntime-qnn")
    except Exception:  # noqa: BLE001
        return None


def _explain_fallback(placement: dict[str, Any], onnx_path: Path, target: Target) -> None:
    """Add the static reasons (op type, dtype, dynamic shape) to measured fallbacks, where a rule names one."""
    from .placement import estimate

    try:
        est = estimate(onnx_path, target)
    except Exception:  # noqa: BLE001 - an explanation only
        return
    why = {f["node"]: f["reason"] for f in est["fallback"]}
    for f in placement["fallback"]:
        if f["node"] in why:
            f["reason"] += f"; {target.name} rules: {why[f['node']]}"
