"""Options shared by commands are declared once, every command keeps them, and each value reaches the trip's config (issue 17)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main

from edgeq import pipeline
from edgeq.cli import app
from edgeq.cli.options import BUNDLE_OPTIONS, QUANT_OPTIONS
from edgeq.errors import EdgeqError

# what `edgeq export --help` and `edgeq quantize --help` / `edgeq bundle --help` offered before the groups (issue 17)
QUANT_FLAGS = (
    "--quant", "--calib", "--eval", "--format", "--activation-type", "--weight-type", "--per-channel", "--reduce-range",
    "--calib-samples", "--calibration", "--calib-bins", "--max-drop", "--image-preprocess", "--prefer", "--static-shape",
    "--opset", "--block-size", "--symmetric", "--accuracy-level", "--scale-dtype", "--algo", "--keep", "--override",
)
BUNDLE_FLAGS = ("--golden", "--labels-key", "--preprocess", "--labels", "--archive", "--sign", "--bundle-version")

# (argv, field, value in the config): every field of both groups set away from its default
QUANT_ARGS = (
    (["--quant", "int4"], "quant", "int4"),
    (["--calib", "c.npz"], "calib", Path("c.npz")),
    (["--eval", "e.npz"], "eval", Path("e.npz")),
    (["--format", "qoperator"], "fmt", "qoperator"),
    (["--activation-type", "uint16"], "activation_type", "uint16"),
    (["--weight-type", "uint8"], "weight_type", "uint8"),
    (["--per-tensor"], "per_channel", False),
    (["--reduce-range"], "reduce_range", True),
    (["--calib-samples", "7"], "calib_samples", 7),
    (["--calibration", "minmax"], "calibration", "minmax"),
    (["--calib-bins", "99"], "calib_bins", 99),
    (["--max-drop", "0.02"], "max_drop", 0.02),
    (["--image-preprocess", "p.toml"], "image_preprocess", Path("p.toml")),
    (["--prefer", "fastest"], "prefer", "fastest"),
    (["--static-shape", "x=1x3", "--static-shape", "y=2"], "static_shape", ("x=1x3", "y=2")),
    (["--opset", "17"], "opset", 17),
    (["--block-size", "64"], "block_size", 64),
    (["--asymmetric"], "symmetric", False),
    (["--accuracy-level", "4"], "accuracy_level", 4),
    (["--scale-dtype", "float16"], "scale_dtype", "float16"),
    (["--algo", "hqq"], "algo", "hqq"),
    (["--keep", "embed,lm_head"], "keep", "embed,lm_head"),
    (["--override", "a.*=int8", "--override", "b=none"], "override", ("a.*=int8", "b=none")),
)
BUNDLE_ARGS = (
    (["--golden", "5"], "golden", 5),
    (["--labels-key", "y"], "labels_key", "y"),
    (["--preprocess", "app.toml"], "preprocess", Path("app.toml")),
    (["--labels", "labels.txt"], "labels", Path("labels.txt")),
    (["--archive", "zip"], "archive", "zip"),
    (["--sign", "key.pem"], "sign", Path("key.pem")),
    (["--bundle-version", "4"], "bundle_version", 4),
)


def _options(command: str) -> dict[str, tuple]:
    """long flag -> (flags, secondary flags, default, type, multiple, flag, help) of one command."""
    cmd = typer.main.get_command(app).commands[command]
    out = {}
    for p in cmd.params:
        if p.param_type_name != "option":
            continue
        decl = (tuple(p.opts), tuple(p.secondary_opts), repr(p.default), str(p.type_descriptor.annotation), p.multiple, p.is_flag, p.help)
        out[next(f for f in p.opts if f.startswith("--"))] = decl
    return out


def test_export_keeps_every_option_quantize_and_bundle_share_with_it_declared_the_same():
    export, quantize, bundle = _options("export"), _options("quantize"), _options("bundle")
    for flag in QUANT_FLAGS:
        assert flag in export and flag in quantize, flag
        assert export[flag] == quantize[flag], flag  # one declaration: same flags, default, type, help
    for flag in BUNDLE_FLAGS:
        assert flag in export and flag in bundle, flag
        assert export[flag] == bundle[flag], flag
    # nothing else is shared by accident (--out and --reference mean different things per command)
    common = {"--target", "--out", "--force", "--json"}
    assert export["--preprocess"] == quantize["--preprocess"]  # the app TOML: one declaration, one meaning
    assert set(export) & set(quantize) == set(QUANT_FLAGS) | common | {"--preprocess"}
    assert set(export) & set(bundle) == set(BUNDLE_FLAGS) | common | {"--reference"}


def test_each_group_is_its_configs_fields_with_the_same_defaults():
    for table, config in ((QUANT_OPTIONS, pipeline.QuantOptions), (BUNDLE_OPTIONS, pipeline.BundleOptions)):
        assert [(n, d) for n, _, d in table] == [(f.name, f.default) for f in dataclasses.fields(config)]
    assert {f for _, f, _ in QUANT_ARGS} == {f.name for f in dataclasses.fields(pipeline.QuantOptions)}
    assert {f for _, f, _ in BUNDLE_ARGS} == {f.name for f in dataclasses.fields(pipeline.BundleOptions)}


class _Captured(EdgeqError):
    pass


def _capture(monkeypatch, trip: str) -> list:
    seen = []

    def fake(cfg, *a, **k):
        seen.append(cfg)
        raise _Captured("trip reached", "test")

    monkeypatch.setattr(pipeline, trip, fake)
    return seen


def _argv(table) -> list[str]:
    return [a for argv, _, _ in table for a in argv]


def _expected(config, table):
    want = config(**{f: v for _, f, v in table})
    assert all(getattr(want, f.name) != f.default for f in dataclasses.fields(config))  # every field really set
    return want


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_every_quantization_option_reaches_the_trip(runner, tmp_path, monkeypatch, command):
    trip = {"export": "export_model", "quantize": "quantize_model"}[command]
    seen = _capture(monkeypatch, trip)
    extra = _argv(BUNDLE_ARGS) if command == "export" else []
    r = runner.invoke(app, [command, "m.onnx", "-o", str(tmp_path / "o"), "-t", "arm64", *_argv(QUANT_ARGS), *extra, "--force"])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    cfg = seen[0]
    assert cfg.quant == _expected(pipeline.QuantOptions, QUANT_ARGS)
    assert cfg.target == "arm64" and cfg.force is True and cfg.out == tmp_path / "o"
    if command == "export":
        assert cfg.bundle == _expected(pipeline.BundleOptions, BUNDLE_ARGS)
        assert cfg.source.path == Path("m.onnx") and cfg.do_profile is True
    else:
        assert cfg.model == Path("m.onnx")


def test_every_bundle_option_reaches_the_bundle_trip(runner, tmp_path, monkeypatch):
    seen = _capture(monkeypatch, "bundle_model")
    r = runner.invoke(app, ["bundle", "m.onnx", "-o", str(tmp_path / "o"), "--data", "d.npz", *_argv(BUNDLE_ARGS)])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    assert seen[0].bundle == _expected(pipeline.BundleOptions, BUNDLE_ARGS)
    assert seen[0].data == Path("d.npz") and seen[0].reference is None and seen[0].force is False


def test_every_verify_and_profile_option_reaches_its_trip(runner, monkeypatch):
    seen = _capture(monkeypatch, "verify_model")
    r = runner.invoke(app, ["verify", "c.onnx", "--reference", "r.onnx", "--data", "d.npz", "-t", "arm64", "--model", "onnx",
                            "--providers", "CPUExecutionProvider,XnnpackExecutionProvider", "--pubkey", "k.pub", "--min-version", "3",
                            "--labels-key", "y", "--preprocess", "app.toml", "--emulate", "cortex-a53"])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    assert seen == [pipeline.VerifyConfig(
        candidate=Path("c.onnx"), reference=Path("r.onnx"), data=Path("d.npz"), target="arm64", model="onnx",
        providers=("CPUExecutionProvider", "XnnpackExecutionProvider"), pubkey=Path("k.pub"), min_version=3,
        labels_key="y", emulate="cortex-a53", preprocess=Path("app.toml"),
    )]
    seen = _capture(monkeypatch, "profile_models")
    r = runner.invoke(app, ["profile", "a.onnx", "b", "-t", "arm64", "--data", "d.npz", "--runs", "3", "--warmup", "1", "--threads", "2",
                            "--budget", "1.5", "--top", "4", "--reference", "r.onnx", "--min-accel-coverage", "0.5", "--html", "r.html",
                            "--setup-runtime", "--device", "ssh://u@h:2222", "--known-hosts", "kh", "--accept-new-host-key",
                            "--identity", "id", "--device-python", "python3.12", "--device-timeout", "60"])
    assert r.exit_code == 2 and "trip reached" in r.stderr, r.output
    device = pipeline.DeviceOptions(url="ssh://u@h:2222", known_hosts=Path("kh"), accept_new_host_key=True, identity=Path("id"),
                                    python="python3.12", timeout=60)
    assert seen == [pipeline.ProfileConfig(
        models=(Path("a.onnx"), Path("b")), target="arm64", data=Path("d.npz"), runs=3, warmup=1, threads=2, budget=1.5, top=4,
        reference=Path("r.onnx"), min_accel_coverage=0.5, html=Path("r.html"), setup_runtime=True, device=device,
    )]


def test_a_command_without_the_group_parameter_is_refused():
    from edgeq.cli.options import quant_options

    with pytest.raises(TypeError, match="'q' must be a parameter"):
        quant_options(lambda out: None)


def _declared(callback) -> dict[str, tuple]:
    """long flag -> (the typer.Option object, the option's Python type) of one command, as its signature declares it."""
    import inspect

    out = {}
    for p in inspect.signature(callback, eval_str=True).parameters.values():
        info = next((m for m in getattr(p.annotation, "__metadata__", ()) if isinstance(m, typer.models.OptionInfo)), None)
        if info is not None:
            flags = [f for d in info.param_decls for f in d.split("/")]
            flag = next((f for f in flags if f.startswith("--")), "--" + p.name.replace("_", "-"))  # no flag given: typer's
            out[flag] = (info, p.annotation.__origin__)
    return out


def _all_commands() -> dict[str, dict[str, tuple]]:
    cmds = {info.name or info.callback.__name__: _declared(info.callback) for info in app.registered_commands}
    for g in app.registered_groups:
        sub = g.typer_instance
        cmds[g.name] = _declared(sub.registered_callback.callback)
        cmds.update({f"{g.name} {info.name}": _declared(info.callback) for info in sub.registered_commands})
    return cmds


def test_every_option_two_commands_share_is_one_declaration_unless_its_meaning_differs():
    from itertools import combinations

    from edgeq.cli.options import PER_COMMAND

    cmds = _all_commands()
    assert {"export", "quantize", "verify", "profile", "bundle", "generate", "targets show"} <= set(cmds)
    shared = 0
    for (a, da), (b, db) in combinations(sorted(cmds.items()), 2):
        for flag in set(da) & set(db):
            own = PER_COMMAND.get(flag, {})
            if a in own or b in own:  # a meaning of its own: declared apart, and it says something else
                assert da[flag][0].help != db[flag][0].help, (flag, a, b)
                continue
            assert da[flag][0] is db[flag][0], f"{flag} is declared twice ({a}, {b}): declare it once in edgeq.cli.options"
            assert da[flag][1] == db[flag][1], (flag, a, b)
            shared += 1
    assert shared > 50  # --target, --json, --force, the groups, --reference, --preprocess, --model ... really compared
    for flag, own in PER_COMMAND.items():  # each exception names a command that takes the flag
        assert own and all(flag in cmds[c] for c in own), flag


def test_verify_profile_and_bundle_share_the_reference_and_preprocess_options():
    verify, profile, bundle, export = (_options(c) for c in ("verify", "profile", "bundle", "export"))
    assert verify["--reference"] == profile["--reference"] == bundle["--reference"] != export["--reference"]
    assert verify["--preprocess"] == export["--preprocess"] == bundle["--preprocess"]
    assert export["--min-accel-coverage"] == profile["--min-accel-coverage"]
