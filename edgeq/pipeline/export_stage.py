"""The export stage of one fp32 ONNX model: optimize -> quantize -> verify -> profile -> bundle (:func:`run_export`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..profiling.accel import export_placement, manifest_placement
from ..core.artifact import Artifact
from ..bundles.bundle import BundleInputs, write_bundle
from ..core.data import LABELS_KEY, SampleSet, load_samples, on_synthetic_feed
from ..errors import CalibrationError
from ..core.fsutil import check_output, clean_stale, scratch_dir
from ..core.onnxutil import model_size
from ..core.optimization import optimize
from ..profiling.profiler import ProfileResult, feed_from, profile, skip_reason
from ..quantization import quantize
from ..quantization.int8.quantizer import QuantResult
from ..quantization.spec import QuantSpec
from ..core.targets import Target
from ..checks.comparison import VerifyReport, verify

Stage = Callable[[str], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class ExportOptions:
    target: Target
    spec: QuantSpec
    out: Path
    calib: Path | None = None
    eval: Path | None = None
    force: bool = False
    static_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    opset: int | None = None
    golden: int = 3
    do_profile: bool = True
    verify_samples: int = 1000
    labels_key: str = LABELS_KEY
    preprocess: Path | None = None
    labels: Path | None = None
    archive: str | None = None
    sign_key: Path | None = None
    bundle_version: int = 0
    max_drop: float | None = None
    image_preprocess: Path | None = None
    """preprocessing spec (TOML) for image-folder calibration/evaluation data"""
    prefer: str | None = None
    accuracy_level_pinned: bool = False
    """weight-only: the user chose --accuracy-level; otherwise levels 4 and 0 are measured and one is kept"""
    lm_folder: Path | None = None
    """the Hugging Face folder a KV-cache decoder came from: tokenizer and genai_config.json ship with it"""
    prequant: Any = None
    """edgeq.exporters.prequant.PrequantCheckpoint: the source was a pre-quantized folder (GPTQ/AWQ codes imported)"""
    reference_model: Path | None = None
    """the float model a pre-quantized folder came from (exported --reference): LM quality against it too"""
    accept_failed: bool = False
    """--accept-failed: ship a bundle whose check failed; the manifest says accepted-failed"""
    kv_cache: str = "fp32"
    """--kv-cache int8: the decoder's cache as int8, scales from the calibration windows (exporters/kvcache.py)"""


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    target: str
    fp32_bytes: int
    model_bytes: int
    quant: QuantResult
    verify: VerifyReport | None
    profile_fp32: ProfileResult | None
    profile_quant: ProfileResult | None
    profile_skipped: str | None
    notes: tuple[str, ...]
    lm: Any = None  # edgeq.checks.lmeval.LMQuality for weight-only modes on language models
    generation: Any = None  # edgeq.bundles.genai.GreedyCheck for KV-cache decoder bundles
    lm_reference: Any = None  # LMQuality against --reference (the float model a pre-quantized folder came from)
    placement: dict[str, Any] | None = None  # accelerator placement of the shipped model (edgeq.profiling.accel)
    ep_context: dict[str, Any] | None = None  # the provider's compiled context, or why there is none
    activations: dict[str, Any] | None = None  # A8W8 vs A16W8 on the accelerator (edgeq.profiling.accel.compare_activation_types)
    speed: Any = None  # edgeq.quantization.selection.speed.SpeedCheck: the shipped model.ort against fp32, one process
    verdict: dict[str, Any] | None = None  # edgeq.checks.verdict_of: the one verdict, as the manifest records it

    @property
    def passed(self) -> bool:
        """The verdict is pass or skipped (the greedy generation check of LM bundles is part of it)."""
        if self.verdict is not None:
            return self.verdict.get("status") in ("pass", "skipped")
        return (self.verify.passed if self.verify else True) and (self.generation is None or self.generation.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "target": self.target,
            "size": sizes(self.fp32_bytes, self.model_bytes),
            "quantization": self.quant.recipe(),
            "verify": self.verify.to_dict() if self.verify else None,
            "profile": {
                "fp32": self.profile_fp32.to_dict() if self.profile_fp32 else None,
                "quantized": self.profile_quant.to_dict() if self.profile_quant else None,
                "skipped": self.profile_skipped,
                "shipped": self.speed.to_dict() if self.speed else None,
            },
            "notes": list(self.notes),
            "passed": self.passed,
            "verdict": self.verdict,
            "lm_quality": self.lm.to_dict() if self.lm is not None else None,
            "generation": self.generation.to_dict() if self.generation is not None else None,
            **({"lm_quality_vs_reference": self.lm_reference.to_dict()} if self.lm_reference is not None else {}),
            "placement": self.placement,
            "ep_context": self.ep_context,
            "activations_compared": self.activations,
        }


