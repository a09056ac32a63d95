"""The whole trip for one model: export -> optimize -> quantize -> verify -> profile -> bundle."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .profiling.accel import export_placement, manifest_placement
from .core.artifact import Artifact
from .bundles.bundle import BundleInputs, write_bundle
from .core.data import LABELS_KEY, SampleSet, load_samples
from .errors import CalibrationError
from .core.fsutil import check_output, clean_stale, scratch_dir
from .core.onnxutil import model_size
from .core.optimization import optimize
from .profiling.profiler import ProfileResult, feed_from, profile, skip_reason
from .quantization import quantize
from .quantization.int8.quantizer import QuantResult
from .quantization.spec import QuantSpec
from .core.targets import Target
from .checks.comparison import VerifyReport, verify

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
    image_prep = _image_preprocess(opts.image_preprocess, opts.preprocess, app_io, source)
    calib = load_samples(opts.calib, source.io, what="calibration", labels_key=opts.labels_key, preprocess=image_prep, random_n=spec.calib_samples) if opts.calib else None
    evals = load_samples(opts.eval, source.io, what="evaluation", labels_key=opts.labels_key, preprocess=image_prep) if opts.eval else None
    prep_notes = _record_image_preprocess(app_io, calib or evals, from_app=image_prep is not None and image_prep == opts.preprocess)
    if spec.needs_calibration and calib is None:
        from .checks.hints import modes_without_calibration

        raise CalibrationError(
            f"{spec.mode} needs calibration data and none was given",
            "pass --calib DATA.npz (one array per model input), or " + modes_without_calibration(target),
        )
    from .quantization.int8.preflight import run as preflight

    data_shapes = _data_shapes(calib or evals)  # a static-shape target pins dynamic axes to these (--static-shape wins)
    notes: list[str] = preflight(source.path, target, spec, {**data_shapes, **opts.static_shapes}) + prep_notes  # before any work
    notes += list(dict.fromkeys(n for d in (calib, evals) if d is not None and not d.synthetic for n in d.notes))
    llm_files, llm_notes = _llm_files(source, opts)  # before any work: the folder's tokenizer files are read here
    notes += llm_notes
    with scratch_dir() as work:
        with stage("optimize"):
            opt, opt_notes = optimize(source, target, work / "fp32.onnx", static_shapes=opts.static_shapes, opset=opts.opset,
                                      data_shapes=data_shapes)
            notes += opt_notes
        q_in, pq_report = opt, None
        if opts.prequant is not None and opts.prequant.config.exact:
            from .exporters.prequant import apply as import_prequant

            with stage("import codes"):
                # weight-only modes measure levels 4 and 0 below (imported nodes included); otherwise float compute unless chosen
                level = spec.accuracy_level if (spec.weight_only or opts.accuracy_level_pinned) else 0
                q_in, pq_report = import_prequant(opt, opts.prequant, work / "imported.onnx", accuracy_level=level)
        with stage(f"quantize ({spec.mode})"):
            qres = quantize(
                q_in, spec, work / "model.onnx", data=calib, on_sample=on_sample, evals=evals, max_drop=opts.max_drop,
                prefer=opts.prefer, budget=target.tolerances.max_accuracy_drop, target=target,
                **_search_runner(spec, opts.max_drop, target), tasks=app_io["outputs"],
            )
            notes += qres.notes
        check_data = evals or calib
        activations = None
        if opts.max_drop is not None and spec.mode == "int8-static" and spec.wide_activation_type:
            from .profiling.accel import compare_activation_types

            with stage("A8W8 vs A16W8 on the accelerator"):
                activations = compare_activation_types(opt, spec, calib, check_data, target, work)
        speed = None
        if spec.mode in ("int8-static", "int8-dynamic") and opts.prefer is None and opts.do_profile:
            from .quantization.selection.speed import decide

            with stage("speed (shipped model.ort vs fp32)"):
                def requantize(nodes: tuple[str, ...]) -> QuantResult:
                    sp = spec.with_overrides(nodes_to_exclude=spec.nodes_to_exclude + tuple(nodes))
                    return quantize(opt, sp, work / "model.onnx", data=calib, evals=evals, max_drop=opts.max_drop, target=target,
                                    tasks=app_io["outputs"])

                qres, speed, speed_lines = decide(opt, qres, target, feed_from(check_data) or _synthetic(opt), work / "speed",
                                                  requantize=requantize)
                notes += speed_lines
        elif spec.mode in ("int8-static", "int8-dynamic") and opts.prefer is None:
            notes.append("speed: not measured (--no-profile): the quantized model ships without the check against fp32")
        elif opts.do_profile and not spec.weight_only:  # fp32, fp16, --prefer picks: timed as shipped, no decision
            from .quantization.selection.speed import check_shipped

            with stage("speed (shipped model.ort vs fp32)"):
                speed, speed_lines = check_shipped(opt, qres, target, feed_from(check_data) or _synthetic(opt), work / "speed")
                notes += speed_lines
        if spec.weight_only and not opts.accuracy_level_pinned and check_data is not None:
            from .quantization.selection import acclevel

            if acclevel.has_matmulnbits(qres.artifact.path):
                with stage("accuracy levels"):
                    choice, files = acclevel.compare(opt, qres.artifact, check_data, target, work, spec.accuracy_level)
                    qres = acclevel.apply(qres, choice, files)
                    notes.append(qres.notes[-1])
        report = None
        if check_data is not None:
            if check_data is calib:
                notes.append("verified on the calibration inputs (pass --eval for held-out data)")
            with stage("verify"):
                report = verify(opt.path, qres.artifact.path, check_data.take(opts.verify_samples), target.tolerances,
                                output_names=opt.io.output_names, tasks=app_io["outputs"])
                notes += [f"output '{c['output']}' checked as {c['kind']}: {c['why']}" for c in report.tasks]
        else:
            notes.append("VERIFICATION SKIPPED: no data given, nothing was proven (pass --calib or --eval); "
                         "golden inputs and timing use typical values from the inputs' declared ranges")
        lm = None
        from .checks.lmeval import lm_io, lm_quality

        if (spec.weight_only or opts.prequant is not None) and check_data is not None and lm_io(opt.io) is not None:
            with stage("lm quality"):
                lm = lm_quality(opt.path, qres.artifact.path, check_data.take(opts.verify_samples), opt.io)
        if opts.prequant is not None:
            from dataclasses import replace as _replace

            from .exporters.prequant import report_notes, summary

            notes += report_notes(opts.prequant, pq_report, lm, spec.mode)
            details = {**qres.details, "prequant": {**summary(opts.prequant), "import": pq_report.to_dict() if pq_report else None}}
            qres = _replace(qres, details=details)
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
                from .quantization.selection.speed import onnx_warning, shipped_ort

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
            from .bundles.genai import stage_for_genai

            with stage("generate check"):
                generation = _greedy_check(opts, spec, check_data, stage_for_genai(qres.artifact.path, llm_files, work / "genai"))
                notes.append(generation.summary() if generation else "onnxruntime-genai not installed: greedy generation check skipped (pip install onnxruntime-genai)")
        from .checks.verdict import verdict_of

        verdict = verdict_of(report.to_dict() if report else None, accept_failed=opts.accept_failed,
                             generation=generation.to_dict() if generation is not None else None)
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
            )
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
    from .profiling.accel import accelerator_outputs

    runner = accelerator_outputs(target)
    return {"outputs_of": runner} if runner is not None else {}


def _data_shapes(data: SampleSet | None) -> dict[str, tuple[int, ...]]:
    """One sample's shape per input: the sizes a static-shape target pins dynamic axes to."""
    if data is None or not len(data):
        return {}
    return {k: tuple(np.shape(v)) for k, v in data.feed(0).items()}


