"""No-regression gate: measure the candidates this host can run and pick one honestly.

Candidates: edgeq static QDQ, onnxruntime static QOperator, onnxruntime dynamic INT8,
and fp32 itself. Each is measured here (latency on this host's CPU, file size,
accuracy or agreement with fp32 on the evaluation data). ``--prefer`` picks among
those within the accuracy budget: ``accurate`` (smallest drop, then fastest),
``fastest`` or ``smallest``. A pick slower than fp32 is reported loudly; when no
quantized candidate is within budget, fp32 is shipped and the report says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...core.data import SampleSet
from ...errors import EdgeqError

PREFERENCES = ("accurate", "fastest", "smallest")


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path | None
    ms: float | None = None
    size: int | None = None
    metric: float | None = None
    drop: float | None = None
    error: str | None = None
    result: Any = None
    outputs: tuple[dict[str, Any], ...] = ()
    """Every output's metric and drop; ``metric``/``drop`` above are the worst output's."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "p50_ms": None if self.ms is None else round(self.ms, 4), "bytes": self.size,
            "metric": None if self.metric is None else round(self.metric, 5),
            "drop": None if self.drop is None else round(self.drop, 5), "error": self.error,
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True)
class SessionSettings:
    """How the gate opens sessions: the target's providers (those this host has), provider
    options, graph optimization level and threads, as ``profile`` times them."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    provider_options: tuple[tuple[tuple[str, str], ...], ...] = ((),)
    level: str = "all"
    threads: int = 0
    note: str = ""

    @classmethod
    def for_target(cls, target: Any) -> SessionSettings:
        if target is None:
            return cls(note="no target: onnxruntime CPU defaults")
        from ...profiling.profiler import plan

        p = plan(target)
        level, threads = target.graph_optimization_level, target.intra_op_num_threads
        if p is None:  # the accelerator is not here: the host's CPU, with the target's session options
            return cls(("CPUExecutionProvider",), ((),), level, threads,
                       f"{target.provider_names[0]} is not on this host: candidates timed on the CPU provider")
        opts = tuple(next((pr.options for pr in target.providers if pr.name == name), ()) for name in p.providers)
        return cls(tuple(p.providers), opts, level, threads, p.note)

    def session(self, path: Path) -> Any:
        from ...core.runtime import create_session

        return create_session(path, providers=list(self.providers),
                              provider_options=[dict(o) for o in self.provider_options], level=self.level, threads=self.threads)

    def to_dict(self) -> dict[str, Any]:
        return {"providers": list(self.providers), "provider_options": [dict(o) for o in self.provider_options],
                "graph_optimization_level": self.level, "intra_op_num_threads": self.threads, "note": self.note}


def _outputs(sess: Any, data: SampleSet, n: int, tasks: dict[str, dict[str, Any]] | None = None, pairs: Any = None) -> list[list[np.ndarray]]:
    """Every output on the first ``n`` samples, ``[output][sample]``; outputs fed back as inputs
    (edgeq.checks.recurrent; ``pairs``: fp32's): one stream in sample order, each call fed the model's own previous state."""
    from ...checks.recurrent import session_rollout

    return session_rollout(sess, data, n, tasks, pairs)[0]


def _per_output(c: Candidate) -> str:
    """`` (cls 0.0000, boxes 0.2100)``: each output's drop, for a model with several outputs."""
    if len(c.outputs) < 2:
        return ""
    return " (" + ", ".join(f"{o['output']} {o['drop']:.4f}" for o in c.outputs) + ")"


def _latency_ms(sess: Any, feed: dict[str, np.ndarray], budget_s: float = 0.5) -> float:
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    for _ in range(2):
        sess.run(None, feed)
    ts: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < 200):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)