def sizes(fp32: int, model: int) -> dict[str, Any]:
    return {"fp32_bytes": fp32, "model_bytes": model, "ratio": round(model / fp32, 4) if fp32 else None}


@contextlib.contextmanager
def _quiet_stage(name: str) -> Iterator[None]:
    yield


def run_export(
    source: Artifact,
    opts: ExportOptions,
    *,
    stage: Stage = _quiet_stage,
    on_sample: Callable[[], None] | None = None,
) -> ExportResult:
    """Run every stage for an fp32 ONNX ``source``; the bundle lands at ``opts.out``."""
    target, spec = opts.target, opts.spec
    clean_stale(opts.out)
    check_output(opts.out, opts.force, is_dir=True)  # before any work
    app_io, labels = _bundle_extras(source, opts)
    # Check the data against the model before spending time on anything else.
    image_prep = image_preprocess_for(opts.image_preprocess, opts.preprocess, app_io, source)
    from ..quantization import npu_qdq  # static-shape decoders (NPU targets): QDQ weights, windows through the fixed-slot loop

    qdq_lm = npu_qdq.applies(spec, source.io)
    windows = npu_qdq.load_windows(source.io, opts.calib, opts.eval) if qdq_lm else {}
    calib = None if qdq_lm else load_samples(opts.calib, source.io, what="calibration", labels_key=opts.labels_key, preprocess=image_prep, random_n=spec.calib_samples) if opts.calib else None
    evals = None if qdq_lm else load_samples(opts.eval, source.io, what="evaluation", labels_key=opts.labels_key, preprocess=image_prep) if opts.eval else None
    from ..checks.masking import with_app_masks  # [inputs.NAME] mask = ...: which input is a token mask

    calib, evals = with_app_masks(calib, app_io["inputs"]), with_app_masks(evals, app_io["inputs"])
    if opts.lm_folder is not None:
        _check_lm_windows(opts.lm_folder, (opts.calib, calib, "calibration"), (opts.eval, evals, "evaluation"))
    prep_notes = _record_image_preprocess(app_io, calib or evals, from_app=image_prep is not None and image_prep == opts.preprocess)
    if qdq_lm:  # the QDQ form the target runs, or one line refusing what it cannot run, before any work
        spec, spec_notes = npu_qdq.decoder_spec(spec)
        npu_qdq.choose_form(target, spec, has_data="calibration" in windows)
    if spec.mode == "int8-static" and opts.lm_folder is None:  # an LSTM/GRU-only model: refused before asking for data
        from ..checks.hints import target_allows_dynamic
        from ..errors import QuantizationError
        from ..quantization.int8.quantizer import static_misses

        miss = static_misses(source.path, target_allows_dynamic(target))
        if miss is not None:
            raise QuantizationError(*miss)
    if spec.needs_calibration and calib is None and "calibration" not in windows:
        from ..checks.hints import modes_without_calibration
        from ..quantization.int8.quantizer import static_finds_nothing

        if spec.mode == "int8-static" and opts.lm_folder is None and (nothing := static_finds_nothing(source.path, spec)):
            raise CalibrationError(*nothing)  # classic ML (ai.onnx.ml trees, SVMs): data would calibrate nothing

        raise CalibrationError(
            f"{spec.mode} needs calibration data and none was given",
            ("pass --calib WINDOWS.npz (input_ids [n, T] token windows), or --quant int4 (RTN needs no data) / "
             + modes_without_calibration(target).removeprefix("--quant ")) if opts.lm_folder is not None else
            "pass --calib DATA.npz (one array per model input), or " + modes_without_calibration(target, _dynamic_applies(source)),
        )
    from ..quantization.int8.preflight import run as preflight

    if target.static_shapes:  # samples whose shapes vary cannot all run once the axes are pinned
        from ..core.data import check_one_shape

        for data, what in ((calib, "calibration"), (evals, "evaluation")):
            check_one_shape(data, target.name, what)
    data_shapes = _data_shapes(calib or evals)  # a static-shape target pins dynamic axes to these (--static-shape wins)
    notes: list[str] = preflight(source.path, target, spec, {**data_shapes, **opts.static_shapes}) + prep_notes  # before any work
    notes += list(dict.fromkeys(n for d in (calib, evals) if d is not None and not d.synthetic for n in d.notes))
    llm_files, llm_notes = _llm_files(source, opts)  # before any work: the folder's tokenizer files are read here
    notes += llm_notes + (spec_notes if qdq_lm else [])
    with scratch_dir() as work:
        with stage("optimize"):
            opt, opt_notes = optimize(source, target, work / "fp32.onnx", static_shapes=opts.static_shapes, opset=opts.opset,
                                      data_shapes=data_shapes)
            notes += opt_notes
        if windows:  # each input_ids window becomes the fixed-slot loop's step feeds of the float graph
            steps = {w: npu_qdq.step_feeds(opt.path, d.arrays["input_ids"], spec.calib_samples)[0] for w, d in windows.items()}
            calib, evals = steps.get("calibration"), steps.get("evaluation")
        q_in, pq_report = opt, None
        if opts.prequant is not None and opts.prequant.config.exact:
            from ..exporters.prequant import apply as import_prequant

            with stage("import codes"):
                # weight-only modes measure levels 4 and 0 below (imported nodes included); otherwise float compute unless chosen
                level = spec.accuracy_level if (spec.weight_only or opts.accuracy_level_pinned) else 0
                q_in, pq_report = import_prequant(opt, opts.prequant, work / "imported.onnx", accuracy_level=level)
        with stage(f"quantize ({spec.mode})"):
            qres = npu_qdq.quantize(q_in, spec, work / "model.onnx", target=target, data=calib, on_sample=on_sample) if qdq_lm else quantize(
                q_in, spec, work / "model.onnx", data=calib, on_sample=on_sample, evals=evals, max_drop=opts.max_drop,
                prefer=opts.prefer, budget=target.tolerances.max_accuracy_drop, target=target,
                **_search_runner(spec, opts.max_drop, target), tasks=app_io["outputs"],
            )
            notes += qres.notes
        check_data = evals or calib
        activations = None
        if opts.max_drop is not None and spec.mode == "int8-static" and spec.wide_activation_type:
            from ..profiling.accel import compare_activation_types

            with stage("A8W8 vs A16W8 on the accelerator"):
                activations = compare_activation_types(opt, spec, calib, check_data, target, work)
        speed = None
        if spec.mode in ("int8-static", "int8-dynamic") and opts.prefer is None and opts.do_profile:
            from ..quantization.selection.speed import decide

            with stage("speed (shipped model.ort vs fp32)"):
                first_cal = dict((qres.details or {}).get("calibration") or {})

                def requantize(nodes: tuple[str, ...]) -> QuantResult:
                    # the same ranges as the model it replaces: --calibration auto's choice is kept, not raced again
                    # (a near tie could pick another method, and the notes would describe a model not shipped)
                    chosen = first_cal.get("method") if spec.calibration == "auto" and "auto" in first_cal else None
                    sp = spec.with_overrides(nodes_to_exclude=spec.nodes_to_exclude + tuple(nodes), calibration=chosen)
                    res = quantize(opt, sp, work / "model.onnx", data=calib, evals=evals, max_drop=opts.max_drop, target=target,
                                   tasks=app_io["outputs"])
                    if chosen is not None and isinstance(res.details.get("calibration"), dict):
                        res = replace(res, details={**res.details, "calibration": {**res.details["calibration"], "auto": first_cal["auto"]}})
                    return res

                feed = feed_from(check_data) or _synthetic(opt)
                with on_synthetic_feed(feed, check_data is None):
                    qres, speed, speed_lines = decide(opt, qres, target, feed, work / "speed", requantize=requantize)
                notes += speed_lines
        elif spec.mode in ("int8-static", "int8-dynamic") and opts.prefer is None:
            notes.append("speed: not measured (--no-profile): the quantized model ships without the check against fp32")
        elif opts.do_profile and not spec.weight_only and opts.kv_cache == "fp32":  # fp32, fp16, --prefer picks: timed as shipped
            # (an int8 KV cache is applied below: the profile stage times that model as shipped)
            from ..quantization.selection.speed import check_shipped

            with stage("speed (shipped model.ort vs fp32)"):
                feed = feed_from(check_data) or _synthetic(opt)
                with on_synthetic_feed(feed, check_data is None):
                    speed, speed_lines = check_shipped(opt, qres, target, feed, work / "speed")
                notes += speed_lines
        if spec.weight_only and not opts.accuracy_level_pinned and check_data is not None:
            from ..quantization.selection import acclevel

            if acclevel.has_matmulnbits(qres.artifact.path):
                with stage("accuracy levels"):
                    choice, files = acclevel.compare(opt, qres.artifact, check_data, target, work, spec.accuracy_level)
                    qres = acclevel.apply(qres, choice, files)
                    notes.append(qres.notes[-1])
        if opts.kv_cache == "int8":  # after weight quantization: scales from the fp32 decoder, layout by KL against this one
            from ..exporters.kvcache import int8_cache_stage

            with stage("int8 KV cache"):
                kv_art, kv_record, kv_notes = int8_cache_stage(opt.path, qres.artifact, calib.arrays["input_ids"], work / "kv8")
                qres = replace(qres, artifact=kv_art, details={**qres.details, "kv_cache": kv_record})
                notes += kv_notes
        report = None
        if check_data is not None:
            if check_data is calib:
                notes.append("verified on the calibration inputs (pass --eval for held-out data)")
            from ..checks.lmbudget import LOGITS_BUDGET, windows_within

            n_verify = min(opts.verify_samples, windows_within(check_data, opt.io))  # an LLM's logits: bounded memory
            if n_verify < min(opts.verify_samples, len(check_data)):
                notes.append(f"verified on {n_verify} of {len(check_data)} windows (both models' logits kept under "
                             f"{LOGITS_BUDGET >> 20} MiB); the LM figures use every window")
            compared = opt.io.output_names
            if opts.kv_cache == "int8":  # its present outputs are int8 codes, not values: the logits carry the cache's effect
                compared = tuple(n for n in compared if not n.startswith("present."))
                notes.append("verify: present.N.key/value are int8 codes in the int8-cache model; compared through the logits")
            with stage("verify"):
                report = verify(opt.path, qres.artifact.path, check_data.take(n_verify), target.tolerances,
                                output_names=compared, tasks=app_io["outputs"])
                from ..checks.metrics import task_note

                notes += [task_note(c) for c in report.tasks]
        else:
            notes.append("VERIFICATION SKIPPED: no data given, nothing was proven (pass --calib or --eval); "
                         "golden inputs and timing use typical values from the inputs' declared ranges")
        lm = None
        from ..checks.lmeval import lm_io, lm_quality

        if windows:  # each model through its own fixed-slot loop over the windows
            with stage("lm quality"):
                lm = npu_qdq.lm_quality(opt.path, qres.artifact.path, (windows.get("evaluation") or windows["calibration"]).arrays["input_ids"])
        elif (spec.weight_only or opts.prequant is not None or opts.kv_cache != "fp32") and check_data is not None and lm_io(opt.io) is not None:
            with stage("lm quality"):
                lm = lm_quality(opt.path, qres.artifact.path, check_data.take(opts.verify_samples), opt.io)
        if opts.prequant is not None:
            from ..exporters.prequant import report_notes, summary

            notes += report_notes(opts.prequant, pq_report, lm, spec.mode)
            details = {**qres.details, "prequant": {**summary(opts.prequant), "import": pq_report.to_dict() if pq_report else None}}
            qres = replace(qres, details=details)
        lm_ref = None
        if opts.reference_model is not None and check_data is not None and lm_io(opt.io) is not None:
            with stage("lm quality vs --reference"):
                lm_ref = lm_quality(opts.reference_model, qres.artifact.path, check_data.take(opts.verify_samples), opt.io)
            notes.append(f"vs the float model (--reference): perplexity {lm_ref.perplexity_fp32:.4g} -> {lm_ref.perplexity_quant:.4g}, "
                         f"KL {lm_ref.kl_mean:.3g}, same top token {100 * lm_ref.same_top_token:.2f} %")
        prof_fp32 = prof_q = None
        skipped = None
        golden = golden_feeds_for(check_data, qres.artifact, opts.golden, app_io)
        if opts.do_profile:
            with stage("profile"):
                from ..quantization.selection.speed import onnx_warning, shipped_ort

                feed = feed_from(check_data) or (golden[0] if golden else None)  # no data: typical values, never zeros
                # what the bundle ships (the speed decision wrote it already), timed as the app runs it
                ship = speed.extra["ort"] if speed is not None else shipped_ort(qres.artifact.path, target, work / "ship")
                prof_fp32 = profile(opt.path, target, feed=feed, io=opt.io)
                prof_q = profile(ship, target, feed=feed, io=qres.artifact.io)
                if prof_fp32 is None:
                    skipped = skip_reason(target)
                elif speed is not None and onnx_warning(speed):
                    notes.append(onnx_warning(speed))
        fp32_bytes = model_size(opt.path)  # same treatment as the quantized model
        q_bytes = model_size(qres.artifact.path)
        placement = _placement(qres.artifact, target, golden, stage)
        generation = None
        if llm_files:  # before the manifest is written: its verdict includes the greedy check
            from ..bundles.genai import stage_for_genai

            with stage("generate check"):
                staged = stage_for_genai(qres.artifact.path, llm_files, work / "genai", prefill_chunk=target.prefill_chunk)
                generation = _greedy_check(opts, spec, windows.get("evaluation") or windows.get("calibration") or check_data, staged)
                notes.append(generation.summary() if generation else "onnxruntime-genai not installed: greedy generation check skipped (pip install onnxruntime-genai)")
        from ..checks.verdict import verdict_of

        verdict = verdict_of(report.to_dict() if report else None, accept_failed=opts.accept_failed,
                             generation=generation.to_dict() if generation is not None else None, recipe=qres.recipe())
        with stage("bundle"):
            info = BundleInputs(
                golden_feeds=golden,
                recipe=qres.recipe(),
                verify=report.to_dict() if report else None,
                verdict=verdict,
                profile={
                    "fp32": prof_fp32.to_dict() if prof_fp32 else None,
                    "quantized": prof_q.to_dict() if prof_q else None,
                    "skipped": skipped,
                    "shipped": speed.to_dict() if speed else None,
                } if opts.do_profile else None,  # --no-profile: no sidecar
                sizes=sizes(fp32_bytes, q_bytes),
                provenance=qres.artifact.provenance,
                preprocessing=app_io,
                labels=labels,
                bundle_version=opts.bundle_version,
                sign_key=opts.sign_key,
                archive=opts.archive,
                placement=manifest_placement(placement),
                extra_files=llm_files,
                prefill=bool(llm_files) and all(isinstance(d, int) for d in qres.artifact.io.input("input_ids").shape),  # static decoder
            )
            with _typical_golden_refused(golden, check_data is None):
                write_bundle(qres.artifact, target, opts.out, info, force=opts.force)
    return ExportResult(
        bundle=opts.out,
        target=target.name,
        fp32_bytes=fp32_bytes,
        model_bytes=q_bytes,
        quant=qres,
        verify=report,
        profile_fp32=prof_fp32,
        profile_quant=prof_q,
        profile_skipped=skipped,
        notes=tuple(notes),
        lm=lm,
        generation=generation,
        lm_reference=lm_ref,
        placement=placement,
        ep_context=_written_ep_context(opts.out),
        activations=activations,
        speed=speed,
        verdict=verdict,
    )


