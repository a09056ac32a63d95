"""The orchestration of every trip edgeq runs; each trip is one module, re-exported here.

The trips the CLI and the API run: each takes a typed frozen config and returns an outcome; the
CLI parses options into the config, calls the trip, prints the outcome, then calls its check_*
(which raises the failed check, exit 1). Nothing here prints.

- export (this module: ``export_model``, then ``run_export`` of :mod:`.export_stage` on the fp32 ONNX;
  kept here so the trip calls ``edgeq.pipeline.run_export``, the name callers and tests patch),
- :mod:`.gguf_trip` (llama.cpp targets), :mod:`.quantize_trip`, :mod:`.bundle_trip`, :mod:`.verify_trip`,
  :mod:`.profile_trip`; :mod:`.common`: progress, the shared option groups, model path checks.

The files are nouns with ``_trip``/``_stage``: a submodule named ``verify`` or ``quantize`` would
replace the function of that name in this namespace on first import."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.fsutil import check_output, clean_stale, scratch_dir
from ..quantization.spec import QuantSpec
from ..core.targets import Target
from .common import (BundleOptions, Progress, ProgressFactory, QuantOptions, check_budget, check_coverage_share, check_onnx_path,
                     open_model, quiet_progress)
from .export_stage import ExportOptions, ExportResult, Stage, golden_feeds_for, run_export, sizes
from .bundle_trip import BundleConfig, BundleOutcome, bundle_model, check_bundle
from .gguf_trip import GGUFOutcome, check_gguf, export_gguf
from .profile_trip import DeviceOptions, ProfileConfig, ProfileOutcome, check_profile, profile_models
from .quantize_trip import QuantizeConfig, QuantizeOutcome, check_quantize, quantize_model
from .verify_trip import VerifyConfig, VerifyOutcome, check_verify, verify_model


__all__ = [  # what callers use as edgeq.pipeline.NAME
    "BundleConfig", "BundleOptions", "BundleOutcome", "Config", "DeviceOptions", "ExportConfig", "ExportOptions",
    "ExportOutcome", "ExportResult", "GGUFOutcome", "Outcome", "ProfileConfig", "ProfileOutcome", "Progress",
    "ProgressFactory", "QuantOptions", "QuantizeConfig", "QuantizeOutcome", "SourceConfig", "Stage", "VerifyConfig",
    "VerifyOutcome", "bundle_model", "check_budget", "check_bundle", "check_coverage_option", "check_export",
    "check_gguf", "check_onnx_path", "check_outcome", "check_profile", "check_quantize", "check_verify",
    "export_gguf", "export_model", "golden_feeds_for", "open_model", "profile_models", "quantize_model",
    "quiet_progress", "run", "run_export", "sizes", "verify_model",
]


@dataclass(frozen=True)
class SourceConfig:
    """The model ``edgeq export`` starts from and how to read it (non-ONNX sources are exported first)."""

    path: Path
    example_shape: tuple[str, ...] | None = None
    dynamic_axes: tuple[str, ...] | None = None  # --dynamic-axes NAME=2,3 (PyTorch sources)
    task: str | None = None
    weights: Path | None = None
    trust_pickle: bool = False
    trust_remote_code: bool = False
    exporter: str = "auto"
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    reference: Path | None = None
    """a pre-quantized folder's float model (a Hugging Face folder)"""


@dataclass(frozen=True)
class ExportConfig:
    """The whole trip: source -> bundle (or a GGUF bundle on a llama.cpp target)."""

    source: SourceConfig
    out: Path
    target: str = "cpu-x86_64"
    quant: QuantOptions = QuantOptions()
    bundle: BundleOptions = BundleOptions()
    do_profile: bool = True
    force: bool = False
    min_accel_coverage: float | None = None
    accept_failed: bool = False
    kv_cache: str = "fp32"
    """--kv-cache: the KV-cache decoder's cache element type (fp32 | int8: exporters/kvcache.py)"""


