"""The ``edgeq`` command line: one thin command per stage, plus ``export`` for the whole trip.

Only this module catches ``EdgeqError``: it prints one line (problem and fix)
and exits with the error's code (2 bad input, 1 failed check).
Set ``EDGEQ_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import EdgeqError
from ..core.safetext import escape_markup, escape_text
from .options import (  # each option declared once; the groups export shares with quantize and bundle
    AcceptNewOpt, BundleModelOpt, BundleOutOpt, DeviceOpt, DevicePythonOpt, DeviceTimeoutOpt, EmulateOpt, ForceOpt, IdentityOpt,
    InputNamesOpt, JsonOpt, KnownHostsOpt, KvCacheOpt, LabelsOpt, MinAccelOpt, OutputNamesOpt, PreprocessOpt, ReferenceOpt, TargetOpt,
    bundle_options, quant_options,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take a trained model to a quantized, verified, profiled runtime bundle for an edge device.",
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(help="List the targets, or show one.", invoke_without_command=True, no_args_is_help=False)
app.add_typer(targets_app, name="targets")


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
    from ..bundles.reader import strict_json_values  # NaN / Inf metrics as null: strict JSON for CI pipelines

    typer.echo(json.dumps(strict_json_values(obj), indent=2, sort_keys=True, default=str, allow_nan=False))


@app.command()
@handle_errors
@quant_options
@bundle_options
def export(
    source: Annotated[Path, typer.Argument(help="the model: .onnx, .pt2, .pt/.pth/.bin, a Hugging Face folder, or pkg.module:factory")],
    target: TargetOpt = "cpu-x86_64",
    out: BundleOutOpt = Path("build/edgeq"),
    q: Any = None,  # QUANT_OPTIONS (edgeq.cli.options): pipeline.QuantOptions
    no_profile: Annotated[bool, typer.Option("--no-profile", help="skip latency measurement")] = False,
    b: Any = None,  # BUNDLE_OPTIONS: pipeline.BundleOptions
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    example_shape: Annotated[Optional[list[str]], typer.Option("--example-shape", help="PyTorch sources: an example input [NAME=]1x3x224x224[:int64] (repeatable, in forward() order; without NAME= the name is forward()'s parameter name)")] = None,
    dynamic_axes: Annotated[Optional[list[str]], typer.Option("--dynamic-axes", help="PyTorch sources: axes of an input that may change size besides the batch, NAME=2,3 (a fully convolutional net's height and width; repeatable)")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Hugging Face folder: text-classification | feature-extraction | text-generation")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="pkg.module:factory sources: a state dict (.safetensors, .pt) to load, weights-only")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow unpickling arbitrary objects (full-module .pt, TorchScript, .pt2): runs code from the file")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="allow a Hugging Face folder's own Python code (auto_map)")] = False,
    exporter: Annotated[str, typer.Option("--exporter", help="auto (dynamo, then TorchScript; Hugging Face folders: Optimum when EDGEQ_OPTIMUM_PYTHON is set) | dynamo | torchscript | optimum")] = "auto",
    input_names: InputNamesOpt = None,
    output_names: OutputNamesOpt = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="pre-quantized folder: the float model it came from (a Hugging Face folder), for perplexity and same-top-token against it")] = None,  # options.PER_COMMAND
    min_accel_coverage: MinAccelOpt = None,
    accept_failed: Annotated[bool, typer.Option("--accept-failed", help="ship a bundle whose check failed (exit 0); the manifest records accepted-failed")] = False,
    kv_cache: KvCacheOpt = "fp32",
) -> None:
    """Export, optimize, quantize, verify, profile and bundle a model for a target."""
    from .. import pipeline
    from ..reporting.tables import StageProgress, err, export_table, out as console

    cfg = pipeline.ExportConfig(
        source=pipeline.SourceConfig(
            path=source, example_shape=_tuple(example_shape), dynamic_axes=_tuple(dynamic_axes), task=task, weights=weights, trust_pickle=trust_pickle,
            trust_remote_code=trust_remote_code, exporter=exporter, input_names=_tuple(input_names),
            output_names=_tuple(output_names), reference=reference,
        ),
        out=out, target=target, quant=q, bundle=b, do_profile=not no_profile, force=force,
        min_accel_coverage=min_accel_coverage, accept_failed=accept_failed, kv_cache=kv_cache,
    )
    outcome = pipeline.export_model(cfg, progress=lambda total: StageProgress(err, total_samples=total))
    if isinstance(outcome, pipeline.GGUFOutcome):  # llama.cpp target: a GGUF bundle
        return _print_gguf(outcome, as_json)
    result = outcome.result
    if as_json:
        _emit_json(result)
    else:
        console.print(export_table(result))
        _print_notes(console, result["notes"])
        if result["quantization"].get("layers"):
            from ..reporting.tables import layers_table

            console.print(layers_table(result["quantization"]))
        from ..reporting.tables import fallback_table

        fallbacks = fallback_table(result)
        if fallbacks is not None:
            console.print(fallbacks)
    status = outcome.verdict_status
    if status == "accepted-failed":
        err.print(f"[red]WARNING: ACCEPTED-FAILED[/]: the quantized model is outside target {outcome.target.name}'s tolerances and was shipped "
                  "anyway (--accept-failed); the manifest, edgeq verify and run.py say so")
    elif status == "skipped" and not as_json:
        err.print("[yellow]VERIFICATION SKIPPED[/]: no data given, nothing was proven (pass --calib or --eval)")
    pipeline.check_export(outcome)


def _print_notes(console: Any, notes: list[str]) -> None:
    for n in notes:
        console.print(f"note: {escape_markup(n)}")  # notes name files, tensors and layers: escaped


def _tuple(values: Optional[list[str]]) -> Optional[tuple[str, ...]]:
    return tuple(values) if values is not None else None


def _print_gguf(outcome: Any, as_json: bool) -> None:
    """The llama.cpp trip's table and notes, then its check (exit 1 outside the target's tolerances)."""
    from .. import pipeline
    from ..llamacpp.gguf import gguf_table
    from ..reporting.tables import err, out as console

    r = outcome.result
    if as_json:
        _emit_json(r)
    else:
        console.print(gguf_table(r))
        _print_notes(console, r["notes"])
    if (r.get("verdict") or {}).get("status") == "accepted-failed":
        err.print(f"[red]WARNING: ACCEPTED-FAILED[/]: the GGUF model is outside target {outcome.target.name}'s tolerances and was "
                  "shipped anyway (--accept-failed); the manifest and edgeq verify say so")
    pipeline.check_gguf(outcome)


@app.command()
@handle_errors
@quant_options
def quantize(
    model: Annotated[Path, typer.Argument(help="fp32 .onnx model")],
    out: Annotated[Path, typer.Option("-o", "--out", help="quantized .onnx to write")],  # options.PER_COMMAND
    target: TargetOpt = "cpu-x86_64",
    q: Any = None,  # QUANT_OPTIONS (edgeq.cli.options): pipeline.QuantOptions
    preprocess: PreprocessOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Optimize and quantize one model (no verify, profile or bundle)."""
    from .. import pipeline
    from ..reporting.tables import StageProgress, err, out as console

    outcome = pipeline.quantize_model(pipeline.QuantizeConfig(model=model, out=out, target=target, quant=q, force=force, preprocess=preprocess),
                                      progress=lambda total: StageProgress(err, total_samples=total))
    recipe = outcome.recipe
    if as_json:
        _emit_json(outcome.to_dict())
    else:
        cov = recipe.get("coverage")
        console.print(f"wrote {escape_markup(out)} ({outcome.mode}" + (f", {cov['nodes_quantized']}/{cov['nodes_total']} weight nodes quantized)" if cov else ")"))
        _print_notes(console, recipe["notes"])
        if recipe.get("layers"):
            from ..reporting.tables import layers_table

            console.print(layers_table(recipe))
    pipeline.check_quantize(outcome)


