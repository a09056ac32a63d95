#!/usr/bin/env python3
"""Bundle runner: check an edgeq bundle and run its golden input/output pairs.

This file is copied verbatim into every bundle as ``run.py``. It needs only
numpy and onnxruntime, so it runs on the device:

    python run.py [BUNDLE_DIR] [--model onnx|ort] [--providers P1,P2] [--json]
                  [--runs N [--warmup N] [--threads N]]   # also time the model here

With ``--runs N`` the runner also times the model on the machine it runs on
(cold start, then N steady-state runs on the first golden input): this is how
``edgeq profile BUNDLE --device ssh://...`` measures on the device itself.

Exit codes: 0 all checks passed, 1 a golden pair is outside tolerance or the export check
failed (manifest verdict "fail"; "accepted-failed" and "skipped" are printed, exit 0),
2 the bundle is corrupt (checksum, file list or manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time

# onnxruntime writes telemetry files ($TMPDIR/.ses, ~/.cache/Microsoft/...) on import unless this is set
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

MANIFEST = "manifest.json"
# an 8-bit integer output is a quantized code (an int8 KV cache): the float it was rounded from differs in its last
# bits between CPU kernels (AVX2, AVX-512, VNNI, NEON), so a golden code may be off by one there; wider integers
# (class ids, indices, counts) are compared exactly
CODE_TOLERANCE = 1.0
SIGNATURE = "manifest.json.sig"  # optional Ed25519 signature of manifest.json (checked by edgeq verify --pubkey)
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # checked with stat before reading
MAX_MANIFEST_DEPTH = 64  # edgeq's manifests nest about 8 deep


class BundleCorrupt(Exception):
    """The bundle's files do not match its manifest."""


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel not in (MANIFEST, SIGNATURE):
                out.append(rel)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise BundleCorrupt(f"bundle holds a symbolic link: {name}")
    return sorted(out)


