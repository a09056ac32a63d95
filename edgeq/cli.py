"""The ``edgeq`` command line: one thin command per stage, plus ``export`` for the whole trip.

Only this module catches ``EdgeqError``: it prints one line (problem and fix)
and exits with the error's code (2 bad input, 1 failed check).
Set ``EDGEQ_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import CheckFailed, EdgeqError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take a trained model to a quantized, verified, profiled runtime bundle for an edge device.",
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(help="List the targets, or show one.", invoke_without_command=True, no_args_is_help=False)
app.add_typer(targets_app, name="targets")

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target name (edgeq targets) or a .toml file")]
QuantOpt = Annotated[Optional[str], typer.Option("--quant", help="int8-static | int8-dynamic | fp16 | none (default: the target's)")]
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help=".npz (one array per input), a folder of .npy/.npz files, an image folder (+ preprocess.toml), or 'random' (flagged loudly)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing output")]
PerChannelOpt = Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="weight scales per output channel")]
ActOpt = Annotated[Optional[str], typer.Option("--activation-type", help="uint8 | int8 | uint16 | int16")]
WeightOpt = Annotated[Optional[str], typer.Option("--weight-type", help="int8 | uint8")]
ReduceOpt = Annotated[Optional[bool], typer.Option("--reduce-range/--full-range", help="7-bit weights for CPUs without VNNI")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="qdq | qoperator")]
SamplesOpt = Annotated[Optional[int], typer.Option("--calib-samples", help="number of calibration samples to use")]
StaticOpt = Annotated[Optional[list[str]], typer.Option("--static-shape", help="pin an input's shape: NAME=1x3x224x224 (repeatable)")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="opset to convert to (within the target's range)")]
PreprocOpt = Annotated[Optional[Path], typer.Option("--preprocess", help="preprocessing spec (TOML) for an image-folder --calib/--eval")]
PreferOpt = Annotated[Optional[str], typer.Option("--prefer", help="measure INT8 candidates (QDQ, QOperator, dynamic) and fp32 on this host; pick accurate | fastest | smallest within the budget")]
CalibMethodOpt = Annotated[Optional[str], typer.Option("--calibration", help="minmax | percentile:99.99 | entropy | mse (one streaming pass)")]
CalibBinsOpt = Annotated[Optional[int], typer.Option("--calib-bins", help="histogram bins per tensor (percentile/entropy/mse)")]
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="accuracy budget: keep the most sensitive nodes float until the drop is at most this (0.01 = 1 point)")]
LabelsOpt = Annotated[str, typer.Option("--labels-key", help="name of the labels array in evaluation data")]


def _fail(e: EdgeqError) -> None:
    if os.environ.get("EDGEQ_DEBUG"):
        raise e
    typer.echo(f"error: {e.one_line()}", err=True)
    raise typer.Exit(e.exit_code)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeqError as e:
            _fail(e)
        except KeyboardInterrupt:
            typer.echo("error: interrupted -- the previous output, if any, is unchanged", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _spec(target, quant, fmt, act, weight, per_channel, reduce_range, samples, calibration=None, bins=None):
    return target.quant.with_overrides(
        mode=quant, format=fmt, activation_type=act, weight_type=weight,
        per_channel=per_channel, reduce_range=reduce_range, calib_samples=samples,
        calibration=calibration, calib_bins=bins,
    )


def _check_prefer(prefer: Optional[str]) -> None:
    from .quantize.gate import PREFERENCES

    if prefer is not None and prefer not in PREFERENCES:
        raise EdgeqError(f"unknown --prefer '{prefer}'", f"choose one of {', '.join(PREFERENCES)}")


def _budget_failed(recipe: dict, where: Path) -> None:
    search = recipe.get("search")
    if search and not search.get("met", True):
        best = search["best"]
        _fail(CheckFailed(
            f"accuracy budget not met: best {best['metric']} drop {best['drop']:.4f} > --max-drop {search['max_drop']} "
            f"({best['kept_float']} node(s) kept float)",
            f"the best model found was written to {where} with the search log; raise --max-drop or add calibration data",
        ))


def _check_onnx_source(src: Path) -> None:
    from .errors import ModelError

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
    source: Annotated[Path, typer.Argument(help="the model: an .onnx file")],
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
    preprocess: PreprocOpt = None,
    prefer: PreferOpt = None,
    static_shape: StaticOpt = None,
    opset: OpsetOpt = None,
    golden: Annotated[int, typer.Option("--golden", help="golden input/output pairs to store")] = 3,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="skip latency measurement")] = False,
    labels_key: LabelsOpt = "labels",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export, optimize, quantize, verify, profile and bundle a model for a target."""
    from .onnxutil import artifact_from
    from .optimize import parse_shapes
    from .pipeline import ExportOptions, run_export
    from .report import StageProgress, err, export_table, out as console
    from .targets import load_target

    tg = load_target(target)
    spec = _spec(tg, quant, fmt, activation_type, weight_type, per_channel, reduce_range, calib_samples, calibration, calib_bins)
    _check_prefer(prefer)
    _check_onnx_source(source)
    opts = ExportOptions(
        target=tg, spec=spec, out=out, calib=calib, eval=eval_data, force=force,
        static_shapes=parse_shapes(static_shape), opset=opset, golden=golden, do_profile=not no_profile,
        labels_key=labels_key, max_drop=max_drop, preprocess=preprocess, prefer=prefer,
    )
    src = artifact_from(source, (f"source({source.name})",))
    progress = StageProgress(err, total_samples=spec.calib_samples if spec.needs_calibration else 0)
    result = run_export(src, opts, stage=progress.stage, on_sample=progress.sample).to_dict()
    if as_json:
        _emit_json(result)
    else:
        console.print(export_table(result))
        for n in result["notes"]:
            console.print(f"note: {n}")
        if result["quantization"].get("layers"):
            from .report import layers_table

            console.print(layers_table(result["quantization"]))
    _budget_failed(result["quantization"], out)
    if not result["passed"]:
        _fail(CheckFailed(
            f"the quantized model is outside target {tg.name}'s tolerances: {'; '.join(result['verify']['failures'])}",
            f"the bundle was written to {out} for inspection; try --per-channel, more calibration data, or --quant int8-dynamic/none",
        ))


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
    preprocess: PreprocOpt = None,
    prefer: PreferOpt = None,
    static_shape: StaticOpt = None,
    opset: OpsetOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Optimize and quantize one model (no verify, profile or bundle)."""
    import shutil

    from .data import load_samples
    from .errors import CalibrationError
    from .fsutil import scratch_dir, staging
    from .onnxutil import artifact_from
    from .optimize import optimize as optimize_stage, parse_shapes
    from .quantize import quantize as quantize_stage
    from .report import StageProgress, err, out as console
    from .targets import load_target

    tg = load_target(target)
    spec = _spec(tg, quant, fmt, activation_type, weight_type, per_channel, reduce_range, calib_samples, calibration, calib_bins)
    _check_prefer(prefer)
    _check_onnx_source(model)
    src = artifact_from(model)
    data = load_samples(calib, src.io, preprocess=preprocess, random_n=spec.calib_samples) if calib else None
    evals = load_samples(eval_data, src.io, what="evaluation", preprocess=preprocess) if eval_data else None
    if spec.needs_calibration and data is None:
        raise CalibrationError(f"{spec.mode} needs calibration data", "pass --calib DATA.npz, or --quant int8-dynamic")
    from .quantize.preflight import run as preflight

    pre_notes = preflight(model, tg, spec, parse_shapes(static_shape))  # before any work
    progress = StageProgress(err, total_samples=min(spec.calib_samples, len(data)) if data else 0)
    with staging(out, force=force, is_dir=False) as tmp, scratch_dir() as work:
        with progress.stage("optimize"):
            opt, notes = optimize_stage(src, tg, work / "fp32.onnx", static_shapes=parse_shapes(static_shape), opset=opset)
            notes = pre_notes + notes
        with progress.stage(f"quantize ({spec.mode})"):
            res = quantize_stage(
                opt, spec, work / "q.onnx", data=data, on_sample=progress.sample, evals=evals, max_drop=max_drop,
                prefer=prefer, budget=tg.tolerances.max_accuracy_drop,
            )
        shutil.copyfile(res.artifact.path, tmp)
    recipe = res.recipe()
    recipe["notes"] = notes + recipe["notes"]
    if as_json:
        _emit_json({"model": str(out), "quantization": recipe})
    else:
        cov = recipe.get("coverage")
        console.print(f"wrote {out} ({spec.mode}" + (f", {cov['nodes_quantized']}/{cov['nodes_total']} weight nodes quantized)" if cov else ")"))
        for n in recipe["notes"]:
            console.print(f"note: {n}")
        if recipe.get("layers"):
            from .report import layers_table

            console.print(layers_table(recipe))
    _budget_failed(recipe, out)


@app.command()
@handle_errors
def verify(
    candidate: Annotated[Path, typer.Argument(help="a bundle folder, or a candidate .onnx to compare with --reference")],
    reference: Annotated[Optional[Path], typer.Option("--reference", help="fp32 reference .onnx")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs to compare on (.npz or folder)")] = None,
    target: TargetOpt = "cpu-x86_64",
    model: Annotated[str, typer.Option("--model", help="bundle: run model.ort or model.onnx")] = "ort",
    providers: Annotated[str, typer.Option("--providers", help="bundle: comma-separated providers to run with")] = "",
    labels_key: LabelsOpt = "labels",
    as_json: JsonOpt = False,
) -> None:
    """Check a bundle (checksums + golden pairs) or compare a model against its reference."""
    from .report import bundle_check_table, out as console, verify_table

    if candidate.is_dir():
        from .bundle import check_bundle

        result = check_bundle(candidate, providers=[p for p in providers.split(",") if p] or None, model=model)
        if as_json:
            _emit_json(result)
        else:
            console.print(bundle_check_table(result))
            console.print(f"[green]PASS[/] bundle {candidate}: checksums and {len(result['pairs'])} golden pairs")
        return
    from .data import load_samples
    from .errors import CalibrationError
    from .onnxutil import artifact_from
    from .targets import load_target
    from .verify import verify as verify_stage

    if reference is None or data is None:
        raise CalibrationError(
            "verifying a model needs --reference REF.onnx and --data DATA", "or pass a bundle folder to check it"
        )
    tg = load_target(target)
    _check_onnx_source(candidate)
    _check_onnx_source(reference)
    ref = artifact_from(reference)
    samples = load_samples(data, ref.io, what="evaluation", labels_key=labels_key)
    report = verify_stage(reference, candidate, samples, tg.tolerances, output_names=ref.io.output_names).to_dict()
    if as_json:
        _emit_json(report)
    else:
        console.print(verify_table(report))
        if report["accuracy_reference"] is not None:
            console.print(f"accuracy: reference {100 * report['accuracy_reference']:.2f} %, candidate {100 * report['accuracy_candidate']:.2f} %")
    if not report["passed"]:
        _fail(CheckFailed(f"candidate outside target {tg.name}'s tolerances: {'; '.join(report['failures'])}", "see the table above"))
    elif not as_json:
        console.print(f"[green]PASS[/] within target {tg.name}'s tolerances")


@app.command()
@handle_errors
def profile(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx models (ratios are to the first)")],
    target: TargetOpt = "cpu-x86_64",
    data: Annotated[Optional[Path], typer.Option("--data", help="input sample to time with (default: random)")] = None,
    runs: Annotated[int, typer.Option("--runs", help="timed runs")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed runs first")] = 5,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads (0 = onnxruntime default)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Time models on this host with the target's providers."""
    from .data import load_samples
    from .onnxutil import artifact_from
    from .profile import profile as profile_stage, skip_reason
    from .report import out as console, profile_table
    from .targets import load_target

    tg = load_target(target)
    results = []
    for m in models:
        _check_onnx_source(m)
        art = artifact_from(m)
        feed = load_samples(data, art.io).feed(0) if data else None
        r = profile_stage(m, tg, feed=feed, io=art.io, runs=runs, warmup=warmup, threads=threads)
        if r is None:
            from .errors import ProviderError

            raise ProviderError(skip_reason(tg), f"profile on a host that has {tg.provider_names[0]}, or choose another target")
        results.append(r.to_dict())
    if as_json:
        _emit_json({"target": tg.name, "results": results})
    else:
        console.print(profile_table(results))


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
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a runtime bundle for a model that is already quantized."""
    from .bundle import BundleInputs, write_bundle
    from .data import load_samples
    from .onnxutil import artifact_from, model_size
    from .pipeline import _golden_feeds, sizes
    from .report import out as console
    from .targets import load_target
    from .verify import verify as verify_stage

    tg = load_target(target)
    _check_onnx_source(model)
    art = artifact_from(model, (f"source({model.name})",))
    samples = load_samples(data, art.io, what="golden", labels_key=labels_key) if data else None
    report = None
    size = None
    if reference is not None:
        _check_onnx_source(reference)
        if samples is None:
            from .errors import CalibrationError

            raise CalibrationError("--reference needs --data to compare on", "pass --data DATA.npz")
        report = verify_stage(reference, model, samples, tg.tolerances, output_names=art.io.output_names).to_dict()
        size = sizes(model_size(reference), model_size(model))
    info = BundleInputs(
        golden_feeds=_golden_feeds(samples, art, golden),
        recipe={"mode": "as given", "notes": ["bundled an existing model; edgeq did not quantize it"]},
        verify=report,
        sizes=size,
        provenance=art.provenance,
    )
    write_bundle(art, tg, out, info, force=force)
    if as_json:
        _emit_json({"bundle": str(out), "verify": report})
    else:
        console.print(f"wrote bundle {out} for {tg.name}" + ("" if samples else " (golden inputs are seeded random: pass --data for real ones)"))
    if report is not None and not report["passed"]:
        _fail(CheckFailed(f"model outside target {tg.name}'s tolerances: {'; '.join(report['failures'])}", f"the bundle was written to {out}"))


@app.command()
@handle_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="an .onnx model")],
    as_json: JsonOpt = False,
) -> None:
    """Inputs, outputs, opset, op histogram, parameters, and whether the model is quantized."""
    from .onnxutil import describe
    from .report import inspect_table, out as console

    d = describe(model)
    if as_json:
        _emit_json(d)
    else:
        for t in inspect_table(d):
            console.print(t)


@targets_app.callback()
@handle_errors
def targets_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the targets, one line each."""
    if ctx.invoked_subcommand is not None:
        return
    from .report import out as console, targets_table
    from .targets import list_targets

    ts = list_targets()
    if as_json:
        _emit_json([t.to_dict() for t in ts])
    else:
        console.print(targets_table(ts))


@targets_app.command("show")
@handle_errors
def targets_show(name: Annotated[str, typer.Argument(help="target name")], as_json: JsonOpt = False) -> None:
    """Show one target: providers, session options, quantization defaults, tolerances."""
    from .report import out as console, target_tables
    from .targets import load_target

    tg = load_target(name)
    if as_json:
        _emit_json(tg.to_dict())
    else:
        for t in target_tables(tg):
            console.print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
