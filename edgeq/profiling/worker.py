#!/usr/bin/env python3
"""Measurement worker: time one model in a fresh process and print JSON.

edgeq runs this file as a child process (``python worker.py SPEC.json``), so
memory figures belong to the model and not to edgeq, and so it can run under
another Python (the OpenVINO environment, whose onnxruntime replaces the
usual one). It needs only numpy and onnxruntime: no edgeq imports.

The spec (JSON) names the model, an .npz of feeds (``"<i>:<input>"`` keys;
feed 0 is timed, all are run once for numerics), the providers with options,
and the timing rules. The result goes to ``spec["out"]`` as JSON; outputs of
the numerics runs go to ``spec["outputs_npz"]``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time

SCHEMA = 1
_REGISTERED: set = set()
MAX_RUNS = 20000  # timed runs at most, whatever the budget (a 7 us model reaches it in about 0.2 s)


def memory_status() -> dict:
    """VmRSS and VmHWM of this process in bytes (Linux; empty elsewhere). VmHWM belongs to the address space
    exec created, unlike ru_maxrss, which keeps the high-water mark of the forked parent copy."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(key + r":\s+(\d+)\s+kB", text)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux): later VmHWM is the peak since now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _register_plugin(ort, plugin: str):
    """Register a plugin execution provider library; returns its devices."""
    if plugin == "qnn":
        import onnxruntime_qnn as q

        name = q.get_ep_name()
        if plugin not in _REGISTERED:
            ort.register_execution_provider_library(name, q.get_library_path())
            _REGISTERED.add(plugin)
        return [d for d in ort.get_ep_devices() if d.ep_name == name]
    raise ValueError(f"unknown plugin {plugin}")