def _placement(art: Artifact, target: Target, feeds: tuple[dict, ...], stage: Stage) -> dict[str, Any] | None:
    """Where the shipped model runs on the target's accelerator (None: a CPU-only target)."""
    from .profiling.placement import accelerator_of

    if accelerator_of(target.provider_names) is None:
        return None
    with stage("placement"):
        return export_placement(art.path, target, art.io, feeds)


def _written_ep_context(out: Path) -> dict[str, Any] | None:
    """The ep_context record of the bundle just written (edgeq's own manifest)."""
    import json

    from .bundles.runner import MANIFEST

    try:
        return json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))["model"].get("ep_context")
    except (OSError, ValueError, KeyError):
        return None


def _synthetic(art: Artifact) -> dict:
    from .core.data import synthetic_feed

    return synthetic_feed(art.io)


def _llm_files(source: Artifact, opts: ExportOptions) -> tuple[tuple[tuple[str, bytes], ...], list[str]]:
    from .exporters.decoder import is_kv_decoder

    if opts.lm_folder is None or not is_kv_decoder(source.io):
        return (), []
    from .bundles import llmgen
    from .bundles.genai import bundle_files

    files, notes = bundle_files(opts.lm_folder, source.path)
    gen = ("generate.py", Path(llmgen.__file__).read_bytes())  # run.py --prompt: numpy + onnxruntime + tokenizers
    return (*files, gen), notes


