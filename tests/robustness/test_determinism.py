"""Issue 8, item 13: the same export twice gives byte-identical quantized models and archives.

Measured timings differ from run to run, so they live in the sidecar
``<out>.profile.json`` beside the bundle; everything inside the bundle (and so
the archive) is a function of the inputs.
"""

from __future__ import annotations

import json
import tarfile
import zipfile

import numpy as np
import pytest

from edgeq.cli import app

from tests.bundles import build, keypair
from tests.models import snapshot


@pytest.mark.slow
def test_export_twice_gives_identical_models_bundles_and_archives(runner, cnn, cnn_calib, tmp_path):
    key, pub = keypair(tmp_path / "k.pem")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(10)))
    pre = tmp_path / "pre.toml"
    pre.write_text("[inputs.x]\nlayout = 'NCHW'\nscale = 0.5\n[outputs.y]\nlabels = true\n")
    outs = []
    for run in ("one", "two"):
        out = tmp_path / run / "app"
        r = runner.invoke(app, [
            "export", str(cnn), "--target", "arm64", "--calib", str(cnn_calib), "-o", str(out),
            "--archive", "tar.gz", "--json", "--sign", str(key), "--bundle-version", "4",
            "--labels", str(labels), "--preprocess", str(pre),
        ])
        assert r.exit_code == 0, r.output
        outs.append(out)
    a, b = outs
    # the quantized model really is quantized, and identical
    qa = (a / "model.onnx").read_bytes()
    assert b"QuantizeLinear" in qa and qa == (b / "model.onnx").read_bytes()
    assert (a / "model.ort").read_bytes() == (b / "model.ort").read_bytes()
    assert snapshot(a) == snapshot(b)
    arc_a, arc_b = (o.with_name("app.tar.gz") for o in outs)
    assert arc_a.read_bytes() == arc_b.read_bytes()
    # the timings were measured, and kept beside the bundle, not in it
    side = [json.loads(o.with_name("app.profile.json").read_text()) for o in outs]
    assert side[0]["profile"]["quantized"]["p50_ms"] > 0
    assert side[0]["manifest_sha256"] == side[1]["manifest_sha256"]
    manifest = json.loads((a / "manifest.json").read_text())
    assert "p50_ms" not in json.dumps(manifest["profile"])
    assert manifest["profile"]["quantized"]["provider"] == "CPUExecutionProvider"
    with tarfile.open(arc_a) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and set(names) == set(manifest["files"]) | {"manifest.json", "manifest.json.sig"}
    assert all(m.isreg() and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mtime == 315532800 for m in members)
    assert all(m.mode == (0o755 if m.name == "run.py" else 0o644) for m in members)
    # the archive from export checks out on the "device", signature and all
    r = runner.invoke(app, ["verify", str(arc_a), "--pubkey", str(pub), "--min-version", "4"])
    assert r.exit_code == 0, r.output
    assert manifest["inputs"][0]["preprocess"] == {"layout": "NCHW", "scale": 0.5} and manifest["labels"]["count"] == 10


def test_bundle_command_zip_and_signature_are_reproducible(runner, cnn, tmp_path):
    key, _ = keypair(tmp_path / "k.pem")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    arcs = []
    for run in ("one", "two"):
        out = tmp_path / run / "app"
        r = runner.invoke(app, ["bundle", str(cnn), "-o", str(out), "--data", str(data), "--archive", "zip",
                                "--sign", str(key), "--bundle-version", "7", "--target", "arm64"])
        assert r.exit_code == 0, r.output
        arcs.append(out.with_name("app.zip"))
    assert arcs[0].read_bytes() == arcs[1].read_bytes()
    with zipfile.ZipFile(arcs[0]) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) and "manifest.json.sig" in names
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and not i.filename.startswith("/") for i in infos)


def test_source_date_epoch_sets_the_archive_time(tmp_path, monkeypatch):
    from edgeq.bundles.archive import write_archive

    b = build(tmp_path / "b")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    arc = write_archive(b, tmp_path / "b.tar.gz", "tar.gz")
    with tarfile.open(arc) as tf:
        assert {m.mtime for m in tf.getmembers()} == {1700000000}
