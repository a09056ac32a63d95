"""The fused KV-cache decoder (GroupQueryAttention targets): rotary inside the kernel, packed projections,
one-kernel norms, and the onnxruntime-genai bundle that shares its KV buffers; checked against transformers."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeq.bundles.genai import bundle_files, hf_greedy  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from fixtures.llm import make_lm, save_lm  # noqa: E402

FUSED = dict(hidden_size=64, head_dim=16)  # onnxruntime's CPU GroupQueryAttention: head size a multiple of 16


def _ref(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


@pytest.mark.parametrize("kind, extra", [("llama", {}), ("qwen2", {}), ("phi3", {}), ("phi3", {"partial_rotary_factor": 0.5}),
                                         ("phi3", {"partial_rotary_factor": 0.5, "hidden_size": 128, "head_dim": 32}), ("gemma2", {}), ("gemma3", {})])
def test_fused_decoder_packs_projections_and_rotates_in_the_kernel(kind, extra, tmp_path):
    model = make_lm(kind, **{**FUSED, **extra})
    art, check, arch = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    m = onnx.load(str(art.path))
    ops = collections.Counter(n.op_type for n in m.graph.node)
    L = arch.layers
    # one MatMul for q/k/v, one for gate/up: o, down and the head make 4 per layer + 1 (a tied head: a Gemm over the table)
    assert ops["MatMul"] + ops["Gemm"] == 4 * L + 1 and ops["Gemm"] == int(arch.tied) and ops["GroupQueryAttention"] == L
    gqa = [n for n in m.graph.node if n.op_type == "GroupQueryAttention"]
    inits = {t.name for t in m.graph.initializer}
    # partial rotary: inside the kernel when its width is a multiple of 16 (head 32, 16 dims), else plain ops (head 16, 8 dims)
    partial = arch.rotary_dim not in (0, arch.head_dim) and arch.rotary_dim % 16 != 0
    if extra.get("head_dim") == 32:
        assert arch.rotary_dim == 16 and not partial  # the case that puts partial rotary in the kernel
    for n in gqa:
        rotary = next(a.i for a in n.attribute if a.name == "do_rotary")
        assert rotary == (0 if partial else 1)
        if not partial:  # cos/sin caches (constants) and the graph's position_ids feed the kernel
            assert n.input[7] in inits and n.input[8] in inits and n.input[9] == "position_ids"
        if not partial and not arch.qk_norm:
            assert n.input[1] == n.input[2] == ""  # packed q/k/v straight from the one MatMul
    assert (ops["Cos"] == 0) == (not partial)
    # every hidden-size RMSNorm is one kernel (q/k norms of gemma3 stay plain ops)
    norms = 2 * L + 1 + (2 * L if arch.post_norms else 0)
    assert ops["SkipSimplifiedLayerNormalization"] == norms
    if not arch.qk_norm:
        assert ops["ReduceMean"] == 0
    # numerics: prefill + cached steps equal transformers, and the kernel reads position_ids
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, 300, (1, 20), dtype=np.int64)
    ref = _ref(model, ids)
    assert ref.std() > 0.3
    assert np.abs(D.decode_with_cache(sess, ids, 6) - ref).max() < 1e-3
    feed = D.prefill_feed(sess.get_inputs(), ids[:, :19])
    outs = [o.name for o in sess.get_outputs()]
    res = dict(zip(outs, sess.run(None, feed)))
    step = {"input_ids": ids[:, 19:], "attention_mask": np.ones((1, 20), np.int64), "position_ids": np.array([[19]])}
    step.update({n: res[n.replace("past_key_values.", "present.")] for n in art.io.input_names if n.startswith("past_key_values.")})
    assert np.abs(sess.run(["logits"], step)[0][0, 0] - ref[0, 19]).max() < 1e-3
    step["position_ids"] = np.array([[3]])
    assert np.abs(sess.run(["logits"], step)[0][0, 0] - ref[0, 19]).max() > 1e-2


def test_plain_decoder_keeps_separate_projections_and_concat_cache(tmp_path):
    model = make_lm("llama", **FUSED)
    art, _, arch = D.export_hf_decoder(model, tmp_path / "p.onnx", load_target("openvino-cpu"))  # no GroupQueryAttention kernel
    ops = collections.Counter(n.op_type for n in onnx.load(str(art.path)).graph.node)
    assert ops["GroupQueryAttention"] == 0 and ops["SkipSimplifiedLayerNormalization"] == 0
    assert ops["MatMul"] == 7 * arch.layers + 1 + 2 * arch.layers  # q, k, v, o, gate, up, down + head + 2 attention products
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(art.path)).graph.node)


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_fused_bundle_shares_kv_buffers_and_generates_like_transformers(kind, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    folder = save_lm(tmp_path / kind, kind, **FUSED)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    out = tmp_path / "b"
    out.mkdir()
    D.export_hf_decoder(model, out / "model.onnx", load_target("cpu-x86_64"))
    files, notes = bundle_files(folder, out / "model.onnx")
    for name, data in files:
        (out / name).write_bytes(data)
    cfg = json.loads((out / "genai_config.json").read_text())
    assert cfg["search"]["past_present_share_buffer"] is True and any("shared" in n for n in notes)
    assert "position_ids" in cfg["model"]["decoder"]["inputs"]
    m = og.Model(str(out))
    rng = np.random.default_rng(0)
    for n in (5, 40):  # the shared max-length cache is written in place over 40 new tokens
        ids = rng.integers(3, 300, n).tolist()
        p = og.GeneratorParams(m)
        p.set_search_options(do_sample=False, max_length=n + 40)
        g = og.Generator(m, p)
        g.append_tokens(ids)
        while not g.is_done():
            g.generate_next_token()
        want = hf_greedy(model, [ids], 40)[0]
        want = want[: want.index(2)] if 2 in want else want
        assert list(g.get_sequence(0))[n:] == want and len(want) >= 8
    # a plain-ops decoder concatenates: its bundle must not share
    D.export_hf_decoder(model, tmp_path / "plain.onnx", load_target("openvino-cpu"))
    plain = json.loads(dict(bundle_files(folder, tmp_path / "plain.onnx")[0])["genai_config.json"])
    assert plain["search"]["past_present_share_buffer"] is False


def test_awq_folds_into_fused_norms_and_the_packed_gate_up(tmp_path):
    """AWQ on the fused decoder: q/k/v, gate/up and the head fold 1/s into SkipSimplifiedLayerNormalization's
    weight, down_proj into the up columns of the packed gate/up MatMul (through the Split); only o_proj
    (behind GroupQueryAttention) needs a Mul. Folding random scales leaves the float model's logits unchanged."""
    from onnx import numpy_helper

    from edgeq.quantization.weight_only import awq_graph

    model = make_lm("llama", **FUSED)
    art, _, arch = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    m = onnx.load(str(art.path))
    inits = {i.name: i for i in m.graph.initializer}
    members = [(i, n.input[1], int(inits[n.input[1]].dims[0])) for i, n in enumerate(m.graph.node)
               if n.op_type == "MatMul" and n.input[1] in inits]
    feed = D.prefill_feed(ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"]).get_inputs(),
                          np.random.default_rng(0).integers(0, 300, (1, 12)))
    groups = awq_graph.check_folds(m, awq_graph.plan(m, members), feed)
    kinds = collections.Counter(g.fold.what if g.fold else "mul" for g in groups)
    L = arch.layers
    assert kinds == {"norm": 2 * L + 1, "matmul": L, "mul": L}, kinds
    inter = model.config.intermediate_size
    for g in groups:
        if g.fold is not None and g.fold.what == "matmul":  # the up half of gate_up: columns inter .. 2 inter
            assert g.fold.starts == (inter,) and "gate_up" in g.fold.inits[0][0]
    rng = np.random.default_rng(1)
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in m.graph.initializer}
    for g in groups:
        if g.fold is not None:
            k = members[[x[0] for x in members].index(g.members[0])][2]
            awq_graph.apply(arrays, g, np.exp(rng.uniform(-1, 1, k)).astype(np.float32))
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    for i in m2.graph.initializer:
        i.CopyFrom(numpy_helper.from_array(arrays[i.name], i.name))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    got = ort.InferenceSession(m2.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    gu = next(n for n in arrays if "gate_up" in n)
    assert not np.allclose(arrays[gu][:, inter:], numpy_helper.to_array(inits[gu])[:, inter:])
