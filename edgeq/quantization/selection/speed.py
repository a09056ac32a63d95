"""Speed of what ships: the bundle's model.ort against fp32, and the choice that keeps a
quantized bundle from being slower than fp32.

Everything here times the file the app loads (model.ort, written exactly as the bundle
writes it) with the session options the manifest records (the target's level, threads,
saved runtime optimizations), on the target's providers that this host has. Models are
timed in one process in interleaved rounds and compared by their medians, so a slow
moment of a shared machine hits every model alike.

Without any flag (``decide``): a quantized model.ort that is not slower than fp32 (within
``SpeedOptions.margin``) ships as is; otherwise the nodes whose integer kernels took longer
than their float kernels (onnxruntime's profiler, per node, on both .ort files) are kept
float and the mix is timed; when no quantized variant keeps up, fp32 ships and the notes say
so. The decision (not the timings) goes into the recipe, so the bundle's bytes stay a
function of the inputs; the timings go to the profile sidecar.

A target whose CPU architecture is not this host's (``--target arm64`` on x86_64): the host's
timings do not decide. int8 kernels differ between CPU families (x86's VNNI/AVX2 paths against
Arm's dot-product instructions, XNNPACK on the device), so an x86 host finding int8 slower says
little about the device. The quantized model ships as asked; the shipped model.ort is still
timed here (x86-only layouts off). The table, ``--json`` and the manifest say the speed was
measured on this host and not on the target; what the host found is in the table, ``--json``
and the sidecar (not the manifest: it follows the clock). ``--prefer fastest`` decides on this
host's timings when the user asks for that; ``--quant none`` ships fp32.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...core.targets import arch_name, host_arch


@dataclass(frozen=True)
class SpeedOptions:
    rounds: int = 9
    """interleaved rounds; each model's figure is the median of its per-round medians"""
    round_s: float = 0.03
    """time per model per round (at least 2 runs)"""
    warmup: int = 3
    margin: float = 0.05
    """noise margin: a quantized model.ort within this share of fp32 counts as not slower"""
    floor_ms: float = 0.005
    """differences below this (per inference) are within timing resolution here: never a reason to change the model"""
    onnx_warn: float = 0.10
    """model.ort slower than the bundle's own model.onnx at onnxruntime's default level by more: WARNING"""
    profile_runs: int = 20
    budget_s: float = 10.0
    """fewer rounds (3 at least) when one round of every model would take longer than budget / rounds"""
    max_bytes: int = 256 << 20
    """three sessions share this process: larger fp32 models are left to ``edgeq profile BUNDLE``"""


@dataclass(frozen=True)
class AppSession:
    """The session the app opens: the target's providers present here, their options, level, threads."""

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    level: str
    threads: int
    saved_runtime_optimizations: bool
    note: str = ""
    optimizers_off: tuple[str, ...] = ()
    """x86-only load-time layouts turned off when this host stands in for an Arm target"""
    host_arch: str = ""
    target_arch: str = ""
    """the CPU architectures of this host and of the target ("any": the target runs on either)"""

    @classmethod
    def for_target(cls, target: Any) -> AppSession | None:
        from ...profiling.profiler import device_optimizers_off, plan

        p = plan(target)
        if p is None:
            return None
        opts = tuple(dict(next((pr.options for pr in target.providers if pr.name == n), ())) for n in p.providers)
        off = tuple(device_optimizers_off(target))
        note = p.note + (f"; {', '.join(off)} off (x86-only layouts the {target.arch} device does not have)" if off else "")
        return cls(tuple(p.providers), opts, target.graph_optimization_level, target.intra_op_num_threads,
                   target.ort_optimization_style == "runtime", note, off, host_arch(), arch_name(target.arch))

    @property
    def foreign(self) -> bool:
        """The target's CPU is not this host's: timings here do not decide what ships."""
        return bool(self.target_arch) and self.target_arch not in ("any", self.host_arch)

    def measured_on(self) -> dict[str, Any]:
        return {"host_arch": self.host_arch, "target_arch": self.target_arch, "on_target_arch": not self.foreign}

    def session(self, path: Path, *, level: str | None = None, profile_prefix: str | None = None) -> Any:
        """``level``: another graph level (onnxruntime's default 'all' for the model.onnx comparison)."""
        from ...core.runtime import create_session, session_options

        so = session_options(level=level or self.level, threads=self.threads, profile_prefix=profile_prefix)
        if self.saved_runtime_optimizations and level is None:
            so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        return create_session(path, providers=list(self.providers), provider_options=[dict(o) for o in self.provider_options], so=so,
                              disabled_optimizers=list(self.optimizers_off))

    def describe(self) -> dict[str, Any]:
        return {"providers": list(self.providers), "graph_optimization_level": self.level, "intra_op_num_threads": self.threads,
                "saved_runtime_optimizations": self.saved_runtime_optimizations, "optimizers_off": list(self.optimizers_off)}


