"""The fp32 bundle of a tied-embedding model stores the table once: lm_head is a Gemm (transB) over the embedding's initializer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from fixtures.llm import save_lm  # noqa: E402

V, H = 512, 64  # the table is the largest matrix, as in SmolLM / Qwen2.5-0.5B


@pytest.mark.slow
def test_fp32_tied_bundle_holds_one_table_and_generates_with_onnxruntime_genai(runner, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    folder = save_lm(tmp_path / "llama", "llama", vocab_size=V, hidden_size=H, intermediate_size=128, tie_word_embeddings=True)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["export"]["passed"]  # logits against transformers, prefill and cached steps
    gen = res["generation"]
    assert gen["runtime"] == "onnxruntime-genai" and gen["identical"] == gen["prompts"] == 3 and gen["passed"]
    m = onnx.load(str(out / "model.onnx"))
    tables = [t for t in m.graph.initializer if int(np.prod(t.dims)) == V * H]
    assert [tuple(t.dims) for t in tables] == [(V, H)]  # after optimize too: one copy, not E and E^T
    head = [n for n in m.graph.node if n.op_type == "Gemm" and n.input[1] == tables[0].name]
    assert len(head) == 1 and any(a.name == "transB" and a.i == 1 for a in head[0].attribute)
    assert any(n.op_type == "Gather" and n.input[0] == tables[0].name for n in m.graph.node)
    assert (out / "model.onnx").stat().st_size < 1.5 * 4 * V * H + 4 * sum(  # the other weights once, the table once
        int(np.prod(t.dims)) for t in m.graph.initializer if t is not tables[0])