@dataclass(frozen=True)
class ExportOutcome:
    config: ExportConfig
    target: Target
    spec: QuantSpec
    result: dict[str, Any]
    """ExportResult.to_dict(), with the source export's check ("export") when the source was not ONNX"""

    @property
    def verdict_status(self) -> str | None:
        return (self.result.get("verdict") or {}).get("status")


def check_coverage_option(minimum: float | None, tg: Target) -> None:
    """--min-accel-coverage: a share, on a target that has an accelerator (checked before any work)."""
    from ..errors import TargetError
    from ..profiling.placement import accelerator_of

    if minimum is None:
        return
    check_coverage_share(minimum)
    if tg.runtime != "onnxruntime" or accelerator_of(tg.provider_names) is None:
        raise TargetError(f"--min-accel-coverage: target {tg.name} has no accelerator provider",
                          "use a target with one (qnn-htp, nnapi, coreml, openvino-*)")


def export_model(cfg: ExportConfig, progress: ProgressFactory = quiet_progress) -> ExportOutcome | GGUFOutcome:
    """``edgeq export``: every check on the options and outputs before any work, then the source's export
    (PyTorch, Hugging Face, pre-quantized folders), then :func:`run_export`; a llama.cpp target goes to
    :func:`export_gguf`. Failed checks are left to :func:`check_export` (the bundle is written first)."""
    from ..core.optimization import parse_shapes
    from ..core.targets import load_target
    from ..exporters import SourceOptions, export_source, parse_dynamic_axes, parse_example_shapes, source_kind

    sc, q, b, out = cfg.source, cfg.quant, cfg.bundle, cfg.out
    source = sc.path
    tg = load_target(cfg.target)
    check_coverage_option(cfg.min_accel_coverage, tg)
    from ..core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=cfg.force, archive=b.archive if tg.runtime != "llama.cpp" else None,  # before any work
                         sidecar=cfg.do_profile and tg.runtime != "llama.cpp",
                         inputs=(source, q.calib, q.eval, b.preprocess, b.labels, q.image_preprocess, b.sign, sc.weights, sc.reference))
    if tg.runtime == "llama.cpp":  # Hugging Face Llama folder -> GGUF bundle (edgeq.llamacpp.gguf); --eval: prompts file
        if cfg.kv_cache != "fp32":
            from ..exporters.kvcache import check_option as check_kv_cache

            check_kv_cache(cfg.kv_cache, kind="hf", task=sc.task, exporter=sc.exporter, static_shapes=False, target=tg, folder=None, calib=q.calib)
        return export_gguf(source, tg, out, quant=q.quant, prompts_file=q.eval, force=cfg.force, progress=progress(0),
                           accept_failed=cfg.accept_failed)
    spec = q.spec(tg)
    q.check_prefer()
    from ..core.fsutil import require_regular_file
    from ..errors import ModelError

    require_regular_file(source, "model", ModelError)
    if sc.weights is not None:
        require_regular_file(sc.weights, "--weights", ModelError)
    kind = source_kind(source)
    if kind == "onnx":
        check_onnx_path(source)
    from ..exporters.names import parse_names

    in_names, out_names = parse_names(sc.input_names, "--input-names"), parse_names(sc.output_names, "--output-names")
    if (in_names or out_names) and kind not in ("factory", "pickle"):
        raise ModelError(f"--input-names/--output-names name a PyTorch module's export, not a source of kind {kind}",
                         "use them with pkg.module:factory or a full-module .pt")
    dyn_axes = parse_dynamic_axes(sc.dynamic_axes)  # before any work: its syntax, and a source it applies to
    if dyn_axes and kind not in ("factory", "pickle"):
        raise ModelError(f"--dynamic-axes names axes of a PyTorch module's export, not of a source of kind {kind}",
                         "use it with pkg.module:factory or a full-module .pt")
    from ..exporters.kvcache import check_option as check_kv_cache

    weights_only = spec.weight_only or spec.mode == "none"
    if kind == "hf" and q.quant is None and not weights_only and cfg.kv_cache != "fp32":  # a GPTQ/AWQ import: int4 (_prequant_options)
        from ..exporters.prequant import detect

        weights_only = getattr(detect(Path(source)), "exact", False)
    check_kv_cache(cfg.kv_cache, kind=kind, task=sc.task, exporter=sc.exporter, static_shapes=bool(q.static_shape), target=tg,
                   folder=Path(source) if kind == "hf" else None, calib=q.calib, quant=spec.mode, weights_only=weights_only)
    opts = ExportOptions(
        target=tg, spec=spec, out=out, calib=q.calib, eval=q.eval, force=cfg.force, kv_cache=cfg.kv_cache,
        static_shapes=parse_shapes(q.static_shape), opset=q.opset, golden=b.golden, do_profile=cfg.do_profile,
        labels_key=b.labels_key, preprocess=b.preprocess, labels=b.labels, archive=b.archive, sign_key=b.sign,
        bundle_version=b.bundle_version, max_drop=q.max_drop, image_preprocess=q.image_preprocess, prefer=q.prefer,
        accuracy_level_pinned=q.accuracy_level is not None, accept_failed=cfg.accept_failed,
        lm_folder=Path(source) if kind == "hf" and sc.task == "text-generation" else None,  # KV-cache decoder: tokenizer, genai_config
    )
    prog = progress(spec.calib_samples if spec.needs_calibration else 0)
    check = None
    with contextlib.ExitStack() as stack:
        if kind == "onnx":
            src = open_model(source, (f"source({source.name})",))
        else:
            clean_stale(out)
            check_output(out, cfg.force, is_dir=True)  # before the (slow) export
            work = stack.enter_context(scratch_dir("edgeq-export-"))
            sopts = SourceOptions(
                target=tg, example_shapes=parse_example_shapes(sc.example_shape), static_shapes=opts.static_shapes,
                task=sc.task, weights=sc.weights, trust_pickle=sc.trust_pickle, trust_remote_code=sc.trust_remote_code,
                opset=q.opset, exporter=sc.exporter, input_names=in_names, output_names=out_names, app_io=b.preprocess,
                data=tuple((w, p, b.labels_key) for w, p in (("calibration", q.calib), ("evaluation", q.eval)) if p is not None),
                dynamic_axes=dyn_axes,
            )
            export_from = source
            from ..exporters import check_data_before_export

            check_data_before_export(source, sopts)  # a Hugging Face folder's data: before any work on it
            if kind == "hf":  # a GPTQ/AWQ/bitsandbytes folder: read by edgeq, exported from its dequantized weights
                opts, export_from = _prequant_options(source, opts, q.quant, work, prog) if sc.task else (opts, source)
                if opts.lm_folder is not None and export_from != source:  # KV-cache decoder of the dequantized weights
                    from dataclasses import replace as _replace

                    opts = _replace(opts, lm_folder=Path(export_from))
            if sc.reference is not None:
                _check_reference(sc.reference, opts)
            with prog.stage(f"export ({kind})"):
                src, check = export_source(str(export_from), sopts, work)
            if sc.reference is not None:
                opts = _reference_options(sc.reference, opts, sopts, work, prog)
        result = run_export(src, opts, stage=prog.stage, on_sample=prog.sample).to_dict()
    if check is not None:
        result["export"] = check.to_dict()
        result["notes"] = check.notes() + result["notes"]
    return ExportOutcome(config=cfg, target=tg, spec=spec, result=result)


