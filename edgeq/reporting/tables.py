"""Human output: terminal tables and progress (stderr), built from the reports."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.safetext import escape_markup as escape  # control characters and rich markup from files
from ..core.units import human_bytes

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


START_AFTER_S = 10.0  # in a log, a stage still running after this long names itself (a quick one that fails stays one line)


class StageProgress:
    """Prints one line per finished stage and a bar for calibration samples.

    On a terminal a running stage shows a spinner; in a log, a stage still running after
    ``start_after`` seconds prints ``start NAME`` (a 1B LLM's export or greedy check runs for
    minutes), so an input refused at once is still reported in one line."""

    def __init__(self, console: Console = err, total_samples: int = 0, start_after: float = START_AFTER_S) -> None:
        self.console = console
        self.start_after = start_after
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.total = total_samples
        self.task = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        live = contextlib.nullcontext()
        timer = None
        if not self.console.is_terminal:  # logs: which stage is running, once it has run a while
            timer = threading.Timer(self.start_after, self.console.print, (f"[dim]start[/] {escape(name)}",))
            timer.daemon = True
            timer.start()
        if name.startswith("quantize") and self.total:
            self.task = self.progress.add_task(f"calibrating", total=self.total)
            self.progress.start()
        elif self.console.is_terminal:  # a long stage (a 1B LLM's export or greedy check) shows it is running
            live = self.console.status(f"{escape(name)} ...")
        try:
            with live:
                yield
        finally:
            if timer is not None:
                timer.cancel()
                if timer.is_alive():  # printing its line right now: let it finish before anything else is printed
                    timer.join()
            if self.task is not None:
                self.progress.stop()
                self.progress.remove_task(self.task)
                self.task = None
        self.console.print(f"[green]done[/] {name} ({time.perf_counter() - t0:.1f} s)")

    def sample(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


def _by_op(cov: dict[str, Any]) -> str:
    """"; Conv 12/12, LSTM 0/4" where some op type stayed float (quantized/total per op type), else ""."""
    by_op = cov.get("by_op") or {}
    if len(by_op) < 2 or all(c["quantized"] == c["total"] for c in by_op.values()):
        return ""
    return "; " + ", ".join(f"{escape(str(op))} {c['quantized']}/{c['total']}" for op, c in by_op.items())


def export_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"edgeq export -> {r['target']}", show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("fp32", justify="right")
    t.add_column("quantized", justify="right")
    t.add_column("note")
    size = r["size"]
    t.add_row("model size", human_bytes(size["fp32_bytes"]), human_bytes(size["model_bytes"]), f"{fmt(size['ratio'], '.3f')} x fp32")
    q = r["quantization"]
    cov = q.get("coverage")
    if cov:
        t.add_row(
            "quantized nodes", str(cov["nodes_total"]), str(cov["nodes_quantized"]),
            f"fp32 (mode none): no weight node quantized, {q['requested_mode']} asked for" if q.get("requested_mode") else
            f"{q['mode']} weight-only ({'QDQ: DequantizeLinear -> MatMul' if q.get('qdq_form') else 'MatMulNBits, GatherBlockQuantized'})" if q.get("weights") else
            f"{q['mode']} {'(activations at run time)' if q['mode'] == 'int8-dynamic' else q['format']} a={q['activation_type']} "
            f"w={q['weight_type']}{' per-channel' if q['per_channel'] else ''}{_by_op(cov)}"
            + (" [red]= fp32 (no weight node quantized)[/]" if cov["nodes_total"] and not cov["nodes_quantized"]
               else f"; float share {100 * q['float_share']:.0f} %" if q.get("float_share") else ""),
        )
    else:
        t.add_row("recipe", "", escape(q["mode"]), escape("; ".join(q.get("notes", []))))
    _weight_only_rows(t, r)
    v = r["verify"]
    if v:
        src = f"{v['samples']} samples from {v['data_source']}"
        if v["accuracy_reference"] is not None:
            t.add_row("top-1 accuracy", f"{100 * v['accuracy_reference']:.2f} %", f"{100 * v['accuracy_candidate']:.2f} %",
                      f"drop {100 * v['accuracy_drop']:.2f} points; {src}")
        for c in v.get("tasks", []):
            for m, val in c["metrics"].items():
                lim = c["limits"].get(m)
                t.add_row(f"{escape(c['output'])}: {m.replace('top1', 'top-1').replace('top5', 'top-5').replace('_', ' ')}", "", fmt(val), f"{c['kind']}; need {lim}; {escape(src)}" if lim else f"{c['kind']} (information)")
        for o in v["outputs"]:  # raw differences: information, not the verdict
            if o["cosine"] is None:
                continue
            t.add_row(f"{escape(o['name'])}: max abs error", "", fmt(o["max_abs"]), f"mean {fmt(o['mean_abs'])} (information)")
            t.add_row(f"{escape(o['name'])}: cosine", "", f"{o['cosine']:.5f}", "information")
        status = (r.get("verdict") or {}).get("status", "pass" if v["passed"] else "fail")
        label = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "accepted-failed": "[red]ACCEPTED-FAILED[/]"}.get(status, status)
        why = (r.get("verdict") or {}).get("reason", "") if status in ("fail", "accepted-failed") else "; ".join(v["failures"])
        t.add_row("verify", "", label, escape(why or "; ".join(v["failures"])))
    elif (r.get("verdict") or {}).get("status") in ("fail", "accepted-failed"):  # no data, but the greedy generation check failed
        label = "[red]FAIL[/]" if r["verdict"]["status"] == "fail" else "[red]ACCEPTED-FAILED[/]"
        t.add_row("verify", "", label, escape(r["verdict"].get("reason", "")))
    else:
        t.add_row("verify", "", "[yellow]SKIPPED[/]", "no data given: nothing was proven (pass --calib or --eval)")
    gen = r.get("generation")
    if gen:
        t.add_row("greedy generation", "", f"{100 * gen['agreement']:.1f} %",
                  f"{escape(str(gen['runtime']))} vs transformers: {gen['identical']}/{gen['prompts']} prompts identical; "
                  f"need {100 * gen['min_agreement']:.0f} %; {'pass' if gen['passed'] else '[red]FAIL[/]'} (part of the verdict)")
    p = r["profile"]
    if p["fp32"] and p["quantized"]:
        a, b = p["fp32"], p["quantized"]
        ratio = b["p50_ms"] / a["p50_ms"] if a["p50_ms"] else None
        what = f", {b['artifact']}" if b.get("artifact") else ""
        t.add_row("latency p50", f"{a['p50_ms']:.3f} ms", f"{b['p50_ms']:.3f} ms", f"{fmt(ratio, '.2f')} x fp32, {b['provider']}{what}")
        t.add_row("latency p90", f"{a['p90_ms']:.3f} ms", f"{b['p90_ms']:.3f} ms", b["note"] or ("device" if b["device_measurement"] else "host"))
    s = p.get("shipped")
    if s:
        vs_onnx = f", {fmt(s['ratio_vs_model_onnx'], '.2f')} x its model.onnx at onnxruntime's default level" if s.get("ratio_vs_model_onnx") else ""
        where = s.get("measured_on") or {}
        off_target = (f"; measured on this {where['host_arch']} host, NOT on the {where['target_arch']} target: "
                      "not the reason for what ships") if where and not where.get("on_target_arch", True) else ""
        t.add_row("shipped model.ort", f"{s['fp32_ms']:.3f} ms", f"{s['shipped_ms']:.3f} ms",
                  f"{fmt(s['ratio_vs_fp32'], '.2f')} x fp32{vs_onnx}; medians of interleaved rounds, one process; ships {s['shipped']}"
                  + escape(off_target))
    if not (p["fp32"] and p["quantized"]):
        t.add_row("latency", "-", "-", p.get("skipped") or "not profiled")
    _accelerator_rows(t, r)
    t.add_row("bundle", "", r["bundle"], "")
    return t


def _accelerator_rows(t: Table, r: dict[str, Any]) -> None:
    """Export: placement of the shipped model on the accelerator, and its compiled context (or why not)."""
    pl = r.get("placement")
    if pl:
        acc = _short_provider(pl["accelerator"])
        if pl["kind"] in ("unavailable", "failed"):
            est = pl.get("estimate") or {}
            extra = f" (static estimate: {_pct(est.get('accel_node_share'))} of nodes)" if est else ""
            hint = f"; fix: {pl['hint']}" if pl.get("hint") else ""
            t.add_row(f"on {acc}", "", "[red]failed[/]" if pl["kind"] == "failed" else "unknown", escape((pl.get("reason") or "") + extra + hint))
        else:
            on = next((p["nodes"] for p in pl.get("providers", []) if p["provider"] == pl["accelerator"]), 0)
            parts = pl.get("accel_partitions")
            label = "measured" if pl["kind"] == "measured" else "[yellow]ESTIMATE[/]"
            t.add_row(f"nodes on {acc}", "", f"{on}/{pl['nodes_total']} ({_pct(pl['accel_node_share'])})",
                      f"{label}, {parts} partition{'s' if parts != 1 else ''}; {escape(pl.get('basis') or '')}")
    cmp = r.get("activations_compared")
    for label, m in ((cmp or {}).get("models") or {}).items():
        if "error" in m:
            t.add_row(label, "", "[red]failed[/]", escape(m["error"]))
        else:
            top1 = "" if m["top1_agreement"] is None else f"top-1 {_pct(m['top1_agreement'])}, "
            t.add_row(f"{label} vs fp32", "", f"cos {m['cosine']:.5f}",
                      f"{top1}{_pct(m['accel_node_share'])} of nodes on the accelerator ({m['placement']}); on {escape(cmp['run_on'])}")
    ctx = r.get("ep_context")
    if ctx:
        if ctx.get("built") is False:
            t.add_row("context binary", "", "[yellow]none[/]", "needs on-device compilation: " + escape(ctx.get("reason") or ""))
        else:
            t.add_row("context binary", "", escape(ctx["model"]), escape(", ".join(ctx.get("files", []))))


def fallback_table(r: dict[str, Any]) -> Table | None:
    """Export: each node that does not run on the accelerator, why, and what to do."""
    pl = r.get("placement")
    if not pl or not pl.get("fallback"):
        return None
    kind = "estimate" if pl["kind"] == "estimate" else "measured"
    t = Table(title=f"nodes not on {_short_provider(pl['accelerator'])} ({kind})")
    for c in ("node", "runs on", "why", "fix"):
        t.add_column(c)
    for f in pl["fallback"]:
        t.add_row(escape(f["node"]), _short_provider(f["provider"]), escape(f.get("reason", "")), escape(f.get("fix", "")))
    return t


def _weight_only_rows(t: Table, r: dict[str, Any]) -> None:
    """Bits per weight and language-model quality for weight-only modes (int4 / int8-weight / int2)."""
    w = r["quantization"].get("weights")
    if w:
        q = r["quantization"]
        t.add_row("bits per weight", "32", fmt(w["bits_per_weight_quantized"], ".3f"),
                  f"{q['algo']} {'per output channel' if (q.get('qdq_form') or {}).get('weights') == 'per-channel' else 'block ' + str(q['block_size'])}"
                  f" {'sym' if q['symmetric'] else 'asym'}, scales and zero points included; "
                  f"{w['weights_quantized']}/{w['weights_total']} weights"
                  + (", float16 scales" if q.get("scale_dtype") == "float16" else ""))
        fb = w.get("file_breakdown")
        if fb:
            from ..quantization.weight_only.wsize import breakdown_line

            t.add_row("bits per parameter (file)", "", fmt(w.get("bits_per_parameter_file"), ".3f"), "whole file / all weight parameters")
            t.add_row("where the bytes go", "", human_bytes(fb["file_bytes"]), breakdown_line(fb))
    lv = r["quantization"].get("accuracy_levels")
    if lv:
        for m in lv["measured"]:
            mark = " (chosen)" if m["level"] == lv["chosen"] else ""
            agree = "-" if m["agreement"] is None else f"{100 * m['agreement']:.2f} %"
            kl = f", KL {m['kl_mean']:.5f}" if m.get("kl_mean") is not None else ""
            tok = f"; {m['ms_token']:.3f} ms for one token" if m.get("ms_token") is not None else ""
            t.add_row(f"accuracy level {m['level']}{mark}", "", f"{m['ms']:.3f} ms",
                      f"{lv['metric']} {agree}{kl}; tolerances {'pass' if m['passed'] else 'FAIL'}; {lv['samples']} inputs{tok}")
        t.add_row("accuracy level choice", "", str(lv["chosen"]), lv["reason"])
    lm = r.get("lm_quality")
    if lm:
        src = f"{lm['windows']} windows, {lm['tokens']} tokens"
        t.add_row("perplexity", f"{lm['perplexity_fp32']:.4f}", f"{lm['perplexity_quant']:.4f}", f"{100 * lm['perplexity_change']:+.2f} %; {src}")
        t.add_row("mean KL divergence", "", f"{lm['kl_mean']:.5f}", f"p99 {lm['kl_p99']:.4f}")
        t.add_row("same top token", "", f"{100 * lm['same_top_token']:.2f} %", "")


# a symbolic axis named by its whole shape formula (torch's exporter, e.g. a YOLO head's anchor count) filled a dozen lines
DIM_NAME_SHOWN = 40


def _dim(d) -> str:
    if d is None:
        return "?"
    text = str(d)
    return text if len(text) <= DIM_NAME_SHOWN else text[: DIM_NAME_SHOWN - 3] + "..."


def inspect_table(d: dict[str, Any]) -> list[Table]:
    io = Table(title=escape(f"{d['path']}  (opset {d['opset']}, IR {d['ir_version']}, {d['producer'] or 'unknown producer'})"))
    io.add_column("kind")
    io.add_column("name")
    io.add_column("dtype")
    io.add_column("shape")
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            io.add_row(kind[:-1], escape(t["name"]), escape(t["dtype"]), escape("[" + ", ".join(_dim(s) for s in t["shape"]) + "]"))
    summary = Table(show_header=False)
    summary.add_column("k")
    summary.add_column("v")
    summary.add_row("nodes", str(d["nodes"]))
    summary.add_row("parameters", f"{d['parameters']:,} ({human_bytes(d['parameter_bytes'])})")
    summary.add_row("file size", human_bytes(d["file_bytes"]))
    summary.add_row("quantized", "yes" if d["quantized"] else "no")
    ops = Table(title="op histogram")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for k, v in d["ops"].items():
        ops.add_row(escape(k), str(v))
    return [io, summary, ops]


def _short_provider(name: str) -> str:
    return name.replace("ExecutionProvider", "")


def targets_lines(targets: list[Any]) -> list[str]:
    """One line per target (long lines are not wrapped)."""
    rows = [("NAME", "PROVIDERS", "DEFAULT QUANT", "DESCRIPTION")]
    for tg in targets:
        q = tg.quant
        quant = q.mode if q.mode in ("none", "fp16") else f"{q.mode} {q.format} a={q.activation_type} w={q.weight_type}"
        if getattr(tg, "gguf", None) is not None:  # llama.cpp target
            quant = f"gguf {tg.gguf.quant}"
        rows.append((tg.name, " > ".join(_short_provider(p) for p in tg.provider_names) or tg.runtime, quant, tg.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]


def target_tables(tg: Any) -> list[Table]:
    d = tg.to_dict()
    head = Table(title=f"target {tg.name}", show_header=False)
    head.add_column("k")
    head.add_column("v")
    head.add_row("description", tg.description)
    head.add_row("arch", tg.arch)
    if getattr(tg, "gguf", None) is not None:  # llama.cpp target: no ONNX settings
        head.add_row("runtime", tg.runtime)
        head.add_row("gguf", f"default quant {tg.gguf.quant}, context {tg.gguf.context}")
        for q, tol in tg.gguf.tolerances:
            head.add_row(f"tolerances {q}", ", ".join(f"{k}={v}" for k, v in vars(tol).items()))
        head.add_row("file", tg.source)
        notes = Table(title="notes", show_header=False)
        notes.add_column("note")
        for n in tg.notes:
            notes.add_row(n)
        return [head, notes]
    head.add_row("static shapes", "required" if tg.static_shapes else "no")
    if tg.rewrites:
        head.add_row("graph rewrites", ", ".join(tg.rewrites))
    if getattr(tg, "op_conditions", ()):  # attribute-level placement rules ([[ops.conditions]])
        ops = sorted({c.op for c in tg.op_conditions})
        head.add_row("op conditions", f"{len(tg.op_conditions)} on {', '.join(ops)}"
                     + (f", read from {tg.conditions_source}" if tg.conditions_source else ""))
    head.add_row("opset", f"{tg.opset.min}-{tg.opset.max} (preferred {tg.opset.preferred})")
    head.add_row("session", f"graph optimization {tg.graph_optimization_level}, threads {tg.intra_op_num_threads or 'auto'}; "
                 f"model.ort saved at {tg.ort_optimization} ({tg.ort_optimization_style})")
    head.add_row("quantization", ", ".join(f"{k}={v}" for k, v in d["quant"].items()))
    head.add_row("tolerances", ", ".join(f"{k}={v}" for k, v in d["tolerances"].items()))
    head.add_row("file", tg.source)
    prov = Table(title="providers (in order)")
    prov.add_column("#")
    prov.add_column("provider")
    prov.add_column("options")
    for i, p in enumerate(tg.providers, 1):
        prov.add_row(str(i), p.name, ", ".join(f"{k}={v}" for k, v in p.options) or "-")
    notes = Table(title="notes", show_header=False)
    notes.add_column("note")
    for n in tg.notes:
        notes.add_row(n)
    return [head, prov, notes]


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def profile_table(results: list[dict[str, Any]]) -> Table:
    """One column per variant, one row per figure; ratios are to the first variant."""
    t = Table(title="edgeq profile")
    t.add_column("figure", no_wrap=True)
    for r in results:
        t.add_column(escape(Path(r["model"]).name), justify="right")
    base = results[0].get("p50_ms") if results else None

    def row(label: str, fn) -> None:
        t.add_row(label, *[fn(r) for r in results])

    def timing(r: dict[str, Any]) -> str:
        if not r.get("timed", True):
            return "not timed"
        kind = "simulator" if r.get("backend") == "qnn-plugin" else ("device" if r.get("device_measurement") else "host")
        return ("[red]UNSTABLE[/] " if not r.get("stable", True) else "") + kind

    def accel(r: dict[str, Any]) -> str:
        pl = r.get("placement") or {}
        acc = pl.get("accel_node_share")
        return "-" if acc is None else _pct(acc) + (" (estimate)" if pl.get("kind") == "estimate" else "")

    row("provider", lambda r: _short_provider(r.get("provider") or "-"))
    row("file timed", lambda r: escape(f"{r.get('model_file', '-')} @ {(r.get('session') or {}).get('graph_optimization_level', '-')}"))
    row("file size", lambda r: human_bytes(r.get("file_bytes")))
    row("cold start", lambda r: "-" if r.get("cold_start_ms") is None else f"{r['cold_start_ms']:.1f} ms")
    row("p50", lambda r: _ms(r.get("p50_ms")))
    row("p90", lambda r: _ms(r.get("p90_ms")))
    row("p99", lambda r: _ms(r.get("p99_ms")))
    row("mean", lambda r: _ms(r.get("mean_ms")))
    row("cv", lambda r: "-" if r.get("cv") is None else f"{r['cv']:.2f}")
    row("runs", lambda r: str(r.get("runs") or "-"))
    row("peak mem", lambda r: human_bytes(r.get("peak_bytes")))
    row("accel nodes", accel)
    row("p50 vs first", lambda r: fmt(r["p50_ms"] / base if base and r.get("p50_ms") else None, ".2f"))
    row("timing", timing)
    return t


def profile_notes(results: list[dict[str, Any]]) -> list[str]:
    return [f"note: {Path(r['model']).name}: {n}" for r in results for n in (r.get("notes") or ([r["note"]] if r.get("note") else []))]


def profile_details(results: list[dict[str, Any]]) -> list[Table]:
    """Per model: cold start and memory, top op types and nodes, placement and fallbacks, numerics."""
    tables: list[Table] = []
    for r in results:
        name = escape(Path(r["model"]).name)
        if r.get("cold_start"):
            c, m = r["cold_start"], r["memory"]
            t = Table(title=f"{name}: start-up and memory", show_header=False)
            t.add_column("k")
            t.add_column("v", justify="right")
            t.add_row("session creation", _ms(c["session_ms"]))
            t.add_row("first run", _ms(c["first_run_ms"]))
            st = r["steady"]
            t.add_row("p50 95% CI", f"{st['p50_ci_low_ms']:.3f} - {st['p50_ci_high_ms']:.3f} ms ({'stable' if st['stable'] else 'UNSTABLE'})")
            t.add_row("RSS added by session", human_bytes(m.get("session_bytes")))
            t.add_row("peak RSS added (session + runs)", human_bytes(m.get("peak_bytes")))
            tables.append(t)
        ops = r.get("ops")
        if ops:
            t = Table(title=f"{name}: time by op type ({ops['profiled_runs']} profiled runs, {ops['kernel_ms_per_run']:.3f} ms kernels/run)")
            for col in ("op type", "nodes", "ms/run", "share", "provider"):
                t.add_column(col, justify="left" if col in ("op type", "provider") else "right")
            for o in ops["op_types"]:
                t.add_row(escape(o["op_type"]), str(o["nodes"]), f"{o['ms_per_run']:.4f}", _pct(o["share"]), ", ".join(_short_provider(p) for p in o["providers"]))
            tables.append(t)
            t = Table(title=f"{name}: top nodes")
            for col in ("node", "op type", "ms/run", "share", "provider"):
                t.add_column(col, justify="left" if col in ("node", "op type", "provider") else "right")
            for o in ops["top_nodes"]:
                t.add_row(escape(o["node"]), escape(o["op_type"]), f"{o['ms_per_run']:.4f}", _pct(o["share"]), _short_provider(o["provider"]))
            tables.append(t)
        pl = r.get("placement")
        if pl and pl.get("accelerator"):
            kind = "ESTIMATE (static, from the target's op rules)" if pl["kind"] == "estimate" else "measured by onnxruntime"
            t = Table(title=f"{name}: placement, {kind}")
            for col in ("provider", "nodes", "% nodes", "% time", "partitions"):
                t.add_column(col, justify="left" if col == "provider" else "right")
            for p in pl["providers"]:
                t.add_row(p["provider"], str(p["nodes"]), _pct(p["node_share"]), _pct(p["time_share"]), fmt(p["partitions"], "d"))
            tables.append(t)
            if pl["fallback"]:
                t = Table(title=f"{name}: nodes not on {pl['accelerator']}")
                t.add_column("node")
                t.add_column("runs on")
                t.add_column("why")
                for f in pl["fallback"][:50]:
                    t.add_row(escape(f["node"]), f["provider"], escape(f["reason"]))
                if len(pl["fallback"]) > 50:
                    t.add_row(f"... {len(pl['fallback']) - 50} more", "", "")
                tables.append(t)
        num = r.get("numerics")
        if num and (num.get("vs_cpu_provider") or num.get("vs_reference")):
            t = Table(title=f"{name}: numerics of {r['provider']} ({num['samples']} inputs)")
            for col in ("against", "output", "max abs", "cosine", "top-1 agreement"):
                t.add_column(col, justify="left" if col in ("against", "output") else "right")
            rows = [("CPU provider, same model", o) for o in num.get("vs_cpu_provider") or []]
            rows += [("reference " + escape(Path(num["vs_reference"]["reference"]).name), o) for o in (num.get("vs_reference") or {}).get("outputs", [])]
            for who, o in rows:
                t.add_row(who, escape(o["name"]), fmt(o["max_abs"]), f"{o['cosine']:.5f}",
                          "-" if o["top1_agreement"] is None else _pct(o["top1_agreement"]))
            for out_name in (num.get("vs_reference") or {}).get("not_compared") or {}:  # another element type (int8 KV cache codes)
                t.add_row("reference " + escape(Path(num["vs_reference"]["reference"]).name), escape(out_name), "-", "not compared", "-")
            tables.append(t)
    return tables


def setup_progress(console: Console = err):
    """A callback(step, total, what) that prints environment set-up steps."""

    def cb(step: int, total: int, what: str) -> None:
        console.print(f"[{step}/{total}] {what}")

    return cb


def verify_table(v: dict[str, Any]) -> Table:
    t = Table(title=f"edgeq verify ({v['samples']} samples from {v['data_source']})")
    for c in ("output", "max abs", "mean abs", "max rel", "cosine", "top-1 agreement"):
        t.add_column(c, justify="left" if c == "output" else "right")
    tasks = {c["output"]: c for c in v.get("tasks", [])}
    t.add_column("task check (decides)", justify="left")
    for o in v["outputs"]:
        c = tasks.get(o["name"])
        check = "-" if c is None else f"{c['kind']}: " + ", ".join(f"{m} {fmt(x)} ({c['limits'].get(m, 'info')})" for m, x in c["metrics"].items()) \
            + (" [green]pass[/]" if c["passed"] else " [red]FAIL[/]")
        if c is not None and c["kind"] == "state" and not c["metrics"] and "cosine" in c.get("info", {}):  # a fed-back state: information
            check = f"state: cosine {fmt(c['info']['cosine'], '.5f')} over {c['info'].get('steps')} calls (information)"
        t.add_row(escape(o["name"]), fmt(o["max_abs"]), fmt(o["mean_abs"]), fmt(o["max_rel"]), fmt(o["cosine"], ".5f"),
                  "-" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f} %", check)
    return t


def bundle_check_table(r: dict[str, Any]) -> Table:
    t = Table(title=escape(f"bundle check ({r['files_checked']} files, target {r['target']}, {r['model']} on {r['providers'][0]})"))
    for c in ("golden pair", "result", "max abs error", "time"):
        t.add_column(c)
    for p in r["pairs"]:
        t.add_row(escape(p["pair"]), "pass" if p["passed"] else "FAIL", fmt(p["max_abs_error"]), f"{p['ms']:.2f} ms")
    return t


def layers_table(recipe: dict[str, Any]) -> Table:
    """Ten worst quantized layers by SQNR, and the nodes that stayed float."""
    t = Table(title="INT8: ten worst layers (SQNR vs fp32) and nodes kept float")
    for c in ("node", "op", "SQNR dB", "quantized as / why float"):
        t.add_column(c)
    rows = sorted(recipe.get("layers", []), key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] or 0.0))[:10]
    for r in rows:
        db = "not measured" if r["sqnr_db"] is None else fmt(r["sqnr_db"], ".1f")
        t.add_row(escape(r["node"]), escape(r["op"]), db, escape(r["quantized_as"]))
    for name, why in list(recipe.get("kept_float", {}).items())[:10]:
        t.add_row(escape(name), "", "float", escape(why))
    return t