GREEDY_NEW_TOKENS = 32


def _greedy_check(opts: ExportOptions, spec: QuantSpec, data: SampleSet | None, folder: Path):
    """onnxruntime-genai on ``folder`` (the bundle's decoder and genai files) vs transformers' greedy generate on the source."""
    import numpy as np

    from .exporters import hf
    from .bundles.genai import greedy_check, prompt_ids

    src = hf.inspect_folder(opts.lm_folder)
    model = hf.load_hf_model(src, "text-generation")
    vocab = int(model.config.vocab_size)
    if data is not None and len(data) and "input_ids" in data.arrays:
        prompts = [np.asarray(data.feed(i)["input_ids"]).reshape(-1)[:16].tolist() for i in range(min(3, len(data)))]
    elif (opts.lm_folder / "tokenizer.json").is_file():
        prompts = prompt_ids(opts.lm_folder, ["The", "def main():", "Once upon a time"], vocab)
    else:
        prompts = np.random.default_rng(0).integers(0, vocab, (3, 8)).tolist()
    fp32 = spec.mode == "none"
    need = 1.0 if fp32 else opts.target.tolerances.min_greedy_agreement
    tie = 10 * opts.target.tolerances.export_atol  # two runtimes' float sums may order a near-tie either way
    return greedy_check(folder, model, prompts, new_tokens=GREEDY_NEW_TOKENS, min_agreement=need, tie_atol=tie)


def _bundle_extras(source: Artifact, opts: ExportOptions) -> tuple[dict, tuple[str, ...] | None]:
    """Check --preprocess, --labels, --archive, --sign and the extra outputs before any work."""
    from .core.appio import check_labels_fit, load_io_spec, read_labels
    from .bundles.bundle import BundleInputs, check_outputs, load_private_key

    app_io = load_io_spec(opts.preprocess, source.io)
    labels = read_labels(opts.labels)
    check_labels_fit(labels, app_io, source.io)
    if opts.sign_key is not None:
        load_private_key(opts.sign_key)
    if opts.bundle_version < 0:
        from .errors import BundleError

        raise BundleError("--bundle-version must be 0 or more", "use a release counter that only goes up")
    from .bundles.archive import check_golden_archivable

    check_golden_archivable(opts.golden, len(source.io.inputs) + len(source.io.outputs), opts.archive)
    probe = BundleInputs(golden_feeds=(), archive=opts.archive, profile={"planned": True} if opts.do_profile else None)
    inputs = (source.path, opts.calib, opts.eval, opts.preprocess, opts.labels, opts.image_preprocess, opts.sign_key)
    check_outputs(opts.out, probe, opts.force, inputs=inputs)
    return app_io, (tuple(labels) if labels else None)


def _image_preprocess(image_preprocess: Path | None, preprocess: Path | None, app_io: dict, source: Artifact) -> Path | None:
    """--image-preprocess wins; else the app's --preprocess file when it describes the one input."""
    if image_preprocess is not None:
        return image_preprocess
    if preprocess is not None and len(source.io.inputs) == 1 and source.io.input_names[0] in app_io["inputs"]:
        return preprocess
    return None


def _record_image_preprocess(app_io: dict, data: SampleSet | None, *, from_app: bool) -> list[str]:
    """Calibration images were preprocessed one way: the manifest must tell the app the same."""
    from .core.images import Preprocess

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


def golden_feeds_for(data: SampleSet | None, art: Artifact, n: int, app_io: dict | None = None) -> tuple[dict, ...]:
    if data is not None and len(data):
        return tuple(data.feed(i) for i in range(min(n, len(data))))
    from .core.golden import typical_feed

    return tuple(typical_feed(art.path, art.io, (app_io or {}).get("inputs", {}), seed=i) for i in range(n))