def check_export(outcome: ExportOutcome) -> None:
    """The export's failed checks, in order (budget, accelerator coverage, tolerances): raise CheckFailed (exit 1)."""
    from ..errors import CheckFailed

    cfg, tg, result = outcome.config, outcome.target, outcome.result
    if outcome.verdict_status != "accepted-failed":  # a missed budget is in the verdict: --accept-failed ships it
        check_budget(result["quantization"], cfg.out, has_eval=cfg.quant.eval is not None)
    if cfg.min_accel_coverage is not None:
        from ..profiling.accel import coverage_report
        from ..profiling.profiler import check_coverage

        check_coverage(coverage_report(cfg.out, tg, result.get("placement")), cfg.min_accel_coverage)
    if not result["passed"] and outcome.verdict_status != "accepted-failed":
        from ..checks.hints import after_failed_check
        from ..quantization.int8.dynamic_scope import dynamic_reaches

        raise CheckFailed(
            f"the {'exported' if outcome.spec.mode == 'none' else 'quantized'} model is outside target {tg.name}'s tolerances: "
            f"{(result.get('verdict') or {}).get('reason', '')}",
            after_failed_check(outcome.spec, tg, max_drop=cfg.quant.max_drop, has_eval=cfg.quant.eval is not None, out=cfg.out,
                               dynamic_applies=dynamic_reaches(result["quantization"].get("coverage")),
                               tasks=(result.get("verify") or {}).get("tasks") or ()),
        )


