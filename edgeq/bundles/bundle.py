"""bundle: write a runtime bundle (atomically) and check one.

Layout::

    model.onnx                              the model the app ships
    model.ort                               onnxruntime's ORT format, from that same graph (not for static LLM decoders)
    prefill.onnx                            (static LLM decoders) the prompt's graph, weights in model.onnx.data with model.onnx's
    required_operators_and_types.config     kernels a reduced onnxruntime build needs
    golden/NNN/in_K.npy, out_K.npy          golden input/output pairs
    run.py                                  dependency-light runner (numpy + onnxruntime)
    cpp/runner.cpp, cpp/CMakeLists.txt      C++ example: loads model.ort, runs golden pair 000
    labels.txt                              (with --labels) one label per output index
    model.onnx.data                         (large models) external weights of model.onnx
    manifest.json                           versions, target, I/O, recipe, figures, sha256 of every file
    manifest.json.sig                       (with --sign) Ed25519 signature of manifest.json's bytes

Measured timings change from run to run, so they are not in the bundle: they go
to a sidecar report ``<out>.profile.json`` next to it. Everything inside the
bundle is a function of the inputs, so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import child
from . import reader as reader_mod, runner as runner_mod
from ..core.artifact import Artifact
from .archive import ExtractLimits, archive_path, write_archive
from .reader import Bundle, open_bundle, validate_manifest, write_manifest  # noqa: F401 - validate_manifest: public here too
from .signing import check_signature, generate_keypair, key_id, load_private_key, load_public_key, signature_record  # noqa: F401 - public here too
from ..errors import BundleError, CheckFailed, EdgeqError, first_line
from ..core.fsutil import staging
from ..core.appio import LABELS_FILE
from ..core.runtime import create_session, run
from ..core.safetext import escape_text
from ..core.targets import Target
from ..core.outputs import sidecar_path

SCHEMA_VERSION = runner_mod.SCHEMA_VERSION
OPS_CONFIG = "required_operators_and_types.config"
SIGNATURE = runner_mod.SIGNATURE
EXTERNAL_DATA = "model.onnx.data"
# model.onnx keeps its weights in model.onnx.data from this size on (protobuf stops at 2 GiB)
EXTERNAL_DATA_THRESHOLD = 256 << 20
# the manifest schema's bound on a named (symbolic) axis; exporters write whole shape formulas as names
MAX_DIM_NAME = 128
MAX_MANIFEST_BYTES = runner_mod.MAX_MANIFEST_BYTES
CPP_DIR = Path(__file__).resolve().parent / "cpp"
SCHEMA_PATH = reader_mod.SCHEMAS / reader_mod.SCHEMA_FILES["onnx"]


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
    """{"inputs": {name: spec}, "outputs": {name: spec}} from edgeq.core.appio.load_io_spec."""
    labels: tuple[str, ...] | None = None
    bundle_version: int = 0
    """Monotonic release number of this bundle; with a signature, ``verify --min-version`` refuses older ones."""
    sign_key: Path | None = None
    archive: str | None = None
    """"tar.gz" or "zip": also write ``<out>.<fmt>``, a deterministic archive of the folder."""
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    placement: dict[str, Any] | None = None
    """Accelerator placement of the shipped model (edgeq.profiling.accel.manifest_placement), measured or estimated."""
    extra_files: tuple[tuple[str, bytes], ...] = ()
    """(name, bytes) written at the bundle's root, e.g. genai_config.json and tokenizer files (names chosen by edgeq)"""
    verdict: dict[str, Any] | None = None
    """edgeq.checks.verdict_of(...): pass | fail | accepted-failed | skipped; default: from ``verify``."""
    prefill: bool = False
    """A static KV-cache decoder: also write prefill.onnx (exporters/static_prefill.py), its weights in model.onnx.data with
    model.onnx's, and no model.ort (the ORT format would hold the weights a second time)."""


def bundle_outputs(out: Path, info: BundleInputs) -> list[Path]:
    """Every path write_bundle will create (checked before any work)."""
    paths = [Path(out)]
    if info.archive:
        paths.append(archive_path(out, info.archive))
    if info.profile:
        paths.append(sidecar_path(out))
    return paths