# ---------------------------------------------------------------------------------------------
# The trips the CLI and the API run: each takes a typed frozen config and returns a result; the
# CLI parses options into the config, calls the trip, prints the result, then calls its check_*
# (which raises the failed check, exit 1). Nothing here prints.
# ---------------------------------------------------------------------------------------------


class Progress:
    """Where a trip reports its stages and calibration samples (the CLI passes a terminal one)."""

    def stage(self, name: str) -> contextlib.AbstractContextManager:
        return _quiet_stage(name)

    def sample(self) -> None:
        return None


def quiet_progress(total_samples: int = 0) -> Progress:
    return Progress()


ProgressFactory = Callable[[int], Any]
"""calibration samples to expect -> an object with ``stage(name)`` (a context manager) and ``sample()``"""


@dataclass(frozen=True)
class QuantOptions:
    """The quantization options ``edgeq export`` and ``edgeq quantize`` share (declared once, edgeq.cli.options)."""

    quant: str | None = None
    calib: Path | None = None
    eval: Path | None = None
    fmt: str | None = None
    activation_type: str | None = None
    weight_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    calib_samples: int | None = None
    calibration: str | None = None
    calib_bins: int | None = None
    max_drop: float | None = None
    image_preprocess: Path | None = None
    prefer: str | None = None
    static_shape: tuple[str, ...] | None = None
    opset: int | None = None
    block_size: int | None = None
    symmetric: bool | None = None
    accuracy_level: int | None = None
    scale_dtype: str | None = None
    algo: str | None = None
    keep: str | None = None
    override: tuple[str, ...] | None = None

    def spec(self, target: Target) -> QuantSpec:
        """The target's quantization defaults with these options over them (checked)."""
        from .quantization.spec import parse_keep, parse_overrides

        return target.quant.with_overrides(
            mode=self.quant, format=self.fmt, activation_type=self.activation_type, weight_type=self.weight_type,
            per_channel=self.per_channel, reduce_range=self.reduce_range, calib_samples=self.calib_samples,
            calibration=self.calibration, calib_bins=self.calib_bins,
            block_size=self.block_size, symmetric=self.symmetric, accuracy_level=self.accuracy_level,
            algo=self.algo, scale_dtype=self.scale_dtype, keep=parse_keep(self.keep), overrides=parse_overrides(self.override) or None,
        )

    def check_prefer(self) -> None:
        from .quantization.selection.gate import PREFERENCES

        if self.prefer is not None and self.prefer not in PREFERENCES:
            from .errors import EdgeqError

            raise EdgeqError(f"unknown --prefer '{self.prefer}'", f"choose one of {', '.join(PREFERENCES)}")


@dataclass(frozen=True)
class BundleOptions:
    """What goes into a bundle besides the model; ``edgeq export`` and ``edgeq bundle`` share these."""

    golden: int = 3
    labels_key: str = LABELS_KEY
    preprocess: Path | None = None
    labels: Path | None = None
    archive: str | None = None
    sign: Path | None = None
    bundle_version: int = 0


@dataclass(frozen=True)
class SourceConfig:
    """The model ``edgeq export`` starts from and how to read it (non-ONNX sources are exported first)."""

    path: Path
    example_shape: tuple[str, ...] | None = None
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


@dataclass(frozen=True)
class GGUFOutcome:
    target: Target
    out: Path
    result: dict[str, Any]


@dataclass(frozen=True)
class QuantizeConfig:
    """Optimize and quantize one ONNX model to one file (no verify, profile or bundle)."""

    model: Path
    out: Path
    target: str = "cpu-x86_64"
    quant: QuantOptions = QuantOptions()
    force: bool = False
    preprocess: Path | None = None  # app TOML: [outputs.NAME] task = ... is the metric --max-drop / --prefer score that output with


@dataclass(frozen=True)
class QuantizeOutcome:
    model: Path
    mode: str
    recipe: dict[str, Any]
    has_eval: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "quantization": self.recipe}


@dataclass(frozen=True)
class BundleConfig:
    """Bundle a model that is already quantized (optionally verified against its fp32 ``reference``)."""

    model: Path
    out: Path
    target: str = "cpu-x86_64"
    data: Path | None = None
    reference: Path | None = None
    bundle: BundleOptions = BundleOptions()
    force: bool = False