def shipped_ort(model: Path, target: Any, folder: Path) -> Path:
    """``folder``/model.ort written from ``model`` exactly as the bundle for ``target`` writes it."""
    from ...bundles.bundle import convert_to_ort
    from ...core.onnxutil import copy_model

    from ...bundles.bundle import ort_fits

    folder.mkdir(parents=True, exist_ok=True)
    copy_model(model, folder / "model.onnx")
    if not ort_fits(folder / "model.onnx"):  # over 2 GiB the bundle ships model.onnx only
        return folder / "model.onnx"
    return convert_to_ort(folder / "model.onnx", folder / "model.ort", target)


def _feed_for(sess: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def interleaved(sessions: dict[str, Any], feed: dict[str, np.ndarray], opts: SpeedOptions = SpeedOptions()) -> dict[str, float]:
    """Median ms per run of each session, from ``opts.rounds`` interleaved rounds (one process)."""
    feeds = {k: _feed_for(s, feed) for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(opts.warmup):
            s.run(None, feeds[k])
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    t = time.perf_counter()
    for k, s in sessions.items():
        s.run(None, feeds[k])
    one = time.perf_counter() - t  # one run of every model
    rounds = max(3, min(opts.rounds, int(opts.budget_s / max(2 * one, opts.round_s * len(sessions), 1e-9))))
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(list(sessions)))  # no model always runs first
        for k in order:
            ts: list[float] = []
            end = time.perf_counter() + opts.round_s
            while len(ts) < 2 or time.perf_counter() < end:
                t = time.perf_counter()
                sessions[k].run(None, feeds[k])
                ts.append(time.perf_counter() - t)
            per_round[k].append(float(np.median(ts)) * 1e3)
    return {k: float(np.median(v)) for k, v in per_round.items()}


_TOKEN = re.compile(r"_token_\d+$")


def source_node(name: str) -> str:
    """The ONNX node a kernel in an optimized onnxruntime graph came from ("fused X", "X_token_4" -> X)."""
    name = name[len("fused "):] if name.startswith("fused ") else name
    return _TOKEN.sub("", name)


def node_kernel_us(app: AppSession, path: Path, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Kernel time per run (us) of each source node of ``path``, from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory(prefix="edgeq-speed-") as tmp:
        sess = app.session(path, profile_prefix=os.path.join(tmp, "p"))
        f = _feed_for(sess, feed)
        for _ in range(runs):
            sess.run(None, f)
        events = json.loads(Path(sess.end_profiling()).read_text())
    out: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            key = source_node(e["name"][: -len("_kernel_time")])
            out[key] = out.get(key, 0.0) + float(e.get("dur", 0)) / runs
    return out


@dataclass(frozen=True)
class SpeedCheck:
    """Timings of one export's speed decision (sidecar and terminal; never the manifest)."""

    session: dict[str, Any]
    fp32_ms: float
    candidates: dict[str, float]
    """name -> median ms of its model.ort"""
    shipped: str
    shipped_ms: float
    onnx_default_ms: float | None
    """the shipped model.onnx at onnxruntime's default level (all)"""
    slower_nodes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    measured_on: dict[str, Any] = field(default_factory=dict)
    """host_arch, target_arch, on_target_arch (AppSession.measured_on)"""

    @property
    def ratio_fp32(self) -> float:
        return self.shipped_ms / self.fp32_ms if self.fp32_ms else float("nan")

    @property
    def ratio_onnx(self) -> float | None:
        return self.shipped_ms / self.onnx_default_ms if self.onnx_default_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": "model.ort", "session": self.session, "fp32_ms": round(self.fp32_ms, 4),
            "fp32_artifact": "fp32 model.onnx with the same session options",
            "candidates": {k: round(v, 4) for k, v in self.candidates.items()}, "shipped": self.shipped,
            "shipped_ms": round(self.shipped_ms, 4), "ratio_vs_fp32": round(self.ratio_fp32, 3),
            "onnx_default_ms": None if self.onnx_default_ms is None else round(self.onnx_default_ms, 4),
            "ratio_vs_model_onnx": None if self.ratio_onnx is None else round(self.ratio_onnx, 3),
            "slower_nodes": list(self.slower_nodes), "notes": list(self.notes),
            **({"measured_on": dict(self.measured_on)} if self.measured_on else {}),
        }


def not_slower(ms: float, ref: float, opts: SpeedOptions, margin: float | None = None) -> bool:
    """``ms`` counts as not slower than ``ref``: within the noise margin, or within the timing floor."""
    return ms <= ref * (1 + (opts.margin if margin is None else margin)) or ms - ref <= opts.floor_ms


def onnx_warning(check: SpeedCheck, opts: SpeedOptions = SpeedOptions()) -> str | None:
    r = check.ratio_onnx
    if r is not None and check.onnx_default_ms is not None and not not_slower(check.shipped_ms, check.onnx_default_ms, opts, opts.onnx_warn):
        return (f"WARNING: the shipped model.ort runs {r:.2f}x the time of the bundle's own model.onnx at onnxruntime's "
                f"default level ({check.shipped_ms:.3f} vs {check.onnx_default_ms:.3f} ms): an app loading model.onnx with "
                "a full onnxruntime build is faster here")
    return None


def measure_shipped(app: AppSession, fp32: Path, onnx: Path, ort: Path, feed: dict[str, np.ndarray],
                    opts: SpeedOptions = SpeedOptions(), name: str = "shipped") -> SpeedCheck:
    """fp32 (its .onnx, the app's options), the shipped model.ort (the app's options), its model.onnx (default level)."""
    key = name if name not in ("fp32", "onnx") else f"{name} (shipped)"
    sessions = {"fp32": app.session(fp32), key: app.session(ort), "onnx": app.session(onnx, level="all")}
    ms = interleaved(sessions, feed, opts)
    return SpeedCheck(app.describe(), ms["fp32"], {name: ms[key]}, name, ms[key], ms["onnx"],
                      notes=(app.note,) if app.note else (), extra={"ort": Path(ort)},
                      measured_on=app.measured_on() if hasattr(app, "measured_on") else {})


def decide(
    fp32: Any,
    qres: Any,
    target: Any,
    feed: dict[str, np.ndarray],
    work: Path,
    *,
    requantize: Callable[[tuple[str, ...]], Any] | None = None,
    opts: SpeedOptions = SpeedOptions(),
) -> tuple[Any, SpeedCheck | None, list[str]]:
    """Keep ``qres`` when its model.ort is not slower than fp32 here; else a per-node mix; else fp32.

    ``requantize(nodes)`` writes the same quantization with ``nodes`` kept float (over
    ``qres.artifact.path``) and returns its QuantResult. Returns the QuantResult to ship, the
    timings (None when the target's provider is not here) and lines for the terminal.
    """
    app, why = _app_for(fp32, target, opts)
    if app is None:
        return qres, None, [why]
    out = Path(qres.artifact.path)
    work = Path(work)
    q_ort = shipped_ort(out, target, work / "ship-int8")
    first = measure_shipped(app, fp32.path, work / "ship-int8" / "model.onnx", q_ort, feed, opts,
                            "fp32" if getattr(qres, "all_float", False) else "int8")  # nothing quantized: named for what it is
    if getattr(qres, "all_float", False):  # nothing was quantized: fp32 ships, there is no quantization to keep or drop
        return _decided(qres, "fp32", ()), first, []
    if getattr(app, "foreign", False):  # another CPU family's timings: recorded, never the reason to drop quantization
        return _kept_on_foreign_arch(qres, first, app, opts)
    if not_slower(first.shipped_ms, first.fp32_ms, opts):
        return _decided(qres, "quantized", ()), first, []
    lines: list[str] = []
    cands = {"int8": first.shipped_ms}
    slower: tuple[str, ...] = ()
    best = None
    if requantize is not None:
        f_ort = shipped_ort(Path(fp32.path), target, work / "ship-fp32")
        f_us = node_kernel_us(app, f_ort, feed, opts.profile_runs)
        q_us = node_kernel_us(app, q_ort, feed, opts.profile_runs)
        slower = tuple(sorted(n for n in _weight_nodes(fp32.path) if n in q_us and n in f_us and q_us[n] > f_us[n]))
        if slower:
            mixed = requantize(slower)
            m_ort = shipped_ort(Path(mixed.artifact.path), target, work / "ship-mixed")
            check = measure_shipped(app, fp32.path, work / "ship-mixed" / "model.onnx", m_ort, feed, opts, "mixed")
            cands["mixed"] = check.shipped_ms
            if not_slower(check.shipped_ms, check.fp32_ms, opts):
                best = replace(check, candidates=cands, slower_nodes=slower)
                lines.append(f"speed: {len(slower)} node(s) kept float, their integer kernels ran slower than float on "
                             f"{app.providers[0]} here: {', '.join(slower)}")
                return _decided(mixed, "mixed", slower), best, lines
    # nothing quantized keeps up with fp32 here: ship fp32
    from ...core.onnxutil import artifact_from, copy_model, data_file
    from ..int8.quantizer import QuantResult
    from ..spec import QuantSpec

    data_file(out).unlink(missing_ok=True)
    copy_model(fp32.path, out)
    f_ort = shipped_ort(out, target, work / "ship-fp32-final")
    f_check = measure_shipped(app, fp32.path, work / "ship-fp32-final" / "model.onnx", f_ort, feed, opts, "fp32")
    where = f" ({app.note})" if app.note else ""
    note = (f"shipping fp32: no quantized model.ort ran faster than fp32 on {app.providers[0]} here{where} "
            f"({qres.spec.mode}{', per-node mix' if slower else ''} tried); pass --quant none to skip the measurement")
    # a --max-drop search stays on record: a budget it missed still fails the export (exit 1)
    kept = {"search": qres.details["search"]} if "search" in qres.details else {}
    res = QuantResult(artifact_from(out, fp32.provenance + ("speed: fp32 shipped (quantized was slower here)",)),
                      QuantSpec(mode="none"), None, (note,), {"speed": {"decision": "fp32", "tried": qres.spec.mode}, **kept},
                      budget_met=qres.budget_met)
    lines.append("WARNING: " + note + " (" + ", ".join(f"{k} {v / first.fp32_ms:.2f}x" for k, v in cands.items()) + " fp32)")
    return res, replace(f_check, candidates={**cands, "fp32": f_check.shipped_ms}, slower_nodes=slower), lines


def _kept_on_foreign_arch(qres: Any, check: SpeedCheck, app: AppSession, opts: SpeedOptions) -> tuple[Any, SpeedCheck, list[str]]:
    """The quantized model ships. The recipe and its note say where the speed was measured, not what the host
    found: that follows the host's noise, so it goes to the terminal, --json and the sidecar
    (``profile.shipped``), and the bundle's bytes stay a function of the inputs."""
    host, arch = app.host_arch, app.target_arch
    slower = not not_slower(check.shipped_ms, check.fp32_ms, opts)
    off = f", {', '.join(app.optimizers_off)} off" if app.optimizers_off else ""
    note = (f"speed not measured on the {arch} target: the shipped model.ort was timed on this {host} host "
            f"({app.providers[0]}{off}; figures in the profile sidecar, profile.shipped); quantization kept, as another "
            f"CPU family's timings do not decide for {arch} (time it on the device: edgeq profile BUNDLE --device ssh://USER@HOST)")
    details = dict(qres.details)
    details["speed"] = {"decision": "quantized", "slower_nodes": [], "measured_on": f"{host} host", "target_arch": arch,
                        "on_target_arch": False}
    res = replace(qres, details=details, notes=qres.notes + (note,))
    line = (f"speed: not measured on {arch}; on this {host} host the {qres.spec.mode} model.ort ran {check.ratio_fp32:.2f}x fp32"
            f"{off} ({'slower than' if slower else 'not slower than'} fp32). Quantization kept (host timings do not decide "
            "for another CPU family)")
    if slower:
        line += "; --prefer fastest picks by this host's timings, --quant none ships fp32"
    return res, check, [line]


def _app_for(fp32: Any, target: Any, opts: SpeedOptions) -> tuple[AppSession | None, str]:
    from ...core.onnxutil import model_size

    app = AppSession.for_target(target)
    if app is None:
        return None, f"speed: {target.provider_names[0]} is not on this host: the shipped model.ort was not timed against fp32"
    if model_size(Path(fp32.path)) > opts.max_bytes:
        return None, (f"speed: fp32 model over {opts.max_bytes >> 20} MiB: the shipped model.ort was not timed against fp32 "
                      "in this process (edgeq profile BUNDLE times it)")
    return app, ""


def check_shipped(fp32: Any, qres: Any, target: Any, feed: dict[str, np.ndarray], work: Path,
                  opts: SpeedOptions = SpeedOptions()) -> tuple[SpeedCheck | None, list[str]]:
    """Time the shipped model.ort against fp32 and its own model.onnx (no decision: the recipe stays)."""
    app, why = _app_for(fp32, target, opts)
    if app is None:
        return None, [why]
    folder = Path(work) / "ship-check"
    ort_path = shipped_ort(Path(qres.artifact.path), target, folder)
    name = "fp32" if qres.spec.mode == "none" else qres.spec.mode
    return measure_shipped(app, fp32.path, folder / "model.onnx", ort_path, feed, opts, name), []


def _decided(qres: Any, decision: str, slower: tuple[str, ...]) -> Any:
    details = dict(qres.details)
    details["speed"] = {"decision": decision, "slower_nodes": list(slower)}
    notes = qres.notes
    if slower:
        notes = notes + (f"kept float for speed: {len(slower)} node(s) whose integer kernels ran slower than float here",)
    return replace(qres, details=details, notes=notes)


def _weight_nodes(path: Path) -> list[str]:
    import onnx

    from ..int8.qdq import WEIGHT_OPS

    m = onnx.load(str(path), load_external_data=False)
    return [n.name for n in m.graph.node if n.op_type in WEIGHT_OPS and n.name]


def shipped_latencies(target: Any, fp32: Path, candidates: dict[str, Path], feed: dict[str, np.ndarray], work: Path,
                      opts: SpeedOptions = SpeedOptions()) -> dict[str, float] | None:
    """Median ms of fp32 (its .onnx) and of each candidate's model.ort as the bundle would ship it,
    interleaved in one process with the app's session options; None when the target's provider is not here."""
    app = AppSession.for_target(target)
    if app is None:
        return None
    with tempfile.TemporaryDirectory(prefix=".edgeq-ship-", dir=str(work)) as tmp:
        sessions = {"fp32": app.session(Path(fp32))}
        for i, (name, path) in enumerate(candidates.items()):
            sessions[name] = app.session(shipped_ort(Path(path), target, Path(tmp) / f"cand{i}"))
        return interleaved(sessions, feed, opts)
