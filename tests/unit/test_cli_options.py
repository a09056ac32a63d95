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


def test_a_command_without_the_group_parameter_is_refused():
    from edgeq.cli.options import quant_options

    with pytest.raises(TypeError, match="'q' must be a parameter"):
        quant_options(lambda out: None)