def _search_runner(spec: QuantSpec, max_drop: float | None, target: Target) -> dict[str, Any]:
    """--max-drop on static QDQ: candidates run on the target's accelerator where it runs here (QNN simulator)."""
    if max_drop is None or spec.mode != "int8-static" or spec.format != "qdq":
        return {}
    from ..profiling.accel import accelerator_outputs

    runner = accelerator_outputs(target)
    return {"outputs_of": runner} if runner is not None else {}


def _data_shapes(data: SampleSet | None) -> dict[str, tuple[int, ...]]:
    """One sample's shape per input: the sizes a static-shape target pins dynamic axes to."""
    if data is None or not len(data):
        return {}
    return {k: tuple(np.shape(v)) for k, v in data.feed(0).items()}


def _placement(art: Artifact, target: Target, feeds: tuple[dict, ...], stage: Stage) -> dict[str, Any] | None:
    """Where the shipped model runs on the target's accelerator (None: a CPU-only target)."""
    from ..profiling.placement import accelerator_of

    if accelerator_of(target.provider_names) is None:
        return None
    with stage("placement"):
        return export_placement(art.path, target, art.io, feeds)


def _written_ep_context(out: Path) -> dict[str, Any] | None:
    """The ep_context record of the bundle just written (edgeq's own manifest)."""
    import json

    from ..bundles.runner import MANIFEST

    try:
        return json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))["model"].get("ep_context")
    except (OSError, ValueError, KeyError):
        return None


