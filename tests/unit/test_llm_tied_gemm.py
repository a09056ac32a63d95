"""A tied head that reads the embedding's own initializer (Gemm, transB) and is quantized apart from it: the table stays exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgeq.core.data import SampleSet  # noqa: E402
from edgeq.core.onnxutil import artifact_from  # noqa: E402
from edgeq.exporters.decoder import arch_from_config, build_decoder, prefill_feed  # noqa: E402
from edgeq.quantization import quantize  # noqa: E402
from edgeq.quantization.spec import QuantSpec  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

V, D = 512, 64


@pytest.mark.parametrize("algo", ["awq", "gptq"])
def test_kept_embedding_is_not_changed_by_the_quantized_head(tmp_path, algo):
    model = make_lm("llama", vocab_size=V, hidden_size=D, tie_word_embeddings=True)
    path = build_decoder(arch_from_config(model.config), model.state_dict(), tmp_path / "fp32.onnx")
    table = next(onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == "embed_tokens.weight")
    ids = np.random.default_rng(0).integers(0, V, (4, 16)).astype(np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = [prefill_feed(sess.get_inputs(), ids[i : i + 1]) for i in range(len(ids))]
    data = SampleSet({k: np.stack([f[k] for f in feeds]) for k in feeds[0]}, {k: True for k in feeds[0]}, None, "windows")
    res = quantize(artifact_from(path), QuantSpec(mode="int4", algo=algo, accuracy_level=0, keep=("embed",)), tmp_path / "q.onnx", data=data)
    head = next(d for d in res.decisions if d.role == "lm_head")
    assert head.op == "Gemm" and head.mode == "int4"  # the head is quantized, from the table it shares with the Gather
    m = onnx.load(str(tmp_path / "q.onnx"))
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    kept = next(onnx.numpy_helper.to_array(i) for i in m.graph.initializer if i.name == gather.input[0])
    np.testing.assert_array_equal(kept, table)  # AWQ scales a weight in place: not one another node reads
    # and the quantized model stays near the float one
    ref = sess.run(["logits"], feeds[0])[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feeds[0])[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.9