def check_outputs(out: Path, info: BundleInputs, force: bool, inputs=()) -> None:
    """Every output write_bundle will create may be written (edgeq/core/outputs.py: --force replaces only edgeq's)."""
    from ..core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=force, archive=info.archive, sidecar=bool(info.profile), inputs=inputs)


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from ..core.version import __version__

    return {"edgeq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _quiet_ort_tools() -> None:
    import logging

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    logging.getLogger("ort_format_model").setLevel(logging.WARNING)


# onnxruntime orders some tables of the ORT file by a hash seeded from a memory address,
# so model.ort differs from run to run under address-space randomisation. The child
# below turns randomisation off for itself (personality ADDR_NO_RANDOMIZE, then exec)
# and writes the ORT file; the same inputs then give the same bytes. A native crash
# in onnxruntime also stays in the child.
_ORT_CHILD = r"""
import ctypes, os, sys
ADDR_NO_RANDOMIZE = 0x0040000
if os.environ.get("EDGEQ_ORT_CHILD") != "1" and sys.platform.startswith("linux"):
    os.environ["EDGEQ_ORT_CHILD"] = "1"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        cur = libc.personality(0xFFFFFFFF)
        if cur != -1 and not cur & ADDR_NO_RANDOMIZE and libc.personality(cur | ADDR_NO_RANDOMIZE) != -1:
            os.execv(sys.executable, [sys.executable, "-I", "-c", CODE] + sys.argv[1:])
    except OSError:
        pass
import onnxruntime as ort
level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
         "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[sys.argv[3]]
so = ort.SessionOptions()
so.log_severity_level = 3
so.graph_optimization_level = level
so.optimized_model_filepath = sys.argv[2]
so.add_session_config_entry("session.save_model_format", "ORT")
if sys.argv[4] == "runtime":  # Q/DQ stay for the accelerator; the CPU provider's fusions are saved for replay
    so.add_session_config_entry("optimization.minimal_build_optimizations", "save")
ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
"""


def _widened_4bit(model: Path) -> Path | None:
    """A copy of ``model`` beside it with its 4-bit initializers (int4 QDQ weights) stored as 8-bit integers of the
    same values, or None when it has none: onnxruntime 1.32's ORT format has no 4-bit tensor type (it writes the
    file, then refuses to load it). model.onnx keeps the 4-bit codes."""
    from onnx import TensorProto, numpy_helper

    from ..core.onnxutil import load_model, save_model

    four = {TensorProto.INT4: np.int8, TensorProto.UINT4: np.uint8}
    if not any(t.data_type in four for t in load_model(model, load_weights=False).graph.initializer):
        return None  # the usual case, told without reading external weights
    m = load_model(model)
    hits = [t for t in m.graph.initializer if t.data_type in four]
    for t in hits:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(four[t.data_type]), t.name))
    return save_model(m, model.parent / f"{model.stem}.8bit.onnx")


def _convert_to_ort(model: Path, ort_path: Path, level: str, style: str = "fixed") -> None:
    wide = _widened_4bit(model)
    try:
        _convert_file_to_ort(wide or model, ort_path, level, style)
    finally:
        if wide is not None:
            from ..core.onnxutil import data_file

            wide.unlink(missing_ok=True)
            data_file(wide).unlink(missing_ok=True)


