"""Issue 13 item 6: a target file is checked key by key when it loads; one line, exit 2, before any work.

Also: ``verify`` holds an unsigned manifest that names an unknown target to the loosest
golden tolerance edgeq ships (before, an unknown name skipped the check entirely).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from edgeq.errors import BundleError, TargetError
from edgeq.core.targets import list_targets, load_target, targets_dir
from tests.bundles import build, keypair
from tests.robustness.failsafe import assert_fails_safely, invoke

BASE = (targets_dir() / "cpu-x86_64.toml").read_text()


def _target(tmp_path: Path, old: str, new: str) -> Path:
    assert re.search(old, BASE, flags=re.M), old
    p = tmp_path / "t.toml"
    p.write_text(re.sub(old, new, BASE, count=1, flags=re.M))
    return p


BAD = {
    "nan-cosine": (r"^min_cosine = .*$", "min_cosine = nan", "tolerances.min_cosine", "finite"),
    "nan-drop": (r"^max_accuracy_drop = .*$", "max_accuracy_drop = nan", "tolerances.max_accuracy_drop", "finite"),
    "inf-atol": (r"^golden_atol = .*$", "golden_atol = inf", "tolerances.golden_atol", "finite"),
    "neg-inf-rtol": (r"^golden_rtol = .*$", "golden_rtol = -inf", "tolerances.golden_rtol", "finite"),
    "string-tolerance": (r"^min_cosine = .*$", 'min_cosine = "0.99"', "tolerances.min_cosine", "number"),
    "bool-tolerance": (r"^min_cosine = .*$", "min_cosine = true", "tolerances.min_cosine", "number"),
    "negative-tolerance": (r"^export_atol = .*$", "export_atol = -1e-4", "tolerances.export_atol", "at least 0"),
    "cosine-above-one": (r"^min_cosine = .*$", "min_cosine = 2.0", "tolerances.min_cosine", "between 0 and 1"),
    "negative-threads": (r"^intra_op_num_threads = .*$", "intra_op_num_threads = -4", "session.intra_op_num_threads", "between 0"),
    "huge-threads": (r"^intra_op_num_threads = .*$", "intra_op_num_threads = 100000", "session.intra_op_num_threads", "between 0"),
    "float-threads": (r"^intra_op_num_threads = .*$", "intra_op_num_threads = 1.5", "session.intra_op_num_threads", "integer"),
    "opset-1": (r"^min = 13$", "min = 1", "opset.min", "between 7 and 30"),
    "opset-99999": (r"^max = 21$", "max = 99999", "opset.max", "between 7 and 30"),
    "opset-string": (r"^preferred = 17$", 'preferred = "17"', "opset.preferred", "integer"),
    "unknown-top-key": (r"^static_shapes = false$", "static_shapes = false\nturbo = true", "turbo", "unknown"),
    "unknown-tolerance": (r"^min_cosine = .*$", "min_cosine = 0.99\nmin_cosin = 0.5", "tolerances.min_cosin", "not a known key"),
    "unknown-session-key": (r"^intra_op_num_threads = 0$", "intra_op_num_threads = 0\ninter_op = 2", "session.inter_op", "not a known key"),
    "unknown-opset-key": (r"^preferred = 17$", "preferred = 17\nlatest = 19", "opset.latest", "not a known key"),
    "string-static-shapes": (r"^static_shapes = false$", 'static_shapes = "no"', "static_shapes", "true or false"),
    "string-per-channel": (r"^per_channel = true$", 'per_channel = "yes"', "quant.per_channel", "true or false"),
    "string-calib-samples": (r"^calib_samples = 256$", 'calib_samples = "256"', "quant.calib_samples", "integer"),
    "huge-calib-samples": (r"^calib_samples = 256$", "calib_samples = 99999999999", "quant.calib_samples", "between 1"),
    "provider-option-nan": (r'^name = "CPUExecutionProvider"$', 'name = "CPUExecutionProvider"\noptions = { x = nan }', "providers.options.x", "finite"),
    "notes-not-strings": (r"^notes = \[$", "notes = [1,", "notes", "list of strings"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_refused_naming_the_key(tmp_path, case):
    old, new, key, words = BAD[case]
    with pytest.raises(TargetError) as e:
        load_target(str(_target(tmp_path, old, new)))
    assert key in e.value.message and words in e.value.message, e.value.message
    assert e.value.exit_code == 2 and "\n" not in e.value.message


@pytest.mark.parametrize("case", ["nan-cosine", "string-tolerance", "negative-threads", "opset-99999", "unknown-top-key"])
def test_export_refuses_a_bad_target_in_one_line_before_any_work(runner, cnn, cnn_calib, tmp_path, case):
    old, new, key, _ = BAD[case]
    out = tmp_path / "out"
    assert_fails_safely(runner, ["export", cnn, "--calib", cnn_calib, "-o", out, "--target", _target(tmp_path, old, new),
                                 "--no-profile"], out, key, budget_s=20)
    assert not out.exists()


def test_shipped_targets_pass_the_checks():
    assert len(list_targets()) >= 9


def test_min_above_max_is_refused(tmp_path):
    p = _target(tmp_path, r"^min = 13$", "min = 22")
    with pytest.raises(TargetError, match="min <= preferred <= max"):
        load_target(str(p))


# ------------------------------------------------------------ verify: looser tolerance, unknown target

@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("b") / "bundle", target="cpu-x86_64")


def _edit(bundle: Path, tmp_path: Path, *, name: str, atol: float, rtol: float | None = None) -> Path:
    b = tmp_path / "edited"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["target"]["name"] = name
    m["golden"]["atol"] = atol
    if rtol is not None:
        m["golden"]["rtol"] = rtol
    (b / "manifest.json").write_text(json.dumps(m))
    return b


@pytest.mark.parametrize("name", ["cpu-x86_64", "my-device", "evil.toml"])
def test_an_unsigned_manifest_cannot_loosen_the_golden_tolerance(runner, bundle, tmp_path, name):
    b = _edit(bundle, tmp_path, name=name, atol=1e6, rtol=1e6)
    line = assert_fails_safely(runner, ["verify", b], None, "looser than", budget_s=30)
    assert ("shipped" in line) == (name != "cpu-x86_64")


def test_an_unknown_target_within_the_shipped_bounds_still_verifies(runner, bundle, tmp_path):
    b = _edit(bundle, tmp_path, name="my-device", atol=1e-4, rtol=1e-3)
    r = invoke(runner, "verify", str(b), "--json")
    assert r.exit_code == 0, r.output


def test_a_signed_manifest_for_an_unknown_target_keeps_its_publishers_tolerance(tmp_path):
    """A custom target looser than any shipped one: signed, verify --pubkey accepts it; without the signature it is refused."""
    from edgeq.bundles.bundle import check_bundle

    custom = _target(tmp_path, r"^golden_atol = .*$", "golden_atol = 0.5")
    custom.write_text(custom.read_text().replace('name = "cpu-x86_64"', 'name = "my-device"', 1))
    priv, pub = keypair(tmp_path / "key")
    b = build(tmp_path / "signed", target=str(custom), sign_key=priv)
    m = json.loads((b / "manifest.json").read_text())
    assert m["target"]["name"] == "my-device" and m["golden"]["atol"] == 0.5
    assert check_bundle(b, pubkey=pub)["signature_checked"]
    with pytest.raises(BundleError, match="looser than any target shipped with edgeq"):
        check_bundle(b)


def test_non_finite_golden_tolerance_is_refused(bundle, tmp_path):
    from edgeq.bundles.bundle import _check_tolerance

    m = json.loads((bundle / "manifest.json").read_text())
    m["target"]["name"] = "my-device"
    m["golden"]["atol"] = float("nan")
    with pytest.raises(BundleError, match="looser than"):
        _check_tolerance(m)
    m["golden"]["atol"] = 1.0
    _check_tolerance(m, signed=True)  # the signature vouches for its own target's tolerance


def test_a_fifo_or_oversized_target_file_is_one_line_and_never_hangs(runner, tmp_path, cnn):
    import os

    from edgeq.cli import app

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    for t in (fifo, big):
        r = runner.invoke(app, ["quantize", str(cnn), "-o", str(tmp_path / "q.onnx"), "--target", str(t)])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    assert "over 1 MiB" in r.stderr  # refused by its size, before the TOML parser reads it
    assert not (tmp_path / "q.onnx").exists()
