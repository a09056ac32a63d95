"""Human output: terminal tables and progress (stderr), built from the reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


class StageProgress:
    """Prints one line per finished stage and a bar for calibration samples."""

    def __init__(self, console: Console = err, total_samples: int = 0) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.total = total_samples
        self.task = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if name.startswith("quantize") and self.total:
            self.task = self.progress.add_task(f"calibrating", total=self.total)
            self.progress.start()
        try:
            yield
        finally:
            if self.task is not None:
                self.progress.stop()
                self.progress.remove_task(self.task)
                self.task = None
        self.console.print(f"[green]done[/] {name} ({time.perf_counter() - t0:.1f} s)")

    def sample(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


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
            f"{q['mode']} {q['format']} a={q['activation_type']} w={q['weight_type']}{' per-channel' if q['per_channel'] else ''}",
        )
    else:
        t.add_row("recipe", "", q["mode"], "; ".join(q.get("notes", [])))
    v = r["verify"]
    if v:
        src = f"{v['samples']} samples from {v['data_source']}"
        if v["accuracy_reference"] is not None:
            t.add_row("top-1 accuracy", f"{100 * v['accuracy_reference']:.2f} %", f"{100 * v['accuracy_candidate']:.2f} %",
                      f"drop {100 * v['accuracy_drop']:.2f} points; {src}")
        for o in v["outputs"]:
            t.add_row(f"{o['name']}: max abs error", "", fmt(o["max_abs"]), f"mean {fmt(o['mean_abs'])}")
            t.add_row(f"{o['name']}: cosine", "", f"{o['cosine']:.5f}", "")
            if o["top1_agreement"] is not None:
                t.add_row(f"{o['name']}: top-1 agreement", "", f"{100 * o['top1_agreement']:.2f} %", src)
        t.add_row("verify", "", "[green]pass[/]" if v["passed"] else "[red]FAIL[/]", "; ".join(v["failures"]))
    else:
        t.add_row("verify", "", "skipped", "no data")
    p = r["profile"]
    if p["fp32"] and p["quantized"]:
        a, b = p["fp32"], p["quantized"]
        ratio = b["p50_ms"] / a["p50_ms"] if a["p50_ms"] else None
        t.add_row("latency p50", f"{a['p50_ms']:.3f} ms", f"{b['p50_ms']:.3f} ms", f"{fmt(ratio, '.2f')} x fp32, {b['provider']}")
        t.add_row("latency p90", f"{a['p90_ms']:.3f} ms", f"{b['p90_ms']:.3f} ms", b["note"] or ("device" if b["device_measurement"] else "host"))
    else:
        t.add_row("latency", "-", "-", p.get("skipped") or "not profiled")
    t.add_row("bundle", "", r["bundle"], "")
    return t


def inspect_table(d: dict[str, Any]) -> list[Table]:
    io = Table(title=f"{d['path']}  (opset {d['opset']}, IR {d['ir_version']}, {d['producer'] or 'unknown producer'})")
    io.add_column("kind")
    io.add_column("name")
    io.add_column("dtype")
    io.add_column("shape")
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            io.add_row(kind[:-1], escape(t["name"]), t["dtype"], escape("[" + ", ".join("?" if s is None else str(s) for s in t["shape"]) + "]"))
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
        ops.add_row(k, str(v))
    return [io, summary, ops]


def _short_provider(name: str) -> str:
    return name.replace("ExecutionProvider", "")


def targets_table(targets: list[Any]) -> Table:
    t = Table(title="edgeq targets", expand=False)
    t.add_column("name", no_wrap=True)
    t.add_column("providers", no_wrap=True)
    t.add_column("default quant", no_wrap=True)
    t.add_column("description", no_wrap=True, overflow="ellipsis", max_width=60)
    for tg in targets:
        q = tg.quant
        quant = q.mode if q.mode in ("none", "fp16") else f"{q.mode} {q.format} a={q.activation_type} w={q.weight_type}"
        t.add_row(tg.name, " > ".join(_short_provider(p) for p in tg.provider_names), quant, tg.description)
    return t


def target_tables(tg: Any) -> list[Table]:
    d = tg.to_dict()
    head = Table(title=f"target {tg.name}", show_header=False)
    head.add_column("k")
    head.add_column("v")
    head.add_row("description", tg.description)
    head.add_row("arch", tg.arch)
    head.add_row("static shapes", "required" if tg.static_shapes else "no")
    head.add_row("opset", f"{tg.opset.min}-{tg.opset.max} (preferred {tg.opset.preferred})")
    head.add_row("session", f"graph optimization {tg.graph_optimization_level}, threads {tg.intra_op_num_threads or 'auto'}")
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


def profile_table(results: list[dict[str, Any]]) -> Table:
    t = Table(title="edgeq profile")
    for c in ("model", "provider", "size", "cold start", "p50", "p90", "mean", "runs", "vs first", "note"):
        t.add_column(c, justify="left" if c in ("model", "provider", "note") else "right")
    base = results[0]["p50_ms"] if results and results[0] else None
    for r in results:
        ratio = r["p50_ms"] / base if base else None
        t.add_row(r["model"], r["provider"], human_bytes(r["file_bytes"]), f"{r['cold_start_ms']:.1f} ms",
                  f"{r['p50_ms']:.3f} ms", f"{r['p90_ms']:.3f} ms", f"{r['mean_ms']:.3f} ms", str(r["runs"]),
                  fmt(ratio, ".2f"), r["note"] or ("device" if r["device_measurement"] else "host"))
    return t


def verify_table(v: dict[str, Any]) -> Table:
    t = Table(title=f"edgeq verify ({v['samples']} samples from {v['data_source']})")
    for c in ("output", "max abs", "mean abs", "max rel", "cosine", "top-1 agreement"):
        t.add_column(c, justify="left" if c == "output" else "right")
    for o in v["outputs"]:
        t.add_row(o["name"], fmt(o["max_abs"]), fmt(o["mean_abs"]), fmt(o["max_rel"]), f"{o['cosine']:.5f}",
                  "-" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f} %")
    return t


def bundle_check_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"bundle check ({r['files_checked']} files, target {r['target']}, {r['model']} on {r['providers'][0]})")
    for c in ("golden pair", "result", "max abs error", "time"):
        t.add_column(c)
    for p in r["pairs"]:
        t.add_row(p["pair"], "pass" if p["passed"] else "FAIL", fmt(p["max_abs_error"]), f"{p['ms']:.2f} ms")
    return t


def layers_table(recipe: dict[str, Any]) -> Table:
    """Ten worst quantized layers by SQNR, and the nodes that stayed float."""
    t = Table(title="INT8: ten worst layers (SQNR vs fp32) and nodes kept float")
    for c in ("node", "op", "SQNR dB", "quantized as / why float"):
        t.add_column(c)
    rows = sorted(recipe.get("layers", []), key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] or 0.0))[:10]
    for r in rows:
        db = "not measured" if r["sqnr_db"] is None else fmt(r["sqnr_db"], ".1f")
        t.add_row(escape(r["node"]), r["op"], db, escape(r["quantized_as"]))
    for name, why in list(recipe.get("kept_float", {}).items())[:10]:
        t.add_row(escape(name), "", "float", escape(why))
    return t
