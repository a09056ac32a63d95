"""A bundle's ONNX graph whose external data points outside the bundle ('../x', an absolute path) is refused by the
one bundle reader before onnxruntime opens it: onnxruntime checks this itself only from 1.24 (edgeq allows >= 1.20),
so ``edgeq verify``/``profile``/``generate`` must not leave it to onnxruntime. The manifest lists every file with its
checksum, as a stranger's bundle would."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from edgeq.bundles.reader import write_manifest
from edgeq.cli import app
from tests.bundles import build
from tests.robustness.failsafe import assert_fails_safely


@pytest.fixture
def opened(monkeypatch):
    """The paths onnxruntime was asked to open in this process."""
    import onnxruntime

    seen: list[str] = []
    real = onnxruntime.InferenceSession

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, path_or_bytes, *args, **kwargs):
            seen.append("<bytes>" if isinstance(path_or_bytes, bytes) else str(path_or_bytes))
            super().__init__(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Recording)
    return seen


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_leaving_the_bundle_is_refused_before_onnxruntime_opens_it(runner, tmp_path, opened, where):
    out = build(tmp_path / "b", external_data_threshold=1024)
    data = out / "model.onnx.data"
    assert data.is_file()
    outside = tmp_path / "outside.data"  # the same bytes, beside the bundle: a file the bundle must not read
    shutil.move(data, outside)
    location = "../outside.data" if where == "parent" else str(outside)
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(out / "model.onnx"))
    write_manifest(out, json.loads((out / "manifest.json").read_text()), kind="onnx")
    for args in (["verify", str(out), "--model", "onnx"], ["profile", str(out)]):
        line = assert_fails_safely(runner, args, None, "model.onnx", "outside the model folder")
        assert "outside.data" in line
    assert not [p for p in opened if p.endswith("model.onnx")], opened


def test_a_bundle_with_its_own_external_data_still_verifies(runner, tmp_path, opened):
    """Control: the honest bundle (model.onnx + model.onnx.data) verifies and onnxruntime opens model.onnx."""
    out = build(tmp_path / "b", external_data_threshold=1024)
    r = runner.invoke(app, ["verify", str(out), "--model", "onnx"])
    assert r.exit_code == 0, r.output
    assert any(p.endswith("model.onnx") for p in opened), opened