@app.command()
@handle_errors
def verify(
    candidate: Annotated[Path, typer.Argument(help="a bundle folder, or a candidate .onnx to compare with --reference")],
    reference: ReferenceOpt = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs to compare on (.npz or folder)")] = None,  # options.PER_COMMAND
    target: TargetOpt = "cpu-x86_64",
    model: BundleModelOpt = "ort",
    providers: Annotated[str, typer.Option("--providers", help="bundle: comma-separated providers to run with")] = "",
    pubkey: Annotated[Optional[Path], typer.Option("--pubkey", help="bundle: Ed25519 public key (PEM); refuse unsigned or wrongly signed bundles")] = None,
    min_version: Annotated[Optional[int], typer.Option("--min-version", help="bundle: refuse a signed bundle whose bundle_version is lower")] = None,
    labels_key: LabelsOpt = "labels",
    emulate: EmulateOpt = None,
    as_json: JsonOpt = False,
    preprocess: PreprocessOpt = None,
) -> None:
    """Check a bundle folder or archive (safe extraction, schema, signature, checksums, golden pairs) or compare a model with its reference."""
    from .. import pipeline
    from ..checks.metrics import task_note
    from ..reporting.tables import bundle_check_table, err, out as console, verify_table

    cfg = pipeline.VerifyConfig(candidate=candidate, reference=reference, data=data, target=target, model=model,
                                providers=tuple(p for p in providers.split(",") if p), pubkey=pubkey, min_version=min_version,
                                labels_key=labels_key, emulate=emulate, preprocess=preprocess)
    if emulate is not None:  # golden pairs on x86 and under qemu-aarch64 per -cpu model; exit 1 beyond tolerance
        from ..devices.qemu import progress_step

        step, close = progress_step()
        on_cpu = None if as_json else (lambda cpu: err.print(f"running under qemu-aarch64 -cpu {cpu} (emulated, ~200x slower)"))
        try:
            outcome = pipeline.verify_model(cfg, emulation_step=step, on_cpu=on_cpu)
        finally:
            close()
    else:
        outcome = pipeline.verify_model(cfg)
    result = outcome.result
    if as_json:
        _emit_json(result)
    elif outcome.kind == "emulated":
        from ..devices.qemu import emulation_table

        if result.get("verify"):
            console.print(verify_table(result["verify"]))
        console.print(emulation_table(result))
        console.print(f"note: {escape_markup(result['note'])}")
    elif outcome.kind == "bundle" and result.get("verdict") == "fail":
        pass  # a failed export check: its one error line (pipeline.check_verify below), no table of golden pairs first
    elif outcome.kind == "bundle":
        console.print(bundle_check_table(result))
        if result.get("reference_check"):  # --reference: the bundle's model against it
            console.print(verify_table(result["reference_check"]))
            for c in result["reference_check"]["tasks"]:
                console.print(f"note: {escape_markup(task_note(c))}")
        signed = f", signature by key {result['signed_by'][:16]}" if result.get("signed_by") else ""
        why = escape_markup(str(result.get("verdict_reason") or "no data when built: nothing proven")[:300])  # the manifest's own words
        verdict = {"pass": "export check passed", "skipped": f"[yellow]export check SKIPPED ({why})[/]",
                   "accepted-failed": "[red]export check FAILED, shipped knowingly (ACCEPTED-FAILED)[/]"}.get(result.get("verdict") or "", "")
        console.print(f"[green]PASS[/] bundle {escape_markup(candidate)}: schema, checksums{signed} and {len(result['pairs'])} golden pairs"
                      + (f"; {verdict}" if verdict else "") + ("; its model within the tolerances against --reference" if outcome.passed and result.get("reference_check") else ""))
    else:
        console.print(verify_table(result))
        for c in result["tasks"]:
            console.print(f"note: {escape_markup(task_note(c))}")
        if result["accuracy_reference"] is not None:
            console.print(f"accuracy: reference {100 * result['accuracy_reference']:.2f} %, candidate {100 * result['accuracy_candidate']:.2f} %")
    pipeline.check_verify(outcome)
    if as_json or outcome.kind == "bundle":
        return
    if outcome.kind == "emulated":
        console.print(f"[green]PASS[/] x86 and {', '.join(outcome.cpus)} agree within atol {result['atol']}, rtol {result['rtol']}")
    else:
        console.print(f"[green]PASS[/] within target {escape_markup(outcome.target)}'s tolerances")


