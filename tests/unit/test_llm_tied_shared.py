"""Tied embeddings under weight-only quantization: one packed copy read by GatherBlockQuantized and MatMulNBits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgeq.core.onnxutil import artifact_from  # noqa: E402
from edgeq.exporters.decoder import arch_from_config, build_decoder, empty_past, prefill_feed  # noqa: E402
from edgeq.quantization import quantize  # noqa: E402
from edgeq.quantization.spec import QuantSpec, parse_overrides  # noqa: E402
from edgeq.quantization.weight_only import quantizer as wq  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

V, D = 1024, 64  # the embedding dominates, as in SmolLM / Qwen2.5-0.5B


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    model = make_lm("llama", vocab_size=V, hidden_size=D, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    out = tmp_path_factory.mktemp("tied") / "fp32.onnx"
    build_decoder(arch_from_config(model.config), model.state_dict(), out)
    return out


def _logits(path, ids):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = prefill_feed(s.get_inputs(), ids)
    return s.run(["logits"], feed)[0]


def _ids():
    return np.random.default_rng(1).integers(0, V, (1, 12)).astype(np.int64)


def _shared_nodes(path, vocab=V):
    """(model, its GatherBlockQuantized nodes, its MatMulNBits nodes with N = vocab)."""
    m = onnx.load(str(path))
    gq = [n for n in m.graph.node if n.op_type == "GatherBlockQuantized"]
    head = [n for n in m.graph.node if n.op_type == "MatMulNBits" and int(next(a.i for a in n.attribute if a.name == "N")) == vocab]
    return m, gq, head


@pytest.mark.parametrize("spec_kw, bits", [
    (dict(mode="int4"), 4),
    (dict(mode="int4", symmetric=True), 4),  # no zero points: both ops take the implicit middle code
    (dict(mode="int4", overrides=parse_overrides(["embed=int8-weight"])), 8),
    (dict(mode="int4", scale_dtype="float16"), 4),
])
def test_tied_copy_is_stored_once_and_matches_the_unshared_graph(tied, tmp_path, monkeypatch, spec_kw, bits):
    spec = QuantSpec(accuracy_level=0, **spec_kw)
    res = quantize(artifact_from(tied), spec, tmp_path / "shared.onnx")
    m, gq, head = _shared_nodes(tmp_path / "shared.onnx")
    assert len(gq) == 1 and len(head) == 1
    assert next(a.i for a in gq[0].attribute if a.name == "bits") == bits == next(a.i for a in head[0].attribute if a.name == "bits")
    producer = {o: n for n in m.graph.node for o in n.output}
    rows = producer[gq[0].input[0]]
    assert rows.op_type == "Reshape" and rows.input[0] == head[0].input[1]  # the very same codes
    assert gq[0].input[2:] == head[0].input[2:4 if len(head[0].input) > 3 else 3]  # scales (and zero points) too
    big = [i for i in m.graph.initializer if int(np.prod(i.dims)) >= V * D * bits // 8]
    assert len(big) == 1, [i.name for i in big]  # one [vocab, hidden] copy in the file, not two
    emb = next(d for d in res.decisions if d.role == "embed")
    assert res.sizes["bytes"]["embedding_codes"] == res.sizes["bytes"]["embedding_scales"] == 0  # counted once, as lm_head's
    assert emb.bytes_quant == 0 and "shared" in emb.reason and any(n.startswith("tied embedding") for n in res.notes)
    # the same codes stored twice (sharing switched off) give the same logits: the layouts agree in onnxruntime
    monkeypatch.setattr(wq, "find_tied", lambda *a, **k: None)
    kw = dict(spec_kw)
    kw["overrides"] = parse_overrides([f"embed={'int4' if bits == 4 else 'int8-weight'}", f"lm_head={'int4' if bits == 4 else 'int8-weight'}"])
    apart = quantize(artifact_from(tied), QuantSpec(accuracy_level=0, **{k: v for k, v in kw.items() if k != "mode"}, mode="int4"),
                     tmp_path / "apart.onnx")
    assert len(_shared_nodes(tmp_path / "apart.onnx")[1]) == 1
    assert next(d for d in apart.decisions if d.role == "embed").bytes_quant > 0
    a, b = _logits(tmp_path / "shared.onnx", _ids()), _logits(tmp_path / "apart.onnx", _ids())
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # the old default (8-bit table + 4-bit lm_head, written apart) is larger by about the 8-bit table
    old = quantize(artifact_from(tied), QuantSpec(accuracy_level=0, **{k: v for k, v in spec_kw.items() if k != "overrides"}),
                   tmp_path / "old.onnx")
    assert next(d for d in old.decisions if d.role == "embed").mode == "int8-weight"
    saved = (tmp_path / "old.onnx").stat().st_size - (tmp_path / "shared.onnx").stat().st_size
    assert saved > 0.9 * V * D * (1 if bits == 4 else 0.5), saved
    # near fp32 (a wrong layout decorrelates), about as near as the old default (random weights: int4 is coarse here)
    ref = _logits(tied, _ids())
    corr = [np.corrcoef(x.ravel(), ref.ravel())[0, 1] for x in (a, _logits(tmp_path / "old.onnx", _ids()))]
    assert corr[0] > 0.6 and corr[0] > corr[1] - 0.1, corr


@pytest.mark.parametrize("algo", ["gptq", "awq"])
def test_calibrated_codes_serve_the_gather_and_kept_embeddings_are_not_shared(tied, tmp_path, algo):
    from edgeq.core.data import SampleSet

    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (4, 16)).astype(np.int64)
    sess = ort.InferenceSession(str(tied), providers=["CPUExecutionProvider"])
    feeds = [prefill_feed(sess.get_inputs(), ids[i : i + 1]) for i in range(len(ids))]
    data = SampleSet({k: np.stack([f[k] for f in feeds]) for k in feeds[0]}, {k: True for k in feeds[0]}, None, "windows")
    res = quantize(artifact_from(tied), QuantSpec(mode="int4", algo=algo, accuracy_level=0), tmp_path / "g.onnx", data=data)
    _, gq, head = _shared_nodes(tmp_path / "g.onnx")
    assert len(gq) == 1 and any(n.startswith("tied embedding") for n in res.notes)
    # the gathered rows are lm_head's GPTQ codes, dequantized
    m = onnx.load(str(tmp_path / "g.onnx"))
    m.graph.output.append(onnx.helper.make_tensor_value_info(gq[0].output[0], onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ids1 = _ids()
    rows = s.run([gq[0].output[0]], prefill_feed(s.get_inputs(), ids1))[0][0]
    w = _matmulnbits_weight(m, head[0], D, V)  # what lm_head multiplies by, read back through onnxruntime
    np.testing.assert_allclose(rows, w.T[ids1[0]], atol=1e-5)
    # and they are the embedding's rows (AWQ puts no scale into the shared copy: it would scale the embedding too)
    emb = next(onnx.numpy_helper.to_array(i) for i in onnx.load(str(tied)).graph.initializer if i.name == "embed_tokens.weight")
    assert np.abs(rows - emb[ids1[0]]).mean() < 0.15 * np.abs(emb).mean()
    k = quantize(artifact_from(tied), QuantSpec(mode="int4", accuracy_level=0, keep=("embed",)), tmp_path / "k.onnx")
    assert not any(n.startswith("tied embedding") for n in k.notes) and not _shared_nodes(tmp_path / "k.onnx")[1]


def _matmulnbits_weight(model, node, k, n):
    """The [K, N] weight a MatMulNBits node computes with: its output on the identity."""
    from onnx import TensorProto, helper

    inits = [i for i in model.graph.initializer if i.name in node.input]
    g = helper.make_graph([helper.make_node(node.op_type, list(node.input), ["y"], domain=node.domain,
                                            **{a.name: helper.get_attribute_value(a) for a in node.attribute})],
                          "w", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, [k, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])], inits)
    mm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    mm.ir_version = 8
    s = ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["y"], {node.input[0]: np.eye(k, dtype=np.float32)})[0]


def test_onnxruntime_genai_generates_from_a_tied_int4_bundle(runner, tmp_path):
    import json

    og = pytest.importorskip("onnxruntime_genai")
    from edgeq.cli import app
    from fixtures.llm import save_lm

    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64, tie_word_embeddings=True)
    np.savez(tmp_path / "c.npz", input_ids=np.random.default_rng(0).integers(3, 300, (8, 16)).astype(np.int64))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int4", "--calib", str(tmp_path / "c.npz"),
                            "--no-profile", "-o", str(out), "--json"])
    res = json.loads(r.stdout)
    assert any(n.startswith("tied embedding") for n in res["notes"]), res["notes"]
    _, gq, head = _shared_nodes(out / "model.onnx", 300)
    assert len(gq) == 1 and len(head) == 1 and next(a.i for a in gq[0].attribute if a.name == "bits") == 4
    gen = res["generation"]
    assert gen["runtime"] == "onnxruntime-genai" and gen["prompts"] == 3 and 0 < gen["agreement"] <= 1
    # onnxruntime-genai itself loads the shared graph and generates
    m = og.Model(str(out))
    params = og.GeneratorParams(m)
    params.set_search_options(do_sample=False, max_length=12)
    g = og.Generator(m, params)
    g.append_tokens([1, 5, 9, 40])
    while not g.is_done():
        g.generate_next_token()
    assert len(g.get_sequence(0)) > 4



def test_an_untied_lm_head_keeps_its_own_copy(tmp_path):
    model = make_lm("llama", vocab_size=V, hidden_size=D, tie_word_embeddings=False)
    src = tmp_path / "untied.onnx"
    build_decoder(arch_from_config(model.config), model.state_dict(), src)
    res = quantize(artifact_from(src), QuantSpec(mode="int4", accuracy_level=0), tmp_path / "q.onnx")
    m, gq, head = _shared_nodes(tmp_path / "q.onnx")
    assert not any(n.startswith("tied embedding") for n in res.notes)
    assert next(a.i for a in gq[0].attribute if a.name == "bits") == 8 and gq[0].input[0] not in {o for n in m.graph.node for o in n.output}
    assert next(d for d in res.decisions if d.role == "embed").bytes_quant == V * D + V * (D // 32) * (4 + 1)  # 8-bit codes, float32 scales, uint8 zero points