def _convert_file_to_ort(model: Path, ort_path: Path, level: str, style: str = "fixed") -> None:
    code = "CODE = " + repr(_ORT_CHILD) + "\n" + _ORT_CHILD
    # relative names and a fixed environment: the child's memory layout must not depend on the output path;
    # isolated (-I): the working directory is edgeq's own staging folder, which holds only the model
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LD_LIBRARY_PATH", "SYSTEMROOT", "HOME")}
    env["ORT_DISABLE_TELEMETRY"] = "1"  # no telemetry files outside -o
    proc = child.run(
        child.python_argv(sys.executable, ["-c", code, model.name, ort_path.name, level, style]),
        cwd=model.parent, env=env, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0 or not ort_path.is_file():
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise BundleError(f"onnxruntime could not write the ORT-format model: {tail[:300]}", "check that the model loads (edgeq inspect)")


def convert_to_ort(model: Path, ort_path: Path, target: Target) -> Path:
    """Write ``ort_path`` (beside ``model``) exactly as a bundle for ``target`` ships model.ort."""
    if Path(ort_path).parent.resolve() != Path(model).parent.resolve():
        raise BundleError("the ORT-format model is written beside its ONNX model", "pass a path in the model's folder")
    _convert_to_ort(Path(model), Path(ort_path), target.ort_optimization, target.ort_optimization_style)
    return Path(ort_path)


def ort_fits(model: Path) -> bool:
    """Can the ORT format hold ``model``? It is one flatbuffer (2 GiB at most, weights included): onnxruntime's
    converter crashed (exit -11) on TinyLlama-1.1B's 4.4 GB fp32 graph. Over it the bundle ships model.onnx only."""
    from ..core.onnxutil import PROTOBUF_LIMIT, load_model, tensor_bytes

    return tensor_bytes(load_model(model, load_weights=False)) < PROTOBUF_LIMIT


def _write_ort(model: Path, out_dir: Path, level: str, style: str = "fixed") -> tuple[Path, Path]:
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    _quiet_ort_tools()
    ort_path = out_dir / "model.ort"
    _convert_to_ort(model, ort_path, level, style)
    cfg = out_dir / OPS_CONFIG
    create_config_from_models([ort_path], cfg, enable_type_reduction=True)
    # the generated header names the absolute path of the temporary model: keep it reproducible
    lines = cfg.read_text().splitlines()
    lines = ["# - model.ort" if ln.startswith("# - ") else ln for ln in lines]
    cfg.write_text("\n".join(lines) + "\n")
    return ort_path, cfg


def app_session_options(target: Target) -> dict[str, Any]:
    """The session options the app must open model.ort (and model.onnx) with; the manifest records them."""
    opts: dict[str, Any] = {"graph_optimization_level": target.graph_optimization_level,
                            "intra_op_num_threads": target.intra_op_num_threads}
    if target.ort_optimization_style == "runtime":
        opts["saved_runtime_optimizations"] = True
    return opts


def _write_golden(root: Path, model: Path, feeds: tuple[dict[str, np.ndarray], ...], target: Target, io_names: tuple[str, ...]) -> list[dict[str, Any]]:
    sess = create_session(model, so=runner_mod.session_options({"target": {"session_options": app_session_options(target)}}))
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


def _copy_model(src: Path, root: Path, threshold: int) -> bool:
    """model.onnx in the bundle; weights go to model.onnx.data when large or already external."""
    import onnx

    head = onnx.load(str(src), load_external_data=False)
    has_external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(head)
    )
    if not has_external and src.stat().st_size < threshold:
        shutil.copyfile(src, root / "model.onnx")
        return False
    if has_external:  # streamed into model.onnx.data without loading the weights (checked first)
        from ..core.onnxutil import copy_model

        return copy_model(src, root / "model.onnx", data_path=root / EXTERNAL_DATA)
    try:
        model = onnx.load(str(src))  # onnx refuses external locations outside the model's folder
    except Exception as e:  # noqa: BLE001 - onnx raises several types for bad external data
        raise BundleError(f"cannot read the external data of {src.name}: {first_line(e, 200)}", "keep the .data file next to the model") from None
    onnx.save_model(
        model, str(root / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
        location=EXTERNAL_DATA, size_threshold=1024,
    )
    # onnx writes the data file through a private temporary (mode 0600): ship it like the other files
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root / EXTERNAL_DATA, 0o666 & ~umask)
    return True


def _write_prefill(root: Path, chunk: int = 0) -> dict[str, Any]:
    """prefill.onnx beside model.onnx: the same nodes, a chunk of tokens per run, its initializers pointing into
    model.onnx.data at model.onnx's offsets (the weights stored once); the manifest's record of it."""
    import onnx

    from ..exporters.static_prefill import step_chunk, write_prefill
    from .llmgen import PREFILL

    path = write_prefill(root / "model.onnx", root / PREFILL, chunk)
    return {"onnx": PREFILL, "chunk": step_chunk(onnx.load(str(path), load_external_data=False)), "external_data": EXTERNAL_DATA}


def _copy_cpp(root: Path) -> list[str]:
    d = root / "cpp"
    d.mkdir()
    names = []
    for name in ("runner.cpp", "CMakeLists.txt"):
        shutil.copyfile(CPP_DIR / name, d / name)
        names.append(f"cpp/{name}")
    return names