@dataclass(frozen=True)
class BundleOutcome:
    bundle: Path
    archive: Path | None
    target: str
    verify: dict[str, Any] | None
    golden_random: bool
    """no --data: the golden inputs are seeded random"""

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "archive": str(self.archive) if self.archive else None, "verify": self.verify}


def check_onnx_path(src: Path) -> None:
    """An .onnx file the user named: a regular file that exists (checked before it is opened)."""
    from .core.fsutil import require_regular_file
    from .errors import ModelError

    require_regular_file(src, "model", ModelError)
    if not src.exists():
        raise ModelError(f"model file not found: {src}", "check the path")
    if src.suffix.lower() != ".onnx":
        raise ModelError(
            f"{src} is not an .onnx file",
            "this version of edgeq exports from ONNX; export PyTorch models with torch.onnx.export first",
        )


def open_model(path: Path, provenance: tuple[str, ...] = ()) -> Artifact:
    """A model path from the user is untrusted: checked as data, then probed in a child, then opened."""
    from .core.isolate import open_source

    return open_source(Path(path), provenance)


def check_coverage_option(minimum: float | None, tg: Target) -> None:
    """--min-accel-coverage: a share, on a target that has an accelerator (checked before any work)."""
    from .errors import TargetError
    from .profiling.placement import accelerator_of

    if minimum is None:
        return
    if not 0.0 <= minimum <= 1.0:
        raise TargetError(f"--min-accel-coverage {minimum} is not a share between 0 and 1", "e.g. --min-accel-coverage 0.95")
    if tg.runtime != "onnxruntime" or accelerator_of(tg.provider_names) is None:
        raise TargetError(f"--min-accel-coverage: target {tg.name} has no accelerator provider",
                          "use a target with one (qnn-htp, nnapi, coreml, openvino-*)")


def export_model(cfg: ExportConfig, progress: ProgressFactory = quiet_progress) -> ExportOutcome | GGUFOutcome:
    """``edgeq export``: every check on the options and outputs before any work, then the source's export
    (PyTorch, Hugging Face, pre-quantized folders), then :func:`run_export`; a llama.cpp target goes to
    :func:`export_gguf`. Failed checks are left to :func:`check_export` (the bundle is written first)."""
    from .core.optimization import parse_shapes
    from .core.targets import load_target
    from .exporters import SourceOptions, export_source, parse_example_shapes, source_kind

    sc, q, b, out = cfg.source, cfg.quant, cfg.bundle, cfg.out
    source = sc.path
    tg = load_target(cfg.target)
    check_coverage_option(cfg.min_accel_coverage, tg)
    from .core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=cfg.force, archive=b.archive if tg.runtime != "llama.cpp" else None,  # before any work
                         sidecar=cfg.do_profile and tg.runtime != "llama.cpp",
                         inputs=(source, q.calib, q.eval, b.preprocess, b.labels, q.image_preprocess, b.sign, sc.weights, sc.reference))
    if tg.runtime == "llama.cpp":  # Hugging Face Llama folder -> GGUF bundle (edgeq.llamacpp.gguf); --eval: prompts file
        return export_gguf(source, tg, out, quant=q.quant, prompts_file=q.eval, force=cfg.force, progress=progress(0))
    spec = q.spec(tg)
    q.check_prefer()
    from .core.fsutil import require_regular_file
    from .errors import ModelError

    require_regular_file(source, "model", ModelError)
    if sc.weights is not None:
        require_regular_file(sc.weights, "--weights", ModelError)
    kind = source_kind(source)
    if kind == "onnx":
        check_onnx_path(source)
    from .exporters.names import parse_names

    in_names, out_names = parse_names(sc.input_names, "--input-names"), parse_names(sc.output_names, "--output-names")
    if (in_names or out_names) and kind not in ("factory", "pickle"):
        raise ModelError(f"--input-names/--output-names name a PyTorch module's export, not a source of kind {kind}",
                         "use them with pkg.module:factory or a full-module .pt")
    opts = ExportOptions(
        target=tg, spec=spec, out=out, calib=q.calib, eval=q.eval, force=cfg.force,
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
            )
            export_from = source
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
    from .errors import CheckFailed

    cfg, tg, result = outcome.config, outcome.target, outcome.result
    check_budget(result["quantization"], cfg.out, has_eval=cfg.quant.eval is not None)
    if cfg.min_accel_coverage is not None:
        from .profiling.accel import coverage_report
        from .profiling.profiler import check_coverage

        check_coverage(coverage_report(cfg.out, tg, result.get("placement")), cfg.min_accel_coverage)
    if not result["passed"] and outcome.verdict_status != "accepted-failed":
        from .checks.hints import after_failed_check

        raise CheckFailed(
            f"the quantized model is outside target {tg.name}'s tolerances: {(result.get('verdict') or {}).get('reason', '')}",
            after_failed_check(outcome.spec, tg, max_drop=cfg.quant.max_drop, has_eval=cfg.quant.eval is not None, out=cfg.out),
        )


