"""A qnn-htp LLM bundle compiles a QNN context for the prefill graph too, beside the step graph's, from the shared weights file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn not installed")
def test_the_prefill_graph_gets_its_own_qnn_context(runner, tmp_path):
    from edgeq.bundles.reader import validate_manifest
    from edgeq.cli import app
    from fixtures.llm import save_lm

    folder = save_lm(tmp_path / "llama", "llama")
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.random.default_rng(0).integers(3, vocab, (4, 16)))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--quant", "int8-weight",
                            "--calib", str(calib), "--no-profile", "-o", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest, "genai")
    step, pre = manifest["model"]["ep_context"], manifest["model"]["prefill"].get("ep_context")
    assert step["model"] == "model_ctx.onnx" and pre is not None and pre["model"] == "prefill_ctx.onnx", pre
    assert not set(step["files"]) & set(pre["files"])  # two contexts, side by side
    for f in pre["files"]:
        assert f in manifest["files"], f  # checksummed like every bundle file
    ctx = onnx.load(str(out / "prefill_ctx.onnx"), load_external_data=False)
    assert any(n.op_type == "EPContext" for n in ctx.graph.node)
    ids = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in ctx.graph.input}["input_ids"]
    assert ids[1] > 1  # the prompt's chunk, not the one-token step
