"""An LLM folder as real checkpoints ship it (bf16, sharded safetensors, tied embeddings) over the external-data
threshold (lowered here so the model is tiny): every stage keeps the weights in ``model.onnx.data``, the bundle
generates with onnxruntime-genai like transformers' fp32 greedy ``generate``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from edgeq.core.onnxutil import EXTERNAL_DATA_ENV  # noqa: E402
from fixtures.llm import make_lm, save_lm  # noqa: E402


@pytest.mark.slow
def test_bf16_sharded_tied_llm_over_the_threshold_exports_with_gptq_weights(runner, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime_genai")
    cfg = dict(hidden_size=64, head_dim=16, tie_word_embeddings=True)
    folder = save_lm(tmp_path / "qwen", "qwen2", pre="qwen2", **cfg)
    model = make_lm("qwen2", **cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="40KB")  # bf16, several shards
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    calib = tmp_path / "windows.npz"
    np.savez(calib, input_ids=np.random.default_rng(0).integers(3, 250, (8, 32)).astype(np.int64))
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "65536")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int8-weight", "--algo", "gptq",
                            "--calib", str(calib), "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["generation"]["runtime"] == "onnxruntime-genai" and res["generation"]["passed"]
    head = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ext = [t for t in head.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert ext and {e.value for t in ext for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert any(n.op_type == "MatMulNBits" for n in head.graph.node)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["onnx_external_data"] == "model.onnx.data"
    # the weights are stored once: no model.ort beside model.onnx (onnxruntime-genai and run.py read model.onnx)
    assert manifest["model"]["ort"] is None and not (out / "model.ort").exists()