def check_budget(recipe: dict, where: Path, has_eval: bool = True) -> None:
    """--max-drop / the gate: raise CheckFailed when no quantized model met the accuracy budget."""
    from .checks.hints import after_budget_missed
    from .errors import CheckFailed

    gate = recipe.get("gate")
    if gate and gate.get("met") is False:  # nothing quantized met --max-drop: fp32 was written, and said so
        raise CheckFailed(
            f"accuracy budget not met: no quantized candidate within --max-drop {gate['max_drop']} on {gate['metric']}; "
            f"{where} holds the fp32 model (mode none)",
            after_budget_missed(gate, has_eval=has_eval),
        )
    search = recipe.get("search")
    if search and search.get("all_float"):
        raise CheckFailed(
            f"accuracy budget not met by any quantized model: --max-drop {search['max_drop']} on {search['metric']} held only with "
            "every weight node float, so the model written is fp32",
            f"{where} holds it with the search log; {after_budget_missed(search, has_eval=has_eval)}",
        )
    if search and not search.get("met", True):
        best = search["best"]
        raise CheckFailed(
            f"accuracy budget not met: best {best['metric']} drop {best['drop']:.4f} > --max-drop {search['max_drop']} "
            f"({best['kept_float']} node(s) kept float)",
            f"the best model found was written to {where} with the search log; {after_budget_missed(search, has_eval=has_eval)}",
        )


def _prequant_options(source: Path, opts: ExportOptions, quant: str | None, work: Path, progress: Any) -> tuple[ExportOptions, Path]:
    """A pre-quantized folder: its checkpoint goes into the options and the folder of its dequantized weights is exported."""
    from dataclasses import replace

    from .exporters.prequant import default_mode, detect, prepare

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
    from .errors import ModelError
    from .exporters.hf import is_hf_folder
    from .exporters.prequant import detect

    if opts.prequant is None:
        raise ModelError("--reference is for pre-quantized folders (GPTQ/AWQ/bitsandbytes)", "drop --reference")
    if not is_hf_folder(reference) or detect(reference) is not None:
        raise ModelError(f"--reference {reference.name} is not a float Hugging Face folder", "pass the folder of the model before it was quantized")


def _reference_options(reference: Path, opts: ExportOptions, sopts: Any, work: Path, progress: Any) -> ExportOptions:
    """--reference FLOAT_FOLDER: exported beside the model, compared with the result as a language model."""
    from dataclasses import replace

    from .exporters import export_source

    (work / "reference").mkdir()
    with progress.stage("export (reference)"):
        ref, _ = export_source(str(reference), sopts, work / "reference")
    return replace(opts, reference_model=ref.path)


