"""The ``edgeq`` command line: one thin command per stage, plus ``export`` for the whole trip.

Only this module catches ``EdgeqError``: it prints one line (problem and fix)
and exits with the error's code (2 bad input, 1 failed check).
Set ``EDGEQ_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import CheckFailed, EdgeqError
from ..core.safetext import escape_markup, escape_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take a trained model to a quantized, verified, profiled runtime bundle for an edge device.",
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(help="List the targets, or show one.", invoke_without_command=True, no_args_is_help=False)
app.add_typer(targets_app, name="targets")

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target name (edgeq targets) or a .toml file")]
QuantOpt = Annotated[Optional[str], typer.Option("--quant", help="int8-static | int8-dynamic | fp16 | int4 | int8-weight | int2 | none; llama.cpp targets: q4_0 | q4_k | q8_0 | f16 ... (default: the target's)")]
BlockOpt = Annotated[Optional[int], typer.Option("--block-size", help="weight-only: 16 | 32 | 64 | 128 | 256 weights per scale")]
SymOpt = Annotated[Optional[bool], typer.Option("--symmetric/--asymmetric", help="weight-only: implicit or stored zero points")]
AccOpt = Annotated[Optional[int], typer.Option("--accuracy-level", help="weight-only: MatMulNBits compute (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8); export without it measures 4 and 0 and keeps one")]
ScaleDtypeOpt = Annotated[Optional[str], typer.Option("--scale-dtype", help="weight-only: float32 | float16 block scales (float16: half the scale bytes, MatMulNBits runs in float16)")]
AlgoOpt = Annotated[Optional[str], typer.Option("--algo", help="weight-only: rtn | hqq | gptq | awq (gptq/awq need --calib)")]
KeepOpt = Annotated[Optional[str], typer.Option("--keep", help="weight-only: keep fp32: embed, lm_head or name patterns, comma-separated")]
OverrideOpt = Annotated[Optional[list[str]], typer.Option("--override", help="weight-only: 'PATTERN=MODE' per layer (int4|int8|int2|none; repeatable)")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help=".npz (one array per input), a folder of .npy/.npz files, an image folder (+ preprocess.toml), or 'random' (flagged loudly)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing output that edgeq wrote (an edgeq bundle, an empty folder, a file edgeq wrote; never other files, a symlink, ., $HOME or a folder holding the inputs)")]
PerChannelOpt = Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="weight scales per output channel")]
ActOpt = Annotated[Optional[str], typer.Option("--activation-type", help="uint8 | int8 | uint16 | int16")]
WeightOpt = Annotated[Optional[str], typer.Option("--weight-type", help="int8 | uint8")]
ReduceOpt = Annotated[Optional[bool], typer.Option("--reduce-range/--full-range", help="7-bit weights for CPUs without VNNI")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="qdq | qoperator")]
SamplesOpt = Annotated[Optional[int], typer.Option("--calib-samples", help="number of calibration samples to use")]
StaticOpt = Annotated[Optional[list[str]], typer.Option("--static-shape", help="pin an input's shape: NAME=1x3x224x224 (repeatable)")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="opset to convert to (within the target's range)")]
ImagePreprocOpt = Annotated[Optional[Path], typer.Option("--image-preprocess", help="preprocessing spec (TOML) for an image-folder --calib/--eval (default: the --preprocess file's table for the input, else preprocess.toml inside the folder)")]
PreferOpt = Annotated[Optional[str], typer.Option("--prefer", help="measure INT8 candidates (QDQ, QOperator, dynamic) and fp32 on this host; pick accurate | fastest | smallest within the budget")]
CalibMethodOpt = Annotated[Optional[str], typer.Option("--calibration", help="auto (default: each method scored by output error vs fp32) | minmax | percentile:99.99 | entropy | mse (one streaming pass)")]
CalibBinsOpt = Annotated[Optional[int], typer.Option("--calib-bins", help="histogram bins per tensor (percentile/entropy/mse)")]
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="accuracy budget: keep the most sensitive nodes float until the drop is at most this (0.01 = 1 point)")]
LabelsOpt = Annotated[str, typer.Option("--labels-key", help="name of the labels array in evaluation data")]
PreprocessOpt = Annotated[Optional[Path], typer.Option("--preprocess", help="TOML: pre/post-processing the app applies per input/output (stored in the manifest; also preprocesses image-folder calibration)")]
LabelsFileOpt = Annotated[Optional[Path], typer.Option("--labels", help="labels.txt, one label per output index (copied into the bundle)")]
ArchiveOpt = Annotated[Optional[str], typer.Option("--archive", help="also write a deterministic OUT.tar.gz or OUT.zip: tar.gz | zip")]
SignOpt = Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key (PEM): sign manifest.json (edgeq keygen)")]
BundleVersionOpt = Annotated[int, typer.Option("--bundle-version", help="release counter stored in the (signed) manifest; verify --min-version refuses older")]
# ARM64 emulation (verify --emulate) and remote devices (profile --device): edgeq/devices/qemu.py, edgeq/devices/ssh.py
EmulateOpt = Annotated[Optional[str], typer.Option("--emulate", help="also run under qemu-aarch64 for these -cpu models (comma-separated, or 'default' for cortex-a53,cortex-a72,neoverse-n1); correctness only")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="run the bundle on a device: ssh://user@host[:port]")]
KnownHostsOpt = Annotated[Optional[Path], typer.Option("--known-hosts", help="--device: trust only host keys in this file")]
AcceptNewOpt = Annotated[bool, typer.Option("--accept-new-host-key", help="--device: trust and record a first-seen host key (never a changed one)")]
IdentityOpt = Annotated[Optional[Path], typer.Option("--identity", help="--device: SSH private key to log in with")]
DevicePythonOpt = Annotated[str, typer.Option("--device-python", help="--device: Python on the device (with numpy + onnxruntime)")]
DeviceTimeoutOpt = Annotated[int, typer.Option("--device-timeout", help="--device: seconds allowed for the copy and for the run")]
# names of a PyTorch export (pkg.module:factory, .pt modules): edgeq/exporters/names.py
InputNamesOpt = Annotated[Optional[list[str]], typer.Option("--input-names", help="PyTorch sources: input names in forward() order, comma-separated (default: --example-shape NAME=, else forward()'s parameter names)")]
OutputNamesOpt = Annotated[Optional[list[str]], typer.Option("--output-names", help="PyTorch sources: output names in order, comma-separated (default: a returned dict's keys or namedtuple's fields, else output, output_0, ...)")]


def _fail(e: EdgeqError) -> None:
    if os.environ.get("EDGEQ_DEBUG"):
        raise e
    typer.echo(f"error: {escape_text(e.one_line())}", err=True)  # names from files may hold control characters
    raise typer.Exit(e.exit_code)


def _quiet_libraries():
    """Library warnings and log lines (onnxruntime's quantizer logs to the root logger) stay off
    stderr, so a failure is one line; EDGEQ_DEBUG=1 shows them."""
    import contextlib
    import logging
    import warnings

    stack = contextlib.ExitStack()
    if os.environ.get("EDGEQ_DEBUG"):
        return stack
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, previous)
    return stack


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..core.usercode import reset

        reset()
        try:
            with _quiet_libraries():
                return fn(*args, **kwargs)
        except EdgeqError as e:
            _fail(e)
        except KeyboardInterrupt:
            typer.echo("error: interrupted -- the previous output, if any, is unchanged", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - never a traceback for the user
            click_errors = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
            if isinstance(e, (typer.Exit, typer.Abort, *click_errors)):
                raise
            if _INTERRUPTED:  # a library turned the interrupt into another exception (numpy.save does)
                typer.echo("error: interrupted -- the previous output, if any, is unchanged", err=True)
                raise typer.Exit(130) from None
            if os.environ.get("EDGEQ_DEBUG"):
                raise
            from ..core.usercode import fault_in_ran_code, user_error

            fault = fault_in_ran_code(e)  # raised in the user's module/model code that this command ran: theirs
            if fault is not None:
                _fail(user_error(fault))
            first = escape_text((str(e).strip().splitlines() or [""])[0][:200])
            typer.echo(
                f"error: internal error ({type(e).__name__}: {first}) -- this is a bug in edgeq; "
                "run again with EDGEQ_DEBUG=1 and report the traceback",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _spec(target, quant, fmt, act, weight, per_channel, reduce_range, samples, wo=None, calibration=None, bins=None):
    from ..quantization.spec import parse_keep, parse_overrides

    wo = wo or {}
    return target.quant.with_overrides(
        mode=quant, format=fmt, activation_type=act, weight_type=weight,
        per_channel=per_channel, reduce_range=reduce_range, calib_samples=samples,
        calibration=calibration, calib_bins=bins,
        block_size=wo.get("block_size"), symmetric=wo.get("symmetric"), accuracy_level=wo.get("accuracy_level"),
        algo=wo.get("algo"), scale_dtype=wo.get("scale_dtype"), keep=parse_keep(wo.get("keep")), overrides=parse_overrides(wo.get("override")) or None,
    )


def _check_prefer(prefer: Optional[str]) -> None:
    from ..quantization.selection.gate import PREFERENCES

    if prefer is not None and prefer not in PREFERENCES:
        raise EdgeqError(f"unknown --prefer '{prefer}'", f"choose one of {', '.join(PREFERENCES)}")


def _budget_failed(recipe: dict, where: Path, has_eval: bool = True) -> None:
    from ..checks.hints import after_budget_missed

    gate = recipe.get("gate")
    if gate and gate.get("met") is False:  # nothing quantized met --max-drop: fp32 was written, and said so
        _fail(CheckFailed(
            f"accuracy budget not met: no quantized candidate within --max-drop {gate['max_drop']} on {gate['metric']}; "
            f"{where} holds the fp32 model (mode none)",
            after_budget_missed(gate, has_eval=has_eval),
        ))
    search = recipe.get("search")
    if search and search.get("all_float"):
        _fail(CheckFailed(
            f"accuracy budget not met by any quantized model: --max-drop {search['max_drop']} on {search['metric']} held only with "
            "every weight node float, so the model written is fp32",
            f"{where} holds it with the search log; {after_budget_missed(search, has_eval=has_eval)}",
        ))
    if search and not search.get("met", True):
        best = search["best"]
        _fail(CheckFailed(
            f"accuracy budget not met: best {best['metric']} drop {best['drop']:.4f} > --max-drop {search['max_drop']} "
            f"({best['kept_float']} node(s) kept float)",
            f"the best model found was written to {where} with the search log; {after_budget_missed(search, has_eval=has_eval)}",
        ))


def _check_coverage_option(minimum: Optional[float], tg) -> None:
    """--min-accel-coverage: a share, on a target that has an accelerator (checked before any work)."""
    from ..errors import TargetError
    from ..profiling.placement import accelerator_of

    if minimum is None:
        return
    if not 0.0 <= minimum <= 1.0:
        raise TargetError(f"--min-accel-coverage {minimum} is not a share between 0 and 1", "e.g. --min-accel-coverage 0.95")
    if tg.runtime != "onnxruntime" or accelerator_of(tg.provider_names) is None:
        raise TargetError(f"--min-accel-coverage: target {tg.name} has no accelerator provider",
                          "use a target with one (qnn-htp, nnapi, coreml, openvino-*)")


def _check_onnx_source(src: Path) -> None:
    from ..errors import ModelError
    from ..core.fsutil import require_regular_file

    require_regular_file(src, "model", ModelError)
    if not src.exists():
        raise ModelError(f"model file not found: {src}", "check the path")
    if src.suffix.lower() != ".onnx":
        raise ModelError(
            f"{src} is not an .onnx file",
            "this version of edgeq exports from ONNX; export PyTorch models with torch.onnx.export first",
        )


@app.command()
@handle_errors
def export(
    source: Annotated[Path, typer.Argument(help="the model: .onnx, .pt2, .pt/.pth/.bin, a Hugging Face folder, or pkg.module:factory")],
    target: TargetOpt = "cpu-x86_64",
    out: Annotated[Path, typer.Option("-o", "--out", help="bundle folder to write")] = Path("build/edgeq"),
    quant: QuantOpt = None,
    calib: CalibOpt = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="held-out data (+ optional 'labels') to verify on")] = None,
    fmt: FormatOpt = None,
    activation_type: ActOpt = None,
    weight_type: WeightOpt = None,
    per_channel: PerChannelOpt = None,
    reduce_range: ReduceOpt = None,
    calib_samples: SamplesOpt = None,
    calibration: CalibMethodOpt = None,
    calib_bins: CalibBinsOpt = None,
    max_drop: MaxDropOpt = None,
    image_preprocess: ImagePreprocOpt = None,
    prefer: PreferOpt = None,
    static_shape: StaticOpt = None,
    opset: OpsetOpt = None,
    golden: Annotated[int, typer.Option("--golden", help="golden input/output pairs to store")] = 3,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="skip latency measurement")] = False,
    labels_key: LabelsOpt = "labels",
    preprocess: PreprocessOpt = None,
    labels: LabelsFileOpt = None,
    archive: ArchiveOpt = None,
    sign: SignOpt = None,
    bundle_version: BundleVersionOpt = 0,
    block_size: BlockOpt = None,
    symmetric: SymOpt = None,
    accuracy_level: AccOpt = None,
    scale_dtype: ScaleDtypeOpt = None,
    algo: AlgoOpt = None,
    keep: KeepOpt = None,
    override: OverrideOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    example_shape: Annotated[Optional[list[str]], typer.Option("--example-shape", help="PyTorch sources: an example input [NAME=]1x3x224x224[:int64] (repeatable, in forward() order; without NAME= the name is forward()'s parameter name)")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Hugging Face folder: text-classification | feature-extraction | text-generation")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="pkg.module:factory sources: a state dict (.safetensors, .pt) to load, weights-only")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow unpickling arbitrary objects (full-module .pt, TorchScript, .pt2): runs code from the file")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="allow a Hugging Face folder's own Python code (auto_map)")] = False,
    exporter: Annotated[str, typer.Option("--exporter", help="auto (dynamo, then TorchScript; Hugging Face folders: Optimum when EDGEQ_OPTIMUM_PYTHON is set) | dynamo | torchscript | optimum")] = "auto",
    input_names: InputNamesOpt = None,
    output_names: OutputNamesOpt = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="pre-quantized folder: the float model it came from (a Hugging Face folder), for perplexity and same-top-token against it")] = None,
    min_accel_coverage: Annotated[Optional[float], typer.Option("--min-accel-coverage", help="fail (exit 1, bundle still written) when a smaller share of nodes runs on the accelerator")] = None,
    accept_failed: Annotated[bool, typer.Option("--accept-failed", help="ship a bundle whose check failed (exit 0); the manifest records accepted-failed")] = False,
) -> None:
    """Export, optimize, quantize, verify, profile and bundle a model for a target."""
    from ..core.isolate import open_source
    from ..core.optimization import parse_shapes
    from ..pipeline import ExportOptions, run_export
    from ..reporting.tables import StageProgress, err, export_table, out as console
    from ..core.targets import load_target

    import contextlib

    from ..exporters import SourceOptions, export_source, parse_example_shapes, source_kind
    from ..core.fsutil import check_output, clean_stale, scratch_dir

    tg = load_target(target)
    _check_coverage_option(min_accel_coverage, tg)
    from ..core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=force, archive=archive if tg.runtime != "llama.cpp" else None,  # before any work
                         sidecar=not no_profile and tg.runtime != "llama.cpp",
                         inputs=(source, calib, eval_data, preprocess, labels, image_preprocess, sign, weights, reference))
    if tg.runtime == "llama.cpp":  # Hugging Face Llama folder -> GGUF bundle (edgeq.llamacpp.gguf); --eval: prompts file
        from ..llamacpp.gguf import export_cli

        return export_cli(source, tg, out=out, quant=quant, prompts_file=eval_data, force=force, as_json=as_json)
    wo = dict(block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level, algo=algo, keep=keep, override=override, scale_dtype=scale_dtype)
    spec = _spec(tg, quant, fmt, activation_type, weight_type, per_channel, reduce_range, calib_samples, wo, calibration, calib_bins)
    _check_prefer(prefer)
    from ..errors import ModelError
    from ..core.fsutil import require_regular_file

    require_regular_file(source, "model", ModelError)
    if weights is not None:
        require_regular_file(weights, "--weights", ModelError)
    kind = source_kind(source)
    if kind == "onnx":
        _check_onnx_source(source)
    from ..exporters.names import parse_names

    in_names, out_names = parse_names(input_names, "--input-names"), parse_names(output_names, "--output-names")
    if (in_names or out_names) and kind not in ("factory", "pickle"):
        from ..errors import ModelError

        raise ModelError(f"--input-names/--output-names name a PyTorch module's export, not a source of kind {kind}",
                         "use them with pkg.module:factory or a full-module .pt")
    opts = ExportOptions(
        target=tg, spec=spec, out=out, calib=calib, eval=eval_data, force=force,
        static_shapes=parse_shapes(static_shape), opset=opset, golden=golden, do_profile=not no_profile,
        labels_key=labels_key, preprocess=preprocess, labels=labels, archive=archive, sign_key=sign,
        bundle_version=bundle_version, max_drop=max_drop, image_preprocess=image_preprocess, prefer=prefer,
        accuracy_level_pinned=accuracy_level is not None, accept_failed=accept_failed,
        lm_folder=Path(source) if kind == "hf" and task == "text-generation" else None,  # KV-cache decoder: tokenizer, genai_config
    )
    progress = StageProgress(err, total_samples=spec.calib_samples if spec.needs_calibration else 0)
    check = None
    with contextlib.ExitStack() as stack:
        if kind == "onnx":
            src = open_source(source, (f"source({source.name})",))
        else:
            clean_stale(out)
            check_output(out, force, is_dir=True)  # before the (slow) export
            work = stack.enter_context(scratch_dir("edgeq-export-"))
            sopts = SourceOptions(
                target=tg, example_shapes=parse_example_shapes(example_shape), static_shapes=opts.static_shapes,
                task=task, weights=weights, trust_pickle=trust_pickle, trust_remote_code=trust_remote_code,
                opset=opset, exporter=exporter, input_names=in_names, output_names=out_names, app_io=preprocess,
            )
            export_from = source
            if kind == "hf":  # a GPTQ/AWQ/bitsandbytes folder: read by edgeq, exported from its dequantized weights
                opts, export_from = _prequant_options(source, opts, quant, work, progress) if task else (opts, source)
                if opts.lm_folder is not None and export_from != source:  # KV-cache decoder of the dequantized weights
                    from dataclasses import replace as _replace

                    opts = _replace(opts, lm_folder=Path(export_from))
            if reference is not None:
                _check_reference(reference, opts)
            with progress.stage(f"export ({kind})"):
                src, check = export_source(str(export_from), sopts, work)
            if reference is not None:
                opts = _reference_options(reference, opts, sopts, work, progress)
        result = run_export(src, opts, stage=progress.stage, on_sample=progress.sample).to_dict()
    if check is not None:
        result["export"] = check.to_dict()
        result["notes"] = check.notes() + result["notes"]
    if as_json:
        _emit_json(result)
    else:
        console.print(export_table(result))
        for n in result["notes"]:
            console.print(f"note: {escape_markup(n)}")
        if result["quantization"].get("layers"):
            from ..reporting.tables import layers_table

            console.print(layers_table(result["quantization"]))
        from ..reporting.tables import fallback_table

        if fallback_table(result) is not None:
            console.print(fallback_table(result))
    status = (result.get("verdict") or {}).get("status")
    if status == "accepted-failed":
        err.print(f"[red]WARNING: ACCEPTED-FAILED[/]: the quantized model is outside target {tg.name}'s tolerances and was shipped "
                  "anyway (--accept-failed); the manifest, edgeq verify and run.py say so")
    elif status == "skipped" and not as_json:
        err.print("[yellow]VERIFICATION SKIPPED[/]: no data given, nothing was proven (pass --calib or --eval)")
    _budget_failed(result["quantization"], out, has_eval=eval_data is not None)
    if min_accel_coverage is not None:
        from ..profiling.accel import coverage_report
        from ..profiling.profiler import check_coverage

        check_coverage(coverage_report(out, tg, result.get("placement")), min_accel_coverage)
    if not result["passed"] and status != "accepted-failed":
        from ..checks.hints import after_failed_check

        _fail(CheckFailed(
            f"the quantized model is outside target {tg.name}'s tolerances: {(result.get('verdict') or {}).get('reason', '')}",
            after_failed_check(spec, tg, max_drop=max_drop, has_eval=eval_data is not None, out=out),
        ))


def _prequant_options(source: Path, opts: Any, quant: Optional[str], work: Path, progress: Any) -> tuple[Any, Path]:
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


def _check_reference(reference: Path, opts: Any) -> None:
    from ..errors import ModelError
    from ..exporters.hf import is_hf_folder
    from ..exporters.prequant import detect

    if opts.prequant is None:
        raise ModelError("--reference is for pre-quantized folders (GPTQ/AWQ/bitsandbytes)", "drop --reference")
    if not is_hf_folder(reference) or detect(reference) is not None:
        raise ModelError(f"--reference {reference.name} is not a float Hugging Face folder", "pass the folder of the model before it was quantized")


def _reference_options(reference: Path, opts: Any, sopts: Any, work: Path, progress: Any) -> Any:
    """--reference FLOAT_FOLDER: exported beside the model, compared with the result as a language model."""
    from dataclasses import replace

    from ..exporters import export_source

    (work / "reference").mkdir()
    with progress.stage("export (reference)"):
        ref, _ = export_source(str(reference), sopts, work / "reference")
    return replace(opts, reference_model=ref.path)


@app.command()
@handle_errors
def quantize(
    model: Annotated[Path, typer.Argument(help="fp32 .onnx model")],
    out: Annotated[Path, typer.Option("-o", "--out", help="quantized .onnx to write")],
    target: TargetOpt = "cpu-x86_64",
    quant: QuantOpt = None,
    calib: CalibOpt = None,
    fmt: FormatOpt = None,
    activation_type: ActOpt = None,
    weight_type: WeightOpt = None,
    per_channel: PerChannelOpt = None,
    reduce_range: ReduceOpt = None,
    calib_samples: SamplesOpt = None,
    calibration: CalibMethodOpt = None,
    calib_bins: CalibBinsOpt = None,
    max_drop: MaxDropOpt = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="evaluation data (+ optional 'labels') for --max-drop")] = None,
    image_preprocess: ImagePreprocOpt = None,
    prefer: PreferOpt = None,
    static_shape: StaticOpt = None,
    opset: OpsetOpt = None,
    block_size: BlockOpt = None,
    symmetric: SymOpt = None,
    accuracy_level: AccOpt = None,
    scale_dtype: ScaleDtypeOpt = None,
    algo: AlgoOpt = None,
    keep: KeepOpt = None,
    override: OverrideOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    preprocess: Annotated[Optional[Path], typer.Option("--preprocess", help="app TOML: [outputs.NAME] task = ... sets the task metric --max-drop and --prefer score that output with")] = None,
) -> None:
    """Optimize and quantize one model (no verify, profile or bundle)."""
    from ..core.data import load_samples
    from ..core.outputs import copy_stamped
    from ..errors import CalibrationError
    from ..core.fsutil import scratch_dir, staging
    from ..core.isolate import open_source
    from ..core.optimization import optimize as optimize_stage, parse_shapes
    from ..quantization import quantize as quantize_stage
    from ..reporting.tables import StageProgress, err, out as console
    from ..core.targets import load_target

    tg = load_target(target)
    wo = dict(block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level, algo=algo, keep=keep, override=override, scale_dtype=scale_dtype)
    spec = _spec(tg, quant, fmt, activation_type, weight_type, per_channel, reduce_range, calib_samples, wo, calibration, calib_bins)
    _check_prefer(prefer)
    _check_onnx_source(model)
    from ..core.onnxutil import data_file
    from ..core.outputs import check_output_path

    for path, what in ((out, "output"), (data_file(out), "external data file")):  # before any work
        check_output_path(path, force=force, is_dir=False, inputs=(model, calib, eval_data, image_preprocess, preprocess), what=what)
    src = open_source(model)
    from ..core.appio import load_io_spec

    tasks = load_io_spec(preprocess, src.io)["outputs"]  # before any work: per-output task overrides for --max-drop / --prefer
    data = load_samples(calib, src.io, preprocess=image_preprocess, random_n=spec.calib_samples) if calib else None
    evals = load_samples(eval_data, src.io, what="evaluation", preprocess=image_preprocess) if eval_data else None
    if spec.needs_calibration and data is None:
        from ..checks.hints import modes_without_calibration

        raise CalibrationError(f"{spec.mode} needs calibration data", "pass --calib DATA.npz, or " + modes_without_calibration(tg))
    from ..quantization.int8.preflight import run as preflight

    pre_notes = preflight(model, tg, spec, parse_shapes(static_shape))  # before any work
    progress = StageProgress(err, total_samples=min(spec.calib_samples, len(data)) if data else 0)
    with staging(out, force=force, is_dir=False) as tmp, contextlib.ExitStack() as data_stage, scratch_dir() as work:
        with progress.stage("optimize"):
            opt, notes = optimize_stage(src, tg, work / "fp32.onnx", static_shapes=parse_shapes(static_shape), opset=opset)
            notes = pre_notes + notes
        with progress.stage(f"quantize ({spec.mode})"):
            res = quantize_stage(
                opt, spec, work / "q.onnx", data=data, on_sample=progress.sample, evals=evals, max_drop=max_drop,
                prefer=prefer, budget=tg.tolerances.max_accuracy_drop, target=tg, tasks=tasks,
            )
        from ..core.onnxutil import copy_model, data_file, has_external_data

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
    if as_json:
        _emit_json({"model": str(out), "quantization": recipe})
    else:
        cov = recipe.get("coverage")
        console.print(f"wrote {escape_markup(out)} ({spec.mode}" + (f", {cov['nodes_quantized']}/{cov['nodes_total']} weight nodes quantized)" if cov else ")"))
        for n in recipe["notes"]:
            console.print(f"note: {escape_markup(n)}")
        if recipe.get("layers"):
            from ..reporting.tables import layers_table

            console.print(layers_table(recipe))
    _budget_failed(recipe, out, has_eval=eval_data is not None)


@app.command()
@handle_errors
def verify(
    candidate: Annotated[Path, typer.Argument(help="a bundle folder, or a candidate .onnx to compare with --reference")],
    reference: Annotated[Optional[Path], typer.Option("--reference", help="fp32 reference .onnx")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs to compare on (.npz or folder)")] = None,
    target: TargetOpt = "cpu-x86_64",
    model: Annotated[str, typer.Option("--model", help="bundle: run model.ort or model.onnx")] = "ort",
    providers: Annotated[str, typer.Option("--providers", help="bundle: comma-separated providers to run with")] = "",
    pubkey: Annotated[Optional[Path], typer.Option("--pubkey", help="bundle: Ed25519 public key (PEM); refuse unsigned or wrongly signed bundles")] = None,
    min_version: Annotated[Optional[int], typer.Option("--min-version", help="bundle: refuse a signed bundle whose bundle_version is lower")] = None,
    labels_key: LabelsOpt = "labels",
    emulate: EmulateOpt = None,
    as_json: JsonOpt = False,
    preprocess: Annotated[Optional[Path], typer.Option("--preprocess", help="app TOML: [outputs.NAME] task = ... overrides the inferred task of an output")] = None,
) -> None:
    """Check a bundle folder or archive (safe extraction, schema, signature, checksums, golden pairs) or compare a model with its reference."""
    from ..bundles.archive import archive_format
    from ..reporting.tables import bundle_check_table, out as console, verify_table

    if emulate is not None:
        return _verify_emulated(candidate, emulate, model=model, reference=reference, data=data, target=target,
                                labels_key=labels_key, as_json=as_json)
    if candidate.is_dir() or archive_format(candidate):
        from ..bundles.bundle import check_bundle
        from ..llamacpp.gguf import check_gguf_bundle, is_gguf_bundle

        if candidate.is_dir() and is_gguf_bundle(candidate):  # llama.cpp bundle: checksums + golden prompts through llama.cpp
            result = check_gguf_bundle(candidate)
        else:
            result = check_bundle(
                candidate, providers=[p for p in providers.split(",") if p] or None, model=model,
                pubkey=pubkey, min_version=min_version,
            )
        if as_json:
            _emit_json(result)
        else:
            console.print(bundle_check_table(result))
            signed = f", signature by key {result['signed_by'][:16]}" if result.get("signed_by") else ""
            verdict = {"pass": "export check passed", "skipped": "[yellow]export check SKIPPED (no data when built: nothing proven)[/]",
                       "accepted-failed": "[red]export check FAILED, shipped knowingly (ACCEPTED-FAILED)[/]"}.get(result.get("verdict") or "", "")
            console.print(f"[green]PASS[/] bundle {escape_markup(candidate)}: schema, checksums{signed} and {len(result['pairs'])} golden pairs"
                          + (f"; {verdict}" if verdict else ""))
        return
    from ..core.data import load_samples
    from ..errors import CalibrationError
    from ..core.isolate import open_source
    from ..core.targets import load_target
    from ..checks.comparison import verify as verify_stage

    if reference is None or data is None:
        raise CalibrationError(
            "verifying a model needs --reference REF.onnx and --data DATA", "or pass a bundle folder to check it"
        )
    tg = load_target(target)
    _check_onnx_source(candidate)
    _check_onnx_source(reference)
    open_source(candidate)
    ref = open_source(reference)
    samples = load_samples(data, ref.io, what="evaluation", labels_key=labels_key)
    from ..core.appio import load_io_spec

    tasks = load_io_spec(preprocess, ref.io)["outputs"]
    report = verify_stage(reference, candidate, samples, tg.tolerances, output_names=ref.io.output_names, tasks=tasks).to_dict()
    if as_json:
        _emit_json(report)
    else:
        console.print(verify_table(report))
        for c in report["tasks"]:
            console.print(f"note: output '{c['output']}' checked as {c['kind']}: {c['why']}")
        if report["accuracy_reference"] is not None:
            console.print(f"accuracy: reference {100 * report['accuracy_reference']:.2f} %, candidate {100 * report['accuracy_candidate']:.2f} %")
    if not report["passed"]:
        _fail(CheckFailed(f"candidate outside target {tg.name}'s tolerances: {'; '.join(report['failures'])}", "see the table above"))
    elif not as_json:
        console.print(f"[green]PASS[/] within target {escape_markup(tg.name)}'s tolerances")


@app.command()
@handle_errors
def profile(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx models or bundle folders (ratios are to the first)")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="target name or .toml (default: the bundle's target, else cpu-x86_64)")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs to time with and check numerics on (default: bundle golden inputs, else seeded random)")] = None,
    runs: Annotated[int, typer.Option("--runs", help="timed runs at least; more until p50 is stable or --budget ends")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed runs first")] = 5,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads (0 = the target's setting)")] = 0,
    budget: Annotated[float, typer.Option("--budget", help="seconds of timed runs per model at most")] = 10.0,
    top: Annotated[int, typer.Option("--top", help="nodes and op types to list in the per-op breakdown")] = 10,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="fp32 .onnx: verify the measured provider's outputs against it")] = None,
    min_accel_coverage: Annotated[Optional[float], typer.Option("--min-accel-coverage", help="fail (exit 1) when a smaller share of nodes runs on the accelerator")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="write a self-contained HTML report with plots")] = None,
    setup_runtime: Annotated[bool, typer.Option("--setup-runtime", help="create a missing provider environment (OpenVINO) in edgeq's cache")] = False,
    device: DeviceOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_key: AcceptNewOpt = False,
    identity: IdentityOpt = None,
    device_python: DevicePythonOpt = "python3",
    device_timeout: DeviceTimeoutOpt = 900,
    as_json: JsonOpt = False,
) -> None:
    """Profile models on this host with the target's providers: latency, memory, per-op time, placement.

    With --device ssh://user@host, run each bundle's own runner on the device instead (device timing).
    """
    if device is not None:
        return _profile_on_device(models, device, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key,
                                  identity=identity, python=device_python, timeout=device_timeout,
                                  runs=runs, warmup=warmup, threads=threads, as_json=as_json)
    from ..profiling.profiler import MeasureOptions, check_coverage, load_input, measure, resolve_backend
    from ..reporting.tables import err, out as console, profile_details, profile_notes, profile_table, setup_progress
    from ..core.targets import load_target

    if min_accel_coverage is not None and not 0.0 <= min_accel_coverage <= 1.0:
        from ..errors import TargetError

        raise TargetError(f"--min-accel-coverage {min_accel_coverage} is not a share between 0 and 1", "e.g. --min-accel-coverage 0.95")
    if reference is not None:
        _check_onnx_source(reference)
    if html is not None:  # an existing report edgeq wrote is replaced; anything else is refused, before any work
        from ..core.outputs import check_output_path

        check_output_path(html, force=True, is_dir=False, inputs=(*models, data, reference), what="--html report")
    inputs = [load_input(m, data=data) for m in models]
    if target or not inputs[0].bundle_target:
        tg = load_target(target or "cpu-x86_64")
    else:  # a bundle is data: its manifest may name only a target shipped with edgeq
        from ..core.targets import bundle_target

        tg = bundle_target(inputs[0].bundle_target, f"the manifest of bundle {inputs[0].label}")
    opts = MeasureOptions(runs=runs, warmup=warmup, threads=threads, budget_s=budget, top=top)
    backend = resolve_backend(tg, setup_runtime=setup_runtime, progress=setup_progress(err))
    reports = []
    with err.status("profiling ...") if not as_json else contextlib.nullcontext() as status:
        for i, inp in enumerate(inputs, 1):
            if status is not None:
                status.update(f"profiling {inp.label} ({i}/{len(inputs)}, {backend.kind}, up to {budget:.0f} s of timed runs)")
            reports.append(measure(inp, tg, backend, opts, reference=reference))
    from ..profiling.llm import is_llm_bundle, llm_lines, profile_llm

    for m, r in zip(models, reports):  # KV-cache decoder bundles: TTFT, decode tokens/s by context, peak RSS, KV bytes/token
        if is_llm_bundle(m):
            r["llm"] = profile_llm(m, threads=threads)
    if html is not None:
        from ..reporting.html_report import write_html

        write_html(html, reports, target=tg.name)
    if as_json:
        _emit_json({"target": tg.name, "results": reports})
    else:
        console.print(profile_table(reports))
        for t in profile_details(reports):
            console.print(t)
        for line in profile_notes(reports):
            console.print(escape_markup(line))
        for m, r in zip(models, reports):
            for line in llm_lines(str(m), r["llm"]) if r.get("llm") else ():
                console.print(escape_markup(line))
        if html is not None:
            console.print(f"wrote {html}")
    failed = [f for r in reports for f in ((r.get("numerics") or {}).get("vs_reference") or {}).get("failures", [])]
    if failed:
        _fail(CheckFailed(f"measured outputs outside target {tg.name}'s tolerances: {'; '.join(failed)}", "see the numerics table"))
    if min_accel_coverage is not None:
        check_coverage(reports, min_accel_coverage)


def _verify_emulated(candidate: Path, cpus_text: str, *, model: str, reference: Optional[Path], data: Optional[Path],
                     target: str, labels_key: str, as_json: bool) -> None:
    """verify --emulate: golden pairs on x86 and under qemu-aarch64 per -cpu model; exit 1 beyond tolerance."""
    from ..devices.qemu import check_emulated, emulate_candidate, emulation_table, parse_cpus, progress_step
    from ..reporting.tables import err, out as console, verify_table

    cpus = parse_cpus(cpus_text)
    step, close = progress_step()
    on_cpu = None if as_json else (lambda cpu: err.print(f"running under qemu-aarch64 -cpu {cpu} (emulated, ~200x slower)"))
    try:
        result = emulate_candidate(candidate, cpus, model=model, reference=reference, data=data, target=target,
                                   labels_key=labels_key, step=step, on_cpu=on_cpu)
    finally:
        close()
    if as_json:
        _emit_json(result)
    else:
        if result.get("verify"):
            console.print(verify_table(result["verify"]))
        console.print(emulation_table(result))
        console.print(f"note: {escape_markup(result['note'])}")
    check_emulated(result)
    if not as_json:
        console.print(f"[green]PASS[/] x86 and {', '.join(cpus)} agree within atol {result['atol']}, rtol {result['rtol']}")


def _profile_on_device(models: list[Path], device: str, *, known_hosts: Optional[Path], accept_new_host_key: bool,
                       identity: Optional[Path], python: str, timeout: int, runs: int, warmup: int, threads: int,
                       as_json: bool) -> None:
    """profile --device: each bundle's own runner on the device over SSH; exit 1 if its golden pairs fail there."""
    from ..devices.ssh import SshOptions, check_remote, device_tables, parse_device, run_on_device
    from ..reporting.tables import err, out as console

    dev = parse_device(device)
    opts = SshOptions(known_hosts=known_hosts, accept_new_host_key=accept_new_host_key, identity=identity,
                      python=python, command_timeout_s=float(timeout))
    results = []
    for m in models:
        if not as_json:
            err.print(f"copying {m} to {dev.url()} and running it there")
        results.append(run_on_device(m, dev, opts, runs=runs, warmup=warmup, threads=threads))
    if as_json:
        _emit_json({"device": dev.url(), "results": results})
    else:
        for r in results:
            for t in device_tables(r):
                console.print(t)
    for r in results:
        check_remote(r)


@app.command()
@handle_errors
def bundle(
    model: Annotated[Path, typer.Argument(help="the (quantized) .onnx model to ship")],
    out: Annotated[Path, typer.Option("-o", "--out", help="bundle folder to write")],
    target: TargetOpt = "cpu-x86_64",
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs for the golden pairs (default: seeded random)")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="fp32 model: record a verify report against it")] = None,
    golden: Annotated[int, typer.Option("--golden", help="golden input/output pairs to store")] = 3,
    labels_key: LabelsOpt = "labels",
    preprocess: PreprocessOpt = None,
    labels: LabelsFileOpt = None,
    archive: ArchiveOpt = None,
    sign: SignOpt = None,
    bundle_version: BundleVersionOpt = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a runtime bundle for a model that is already quantized."""
    from ..core.appio import check_labels_fit, load_io_spec, read_labels
    from ..bundles.bundle import BundleInputs, check_outputs, load_private_key, write_bundle
    from ..core.data import load_samples
    from ..core.isolate import open_source
    from ..core.onnxutil import model_size
    from ..pipeline import golden_feeds_for, sizes
    from ..reporting.tables import out as console
    from ..core.targets import load_target
    from ..checks.comparison import verify as verify_stage

    tg = load_target(target)
    _check_onnx_source(model)
    from ..core.outputs import check_bundle_outputs

    check_bundle_outputs(out, force=force, archive=archive, inputs=(model, data, reference, preprocess, labels, sign))
    art = open_source(model, (f"source({model.name})",))
    from ..bundles.archive import check_golden_archivable

    check_golden_archivable(golden, len(art.io.inputs) + len(art.io.outputs), archive)
    app_io = load_io_spec(preprocess, art.io)
    label_list = read_labels(labels)
    check_labels_fit(label_list, app_io, art.io)
    if sign is not None:
        load_private_key(sign)
    check_outputs(out, BundleInputs(golden_feeds=(), archive=archive), force)
    samples = load_samples(data, art.io, what="golden", labels_key=labels_key) if data else None
    report = None
    size = None
    if reference is not None:
        _check_onnx_source(reference)
        open_source(reference)
        if samples is None:
            from ..errors import CalibrationError

            raise CalibrationError("--reference needs --data to compare on", "pass --data DATA.npz")
        report = verify_stage(reference, model, samples, tg.tolerances, output_names=art.io.output_names, tasks=app_io["outputs"]).to_dict()
        size = sizes(model_size(reference), model_size(model))
    info = BundleInputs(
        golden_feeds=golden_feeds_for(samples, art, golden, app_io),
        recipe={"mode": "as given", "notes": ["bundled an existing model; edgeq did not quantize it"]},
        verify=report,
        sizes=size,
        provenance=art.provenance,
        preprocessing=app_io,
        labels=tuple(label_list) if label_list else None,
        bundle_version=bundle_version,
        sign_key=sign,
        archive=archive,
    )
    write_bundle(art, tg, out, info, force=force)
    if as_json:
        from ..bundles.archive import archive_path

        _emit_json({"bundle": str(out), "archive": str(archive_path(out, archive)) if archive else None, "verify": report})
    else:
        console.print(f"wrote bundle {out} for {tg.name}" + ("" if samples else " (golden inputs are seeded random: pass --data for real ones)"))
    if report is not None and not report["passed"]:
        _fail(CheckFailed(f"model outside target {tg.name}'s tolerances: {'; '.join(report['failures'])}", f"the bundle was written to {out}"))


@app.command()
@handle_errors
def generate(
    bundle: Annotated[Path, typer.Argument(help="an LLM bundle folder (KV-cache decoder, tokenizer.json, genai_config.json)")],
    prompt: Annotated[str, typer.Option("--prompt", help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy; > 0 samples")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="sample among the k most likely tokens (0: all)")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="sample within this cumulative probability")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[str, typer.Option("--model", help="run model.onnx or model.ort")] = "onnx",
    as_json: JsonOpt = False,
) -> None:
    """Generate text with an LLM bundle (numpy + onnxruntime + tokenizers, as the bundle's run.py --prompt does), streaming."""
    from .generate import generate_cli
    from ..reporting.tables import err

    res = generate_cli(bundle, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, model=model, stream=not as_json)
    if as_json:
        _emit_json(res)
    else:
        tps = res["decode_tokens_per_s"]
        err.print(f"{len(res['tokens'])} tokens (stop: {res['stop']}), time to first token {res['ttft_s'] * 1e3:.1f} ms"
                  + (f", decode {tps:.1f} tokens/s" if tps else ""))


@app.command()
@handle_errors
def keygen(
    out: Annotated[Path, typer.Option("-o", "--out", help="private key to write (PEM, mode 0600); the public key goes to OUT.pub")],
    force: ForceOpt = False,
) -> None:
    """Create an Ed25519 key pair for edgeq bundle --sign / edgeq verify --pubkey."""
    from ..bundles.bundle import generate_keypair
    from ..reporting.tables import out as console

    priv, pub = generate_keypair(out, force=force)
    console.print(f"wrote private key {priv} (keep it secret) and public key {pub} (ship it to devices)")


@app.command()
@handle_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="an .onnx model, or a Hugging Face folder (GPTQ/AWQ/bitsandbytes: format, bits, layers)")],
    as_json: JsonOpt = False,
) -> None:
    """Inputs, outputs, opset, op histogram, parameters, whether the model is quantized, and its metadata."""
    if model.is_dir():  # a Hugging Face folder: what a pre-quantized checkpoint holds
        return _inspect_folder(model, as_json)
    from ..errors import ModelError
    from ..core.fsutil import require_regular_file
    from ..core.onnxutil import describe
    from ..reporting.tables import inspect_table, out as console

    require_regular_file(model, "model", ModelError)
    d = describe(model)
    if as_json:
        _emit_json(d)
    else:
        for t in inspect_table(d):
            console.print(t)
        if d.get("metadata"):
            from ..core.modelmeta import metadata_table

            console.print(metadata_table(d["metadata"]))


