"""``edgeq doctor``: what this host can do, what is missing, and the one command that installs it.

Python packages are found through their installed metadata (``importlib.metadata``),
never by importing them, so the check is quick and runs no package's code. The
execution providers are onnxruntime's own list plus the plugin providers edgeq's
profiler registers (``onnxruntime-qnn``) and the OpenVINO environment
(``EDGEQ_OPENVINO_PYTHON`` or edgeq's managed one).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Part:
    """One optional part: whether it is here and what it gives."""

    name: str
    installed: bool
    version: str | None
    enables: str
    how: str  # what installs or configures it
    pip: str = ""  # what the one install command adds: an edgeq extra ("hf") or a requirement
    apt: str = ""  # Debian package for the one install command
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _python_part(name: str, dists: tuple[str, ...], enables: str, pip: str, how: str) -> Part:
    versions = [installed_version(d) for d in dists]
    missing = [d for d, v in zip(dists, versions) if v is None]
    return Part(name, not missing, versions[0], enables, how, pip=pip if missing else "",
                detail=f"missing {', '.join(missing)}" if missing and versions[0] else "")


def _tool_part(name: str, exe: str, enables: str, apt: str) -> Part:
    path = shutil.which(exe) if not os.path.isabs(exe) else (exe if os.access(exe, os.X_OK) else None)
    return Part(name, path is not None, None, enables, f"apt-get install {apt}", apt="" if path else apt, detail=path or "")


def _env_part(name: str, enables: str, how: str, find) -> Part:
    try:
        found = find()
    except Exception as e:  # noqa: BLE001 - a misconfigured variable is reported, not raised
        return Part(name, False, None, enables, how, detail=" ".join(str(getattr(e, "message", e)).split())[:200])
    return Part(name, found is not None, None, enables, how, detail=str(found or ""))


def _optimum() -> str | None:
    from ..exporters import hf_optimum

    found = hf_optimum.find_python()
    return f"{found.python} ({found.why})" if found else None


def _openvino() -> str | None:
    from ..profiling import ovenv

    found = ovenv.find_python()
    return str(found) if found else None


def _ort_headers() -> str | None:
    root = os.environ.get("ONNXRUNTIME_ROOT")
    if root and (Path(root) / "include" / "onnxruntime_cxx_api.h").is_file():
        return f"ONNXRUNTIME_ROOT={root}"
    headers = os.environ.get("EDGEQ_ORT_HEADERS")
    if headers and (Path(headers) / "onnxruntime_cxx_api.h").is_file():
        return f"EDGEQ_ORT_HEADERS={headers}"
    if headers:
        raise ValueError(f"EDGEQ_ORT_HEADERS={headers} has no onnxruntime_cxx_api.h")
    return None


def parts() -> list[Part]:
    from ..devices.qemu import QEMU_ENV
    from ..exporters.hf_optimum import ENV_VAR as OPTIMUM_ENV, PIP_HINT
    from ..profiling.ovenv import ENV_VAR as OPENVINO_ENV

    return [
        _python_part("torch", ("torch", "onnxscript"), "export from PyTorch: pkg.module:factory, .pt, .pt2",
                     "torch", "pip install torch==2.13.0 (CPU wheel), then pip install 'edgeq[torch]'"),
        _python_part("transformers", ("transformers",), "export Hugging Face folders (--task)", "hf", "pip install 'edgeq[hf]'"),
        _python_part("safetensors", ("safetensors",), "--weights .safetensors, Hugging Face weights", "hf", "pip install 'edgeq[hf]'"),
        _python_part("Pillow", ("Pillow",), "image folders as --calib/--eval data", "int8", "pip install 'edgeq[int8]'"),
        _python_part("onnxruntime-qnn", ("onnxruntime-qnn",), "Qualcomm HTP simulator (qnn-htp: placement, numerics, context binaries)",
                     "profile", "pip install 'edgeq[profile]' (Linux x86_64, Windows)"),
        _python_part("llama-cpp-python", ("llama-cpp-python",), "llamacpp-* targets: run and verify GGUF bundles", "gguf",
                     "pip install 'edgeq[gguf]' (compiles llama.cpp, about 7 minutes)"),
        _python_part("gguf", ("gguf",), "llamacpp-* targets: write GGUF files", "gguf", "pip install 'edgeq[gguf]'"),
        _python_part("onnxruntime-genai", ("onnxruntime-genai",), "run LLM bundles with onnxruntime-genai", "onnxruntime-genai",
                     "pip install onnxruntime-genai"),
        _python_part("cryptography", ("cryptography",), "signed bundles: keygen, --sign, verify --pubkey", "bundle",
                     "pip install 'edgeq[bundle]'"),
        _env_part("Optimum environment", "--exporter optimum for Hugging Face folders", f"{OPTIMUM_ENV}: {PIP_HINT}", _optimum),
        _env_part("OpenVINO environment", "openvino-* targets: profile with OpenVINOExecutionProvider",
                  f"edgeq profile MODEL --target openvino-cpu --setup-runtime, or {OPENVINO_ENV}=PYTHON", _openvino),
        _tool_part("qemu-aarch64-static", os.environ.get(QEMU_ENV) or "qemu-aarch64-static",
                   "verify --emulate (ARM64 correctness under qemu)", "qemu-user-static"),
        _tool_part("debootstrap", "debootstrap", "verify --emulate: builds the arm64 userland once", "debootstrap"),
        _tool_part("chromium", "chromium", "renders the profile --html report headless (tests)", "chromium"),
        _env_part("onnxruntime C++ headers", "build the bundle's cpp/runner.cpp example",
                  "EDGEQ_ORT_HEADERS=DIR with onnxruntime_cxx_api.h (or ONNXRUNTIME_ROOT=release folder)", _ort_headers),
    ]


def providers() -> list[dict[str, Any]]:
    """onnxruntime's providers here, plus plugin providers and provider environments."""
    from ..core.runtime import available_providers

    out: list[dict[str, Any]] = [{"name": p, "kind": "built in", "detail": ""} for p in available_providers()]
    from ..profiling.providers import qnn_plugin_installed

    if qnn_plugin_installed():
        out.append(_qnn_plugin())
    try:
        ov = _openvino()
    except Exception:  # noqa: BLE001 - reported in the parts table
        ov = None
    if ov:
        out.append({"name": "OpenVINOExecutionProvider", "kind": "environment", "detail": ov})
    return out