def _dynamic_applies(art: Artifact) -> bool:
    """The model has a node type int8-dynamic quantizes (If/Loop/Scan bodies included): else a hint must not offer it."""
    from ..core.onnxutil import iter_nodes, load_model
    from ..quantization.int8.quantizer import DYNAMIC_DEFAULT_OPS

    return any(n.op_type in DYNAMIC_DEFAULT_OPS for n in iter_nodes(load_model(art.path, load_weights=False).graph))


def _synthetic(art: Artifact) -> dict:
    from ..core.data import synthetic_feed

    return synthetic_feed(art.io)


def _llm_files(source: Artifact, opts: ExportOptions) -> tuple[tuple[tuple[str, bytes], ...], list[str]]:
    from ..exporters.decoder import is_kv_decoder

    if opts.lm_folder is None or not is_kv_decoder(source.io):
        return (), []
    from ..bundles import llmgen
    from ..bundles.genai import bundle_files

    files, notes = bundle_files(opts.lm_folder, source.path)
    gen = ("generate.py", Path(llmgen.__file__).read_bytes())  # run.py --prompt: numpy + onnxruntime + tokenizers
    return (*files, gen), notes


GREEDY_NEW_TOKENS = 32


def _check_lm_windows(folder: Path, *sets: tuple[Any, SampleSet | None, str]) -> None:
    """input_ids windows against the Hugging Face folder's vocabulary and context, before any work."""
    from ..core.data import require_stacked
    from ..core.lmdata import IDS, check_token_windows
    from ..exporters import hf

    cfg = hf.inspect_folder(folder).config
    vocab, context = int(cfg.get("vocab_size") or 0), int(cfg.get("max_position_embeddings") or 0)
    for path, data, what in sets:
        require_stacked(data, what, "a language model's trip takes input_ids windows of one length [n, T]")
        if data is not None and IDS in data.arrays:
            check_token_windows(data.arrays[IDS], vocab, context, f"{what} data {path}")