def quantize_model(cfg: QuantizeConfig, progress: ProgressFactory = quiet_progress) -> QuantizeOutcome:
    """``edgeq quantize``: optimize and quantize one model to ``cfg.out`` (stamped, published atomically)."""
    import os

    from .core.outputs import copy_stamped
    from .core.fsutil import staging
    from .core.optimization import parse_shapes
    from .core.targets import load_target

    q, out, force, model = cfg.quant, cfg.out, cfg.force, cfg.model
    tg = load_target(cfg.target)
    spec = q.spec(tg)
    q.check_prefer()
    check_onnx_path(model)
    from .core.onnxutil import data_file
    from .core.outputs import check_output_path

    for path, what in ((out, "output"), (data_file(out), "external data file")):  # before any work
        check_output_path(path, force=force, is_dir=False, inputs=(model, q.calib, q.eval, q.image_preprocess, cfg.preprocess), what=what)
    src = open_model(model)
    from .core.appio import load_io_spec

    app_io = load_io_spec(cfg.preprocess, src.io)
    tasks = app_io["outputs"]  # before any work: per-output task overrides for --max-drop / --prefer
    image_prep = _image_preprocess(q.image_preprocess, cfg.preprocess, app_io, src)
    data = load_samples(q.calib, src.io, preprocess=image_prep, random_n=spec.calib_samples) if q.calib else None
    evals = load_samples(q.eval, src.io, what="evaluation", preprocess=image_prep) if q.eval else None
    if spec.needs_calibration and data is None:
        from .checks.hints import modes_without_calibration

        raise CalibrationError(f"{spec.mode} needs calibration data", "pass --calib DATA.npz, or " + modes_without_calibration(tg))
    from .quantization.int8.preflight import run as preflight

    pre_notes = preflight(model, tg, spec, parse_shapes(q.static_shape))  # before any work
    prog = progress(min(spec.calib_samples, len(data)) if data else 0)
    with staging(out, force=force, is_dir=False) as tmp, contextlib.ExitStack() as data_stage, scratch_dir() as work:
        with prog.stage("optimize"):
            opt, notes = optimize(src, tg, work / "fp32.onnx", static_shapes=parse_shapes(q.static_shape), opset=q.opset)
            notes = pre_notes + notes
        with prog.stage(f"quantize ({spec.mode})"):
            res = quantize(
                opt, spec, work / "q.onnx", data=data, on_sample=prog.sample, evals=evals, max_drop=q.max_drop,
                prefer=q.prefer, budget=tg.tolerances.max_accuracy_drop, target=tg, tasks=tasks,
            )
        from .core.onnxutil import copy_model, has_external_data

        if has_external_data(res.artifact.path):  # large: OUT plus OUT.data, the data published first
            tmp_data = data_stage.enter_context(staging(data_file(out), force=force, is_dir=False))
            copy_model(res.artifact.path, tmp, data_path=tmp_data, location=data_file(out).name)
            stamped = tmp.with_name(tmp.name + "_stamp")  # a temporary name the next run cleans up
            copy_stamped(tmp, stamped)  # producer "edgeq": a later --force knows edgeq wrote it
            os.replace(stamped, tmp)
        else:
            copy_stamped(res.artifact.path, tmp)
    recipe = res.recipe()
    recipe["notes"] = notes + recipe["notes"]
    return QuantizeOutcome(model=out, mode=spec.mode, recipe=recipe, has_eval=q.eval is not None)


def check_quantize(outcome: QuantizeOutcome) -> None:
    check_budget(outcome.recipe, outcome.model, has_eval=outcome.has_eval)


def bundle_model(cfg: BundleConfig) -> BundleOutcome:
    """``edgeq bundle``: a runtime bundle for a model that is already quantized; verified against
    ``cfg.reference`` on ``cfg.data`` when given (a failure is left to :func:`check_bundle`)."""
    from .bundles.bundle import check_outputs, load_private_key
    from .core.appio import check_labels_fit, load_io_spec, read_labels
    from .core.targets import load_target

    b, model, out, data, reference, force = cfg.bundle, cfg.model, cfg.out, cfg.data, cfg.reference, cfg.force
    tg = load_target(cfg.target)
    check_onnx_path(model)
    from .core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=force, archive=b.archive, inputs=(model, data, reference, b.preprocess, b.labels, b.sign))
    art = open_model(model, (f"source({model.name})",))
    from .bundles.archive import check_golden_archivable

    check_golden_archivable(b.golden, len(art.io.inputs) + len(art.io.outputs), b.archive)
    app_io = load_io_spec(b.preprocess, art.io)
    label_list = read_labels(b.labels)
    check_labels_fit(label_list, app_io, art.io)
    if b.sign is not None:
        load_private_key(b.sign)
    check_outputs(out, BundleInputs(golden_feeds=(), archive=b.archive), force)
    samples = load_samples(data, art.io, what="golden", labels_key=b.labels_key) if data else None
    report = None
    size = None
    if reference is not None:
        check_onnx_path(reference)
        open_model(reference)
        if samples is None:
            raise CalibrationError("--reference needs --data to compare on", "pass --data DATA.npz")
        report = verify(reference, model, samples, tg.tolerances, output_names=art.io.output_names, tasks=app_io["outputs"]).to_dict()
        size = sizes(model_size(reference), model_size(model))
    info = BundleInputs(
        golden_feeds=golden_feeds_for(samples, art, b.golden, app_io),
        recipe={"mode": "as given", "notes": ["bundled an existing model; edgeq did not quantize it"]},
        verify=report,
        sizes=size,
        provenance=art.provenance,
        preprocessing=app_io,
        labels=tuple(label_list) if label_list else None,
        bundle_version=b.bundle_version,
        sign_key=b.sign,
        archive=b.archive,
    )
    write_bundle(art, tg, out, info, force=force)
    from .bundles.archive import archive_path

    return BundleOutcome(bundle=out, archive=archive_path(out, b.archive) if b.archive else None, target=tg.name,
                         verify=report, golden_random=samples is None)


