"""A model whose weights the ORT format cannot hold (one flatbuffer, 2 GiB at most; onnxruntime's converter crashed
with exit -11 on a 4.4 GB fp32 LLM) exports, profiles and bundles as model.onnx only. The limit is lowered here
(monkeypatched) so a tiny model stands in for a 1B fp32 graph."""

from __future__ import annotations

import json

import numpy as np

import edgeq.core.onnxutil as onnxutil
from edgeq.cli import app
from edgeq.core.onnxutil import EXTERNAL_DATA_ENV
from tests.large_models import make_linear_stack


def test_a_model_over_the_ort_format_limit_ships_model_onnx_only(runner, tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    src = make_linear_stack(tmp_path / "src" / "stack.onnx", (128, 128, 128, 128, 128, 10))  # 4 x 64 KB of weights
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "4096")  # weights in external data, graph files of a few KB
    monkeypatch.setattr(onnxutil, "PROTOBUF_LIMIT", 100_000)  # the weights are "over 2 GiB"
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(src), "--quant", "none", "--calib", str(calib), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["ort"] is None and manifest["model"]["ops_config"] is None
    assert not (out / "model.ort").exists() and (out / "model.onnx.data").is_file()
    res = json.loads(r.stdout)
    assert res["profile"]["quantized"] is not None  # timed as shipped: model.onnx