@app.command()
@handle_errors
def profile(
    models: Annotated[list[Path], typer.Argument(help="one or more .onnx models or bundle folders (ratios are to the first)")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="target name or .toml (default: the bundle's target, else cpu-x86_64)")] = None,  # options.PER_COMMAND
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs to time with and check numerics on (default: bundle golden inputs, else seeded random)")] = None,  # options.PER_COMMAND
    runs: Annotated[int, typer.Option("--runs", help="timed runs at least; more until p50 is stable or --budget ends")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed runs first")] = 5,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads (0 = the target's setting)")] = 0,
    budget: Annotated[float, typer.Option("--budget", help="seconds of timed runs per model at most")] = 10.0,
    top: Annotated[int, typer.Option("--top", help="nodes and op types to list in the per-op breakdown")] = 10,
    reference: ReferenceOpt = None,
    min_accel_coverage: MinAccelOpt = None,
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
    from .. import pipeline
    from ..reporting.tables import err, out as console, setup_progress

    dev = None if device is None else pipeline.DeviceOptions(
        url=device, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key, identity=identity, python=device_python,
        timeout=device_timeout)
    cfg = pipeline.ProfileConfig(models=tuple(models), target=target, data=data, runs=runs, warmup=warmup, threads=threads,
                                 budget=budget, top=top, reference=reference, min_accel_coverage=min_accel_coverage, html=html,
                                 setup_runtime=setup_runtime, device=dev)
    quiet = {} if as_json else {"spinner": err.status}
    outcome = pipeline.profile_models(cfg, setup_progress=setup_progress(err), say=None if as_json else err.print, **quiet)
    if as_json:
        _emit_json(outcome.to_dict())
    elif outcome.device:
        from ..devices.ssh import device_tables

        for r in outcome.results:
            for t in device_tables(r):
                console.print(t)
    else:
        from ..profiling.llm import llm_lines
        from ..reporting.tables import profile_details, profile_notes, profile_table

        reports = outcome.results
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
    pipeline.check_profile(outcome)


@app.command()
@handle_errors
@bundle_options
def bundle(
    model: Annotated[Path, typer.Argument(help="the (quantized) .onnx model to ship")],
    out: BundleOutOpt,
    target: TargetOpt = "cpu-x86_64",
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs for the golden pairs (default: seeded random)")] = None,  # options.PER_COMMAND
    reference: ReferenceOpt = None,
    b: Any = None,  # BUNDLE_OPTIONS (edgeq.cli.options): pipeline.BundleOptions
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a runtime bundle for a model that is already quantized."""
    from .. import pipeline
    from ..reporting.tables import out as console

    outcome = pipeline.bundle_model(pipeline.BundleConfig(model=model, out=out, target=target, data=data, reference=reference,
                                                          bundle=b, force=force))
    if as_json:
        _emit_json(outcome.to_dict())
    else:
        console.print(f"wrote bundle {out} for {outcome.target}" + (" (golden inputs are seeded random: pass --data for real ones)" if outcome.golden_random else ""))
    pipeline.check_bundle(outcome)


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
    model: BundleModelOpt = "onnx",
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
    out: Annotated[Path, typer.Option("-o", "--out", help="private key to write (PEM, mode 0600); the public key goes to OUT.pub")],  # options.PER_COMMAND
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