def _greedy_check(opts: ExportOptions, spec: QuantSpec, data: SampleSet | None, folder: Path):
    """onnxruntime-genai on ``folder`` (the bundle's decoder and genai files) vs transformers' greedy generate on the source."""
    import numpy as np

    from ..exporters import hf
    from ..bundles.genai import greedy_check, prompt_ids

    src = hf.inspect_folder(opts.lm_folder)
    model = hf.load_hf_model(src, "text-generation")
    vocab = int(model.config.vocab_size)
    if data is not None and len(data) and "input_ids" in data.arrays:
        prompts = [np.asarray(data.feed(i)["input_ids"]).reshape(-1)[:16].tolist() for i in range(min(3, len(data)))]
    elif (opts.lm_folder / "tokenizer.json").is_file():
        prompts = prompt_ids(opts.lm_folder, ["The", "def main():", "Once upon a time"], vocab)
    else:
        prompts = np.random.default_rng(0).integers(0, vocab, (3, 8)).tolist()
    fp32 = spec.mode == "none" and opts.kv_cache == "fp32"  # an int8 KV cache is quantized too: the target's agreement
    need = 1.0 if fp32 else opts.target.tolerances.min_greedy_agreement
    tie = 10 * opts.target.tolerances.export_atol  # two runtimes' float sums may order a near-tie either way
    return greedy_check(folder, model, prompts, new_tokens=GREEDY_NEW_TOKENS, min_agreement=need, tie_atol=tie)


