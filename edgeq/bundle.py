"""bundle: write a runtime bundle (atomically) and check one.

Layout::

    model.onnx                              the model the app ships
    model.ort                               onnxruntime's ORT format, from that same graph
    required_operators_and_types.config     kernels a reduced onnxruntime build needs
    golden/NNN/in_K.npy, out_K.npy          golden input/output pairs
    run.py                                  dependency-light runner (numpy + onnxruntime)
    manifest.json                           versions, target, I/O, recipe, figures, sha256 of every file
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import runner as runner_mod
from .artifact import Artifact
from .errors import BundleError, CheckFailed
from .fsutil import sha256_file, staging
from .runtime import create_session, run, session_options
from .targets import Target

SCHEMA_VERSION = runner_mod.SCHEMA_VERSION
OPS_CONFIG = "required_operators_and_types.config"


@dataclass(frozen=True)
class BundleInputs:
    """What the bundle records besides the model itself."""

    golden_feeds: tuple[dict[str, np.ndarray], ...]
    recipe: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    sizes: dict[str, Any] | None = None
    provenance: tuple[str, ...] = ()
    preprocessing: dict[str, Any] = field(default_factory=dict)


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from . import __version__

    return {"edgeq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _quiet_ort_tools() -> None:
    import logging

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    logging.getLogger("ort_format_model").setLevel(logging.WARNING)


def _write_ort(model: Path, out_dir: Path, level: str) -> tuple[Path, Path]:
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    _quiet_ort_tools()
    ort_path = out_dir / "model.ort"
    so = session_options(level=level)
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    create_session(model, so=so)
    cfg = out_dir / OPS_CONFIG
    create_config_from_models([ort_path], cfg, enable_type_reduction=True)
    # the generated header names the absolute path of the temporary model: keep it reproducible
    lines = cfg.read_text().splitlines()
    lines = ["# - model.ort" if ln.startswith("# - ") else ln for ln in lines]
    cfg.write_text("\n".join(lines) + "\n")
    return ort_path, cfg


def _write_golden(root: Path, model: Path, feeds: tuple[dict[str, np.ndarray], ...], level: str, io_names: tuple[str, ...]) -> list[dict[str, Any]]:
    sess = create_session(model, level=level)
    pairs = []
    for i, feed in enumerate(feeds):
        d = root / "golden" / f"{i:03d}"
        d.mkdir(parents=True)
        ins, outs = [], []
        for k, name in enumerate(io_names):
            rel = f"golden/{i:03d}/in_{k}.npy"
            np.save(root / rel, np.ascontiguousarray(feed[name]), allow_pickle=False)
            ins.append(rel)
        for k, out in enumerate(run(sess, feed)):
            rel = f"golden/{i:03d}/out_{k}.npy"
            np.save(root / rel, np.ascontiguousarray(out), allow_pickle=False)
            outs.append(rel)
        pairs.append({"id": f"{i:03d}", "inputs": ins, "outputs": outs})
    return pairs


def write_bundle(artifact: Artifact, target: Target, out: Path, info: BundleInputs, *, force: bool = False) -> Path:
    """Build the bundle in a temporary sibling, self-check it, then move it to ``out``."""
    if not info.golden_feeds:
        raise BundleError("a bundle needs at least one golden input", "pass calibration or evaluation data")
    out = Path(out)
    level = target.graph_optimization_level
    with staging(out, force=force, is_dir=True) as root:
        shutil.copyfile(artifact.path, root / "model.onnx")
        _write_ort(root / "model.onnx", root, level)
        pairs = _write_golden(root, root / "model.ort", info.golden_feeds, level, artifact.io.input_names)
        shutil.copyfile(Path(runner_mod.__file__), root / "run.py")
        from .profile import write_ep_context

        ep_context = write_ep_context(root / "model.onnx", root, target)  # QNN context binary, where the EP is here
        files = {}
        for p in sorted(x for x in root.rglob("*") if x.is_file()):
            rel = p.relative_to(root).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": tool_versions(),
            "target": {
                "name": target.name,
                "description": target.description,
                "arch": target.arch,
                "providers": [{"name": p.name, "options": p.options_dict()} for p in target.providers],
                "session_options": {
                    "graph_optimization_level": level,
                    "intra_op_num_threads": target.intra_op_num_threads,
                },
            },
            "model": {"onnx": "model.onnx", "ort": "model.ort", "ops_config": OPS_CONFIG, "opset": artifact.opset, "ep_context": ep_context},
            "inputs": [t.to_dict() for t in artifact.io.inputs],
            "outputs": [t.to_dict() for t in artifact.io.outputs],
            "preprocessing": info.preprocessing,
            "quantization": info.recipe,
            "provenance": list(info.provenance),
            "verify": info.verify,
            "profile": info.profile,
            "size": info.sizes,
            "golden": {"atol": target.tolerances.golden_atol, "rtol": target.tolerances.golden_rtol, "pairs": pairs},
            "files": files,
        }
        (root / runner_mod.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        result = runner_mod.check(str(root))
        if not result["passed"]:
            raise BundleError(
                f"the bundle failed its own golden check (max abs error {result['max_abs_error']:.3g})",
                "report this to edgeq: the ORT-format model disagrees with the ONNX model",
            )
    return out


def check_bundle(path: Path, *, providers: list[str] | None = None, model: str = "ort") -> dict[str, Any]:
    """Re-check every checksum and re-run the golden pairs; raises on failure."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path}", "pass the folder that holds manifest.json")
    try:
        result = runner_mod.check(str(path), model=model, providers=providers)
    except runner_mod.BundleCorrupt as e:
        raise BundleError(f"bundle {path} is corrupt: {e}", "rebuild it with edgeq export, or fetch an intact copy") from None
    except Exception as e:  # noqa: BLE001 - onnxruntime or numpy failing on bundle contents
        raise BundleError(f"bundle {path} cannot be run: {str(e).splitlines()[0][:200]}", "rebuild it with edgeq export") from None
    if not result["passed"]:
        bad = [p["pair"] for p in result["pairs"] if not p["passed"]]
        raise CheckFailed(
            f"golden pair(s) {', '.join(bad)} outside tolerance (max abs error {result['max_abs_error']:.3g}, "
            f"atol {result['atol']}, rtol {result['rtol']})",
            "the runtime computes different results than when the bundle was built",
        )
    return result