def _profile_summary(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the manifest says about profiling: how it was measured, not the (run-to-run) timings."""
    if profile is None:
        return None
    keep = ("provider", "host", "device_measurement", "runs", "note", "artifact", "session")
    # a fixed text, not the file name: the bundle's bytes must not depend on the -o path
    summary: dict[str, Any] = {"timings": "<bundle>.profile.json beside the bundle", "skipped": profile.get("skipped")}
    for key in ("fp32", "quantized"):
        r = profile.get(key)
        summary[key] = {k: r.get(k) for k in keep if k in r} if isinstance(r, dict) else None
    return summary


def manifest_tensor(spec) -> dict[str, Any]:
    """A tensor's manifest record: a symbolic axis whose name is longer than the schema allows is written as an
    unnamed dynamic axis (null). torch's exporter names output axes by their formula, e.g. a YOLO head's anchor count
    ``(floor(floor(height/2 - 1/2)/2) + 1)*... + ...``, which is no name an app can use."""
    record = spec.to_dict()
    record["shape"] = [None if isinstance(d, str) and len(d) > MAX_DIM_NAME else d for d in record["shape"]]
    return record


def build_manifest(artifact: Artifact, target: Target, out: Path, info: BundleInputs, root: Path, pairs, *, external: bool, signer=None) -> dict[str, Any]:
    """The manifest's records; ``files`` (checksums) is filled by reader.write_manifest when it is written."""
    pre = info.preprocessing or {}
    inputs = [{**manifest_tensor(t), "preprocess": pre.get("inputs", {}).get(t.name, {})} for t in artifact.io.inputs]
    outputs = [{**manifest_tensor(t), "postprocess": pre.get("outputs", {}).get(t.name, {})} for t in artifact.io.outputs]
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "bundle_version": int(info.bundle_version),
        "created_by": tool_versions(),
        "target": {
            "name": target.name,
            "description": target.description,
            "arch": target.arch,
            "providers": [{"name": p.name, "options": p.options_dict()} for p in target.providers],
            "session_options": app_session_options(target),
        },
        "model": {
            "onnx": "model.onnx",
            "onnx_external_data": EXTERNAL_DATA if external else None,
            "ort": "model.ort",
            "ort_optimization_level": target.ort_optimization,
            "ort_optimization_style": target.ort_optimization_style,
            "ops_config": OPS_CONFIG,
            "opset": artifact.opset,
        },
        "inputs": inputs,
        "outputs": outputs,
        "labels": {"file": LABELS_FILE, "count": len(info.labels)} if info.labels else None,
        "quantization": info.recipe,
        "provenance": list(info.provenance),
        "verify": info.verify,
        "verdict": info.verdict or _verdict(info.verify),
        "profile": _profile_summary(info.profile),
        "size": info.sizes,
        "golden": {"atol": target.tolerances.golden_atol, "rtol": target.tolerances.golden_rtol, "pairs": pairs},
        "cpp_example": {"source": "cpp/runner.cpp", "cmake": "cpp/CMakeLists.txt"},
        "signature": signature_record(signer) if signer else None,
        "files": {},
    }
    return manifest


def _verdict(verify: dict[str, Any] | None) -> dict[str, Any]:
    from ..checks.verdict import verdict_of

    return verdict_of(verify, reason="no reference data given: nothing was verified")