# registers the plugin with the profiler worker's own code, in a child: registering changes what
# onnxruntime reports in the process that does it, and a plugin that crashes takes only the child down
_QNN_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("edgeq_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
import onnxruntime
devices = worker._register_plugin(onnxruntime, "qnn")
print(json.dumps({"ep": devices[0].ep_name if devices else None,
                  "devices": sorted({str(d.device.type).rsplit(".", 1)[-1] for d in devices})}))
"""


def _qnn_plugin() -> dict[str, Any]:
    """Register onnxruntime-qnn the way the profiler's worker does (in a child process) and list its devices."""
    import json
    import sys

    from ..core import child
    from ..profiling import worker

    version = installed_version("onnxruntime-qnn")
    entry = {"name": "QNNExecutionProvider", "kind": "plugin", "detail": ""}
    try:
        proc = child.run(child.python_argv(sys.executable, ["-c", _QNN_CHILD, worker.__file__]), capture_output=True,
                         text=True, timeout=120, env=child.clean_env(PYTHONDONTWRITEBYTECODE="1"))
        found = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
    except (child.TimeoutExpired, ValueError, OSError):
        proc, found = None, None
    if not isinstance(found, dict):
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1] if proc is not None else "timed out"
        entry["detail"] = f"onnxruntime-qnn {version}: does not load ({' '.join(tail.split())[:160]})"
        return entry
    entry["name"] = str(found.get("ep") or entry["name"])
    entry["detail"] = f"onnxruntime-qnn {version}, devices: {', '.join(map(str, found.get('devices') or [])) or 'none'}"
    return entry


def install_command(missing: list[Part]) -> str | None:
    """The one command that installs every missing pip and apt part (environments are set up on their own)."""
    pips = sorted({p.pip for p in missing if p.pip})
    extras = [x for x in pips if x.isidentifier()]
    reqs = [x for x in pips if not x.isidentifier()]
    steps = []
    if "torch" in extras:  # never a bare torch: the pinned CPU wheel first
        steps.append("pip install torch==2.13.0")
    if extras or reqs:
        steps.append("pip install " + " ".join(([f"'edgeq[{','.join(extras)}]'"] if extras else []) + reqs))
    apts = sorted({p.apt for p in missing if p.apt})
    if apts:
        steps.append("sudo apt-get install -y " + " ".join(apts))
    return " && ".join(steps) or None


def report() -> dict[str, Any]:
    ps = parts()
    missing = [p for p in ps if not p.installed]
    return {
        "onnxruntime": installed_version("onnxruntime"),
        "edgeq": installed_version("edgeq"),
        "providers": providers(),
        "parts": [p.to_dict() for p in ps],
        "missing": [p.name for p in missing],
        "install_command": install_command(missing),
        "to_set_up": [f"{p.name}: {p.how}" for p in missing if not p.pip and not p.apt],
    }


def tables(r: dict[str, Any]) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    prov = Table(title=f"execution providers here (onnxruntime {r['onnxruntime']})")
    for col in ("provider", "kind", "detail"):
        prov.add_column(col)
    for p in r["providers"]:
        prov.add_row(Text(p["name"]), p["kind"], Text(p["detail"]))
    t = Table(title="optional parts")
    for col in ("part", "status", "enables", "to install"):
        t.add_column(col)
    for p in r["parts"]:
        status = (p["version"] or "yes") if p["installed"] else "missing" + (f" ({p['detail']})" if p["detail"] else "")
        how = "" if p["installed"] else (p["how"] if p["pip"] or p["apt"] else "see below")
        t.add_row(p["name"], Text(status, style="green" if p["installed"] else "yellow"), p["enables"], Text(how))
    return [prov, t]