def _session_options(ort, spec: dict, *, profile_prefix: str | None = None, context_path: str | None = None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[spec.get("level", "basic")]
    if spec.get("threads"):
        so.intra_op_num_threads = int(spec["threads"])
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if spec.get("saved_runtime_optimizations"):  # as the bundle's manifest tells the app (runtime-style model.ort)
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    if spec.get("disable_cpu_fallback"):
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if context_path:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", context_path)
        so.add_session_config_entry("ep.context_embed_mode", "0")
        # read from bytes (make_session): external weights (a static decoder's model.onnx.data) beside the model edgeq
        # wrote, found from the working directory (write_context moves there) so no path goes into the context's bytes
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", ".")
    return so


def make_session(ort, spec: dict, **kw):
    so = _session_options(ort, spec, **kw)
    # from bytes: onnxruntime then names compiled partitions after the graph, not its (temporary) path
    model = _read(spec["model"]) if kw.get("context_path") else spec["model"]
    providers = spec["providers"]  # [[name, {options}], ...]
    plugin = spec.get("plugin")
    if plugin:
        devices = _register_plugin(ort, plugin)
        if not devices:
            raise RuntimeError(f"the {plugin} plugin library registered no device")
        so.add_provider_for_devices(devices[:1], {str(k): str(v) for k, v in providers[0][1].items()})
        return ort.InferenceSession(model, sess_options=so)
    names = [p[0] for p in providers]
    opts = [{str(k): str(v) for k, v in p[1].items()} for p in providers]
    kw = {"disabled_optimizers": list(spec["disabled_optimizers"])} if spec.get("disabled_optimizers") else {}
    return ort.InferenceSession(model, sess_options=so, providers=names, provider_options=opts, **kw)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def percentile(sorted_vals: list, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def median_ci(sorted_vals: list) -> tuple:
    """Distribution-free 95 % confidence interval of the median (order statistics)."""
    n = len(sorted_vals)
    half = 1.96 * (n ** 0.5) / 2
    lo = max(0, int(n / 2 - half))
    hi = min(n - 1, int(-(-(n / 2 + half) // 1)))
    return sorted_vals[lo], sorted_vals[hi]


def stats(times: list) -> dict:
    s = sorted(times)
    n = len(s)
    mean = sum(s) / n
    var = sum((t - mean) ** 2 for t in s) / (n - 1) if n > 1 else 0.0
    p50 = percentile(s, 50)
    lo, hi = median_ci(s)
    return {
        "runs": n, "p50_ms": p50, "p90_ms": percentile(s, 90), "p99_ms": percentile(s, 99),
        "mean_ms": mean, "std_ms": var ** 0.5, "cv": (var ** 0.5) / mean if mean else 0.0,
        "min_ms": s[0], "max_ms": s[-1], "p50_ci_low_ms": lo, "p50_ci_high_ms": hi,
        "p50_ci_rel": (hi - lo) / p50 if p50 else 0.0,
    }


def time_runs(sess, feed: dict, spec: dict) -> tuple:
    """Timed runs until the median's 95 % CI is narrower than ``stable_rel`` of it (0: never) or the budget ends."""
    min_runs = int(spec.get("runs", 50))
    max_runs = int(spec.get("max_runs", MAX_RUNS))
    budget = float(spec.get("budget_s", 10.0))
    tol = float(spec.get("stable_rel", 0.05))
    times: list = []
    start = time.perf_counter()
    stable = False
    next_check = min_runs
    while True:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
        n = len(times)
        if n >= next_check:
            lo, hi = median_ci(sorted(times))
            p50 = percentile(sorted(times), 50)
            stable = p50 > 0 and (hi - lo) / p50 < tol
            if stable or n >= max_runs:
                break
            next_check = n + max(10, n // 4)
        if time.perf_counter() - start > budget and n >= min(min_runs, 10):
            if n < next_check:
                lo, hi = median_ci(sorted(times))
                p50 = percentile(sorted(times), 50)
                stable = n >= min_runs and p50 > 0 and (hi - lo) / p50 < tol
            break
    return times, stable, time.perf_counter() - start


def placement(sess) -> list:
    try:
        info = sess.get_provider_graph_assignment_info()
    except Exception:  # noqa: BLE001 - older onnxruntime without the API
        return []
    return [{"ep": sg.ep_name, "nodes": [[n.name, n.op_type] for n in sg.get_nodes()]} for sg in info]


def op_profile(ort, spec: dict, feed: dict, tmp: str) -> dict:
    """Per-node times from onnxruntime's profiler (separate session; first run dropped)."""
    sess = make_session(ort, spec, profile_prefix=os.path.join(tmp, "ortprof"))
    runs = max(2, int(spec.get("profile_runs", 10)))
    for _ in range(runs + 1):
        sess.run(None, feed)
    path = sess.end_profiling()
    with open(path, encoding="utf-8") as f:
        events = json.load(f)
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    skip_until = model_runs[0]["ts"] + model_runs[0]["dur"] if model_runs else -1
    nodes: dict = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] <= skip_until:
            continue
        args = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        d = nodes.setdefault(name, {"name": name, "op_type": args.get("op_name", "?"), "provider": args.get("provider", "?"), "durs": []})
        d["durs"].append(float(e.get("dur", 0)))
    for d in nodes.values():
        # the median call, times the calls: one preempted run does not make a node look slow
        durs = sorted(d.pop("durs"))
        d["calls"] = len(durs)
        d["us"] = percentile(durs, 50) * len(durs)
    return {"runs": runs, "nodes": sorted(nodes.values(), key=lambda d: -d["us"])}


def _context_session(ort, spec: dict):
    """A session that writes the provider's context; the working directory is the model's folder meanwhile, where
    external weights are found (``_session_options``)."""
    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(spec["model"])))
    try:
        return make_session(ort, spec, context_path=spec["context_path"])
    finally:
        os.chdir(here)


def write_context(spec: dict) -> dict:
    """Only compile: a session with ep.context_enable writes the provider's context model and binary."""
    import onnxruntime as ort

    sess = _context_session(ort, spec)
    return {"schema": SCHEMA, "providers_active": sess.get_providers(), "placement": placement(sess),
            "context": sorted(os.listdir(os.path.dirname(spec["context_path"])))}


def measure(spec: dict) -> dict:
    if spec.get("mode") == "context":
        return write_context(spec)
    import numpy as np

    t_import = time.perf_counter()
    import onnxruntime as ort

    import_ms = (time.perf_counter() - t_import) * 1e3
    with np.load(spec["feeds"], allow_pickle=False) as z:
        keys = list(z.files)
        arrays = {k: z[k] for k in keys}
    feeds: dict = {}
    for k in keys:
        i, name = k.split(":", 1)
        feeds.setdefault(int(i), {})[name] = arrays[k]
    feed = feeds[0]
    mem0 = memory_status()
    peak_ok = _reset_peak()
    t0 = time.perf_counter()
    sess = make_session(ort, spec)
    t1 = time.perf_counter()
    mem1 = memory_status()
    # an empty past holds no values: its type is the session's (an int8 KV cache takes the fp32 model's feed)
    int8_inputs = {i.name for i in sess.get_inputs() if i.type == "tensor(int8)"}
    for f in feeds.values():
        for name in int8_inputs & set(f):
            if f[name].size == 0:
                f[name] = f[name].astype(np.int8)
    active = sess.get_providers()
    first_out = sess.run(None, feed)
    t2 = time.perf_counter()
    result = {
        "schema": SCHEMA,
        "onnxruntime": ort.__version__,
        "python": sys.version.split()[0],
        "providers_active": active,
        "import_ms": import_ms,
        "cold": {"session_ms": (t1 - t0) * 1e3, "first_run_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3},
        "placement": placement(sess),
    }
    need = spec.get("require_provider")
    if need and need not in active:
        result["error"] = f"{need} did not start (session providers: {', '.join(active)})"
        return result
    for _ in range(int(spec.get("warmup", 5))):
        sess.run(None, feed)
    times, stable, elapsed = time_runs(sess, feed, spec)
    mem2 = memory_status()
    st = stats(times)
    st.update({"stable": stable, "elapsed_s": elapsed, "stable_rel": float(spec.get("stable_rel", 0.05))})
    result["steady"] = st
    result["times_ms"] = [round(t, 5) for t in times]
    base = mem0.get("VmRSS")
    result["memory"] = {
        "method": "VmRSS/VmHWM (/proc/self/status), peak reset before session creation" if peak_ok else "VmRSS only",
        "rss_before_bytes": base,
        "rss_after_session_bytes": mem1.get("VmRSS"),
        "rss_after_runs_bytes": mem2.get("VmRSS"),
        "peak_rss_bytes": mem2.get("VmHWM") if peak_ok else None,
        "session_bytes": (mem1["VmRSS"] - base) if base and mem1.get("VmRSS") else None,
        "peak_bytes": (mem2["VmHWM"] - base) if peak_ok and base and mem2.get("VmHWM") else None,
    }
    outs = {}
    for i in sorted(feeds):
        o = first_out if i == 0 else sess.run(None, feeds[i])
        for k, arr in enumerate(o):
            outs[f"{i}:{k}"] = _dense(arr)
    if spec.get("outputs_npz"):
        np.savez(spec["outputs_npz"], **outs)
    del sess
    if not result["placement"] and spec.get("placement_model"):
        # onnxruntime records no assignment for ORT-format files: partition the same graph from its ONNX form
        result["placement"] = placement(make_session(ort, dict(spec, model=spec["placement_model"])))
        result["placement_from"] = os.path.basename(spec["placement_model"])
    if spec.get("profile_runs", 0):
        with tempfile.TemporaryDirectory(prefix="edgeq-prof-") as tmp:
            result["ops"] = op_profile(ort, spec, feed, tmp)
    if spec.get("context_path"):
        # a session with ep.context_enable writes the provider's compiled context next to the model
        _context_session(ort, spec)
        result["context"] = sorted(os.listdir(os.path.dirname(spec["context_path"])))
    return result


def _dense(out):
    """An output as a plain array np.savez writes without pickle (the rule of edgeq/core/values.py; this file runs alone):
    a ZipMap's list of {class: probability} maps -> float32 [N, C] in sorted key order, a string tensor -> unicode."""
    import numpy as np

    if isinstance(out, list) and out and all(isinstance(m, dict) for m in out):
        keys = sorted(out[0], key=lambda k: (isinstance(k, str), k))
        return np.array([[float(m.get(k, np.nan)) for k in keys] for m in out], dtype=np.float32).reshape(len(out), len(keys))
    out = np.asarray(out)
    return out.astype(str) if out.dtype == object and all(isinstance(v, str) for v in out.ravel()) else out


def main(argv: list) -> int:
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    try:
        result = measure(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent as data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        result = {"schema": SCHEMA, "error": first[:500], "error_type": type(e).__name__}
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