def write_bundle(artifact: Artifact, target: Target, out: Path, info: BundleInputs, *, force: bool = False) -> Path:
    """Build the bundle in a temporary sibling, self-check it, then move it to ``out``.

    With ``info.archive`` also writes ``<out>.<fmt>``; with ``info.profile`` the
    measured timings go to ``<out>.profile.json``. Every output is staged and
    published only after the bundle passed its own check.
    """
    if not info.golden_feeds:
        raise BundleError("a bundle needs at least one golden input", "pass calibration or evaluation data")
    if info.bundle_version < 0:
        raise BundleError("--bundle-version must be 0 or more", "use a release counter that only goes up")
    out = Path(out)
    check_outputs(out, info, force)
    signer = load_private_key(info.sign_key) if info.sign_key else None
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(staging(out, force=force, is_dir=True))
        external = _copy_model(Path(artifact.path), root, 0 if info.prefill else info.external_data_threshold)
        prefill = _write_prefill(root, target.prefill_chunk) if info.prefill else None
        llm = any(Path(name).name == "generate.py" for name, _ in info.extra_files)  # KV decoder: genai and run.py read model.onnx
        fits_ort = ort_fits(root / "model.onnx")
        ort_path = root / "model.ort"
        if fits_ort:
            ort_path, _ = _write_ort(root / "model.onnx", root, target.ort_optimization, target.ort_optimization_style)
        if fits_ort and (prefill is not None or llm):  # the ORT format holds its own copy of the weights: an LLM bundle
            ort_path.unlink()  # stores them once (its kernel list, required_operators_and_types.config, stays for reduced builds)
        pairs = _write_golden(root, ort_path if ort_path.is_file() else root / "model.onnx", info.golden_feeds, target,
                              artifact.io.input_names)
        shutil.copyfile(Path(runner_mod.__file__), root / "run.py")
        _copy_cpp(root)
        if info.labels:
            (root / LABELS_FILE).write_text("\n".join(info.labels) + "\n", encoding="utf-8")
        for name, data in info.extra_files:
            (root / Path(name).name).write_bytes(data)
        from ..profiling.profiler import write_ep_context

        ep_context = write_ep_context(root / "model.onnx", root, target)  # QNN context binary, where the EP is here
        if prefill is not None and ep_context is not None and ep_context.get("built", True):  # and the prompt's graph's
            prefill["ep_context"] = write_ep_context(root / prefill["onnx"], root, target, name="prefill_ctx.onnx")
        manifest = build_manifest(artifact, target, out, info, root, pairs, external=external, signer=signer)
        manifest["model"]["ep_context"] = ep_context
        if prefill is not None:
            manifest["model"]["prefill"] = prefill
        if prefill is not None or llm or not fits_ort:
            manifest["model"]["ort"] = None  # run.py and verify run model.onnx
        if not fits_ort:
            manifest["model"]["ops_config"] = None  # computed from the ORT format only
        if info.placement is not None:
            manifest["placement"] = info.placement
        kind = "genai" if any(Path(name).name == "generate.py" for name, _ in info.extra_files) else "onnx"
        data = write_manifest(root, manifest, kind=kind, signer=signer)
        result = runner_mod.check(str(root))
        if not result["golden_passed"]:  # the ORT model vs its own golden outputs (the export verdict is recorded, not checked here)
            raise BundleError(
                f"the bundle failed its own golden check (max abs error {result['max_abs_error']:.3g})",
                "report this to edgeq: the ORT-format model disagrees with the ONNX model",
            )
        if info.archive:
            tmp = stack.enter_context(staging(archive_path(out, info.archive), force=force, is_dir=False))
            write_archive(root, tmp, info.archive)
        if info.profile:
            tmp = stack.enter_context(staging(sidecar_path(out), force=force, is_dir=False))
            side = {"bundle": out.name, "manifest_sha256": hashlib.sha256(data).hexdigest(), "profile": info.profile}
            tmp.write_text(json.dumps(side, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------- checking


def check_golden(result: dict[str, Any], *, on: str = "",
                 hint: str = "the runtime computes different results than when the bundle was built") -> None:
    """CheckFailed (exit 1) naming the golden pairs a runner result has outside tolerance."""
    if result.get("golden_passed", result["passed"]):
        return
    bad = [p["pair"] for p in result["pairs"] if not p["passed"]]
    where = f" on {on}" if on else ""
    raise CheckFailed(
        f"golden pair(s) {', '.join(bad)} outside tolerance{where} (max abs error {result['max_abs_error']:.3g}, "
        f"atol {result['atol']}, rtol {result['rtol']})",
        hint,
    )


def check_export_verdict(result: dict[str, Any], shown: Path | str) -> None:
    """CheckFailed (exit 1) when the bundle's manifest records a failed export check."""
    if result.get("verdict") == "fail":
        raise CheckFailed(
            f"bundle {shown} failed its export check: {escape_text(result.get('verdict_reason', ''))[:500]}",
            "the quantized model is outside its target's tolerances; re-export it (or ship it knowingly with --accept-failed)",
        )


def check_bundle(
    path: Path,
    *,
    providers: list[str] | None = None,
    model: str = "ort",
    pubkey: Path | None = None,
    min_version: int | None = None,
    limits: ExtractLimits = ExtractLimits(),
    verdict_raises: bool = True,
) -> dict[str, Any]:
    """Check a bundle folder or archive: extraction, schema, signature, version, checksums, golden pairs.

    Opening goes through bundles/reader.py (the one reader); then the manifest's golden
    tolerance is held to its target's, and the golden pairs are run. Raises BundleError
    (exit 2) for anything corrupt, tampered or hostile and CheckFailed (exit 1) for golden
    pairs outside tolerance or a bundle whose export check failed (``verdict_raises=False``: left to
    :func:`check_export_verdict`, so that ``edgeq verify --json`` can print the result first).
    """
    with open_bundle(path, pubkey=pubkey, min_version=min_version, limits=limits) as b:
        if b.kind == "gguf":  # its golden prompts need llama.cpp: edgeq.llamacpp.gguf.check_gguf_bundle checks the folder
            raise BundleError(f"{b.shown} is a llama.cpp (GGUF) bundle" + (" in an archive" if b.archive else ""),
                              "extract it and pass the folder to edgeq verify" if b.archive else "check it with edgeq verify FOLDER (llama.cpp runs its golden prompts)")
        _check_tolerance(b.manifest, signed=b.signed_by is not None)
        result = run_golden_pairs(b, model=model, providers=providers)
        if b.manifest["model"].get("prefill") is not None:  # a static decoder: its prefill graph agrees with its step graph
            from .genai import check_prefill

            b.path(b.manifest["model"]["prefill"]["onnx"])  # listed and checksummed
            try:
                result["prefill"] = check_prefill(b.root, b.manifest["golden"]["atol"], b.manifest["golden"]["rtol"])
            except EdgeqError:
                raise
            except Exception as e:  # noqa: BLE001 - the graphs' shapes or metadata, or onnxruntime failing on them
                raise BundleError(f"bundle {b.shown}: its static decoder cannot be run: {first_line(e, 200)}",
                                  "rebuild it with edgeq export") from None
    check_golden(result)
    if result.get("prefill", {}).get("passed") is False:
        raise CheckFailed(f"bundle {b.shown}: the prefill graph's logits differ from the step graph's "
                          f"(max abs error {result['prefill']['max_abs_error']:.3g})", "rebuild the bundle with edgeq export")
    if verdict_raises:
        check_export_verdict(result, b.shown)
    result["bundle_version"] = b.bundle_version
    result["signed_by"] = b.signed_by
    result["signature_checked"] = b.signed_by is not None
    result["schema_valid"] = True
    if b.archive:
        result["archive"] = b.archive
    return result


def run_golden_pairs(b: Bundle, *, model: str = "ort", providers: list[str] | None = None) -> dict[str, Any]:
    """The golden pairs of a bundle the reader opened, as run.py's ``check`` reports them (files are not hashed again)."""
    try:
        result = runner_mod.run_golden(str(b.root), b.manifest, model=model, providers=providers)
    except runner_mod.BundleCorrupt as e:
        raise BundleError(f"bundle {b.shown} is corrupt: {e}", "rebuild it with edgeq export, or fetch an intact copy") from None
    except Exception as e:  # noqa: BLE001 - onnxruntime or numpy failing on bundle contents
        raise BundleError(f"bundle {b.shown} cannot be run: {first_line(e, 200)}", "rebuild it with edgeq export") from None
    result["golden_passed"] = result["passed"]
    result["verdict"] = b.verdict["status"]
    result["verdict_reason"] = b.verdict["reason"]
    result["passed"] = result["golden_passed"] and b.verdict["status"] != "fail"
    result["files_checked"] = len(b.files)
    result["target"] = b.target
    result["platform"] = runner_mod.platform_info()
    return result


def _check_tolerance(manifest: dict[str, Any], *, signed: bool = False) -> None:
    """A target's golden tolerance may not be loosened in the manifest.

    A shipped target's own tolerance is the bound. An unsigned manifest naming a target
    edgeq does not ship could claim any tolerance: it is held to the loosest golden
    tolerance of the shipped targets; a signed one to what its publisher signed.
    """
    import math

    from ..errors import TargetError
    from ..core.safetext import escape_text
    from ..core.targets import list_targets, load_target, target_names

    name = manifest["target"]["name"]
    g = manifest["golden"]
    if name in target_names():
        try:
            tol = load_target(name).tolerances
        except TargetError:
            return
        atol, rtol, whose = tol.golden_atol, tol.golden_rtol, f"target {name}'s"
        hint = "the manifest was edited; rebuild the bundle"
    elif signed:
        return
    else:
        shipped = [t.tolerances for t in list_targets() if t.runtime == "onnxruntime"]
        atol, rtol = max(t.golden_atol for t in shipped), max(t.golden_rtol for t in shipped)
        whose = f"any target shipped with edgeq (the unsigned manifest names target '{escape_text(name)[:60]}', which edgeq does not ship)"
        hint = "sign the bundle (edgeq export --sign KEY) and verify it with --pubkey, or rebuild it for a shipped target"
    bad = [v for v in (g["atol"], g["rtol"]) if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if bad or g["atol"] > atol or g["rtol"] > rtol:
        raise BundleError(
            f"the manifest's golden tolerance (atol {g['atol']}, rtol {g['rtol']}) is looser than {whose} "
            f"(atol {atol}, rtol {rtol})",
            hint,
        )