def read_manifest_bytes(root: str) -> bytes:
    """manifest.json's bytes: a regular file (no link, FIFO or device) of bounded size, checked before reading."""
    path = os.path.join(root, MANIFEST)
    try:
        st = os.lstat(path)
    except OSError:
        raise BundleCorrupt(f"no {MANIFEST} in {root}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleCorrupt(f"{MANIFEST} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleCorrupt(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleCorrupt(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return data


def parse_manifest(data: bytes):
    """JSON from manifest bytes; BundleCorrupt for bad JSON or nesting deeper than any edgeq manifest."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleCorrupt(f"{MANIFEST} is not valid JSON ({str(e)[:120]})") from None
    except RecursionError:
        raise BundleCorrupt(f"{MANIFEST} is nested too deeply") from None
    stack = [(manifest, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_MANIFEST_DEPTH:
            raise BundleCorrupt(f"{MANIFEST} is nested more than {MAX_MANIFEST_DEPTH} levels deep")
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)
    return manifest


def load_manifest(root: str) -> dict:
    manifest = parse_manifest(read_manifest_bytes(root))
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleCorrupt(f"{MANIFEST} has an unsupported schema_version (this runner reads {SCHEMA_VERSION})")
    if not isinstance(manifest.get("files"), dict):
        raise BundleCorrupt(f"{MANIFEST} has no file list")
    return manifest


def check_files(root: str, manifest: dict) -> int:
    """Every file listed, every listed file present, every checksum right."""
    listed = sorted(manifest["files"])
    present = list_files(root)
    extra = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if extra:
        raise BundleCorrupt(f"file not in the manifest: {extra[0]}")
    if missing:
        raise BundleCorrupt(f"file missing from the bundle: {missing[0]}")
    for rel in listed:
        full = os.path.join(root, rel)
        if os.path.islink(full) or not os.path.isfile(full):
            raise BundleCorrupt(f"not a regular file: {rel}")
        entry = manifest["files"][rel]
        if not isinstance(entry, dict) or os.path.getsize(full) != entry.get("bytes") or sha256(full) != entry.get("sha256"):
            raise BundleCorrupt(f"checksum mismatch: {rel}")
    return len(listed)


def listed(root: str, manifest: dict, rel) -> str:
    """A path the manifest names: it must be one of the checksummed files."""
    if not isinstance(rel, str) or rel not in manifest["files"]:
        raise BundleCorrupt(f"{MANIFEST} names a file that is not in its file list: {str(rel)[:80]}")
    return os.path.join(root, rel)


def load_npy(path: str):
    """A golden array: a .npy whose header (shape, dtype) is checked against the file's size before numpy allocates
    anything (numpy sizes its buffer from the header), no object arrays; BundleCorrupt naming the file otherwise."""
    import numpy as np

    fmt = np.lib.format
    name = os.path.basename(path)
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version}")
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            count = 1
            for d in shape:
                count *= d
            if dtype.hasobject:
                raise ValueError("an object array")
            left = os.fstat(f.fileno()).st_size - f.tell()
            if count * dtype.itemsize > left:
                raise ValueError(f"its header declares {count * dtype.itemsize} bytes of data, the file holds {left}")
            f.seek(0)
            return fmt.read_array(f, allow_pickle=False)
        except (ValueError, TypeError, EOFError) as e:
            raise BundleCorrupt(f"{name} is not a .npy array this runner reads ({str(e)[:160]})") from None


def session_options(manifest: dict, threads: int = 0):
    """onnxruntime session options the bundle's manifest records for the app (level, saved runtime optimizations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    level = manifest["target"]["session_options"].get("graph_optimization_level", "basic")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if manifest["target"]["session_options"].get("saved_runtime_optimizations") is True:
        # model.ort keeps Q/DQ for the accelerator; nodes left to the CPU provider get its saved integer fusions
        so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    if threads:
        so.intra_op_num_threads = threads
    return so


def dense(out):
    """An output as onnxruntime returns it, as the array its golden file holds (the same rule as edgeq/core/values.py,
    repeated because this file runs alone): a ZipMap's list of {class: probability} maps -> float32 [N, C] in sorted
    key order; a string tensor -> a unicode array."""
    import numpy as np

    if isinstance(out, list) and out and all(isinstance(m, dict) for m in out):
        keys = sorted(out[0], key=lambda k: (isinstance(k, str), k))
        return np.array([[float(m.get(k, np.nan)) for k in keys] for m in out], dtype=np.float32).reshape(len(out), len(keys))
    out = np.asarray(out)
    return out.astype(str) if out.dtype == object and all(isinstance(v, str) for v in out.ravel()) else out


def run_golden(root: str, manifest: dict, model: str = "ort", providers: list | None = None) -> dict:
    import numpy as np
    import onnxruntime as ort

    files = manifest["model"]
    path = listed(root, manifest, files["ort"] if model == "ort" and files.get("ort") else files["onnx"])
    so = session_options(manifest)
    providers = providers or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(path, sess_options=so, providers=providers)
    inputs = [t["name"] for t in manifest["inputs"]]
    golden = manifest["golden"]
    atol, rtol = float(golden["atol"]), float(golden["rtol"])
    pairs = []
    for pair in golden["pairs"]:
        feed = {name: load_npy(listed(root, manifest, pair["inputs"][i])) for i, name in enumerate(inputs)}
        t0 = time.perf_counter()
        outs = [dense(o) for o in sess.run(None, feed)]
        ms = (time.perf_counter() - t0) * 1e3
        worst = 0.0
        ok = True
        for i, out in enumerate(outs):
            want = load_npy(listed(root, manifest, pair["outputs"][i]))
            if want.shape != np.asarray(out).shape:
                ok = False
                worst = float("inf")
                continue
            if want.dtype.kind in "USO" or out.dtype.kind in "USO":  # string labels: the same strings, or not
                ok = ok and want.dtype.kind == out.dtype.kind and bool(np.all(want == out))
                continue
            got, exp = np.asarray(out, dtype=np.float64), want.astype(np.float64)
            with np.errstate(invalid="ignore"):  # inf - inf
                diff = np.abs(got - exp)
            # the same NaN / the same infinity on both sides reproduces the golden output (a failed model can write them;
            # its verdict says so): it is not a difference, and only finite differences make the worst one
            same = (got == exp) | (np.isnan(got) & np.isnan(exp))
            diff = np.where(same, 0.0, diff)
            finite = diff[np.isfinite(diff)]
            worst = max(worst, float(finite.max()) if finite.size else 0.0, 0.0 if np.isfinite(diff).all() else float("inf"))
            tol = atol + rtol * np.abs(np.where(np.isfinite(exp), exp, 0.0))
            if want.dtype in (np.int8, np.uint8):  # 8-bit codes (an int8 KV cache): rounding differs by one between CPU kernels
                tol = np.maximum(tol, CODE_TOLERANCE)
            ok = ok and bool(np.all(diff <= tol))
        pairs.append({"pair": pair["id"], "passed": ok, "max_abs_error": worst, "ms": round(ms, 3)})
    return {
        "model": os.path.basename(path),
        "providers": sess.get_providers(),
        "atol": atol,
        "rtol": rtol,
        "pairs": pairs,
        "passed": all(p["passed"] for p in pairs),
        "max_abs_error": max((p["max_abs_error"] for p in pairs), default=0.0),
    }


VERDICTS = ("pass", "fail", "accepted-failed", "skipped")


def export_verdict(manifest: dict) -> dict:
    """The export check's verdict recorded in the manifest (older bundles: from its verify report)."""
    v = manifest.get("verdict")
    if isinstance(v, dict) and v.get("status") in VERDICTS:
        return {"status": v["status"], "reason": str(v.get("reason", ""))[:4096]}
    report = manifest.get("verify")
    if not isinstance(report, dict):
        return {"status": "skipped", "reason": "no verification recorded"}
    if report.get("passed") is False:
        return {"status": "fail", "reason": "; ".join(str(f) for f in report.get("failures", []))[:4096]}
    return {"status": "pass", "reason": ""}


def check(root: str, model: str = "ort", providers: list | None = None) -> dict:
    manifest = load_manifest(root)
    n = check_files(root, manifest)
    result = run_golden(root, manifest, model=model, providers=providers)
    verdict = export_verdict(manifest)
    result["golden_passed"] = result["passed"]
    result["verdict"] = verdict["status"]
    result["verdict_reason"] = verdict["reason"]
    result["passed"] = result["golden_passed"] and verdict["status"] != "fail"
    result["files_checked"] = n
    result["target"] = manifest["target"]["name"]
    result["platform"] = platform_info()
    return result


def platform_info() -> dict:
    """What this runner ran on (machine, OS, Python, onnxruntime, CPU name)."""
    import platform

    import onnxruntime as ort

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    cpu = value.strip()
                    break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "node": platform.node(),
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": __import__("numpy").__version__,
    }


def _rss_kib(field: str = "VmRSS") -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def time_model(root: str, manifest: dict, model: str = "ort", providers: list | None = None,
               runs: int = 50, warmup: int = 5, threads: int = 0, budget_s: float = 30.0) -> dict:
    """Cold start (session creation + first run) and steady-state latency on this machine."""
    import numpy as np
    import onnxruntime as ort

    files = manifest["model"]
    path = listed(root, manifest, files["ort"] if model == "ort" and files.get("ort") else files["onnx"])
    pair = manifest["golden"]["pairs"][0]
    feed = {t["name"]: load_npy(listed(root, manifest, pair["inputs"][i])) for i, t in enumerate(manifest["inputs"])}
    so = session_options(manifest, threads)
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, sess_options=so, providers=providers or ["CPUExecutionProvider"])
    t1 = time.perf_counter()
    sess.run(None, feed)
    cold = time.perf_counter() - t0
    rss1 = _rss_kib()
    for _ in range(max(0, warmup)):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < max(1, runs) and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    arr = np.asarray(times)
    mean = float(arr.mean())
    return {
        "model": os.path.basename(path),
        "providers": sess.get_providers(),
        "threads": threads,
        "session_create_ms": round((t1 - t0) * 1e3, 3),
        "cold_start_ms": round(cold * 1e3, 3),
        "runs": len(times),
        "runs_requested": runs,
        "warmup": warmup,
        "p50_ms": round(float(np.percentile(arr, 50)), 4),
        "p90_ms": round(float(np.percentile(arr, 90)), 4),
        "p99_ms": round(float(np.percentile(arr, 99)), 4),
        "mean_ms": round(mean, 4),
        "min_ms": round(float(arr.min()), 4),
        "cv": round(float(arr.std() / mean), 4) if mean > 0 else None,
        "rss_before_session_kib": rss0,
        "rss_after_first_run_kib": rss1,
        "peak_rss_kib": _rss_kib("VmHWM"),
    }


def _generate(argv: list) -> int:
    """LLM bundles: ``--prompt`` generates text with the sibling generate.py, after the checksums are checked."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "generate.py")
    if not os.path.isfile(path):
        print("FAIL this bundle has no generate.py: --prompt is for LLM bundles (KV-cache decoders)", file=sys.stderr)
        return 2
    try:
        check_files(here, load_manifest(here))  # generate.py is checksummed before it runs
        spec = importlib.util.spec_from_file_location("edgeq_bundle_generate", path)
        gen = importlib.util.module_from_spec(spec)
        sys.dont_write_bytecode = True  # no __pycache__ inside the bundle
        spec.loader.exec_module(gen)
        return gen.main(argv, root=here, check=lambda root: check_files(root, load_manifest(root)))
    except BundleCorrupt as e:
        print(f"FAIL bundle corrupt: {_printable(e)}", file=sys.stderr)
        return 2


def main(argv: list | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--prompt" or a.startswith("--prompt=") for a in argv):
        return _generate(argv)

    ap = argparse.ArgumentParser(description="Check an edgeq bundle and run its golden pairs.")
    ap.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--model", choices=("ort", "onnx"), default="ort")
    ap.add_argument("--providers", default="", help="comma-separated onnxruntime providers")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=0, help="also time N steady-state runs here (0: no timing)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for timing (0: onnxruntime default)")
    args = ap.parse_args(argv)
    providers = [p for p in args.providers.split(",") if p] or None
    try:
        result = check(args.bundle, model=args.model, providers=providers)
        if args.runs > 0:
            result["timing"] = time_model(args.bundle, load_manifest(args.bundle), model=args.model, providers=providers,
                                          runs=args.runs, warmup=args.warmup, threads=args.threads)
    except Exception as e:
        # onnxruntime here refused a model whose files and checksums are intact: on another machine (an Arm CPU under
        # emulation, a device) that is the model not running there, which the caller reports as a failed check
        refused = type(e).__module__.startswith("onnxruntime")  # its errors are plain Exception subclasses
        if isinstance(e, (KeyError, TypeError, IndexError, AttributeError, ValueError)):  # right keys, wrong shapes or values
            e = BundleCorrupt(f"{MANIFEST} is malformed ({type(e).__name__}: {str(e)[:80]})")
        elif refused:
            e = BundleCorrupt(f"onnxruntime cannot run the bundle's model ({(str(e).splitlines() or [type(e).__name__])[0][:160]})")
        elif not isinstance(e, BundleCorrupt):
            raise
        if args.json:
            print(json.dumps({"passed": False, "error": str(e), **({"onnxruntime_refused": True} if refused else {})}))
        else:
            print(f"FAIL bundle corrupt: {_printable(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for p in result["pairs"]:
            print(f"{'pass' if p['passed'] else 'FAIL'} golden {_printable(p['pair'])}: max abs error {p['max_abs_error']:.3g} ({p['ms']:.2f} ms)")
        verdict = "PASS" if result["golden_passed"] else "FAIL"
        print(f"{verdict} {result['files_checked']} files checked, {len(result['pairs'])} golden pairs, "
              f"max abs error {result['max_abs_error']:.3g} (atol {result['atol']}, rtol {result['rtol']}) on {result['providers'][0]}")
        if "timing" in result:
            t = result["timing"]
            print(f"timing on {result['platform']['machine']}: cold start {t['cold_start_ms']:.1f} ms, p50 {t['p50_ms']:.3f} ms, "
                  f"p90 {t['p90_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms over {t['runs']} runs (cv {t['cv']})")
        v, why = result["verdict"], _printable(result["verdict_reason"])
        if v == "fail":
            print(f"FAIL export check: the bundle failed its check when it was built: {why}")
        elif v == "accepted-failed":
            print(f"ACCEPTED-FAILED export check failed and the bundle was shipped knowingly (--accept-failed): {why}")
        elif v == "skipped":
            print(f"SKIPPED export check: {why or 'nothing was verified'}")
    return 0 if result["passed"] else 1


def _printable(text: str) -> str:
    """Text from the manifest, printed without control characters."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:500]


if __name__ == "__main__":
    sys.exit(main())