def check_bundle(outcome: BundleOutcome) -> None:
    report = outcome.verify
    if report is not None and not report["passed"]:
        from .errors import CheckFailed

        raise CheckFailed(f"model outside target {outcome.target}'s tolerances: {'; '.join(report['failures'])}",
                          f"the bundle was written to {outcome.bundle}")


def export_gguf(source: Path, target: Target, out: Path, *, quant: str | None, prompts_file: Path | None, force: bool,
                progress: Any = None) -> GGUFOutcome:
    """The llama.cpp trip: a Hugging Face folder (float, or GPTQ/AWQ/bitsandbytes) -> a GGUF bundle checked
    through llama.cpp (edgeq.llamacpp.gguf); a failure is left to :func:`check_gguf`."""
    from .errors import ModelError
    from .exporters.prequant import detect
    from .llamacpp.gguf import export_llamacpp, gguf_export, read_prompts

    if not Path(source).is_dir():
        raise ModelError(
            f"{source} is not a folder: target {target.name} takes a Hugging Face Llama folder",
            "pass the folder with config.json, *.safetensors and tokenizer.json",
        )
    prog = progress if progress is not None else Progress()
    if detect(Path(source)) is not None:  # GPTQ/AWQ/bitsandbytes folder: codes kept as Q4_1 blocks where they fit
        r = gguf_export(Path(source), target, out, quant=quant, prompts=read_prompts(prompts_file), force=force, progress=prog.stage)
    else:
        r = export_llamacpp(source, target, out, quant=quant, prompts=read_prompts(prompts_file), force=force, progress=prog.stage)
    return GGUFOutcome(target=target, out=out, result=r)


def check_gguf(outcome: GGUFOutcome) -> None:
    r = outcome.result
    if not r["passed"]:
        from .errors import CheckFailed

        raise CheckFailed(
            f"the GGUF model is outside target {outcome.target.name}'s tolerances: {'; '.join(r['verify']['failures'])}",
            f"the bundle was written to {outcome.out} for inspection; try a higher-precision --quant (q8_0, f16)",
        )


Config = ExportConfig | QuantizeConfig | BundleConfig
Outcome = ExportOutcome | GGUFOutcome | QuantizeOutcome | BundleOutcome


def check_outcome(outcome: Outcome) -> None:
    """The failed check of any trip's outcome, raised (CheckFailed: the CLI's exit 1)."""
    {ExportOutcome: check_export, GGUFOutcome: check_gguf, QuantizeOutcome: check_quantize, BundleOutcome: check_bundle}[type(outcome)](outcome)


def run(config: Config, *, progress: ProgressFactory = quiet_progress, check: bool = True) -> Outcome:
    """The trip ``config`` names, as the CLI runs it (edgeq.export/quantize/bundle given a config call this);
    ``check``: raise its failed check after the outputs are written, as the CLI exits 1."""
    if isinstance(config, ExportConfig):
        outcome: Outcome = export_model(config, progress)
    elif isinstance(config, QuantizeConfig):
        outcome = quantize_model(config, progress)
    elif isinstance(config, BundleConfig):
        outcome = bundle_model(config)
    else:
        raise TypeError(f"not a trip config: {type(config).__name__}")
    if check:
        check_outcome(outcome)
    return outcome