@app.command()
@handle_errors
def doctor(as_json: JsonOpt = False) -> None:
    """What this host can run: execution providers (plugins included), optional parts, and the command that installs what is missing."""
    from .doctor import report, tables
    from ..reporting.tables import out as console

    r = report()
    if as_json:
        _emit_json(r)
        return
    for t in tables(r):
        console.print(t)
    if r["install_command"]:
        typer.echo(f"install what is missing: {r['install_command']}")
    for line in r["to_set_up"]:
        typer.echo(f"set up separately: {line}")
    if not r["missing"]:
        typer.echo("every optional part is installed")


def _inspect_folder(folder: Path, as_json: bool) -> None:
    """``edgeq inspect FOLDER``: format, bits, group size and layers of a (pre-quantized) Hugging Face folder."""
    from ..exporters.prequant import folder_lines, inspect_prequant
    from ..reporting.tables import out as console

    d = inspect_prequant(folder)
    if as_json:
        _emit_json(d)
    else:
        from rich.markup import escape

        for line in folder_lines(d):
            console.print(escape(line))


@targets_app.callback()
@handle_errors
def targets_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the targets, one line each."""
    if ctx.invoked_subcommand is not None:
        return
    from ..reporting.tables import targets_lines
    from ..core.targets import list_targets

    ts = list_targets()
    if as_json:
        _emit_json([t.to_dict() for t in ts])
    else:
        for line in targets_lines(ts):
            typer.echo(line)


@targets_app.command("show")
@handle_errors
def targets_show(name: Annotated[str, typer.Argument(help="target name")], as_json: JsonOpt = False) -> None:
    """Show one target: providers, session options, quantization defaults, tolerances."""
    from ..reporting.tables import out as console, target_tables
    from ..core.targets import load_target

    tg = load_target(name)
    if as_json:
        _emit_json(tg.to_dict())
    else:
        for t in target_tables(tg):
            console.print(t)


_INTERRUPTED: list[int] = []


def _interrupt(signum: int, frame: Any) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt  # clean up temporaries as on Ctrl-C


def main() -> None:
    import signal

    try:
        signal.signal(signal.SIGTERM, _interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # not the main thread
        pass
    app()


if __name__ == "__main__":
    main()