def _prequant_options(source: Path, opts: ExportOptions, quant: str | None, work: Path, progress: Any) -> tuple[ExportOptions, Path]:
    """A pre-quantized folder: its checkpoint goes into the options and the folder of its dequantized weights is exported."""
    from dataclasses import replace

    from ..exporters.prequant import default_mode, detect, prepare

    if detect(source) is None:
        return opts, source
    with progress.stage("read pre-quantized checkpoint"):
        ck, folder = prepare(source, work)
    mode, why = default_mode(ck, opts.spec.mode, opts.spec.weight_only, quant is not None)
    spec = opts.spec if mode == opts.spec.mode else opts.spec.with_overrides(mode=mode)
    if why:  # reported with the import's own notes
        ck = replace(ck, notes=(*ck.notes, why))
    return replace(opts, spec=spec, prequant=ck), folder


def _check_reference(reference: Path, opts: ExportOptions) -> None:
    from ..errors import ModelError
    from ..exporters.hf import is_hf_folder
    from ..exporters.prequant import detect

    if opts.prequant is None:
        raise ModelError("--reference is for pre-quantized folders (GPTQ/AWQ/bitsandbytes)", "drop --reference")
    if not is_hf_folder(reference) or detect(reference) is not None:
        raise ModelError(f"--reference {reference.name} is not a float Hugging Face folder", "pass the folder of the model before it was quantized")


def _reference_options(reference: Path, opts: ExportOptions, sopts: Any, work: Path, progress: Any) -> ExportOptions:
    """--reference FLOAT_FOLDER: exported beside the model, compared with the result as a language model."""
    from dataclasses import replace

    from ..exporters import export_source

    (work / "reference").mkdir()
    with progress.stage("export (reference)"):
        ref, _ = export_source(str(reference), sopts, work / "reference")
    return replace(opts, reference_model=ref.path)


Config = ExportConfig | QuantizeConfig | BundleConfig | VerifyConfig | ProfileConfig
Outcome = ExportOutcome | GGUFOutcome | QuantizeOutcome | BundleOutcome | VerifyOutcome | ProfileOutcome


def check_outcome(outcome: Outcome) -> None:
    """The failed check of any trip's outcome, raised (CheckFailed: the CLI's exit 1)."""
    {ExportOutcome: check_export, GGUFOutcome: check_gguf, QuantizeOutcome: check_quantize, BundleOutcome: check_bundle,
     VerifyOutcome: check_verify, ProfileOutcome: check_profile}[type(outcome)](outcome)


def run(config: Config, *, progress: ProgressFactory = quiet_progress, check: bool = True) -> Outcome:
    """The trip ``config`` names, as the CLI runs it (edgeq.export/quantize/bundle/verify/profile given a config call this);
    ``check``: raise its failed check after the outputs are written, as the CLI exits 1."""
    if isinstance(config, ExportConfig):
        outcome: Outcome = export_model(config, progress)
    elif isinstance(config, QuantizeConfig):
        outcome = quantize_model(config, progress)
    elif isinstance(config, BundleConfig):
        outcome = bundle_model(config)
    elif isinstance(config, VerifyConfig):
        outcome = verify_model(config)
    elif isinstance(config, ProfileConfig):
        outcome = profile_models(config)
    else:
        raise TypeError(f"not a trip config: {type(config).__name__}")
    if check:
        check_outcome(outcome)
    return outcome