def _bundle_extras(source: Artifact, opts: ExportOptions) -> tuple[dict, tuple[str, ...] | None]:
    """Check --preprocess, --labels, --archive, --sign and the extra outputs before any work."""
    from ..core.appio import check_labels_fit, load_io_spec, read_labels
    from ..bundles.bundle import BundleInputs, check_outputs, load_private_key

    app_io = load_io_spec(opts.preprocess, source.io)
    labels = read_labels(opts.labels)
    check_labels_fit(labels, app_io, source.io)
    if opts.sign_key is not None:
        load_private_key(opts.sign_key)
    if opts.bundle_version < 0:
        from ..errors import BundleError

        raise BundleError("--bundle-version must be 0 or more", "use a release counter that only goes up")
    from ..bundles.archive import check_golden_archivable

    check_golden_archivable(opts.golden, len(source.io.inputs) + len(source.io.outputs), opts.archive)
    probe = BundleInputs(golden_feeds=(), archive=opts.archive, profile={"planned": True} if opts.do_profile else None)
    inputs = (source.path, opts.calib, opts.eval, opts.preprocess, opts.labels, opts.image_preprocess, opts.sign_key)
    check_outputs(opts.out, probe, opts.force, inputs=inputs)
    return app_io, (tuple(labels) if labels else None)


