"""A self-contained HTML profile report: inline SVG plots, no JavaScript, no network.

Plots (each an ``<svg>`` with an id, so tests can find them in the rendered DOM):
``latency-<i>`` latency distribution per variant, ``optypes-<i>`` op-type time
shares, ``placement`` nodes and time per provider, ``layers-<i>`` per-layer
error against the reference (when one was given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.fsutil import staging
from ..core.safetext import escape_html

PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"]
CPU_COLOR = "#9498a0"
W = 760


def _e(x: Any) -> str:
    return escape_html(x)  # HTML-escaped, control characters from files made visible


def _name(r: dict[str, Any]) -> str:
    return Path(r["model"]).name


def latency_svg(i: int, r: dict[str, Any], lo: float, hi: float) -> str:
    """Histogram of steady-state run times with p50/p90/p99 markers, shared x range."""
    times = [t for t in r.get("times_ms") or []]
    h, left, right, top, bottom = 150, 60, 20, 14, 34
    pw, ph = W - left - right, h - top - bottom
    bins = 40
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for t in times:
        counts[min(bins - 1, max(0, int((t - lo) / width)))] += 1
    peak = max(counts) or 1
    x = lambda v: left + (min(max(v, lo), hi) - lo) / ((hi - lo) or 1) * pw  # noqa: E731
    parts = [f'<svg id="latency-{i}" class="plot" role="img" width="{W}" height="{h}" viewBox="0 0 {W} {h}" xmlns="http://www.w3.org/2000/svg">',
             f'<title>latency distribution of {_e(_name(r))}</title>']
    for b, c in enumerate(counts):
        if c:
            bh = c / peak * ph
            parts.append(f'<rect class="bar" x="{left + b * pw / bins:.1f}" y="{top + ph - bh:.1f}" width="{pw / bins - 1:.1f}" height="{bh:.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>')
    for k, (key, dash) in enumerate((("p50_ms", ""), ("p90_ms", "4 3"), ("p99_ms", "1 3"))):
        v = r.get(key)
        if v is not None:
            parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{top + ph}" stroke="#222" stroke-dasharray="{dash}"/>')
            parts.append(f'<text x="{x(v) + 3:.1f}" y="{top + 10 + 12 * k}" font-size="10">{key[:3]} {v:.3g} ms</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#444"/>')
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(f'<text x="{x(v):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{v:.3g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 4}" font-size="11" text-anchor="middle">ms per run ({len(times)} runs)</text>')
    parts.append(f'<text x="4" y="{top + ph / 2}" font-size="11">runs</text></svg>')
    return "".join(parts)


def hbars_svg(svg_id: str, title: str, rows: list[tuple[str, float, str]], *, fmt: str = "{:.1%}", vmax: float | None = None) -> str:
    """Horizontal bars: (label, value, color)."""
    rh, left, right = 20, 230, 80
    h = rh * len(rows) + 10
    vmax = vmax or max((v for _, v, _ in rows), default=1.0) or 1.0
    pw = W - left - right
    parts = [f'<svg id="{svg_id}" class="plot" role="img" width="{W}" height="{h}" viewBox="0 0 {W} {h}" xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>']
    for k, (label, v, color) in enumerate(rows):
        y = 5 + k * rh
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">{_e(label[:38])}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{max(1.0, v / vmax * pw):.1f}" height="{rh - 6}" fill="{color}"/>')
        parts.append(f'<text x="{left + max(1.0, v / vmax * pw) + 4:.1f}" y="{y + 14}" font-size="11">{_e(fmt.format(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def placement_svg(reports: list[dict[str, Any]]) -> str:
    """Per variant, two stacked bars: share of nodes and share of kernel time per provider."""
    rows = [(r, kind) for r in reports if r.get("placement") for kind in ("nodes", "time")]
    rh, left, right = 24, 230, 20
    providers = sorted({p["provider"] for r, _ in rows for p in r["placement"]["providers"]}, key=lambda p: ("CPU" in p, p))
    color = {p: (CPU_COLOR if "CPU" in p else PALETTE[k % len(PALETTE)]) for k, p in enumerate(providers)}
    h = rh * len(rows) + 40
    pw = W - left - right
    parts = [f'<svg id="placement" class="plot" role="img" width="{W}" height="{h}" viewBox="0 0 {W} {h}" xmlns="http://www.w3.org/2000/svg"><title>placement per provider</title>']
    for k, (r, kind) in enumerate(rows):
        y = 5 + k * rh
        est = " (estimate)" if r["placement"]["kind"] == "estimate" else ""
        parts.append(f'<text x="{left - 6}" y="{y + 15}" font-size="11" text-anchor="end">{_e(_name(r)[:26])}: {kind}{est}</text>')
        xo = float(left)
        key = "node_share" if kind == "nodes" else "time_share"
        for p in r["placement"]["providers"]:
            share = p.get(key)
            if share:
                parts.append(f'<rect class="seg" x="{xo:.1f}" y="{y + 3}" width="{share * pw:.1f}" height="{rh - 6}" fill="{color[p["provider"]]}"><title>{_e(p["provider"])} {share:.1%}</title></rect>')
                if share > 0.08:
                    parts.append(f'<text x="{xo + 4:.1f}" y="{y + 16}" font-size="10" fill="#fff">{share:.0%}</text>')
                xo += share * pw
        if xo == left:
            parts.append(f'<text x="{left + 4}" y="{y + 16}" font-size="10">not measured</text>')
    ly = h - 14
    lx = left
    for p in providers:
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color[p]}"/><text x="{lx + 14}" y="{ly}" font-size="11">{_e(p)}</text>')
        lx += 20 + 7 * len(p)
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _f(v: Any, spec: str = ".3f", unit: str = "") -> str:
    return "-" if v is None else format(v, spec) + unit


def render(reports: list[dict[str, Any]], *, target: str) -> str:
    from ..core.units import human_bytes

    timed = [r for r in reports if r.get("times_ms")]
    sections = []
    base = reports[0].get("p50_ms") if reports else None
    summary = [[_name(r), r.get("provider") or "-", human_bytes(r.get("file_bytes")), _f(r.get("cold_start_ms"), ".1f", " ms"),
                _f(r.get("p50_ms"), ".3f", " ms"), _f(r.get("p90_ms"), ".3f", " ms"), _f(r.get("p99_ms"), ".3f", " ms"),
                _f(r.get("cv"), ".2f"), human_bytes(r.get("peak_bytes")), r.get("runs") or "-",
                "-" if not (base and r.get("p50_ms")) else f"{r['p50_ms'] / base:.2f}",
                ("UNSTABLE; " if r.get("timed") and not r.get("stable") else "") + (r.get("note") or ("device" if r.get("device_measurement") else "host"))]
               for r in reports]
    sections.append("<h2>Summary</h2>" + _table(["model", "provider", "size", "cold start", "p50", "p90", "p99", "cv", "peak RSS added", "runs", "p50 vs first", "note"], summary, "summary"))
    if timed:
        lo = min(min(r["times_ms"]) for r in timed)
        hi = max(r.get("p99_ms") or max(r["times_ms"]) for r in timed) * 1.2
        sections.append("<h2>Latency distribution</h2><p>Steady-state runs after warm-up; dashed lines p90 and p99; slower runs are piled in the last bin.</p>"
                        + "".join(f"<h3>{_e(_name(r))}</h3>{latency_svg(i, r, lo, hi)}" for i, r in enumerate(reports) if r.get("times_ms")))
    ops = [(i, r) for i, r in enumerate(reports) if r.get("ops")]
    if ops:
        sections.append("<h2>Time by op type</h2><p>Share of kernel time from onnxruntime's profiler (median call per node).</p>" + "".join(
            f"<h3>{_e(_name(r))}</h3>" + hbars_svg(f"optypes-{i}", f"op type time shares of {_name(r)}",
                                                   [(o["op_type"], o["share"], PALETTE[k % len(PALETTE)]) for k, o in enumerate(r["ops"]["op_types"])], vmax=1.0)
            + _table(["node", "op type", "provider", "ms/run", "share"],
                     [[o["node"], o["op_type"], o["provider"], f"{o['ms_per_run']:.4f}", f"{o['share']:.1%}"] for o in r["ops"]["top_nodes"]], "nodes")
            for i, r in ops))
    placed = [r for r in reports if r.get("placement")]
    if placed:
        parts = ["<h2>Placement</h2>", placement_svg(placed)]
        for r in placed:
            pl = r["placement"]
            label = "static estimate from the target's op rules (the provider did not run)" if pl["kind"] == "estimate" else "measured by onnxruntime"
            parts.append(f"<h3>{_e(_name(r))}: {_e(label)}</h3>")
            if not pl.get("accelerator"):
                parts.append(f"<p>Target {_e(target)} has no accelerator provider: every node runs on the CPU.</p>")
            parts.append(_table(["provider", "nodes", "% nodes", "% time", "partitions"],
                                [[p["provider"], p["nodes"], _f(p["node_share"], ".1%"), _f(p["time_share"], ".1%"), "-" if p["partitions"] is None else p["partitions"]] for p in pl["providers"]], "placement"))
            if pl["fallback"]:
                parts.append(f"<p>Nodes not on {_e(pl['accelerator'])}:</p>" + _table(["node", "runs on", "why"], [[f["node"], f["provider"], f["reason"]] for f in pl["fallback"]], "fallback"))
        sections.append("".join(parts))
    layered = [(i, r) for i, r in enumerate(reports) if r.get("layer_errors")]
    if layered:
        sections.append("<h2>Per-layer error against the reference</h2><p>Relative RMS error of each tensor the variant shares with the reference, as the next layer sees it.</p>" + "".join(
            f"<h3>{_e(_name(r))}</h3>" + hbars_svg(f"layers-{i}", f"per-layer error of {_name(r)}",
                                                   [(f"{e['tensor']} ({e['op_type']})", e["rel_rms_error"], PALETTE[2]) for e in r["layer_errors"]], fmt="{:.3g}")
            for i, r in layered))
    llms = [(i, r) for i, r in enumerate(reports) if r.get("llm")]
    if llms:  # LLM bundles (edgeq.profiling.llm): decode speed against context length
        sections.append("<h2>LLM decode tokens/s by context</h2><p>Median one-token decode step with the KV cache filled to each context length; "
                        "time to first token at the prompt length given.</p>" + "".join(
            f"<h3>{_e(_name(r))}</h3><p>time to first token {_f(r['llm']['ttft_ms'], '.1f', ' ms')} at {_e(r['llm']['prompt_tokens'])} prompt tokens; "
            f"KV cache {_e(r['llm']['kv_bytes_per_token'])} bytes/token; peak RSS {_f(r['llm']['peak_rss_bytes'] / 2**20, '.1f', ' MiB')}</p>"
            + hbars_svg(f"llm-decode-{i}", f"decode tokens/s by context of {_name(r)}",
                        [(f"{d['context']} tokens of context", d["decode_tokens_per_s"] or 0.0, PALETTE[0]) for d in r["llm"]["decode"]], fmt="{:.1f} tok/s")
            for i, r in llms))
    style = ("body{font-family:sans-serif;margin:24px;color:#222;max-width:980px}table{border-collapse:collapse;margin:8px 0 16px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}td{overflow-wrap:anywhere}th{background:#f2f2f2;white-space:nowrap}svg.plot{display:block;margin:6px 0}"
             "h2{border-bottom:1px solid #ddd;padding-bottom:4px}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgeq profile: {_e(target)}</title>'
            f"<style>{style}</style></head><body><h1>edgeq profile, target {_e(target)}</h1>"
            f"<p>{len(reports)} model(s). Host: {_e(reports[0].get('host', '') if reports else '')}.</p>{''.join(sections)}</body></html>\n")


def write_html(path: Path, reports: list[dict[str, Any]], *, target: str) -> Path:
    text = render(reports, target=target)
    with staging(Path(path), force=True, is_dir=False) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
