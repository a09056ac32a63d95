"""``--force`` replaces only what edgeq wrote (issue 13, item 3).

Every refusal is one line, exit 2, raised at argument time: the model is never even
opened (``open_source`` is made to fail loudly to prove it), and the path is unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import OutputExistsError
from edgeq.core.outputs import check_output_path, onnx_producer

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_fails_safely, assert_one_error_line, invoke, npz, tree


@pytest.fixture
def no_work(monkeypatch):
    """Any command that gets as far as opening the model fails the test."""
    import edgeq.core.isolate

    def boom(*a, **k):
        raise AssertionError("the command started work before refusing the output path")

    monkeypatch.setattr(edgeq.core.isolate, "open_source", boom)


@pytest.fixture
def proj(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    model = make_cnn(d / "cnn.onnx")
    calib = npz(d / "calib.npz", **cnn_data(16, seed=1))
    return model, calib


def _export(model, calib, out, *extra):
    return ["export", model, "--calib", calib, "-o", out, "--no-profile", "--golden", "1", "--force", *extra]


def test_force_refuses_a_folder_of_the_users_files(runner, proj, tmp_path, no_work):
    model, calib = proj
    out = tmp_path / "docs"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "sub" / "data.csv").write_text("1,2,3")
    line = assert_fails_safely(runner, _export(model, calib, out), out, "not an edgeq bundle", "--force replaces only what edgeq wrote")
    assert str(out) in line


@pytest.mark.slow
def test_force_refuses_an_edgeq_bundle_the_user_added_files_to(runner, proj, tmp_path):
    model, calib = proj
    out = tmp_path / "bundle"
    assert invoke(runner, *_export(model, calib, out)).exit_code == 0
    (out / "my-notes.txt").write_text("keep me")
    assert_fails_safely(runner, _export(model, calib, out), out, "my-notes.txt", "does not list")
    (out / "my-notes.txt").unlink()
    r = invoke(runner, *_export(model, calib, out))  # an untouched edgeq bundle is replaced
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("where", [".", "..", "home"])
def test_force_refuses_the_current_parent_and_home_folders(runner, proj, tmp_path, monkeypatch, where, no_work):
    model, calib = proj
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("x")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    out = {"." : Path("."), "..": Path(".."), "home": tmp_path / "a"}[where]
    before = tree(tmp_path / "a")
    r = invoke(runner, *_export(model, calib, out))
    assert r.exit_code == 2, r.output
    assert_one_error_line(r.stderr, "home folder" if where in ("..", "home") else "current folder")
    assert tree(tmp_path / "a") == before


def test_the_root_and_home_folders_are_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for path, words in ((Path("/"), "root folder"), (tmp_path, "home folder")):
        with pytest.raises(OutputExistsError) as e:
            check_output_path(path, force=True, is_dir=True)
        assert words in e.value.one_line()


def test_force_refuses_the_folder_holding_the_inputs(runner, proj, no_work):
    model, calib = proj
    folder = model.parent
    assert_fails_safely(runner, _export(model, calib, folder), folder, "holds or lies inside the input")


def test_force_refuses_a_folder_inside_an_input_folder(runner, tmp_path, no_work):
    model = make_cnn(tmp_path / "cnn.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    np.save(calib / "000.npy", cnn_data(4)["x"])
    out = calib / "out"
    out.mkdir()  # empty: would be replaceable, but it is inside the calibration folder
    assert_fails_safely(runner, _export(model, calib, out), calib, "lies inside the input")


def test_force_refuses_a_symlink_as_output(runner, proj, tmp_path, no_work):
    model, calib = proj
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert_fails_safely(runner, _export(model, calib, link), real, "symbolic link")
    assert link.is_symlink()


def test_quantize_and_keygen_refuse_to_replace_a_folder_with_a_file(runner, proj, tmp_path, no_work):
    model, calib = proj
    tree_dir = tmp_path / "tree"
    (tree_dir / "x").mkdir(parents=True)
    (tree_dir / "x" / "f.txt").write_text("data")
    assert_fails_safely(runner, ["quantize", model, "-o", tree_dir, "--calib", calib, "--force"], tree_dir, "is a folder")
    assert_fails_safely(runner, ["keygen", "-o", tree_dir, "--force"], tree_dir, "is a folder")


@pytest.mark.slow
def test_quantize_and_keygen_replace_only_their_own_files(runner, proj, tmp_path):
    model, calib = proj
    q = tmp_path / "q.onnx"
    args = ["quantize", model, "-o", q, "--calib", calib, "--calib-samples", "8"]
    assert invoke(runner, *args).exit_code == 0
    assert onnx_producer(q) == "edgeq"
    import onnxruntime as ort

    ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])  # the stamped copy is a valid model
    assert invoke(runner, *args, "--force").exit_code == 0  # edgeq's own model: replaced
    # a model edgeq did not write (the user's fp32 one, copied under the output name) is not
    q.write_bytes(model.read_bytes())
    assert_fails_safely(runner, [*args, "--force"], q, "is not a file edgeq wrote")

    key = tmp_path / "signing.pem"
    assert invoke(runner, "keygen", "-o", key).exit_code == 0
    assert invoke(runner, "keygen", "-o", key, "--force").exit_code == 0
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot ours\n-----END PRIVATE KEY-----\n")
    assert_fails_safely(runner, ["keygen", "-o", key, "--force"], key, "not an Ed25519 key")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    assert_fails_safely(runner, ["keygen", "-o", other, "--force"], other, "not a file edgeq wrote")


def test_force_replaces_an_empty_folder(runner, proj, tmp_path):
    model, calib = proj
    out = tmp_path / "empty"
    out.mkdir()
    r = invoke(runner, *_export(model, calib, out))
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file()


@pytest.mark.slow
def test_archive_and_sidecar_are_replaced_only_if_edgeq_wrote_them(runner, proj, tmp_path):
    model, calib = proj
    out = tmp_path / "b"
    args = ["export", model, "--calib", calib, "-o", out, "--golden", "1", "--archive", "zip", "--force"]
    assert invoke(runner, *args, budget_s=120).exit_code == 0
    assert invoke(runner, *args, budget_s=120).exit_code == 0  # everything edgeq's: replaced
    zip_path = tmp_path / "b.zip"
    zip_path.write_bytes(b"PK\x03\x04 the user's own zip")
    assert_fails_safely(runner, args, zip_path, "archive", "not a bundle archive edgeq wrote")


def test_profile_html_replaces_only_an_edgeq_report(runner, proj, tmp_path):
    model, _ = proj
    html = tmp_path / "report.html"
    args = ["profile", model, "--html", html, "--runs", "3", "--warmup", "0", "--budget", "0.2"]
    assert invoke(runner, *args).exit_code == 0
    assert invoke(runner, *args).exit_code == 0  # edgeq's report: replaced
    html.write_text("<html>my page</html>")
    assert_fails_safely(runner, args, html, "--html report", "not a file edgeq wrote")
    os.remove(html)
    html.mkdir()
    assert_fails_safely(runner, args, html, "is a folder")


def test_quantize_with_external_data_replaces_only_its_own_pair(runner, tmp_path, monkeypatch):
    from edgeq.core.onnxutil import EXTERNAL_DATA_ENV, load_model

    from tests.large_models import make_linear_stack

    src = make_linear_stack(tmp_path / "stack.onnx", (64, 128, 10))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "4096")  # every weight goes to q.onnx.data
    out = tmp_path / "o" / "q.onnx"
    args = ["quantize", src, "-o", out, "--quant", "int8-dynamic"]
    assert invoke(runner, *args).exit_code == 0
    assert invoke(runner, *args, "--force").exit_code == 0
    assert onnx_producer(out) == "edgeq" and sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]
    load_model(out)  # the stamped copy still points at its data file
    data = out.with_name("q.onnx.data")
    out.unlink()  # the data file alone: no edgeq model beside it says edgeq wrote it
    assert_fails_safely(runner, [*args, "--force"], data, "external data file", "not the external data of a model edgeq wrote")