def image_preprocess_for(image_preprocess: Path | None, preprocess: Path | None, app_io: dict, source: Artifact) -> Path | None:
    """--image-preprocess wins; else the app's --preprocess file when it describes the one input."""
    if image_preprocess is not None:
        return image_preprocess
    if preprocess is not None and len(source.io.inputs) == 1 and source.io.input_names[0] in app_io["inputs"]:
        return preprocess
    return None


def _record_image_preprocess(app_io: dict, data: SampleSet | None, *, from_app: bool) -> list[str]:
    """Calibration images were preprocessed one way: the manifest must tell the app the same."""
    from ..core.images import Preprocess

    if data is None or from_app or not isinstance(data.loader, Preprocess):
        return []
    used = data.loader.to_app()
    told = app_io["inputs"].get(data.input_name)
    if told is None:
        app_io["inputs"][data.input_name] = used
        return [f"manifest: input '{data.input_name}' preprocessing recorded from the calibration images' spec"]
    differ = sorted(k for k in set(used) | set(told) if k in used and k in told and used[k] != told[k])
    if differ:
        return [
            f"WARNING: calibration images were preprocessed differently from what --preprocess tells the app "
            f"({', '.join(differ)}): pass one file as --preprocess so both match"
        ]
    return []


@contextlib.contextmanager
def _typical_golden_refused(golden: tuple[dict, ...], typical: bool) -> Iterator[None]:
    """The bundle's golden pairs run the model on typical values when no data was given (``typical``); a model that
    refuses them (an audio window longer than the 16 samples given, with --no-profile nothing ran them before) is
    the user's missing data: one line naming the inputs, as :func:`edgeq.core.data.on_synthetic_feed` says it."""
    from ..core.data import typical_inputs_refused
    from ..errors import ModelError

    try:
        yield
    except ModelError as e:
        if not typical or not golden or not e.message.startswith("onnxruntime failed to run the model"):
            raise
        raise typical_inputs_refused(ModelError, golden[0], e.message.removeprefix("onnxruntime failed to run the model: ")) from None


def golden_feeds_for(data: SampleSet | None, art: Artifact, n: int, app_io: dict | None = None) -> tuple[dict, ...]:
    if data is not None and len(data):
        types = {t.name: t.dtype for t in art.io.inputs}  # an empty past in the model's cache type (--kv-cache int8)
        return tuple({k: v.astype(types[k]) if v.size == 0 and k in types and str(v.dtype) != types[k] else v for k, v in data.feed(i).items()}
                     for i in range(min(n, len(data))))
    from ..core.golden import typical_feed

    return tuple(typical_feed(art.path, art.io, (app_io or {}).get("inputs", {}), seed=i) for i in range(n))