def select(
    artifact: Any,
    spec: Any,
    out_path: Path,
    *,
    data: SampleSet | None,
    evals: SampleSet | None,
    max_drop: float,
    prefer: str,
    on_sample: Any = None,
    target: Any = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """Quantize every candidate, measure, copy the pick to ``out_path``; returns its QuantResult.

    Every output is scored with its task's metric against fp32 (``tasks``: the app TOML's
    ``[outputs.NAME] task = ...`` overrides, as the verdict takes them); a candidate is within
    ``max_drop`` only if every output is (the worst drop decides).

    Candidates run with ``target``'s session settings (providers this host has, their options,
    graph optimization level, threads): the settings the device runs the shipped model with.
    """
    import onnx

    from ..int8 import static
    from ..int8.quantizer import QuantResult, quantize

    if prefer not in PREFERENCES:
        raise EdgeqError(f"unknown --prefer '{prefer}'", f"choose one of {', '.join(PREFERENCES)}")
    check = evals if evals is not None else data
    if check is None:
        raise EdgeqError("--prefer needs data to measure on", "pass --calib and/or --eval")
    work = out_path.parent
    specs = {
        "edgeq QDQ (static)": spec.with_overrides(mode="int8-static", format="qdq"),
        "onnxruntime QOperator (static)": spec.with_overrides(mode="int8-static", format="qoperator"),
        "onnxruntime dynamic": replace(spec, mode="int8-dynamic", activation_type="uint8"),
    }
    from ...checks.hints import pinned_format, target_allows_dynamic

    fmt = pinned_format(target) if target is not None else None
    cands: list[Candidate] = []
    for name, sp in specs.items():
        p = work / f"cand{len(cands)}.onnx"
        if sp.mode == "int8-dynamic" and target is not None and not target_allows_dynamic(target):
            cands.append(Candidate(name, None, error=f"target {target.name} runs static INT8 only"))  # never picked, never hinted
            continue
        if sp.mode == "int8-static" and fmt is not None and sp.format != fmt:
            cands.append(Candidate(name, None, error=f"target {target.name} runs {fmt.upper()} models only"))
            continue
        if sp.mode == "int8-static" and data is None:
            cands.append(Candidate(name, None, error="needs calibration data"))
            continue
        try:
            res = quantize(artifact, sp, p, data=data, on_sample=on_sample if len(cands) == 0 else None)
        except EdgeqError as e:
            cands.append(Candidate(name, None, error=e.message[:160]))
            continue
        cands.append(Candidate(name, p, result=res))
    from ...core.onnxutil import copy_model, data_file, model_size

    settings = SessionSettings.for_target(target)
    n = min(len(check), 500)
    sess = settings.session(artifact.path)
    from ...checks.recurrent import session_rollout

    ref, pairs = session_rollout(sess, check, n, tasks)  # as _outputs, and the pairs the candidates are streamed with
    head = onnx.load(str(artifact.path), load_external_data=False)
    specs = static.output_tasks(head, ref, tasks, pairs=pairs)  # each output's task metric (class agreement, detection F1, map IoU, ...)
    from ...checks.masking import token_masks

    masks = token_masks(check, n)  # embedding outputs: scored on the real tokens, as the verdict does
    fp32_metric = static.score_outputs(specs, ref, ref, check.labels, masks)
    feed = check.feed(0)
    measured: list[Candidate] = [
        Candidate("fp32", artifact.path, _latency_ms(sess, feed), model_size(artifact.path), fp32_metric.value, 0.0,
                  outputs=tuple(fp32_metric.per_output(fp32_metric)))
    ]
    del sess
    for c in cands:
        if c.path is None:
            measured.append(c)
            continue
        sess = settings.session(c.path)
        m = static.score_outputs(specs, _outputs(sess, check, n, tasks, pairs), ref, check.labels, masks)
        worst = m.worst(fp32_metric)
        measured.append(replace(c, ms=_latency_ms(sess, feed), size=model_size(c.path), metric=m.metrics[worst].value if m.metrics else 1.0,
                                drop=m.drop_from(fp32_metric), outputs=tuple(m.per_output(fp32_metric))))
        del sess
    del head
    # latency of what ships: each candidate's model.ort (the bundle's writer), one process, interleaved rounds
    from .speed import shipped_latencies

    shipped = shipped_latencies(target, artifact.path, {c.name: c.path for c in measured[1:] if c.path is not None and c.error is None},
                                feed, work) if target is not None else None
    if shipped is not None:
        measured = [replace(c, ms=shipped.get("fp32" if i == 0 else c.name, c.ms)) for i, c in enumerate(measured)]
    fp32 = measured[0]
    ok = [c for c in measured[1:] if c.error is None and c.drop is not None and c.drop <= max_drop]
    key = {
        "accurate": lambda c: (c.drop, c.ms),
        "fastest": lambda c: (c.ms, c.drop),
        "smallest": lambda c: (c.size, c.drop),
    }[prefer]
    notes: list[str] = []
    if ok:
        pick = min(ok, key=key)
        if pick.ms is not None and fp32.ms is not None and pick.ms > fp32.ms:
            notes.append(
                f"WARNING: SLOWER THAN FP32 on this host: {pick.name} runs at {pick.ms:.3f} ms vs fp32 {fp32.ms:.3f} ms "
                f"({pick.ms / fp32.ms:.2f}x); chosen because --prefer {prefer}"
            )
        copy_model(pick.path, out_path)  # a large pick: its external data goes to out_path's own data file
        base: QuantResult = pick.result
    else:
        pick = fp32
        notes.append(
            f"WARNING: no quantized candidate within the accuracy budget ({max_drop}): shipping fp32 unchanged"
        )
        copy_model(artifact.path, out_path)
        from ..spec import QuantSpec

        base = QuantResult(artifact, QuantSpec(mode="none"), None, ("shipped fp32: no quantized candidate met the budget",), budget_met=False)
    table = [c.to_dict() for c in measured]
    if settings.note:
        notes.append(f"gate sessions: {settings.note}")
    notes.append(
        f"gate (--prefer {prefer}, {check.source}, {fp32_metric.name}): picked {pick.name}; "
        + "; ".join(
            f"{c.name}: {'failed (' + c.error + ')' if c.error else f'{c.ms:.3f} ms, {c.size} B, drop {c.drop:.4f}' + _per_output(c)}"
            for c in measured
        )
    )
    for c in cands:
        if c.path is not None and c.path != out_path:
            c.path.unlink(missing_ok=True)
            data_file(c.path).unlink(missing_ok=True)
    from ...core.onnxutil import artifact_from

    details = dict(base.details)
    details["gate"] = {"prefer": prefer, "metric": fp32_metric.name, "max_drop": max_drop, "picked": pick.name, "met": bool(ok), "candidates": table,
                       "sessions": settings.to_dict(),
                       "latency_of": "each candidate's model.ort as the bundle ships it (fp32: its .onnx), interleaved"
                       if shipped is not None else "each candidate's .onnx"}
    return QuantResult(
        artifact_from(out_path, base.artifact.provenance + (f"gate(prefer={prefer}) -> {pick.name}",)),
        base.spec, base.coverage, tuple(notes) + base.notes, details, base.budget_met,
    )
