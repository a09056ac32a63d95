"""Weight roles in KV-cache decoders: the head is the projection that feeds the logits, never one that feeds a present."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from edgeq.core.onnxutil import artifact_from  # noqa: E402
from edgeq.exporters.decoder import arch_from_config, build_decoder  # noqa: E402
from edgeq.quantization import quantize  # noqa: E402
from edgeq.quantization.spec import QuantSpec, parse_overrides  # noqa: E402
from edgeq.quantization.weight_only.quantizer import find_sites  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """{(kind, fused): path} for tiny untied llama and qwen2 (q/k/v biases) decoders and a tied gemma2 (soft-capped logits,
    lm_head a Gemm over the embedding), plain and fused."""
    out = {}
    for kind in ("llama", "qwen2", "gemma2"):
        model = make_lm(kind, tie_word_embeddings=kind == "gemma2")
        for fused in (False, True):
            path = tmp_path_factory.mktemp(f"{kind}{int(fused)}") / "model.onnx"
            build_decoder(arch_from_config(model.config), model.state_dict(), path, fused=fused)
            out[kind, fused] = path
    return out


def _heads(model):
    return [s.weight for s in find_sites(model) if s.role == "lm_head"]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_only_the_projection_feeding_logits_is_the_head(decoders, kind, fused):
    model = onnx.load(str(decoders[kind, fused]))
    w = "embed_tokens.weight" if kind == "gemma2" else "lm_head.weight"  # tied: the head reads the table itself
    assert _heads(model) == [w]  # not v_proj (-> present.N.value), not qkv/o/down (-> GroupQueryAttention's presents)
    # by structure, not by name: renamed, the head is still found, and still alone
    node = next(n for n in model.graph.node if w in n.input and n.op_type != "Gather")
    init = next(i for i in model.graph.initializer if i.name == w)
    for n in model.graph.node:
        n.input[:] = ["final_proj.w" if i == w else i for i in n.input]
    node.name, init.name = "final_proj", "final_proj.w"
    assert _heads(model) == ["final_proj.w"]


def test_override_lm_head_reaches_the_head_alone(decoders, tmp_path):
    res = quantize(artifact_from(decoders["llama", False]), QuantSpec(mode="int4", accuracy_level=0,
                   overrides=parse_overrides(["lm_head=int8-weight"])), tmp_path / "q.onnx")
    overridden = [d.weight for d in res.decisions if d.reason.startswith("--override lm_head")]
    assert overridden == ["lm_head.weight"]
    m = onnx.load(str(tmp_path / "q.onnx"))
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()).count(8) == 1 and sum(v == 4 for v in bits.values()) == len(bits) - 1


def test_a_cache_output_not_named_present_is_not_logits():
    """v -> Concat(past, v) -> an output named "new_cache": set apart by structure (made from a past input)."""
    rng = np.random.default_rng(0)
    w_v, w_out = (numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), n) for n in ("wv", "wo"))
    nodes = [helper.make_node("MatMul", ["x", "wv"], ["v"], name="vp"),
             helper.make_node("Concat", ["past_v", "v"], ["new_cache"], axis=1),
             helper.make_node("MatMul", ["x", "wo"], ["y"], name="out")]
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    g = helper.make_graph(nodes, "g", [f("x", [1, 2, 8]), f("past_v", [1, 0, 8])], [f("y", [1, 2, 8]), f("new_cache", [1, 2, 8])], [w_v, w_out])
    assert _heads(helper.make_model(g)) == ["wo"]
