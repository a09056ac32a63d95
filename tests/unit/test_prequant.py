"""Pre-quantized GPTQ / AWQ / bitsandbytes folders: read bit-exactly, checked, imported as MatMulNBits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeq.errors import ModelError
from edgeq.exporters import prequant as pq
from fixtures.lm import TinyLlamaSpec, make_tiny_llama
from tests.prequant_fixtures import make_awq, make_bnb4, make_bnb8, make_gptq

SPEC = TinyLlamaSpec(layers=1)


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("float") / "llama", SPEC, train=False)


def _assert_same(ck: pq.PrequantCheckpoint, ref: dict[str, np.ndarray]) -> None:
    assert set(ref) <= set(ck.floats)
    for k, v in ref.items():
        got = ck.floats[k]
        assert got.dtype == np.float32 and got.shape == v.shape, k
        assert np.array_equal(got, v), (k, float(np.abs(got - v).max()))


@pytest.mark.parametrize("bits,gs,desc_act,sym,fmt", [
    (4, 32, False, True, "gptq"),
    (4, 32, True, False, "gptq_v2"),
    (4, 64, True, True, "gptq"),
    (8, 32, True, False, "gptq"),
    (4, -1, False, False, "gptq"),
    (2, 32, False, False, "gptq_v2"),
])
def test_gptq_dequantized_bit_exact_and_codes_kept(float_folder, tmp_path, bits, gs, desc_act, sym, fmt):
    ref = make_gptq(float_folder, tmp_path / "q", bits=bits, group_size=gs, desc_act=desc_act, sym=sym, fmt=fmt)
    cfg = pq.detect(tmp_path / "q")
    assert (cfg.method, cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym, cfg.checkpoint_format) == ("gptq", bits, gs, desc_act, sym, fmt)
    ck = pq.read_checkpoint(tmp_path / "q")
    _assert_same(ck, ref)
    assert len(ck.linears) == 7 * SPEC.layers and "lm_head.weight" in ck.kept_float
    for lin in ck.linears.values():
        nc = pq.nbits_codes(lin)
        assert (nc.perm is not None) == desc_act
        order = nc.perm if nc.perm is not None else np.arange(lin.k)
        # the MatMulNBits blocks hold the checkpoint's codes: same values, no re-rounding
        assert np.array_equal(nc.codes.dequantize(), lin.dequantize()[order])
        assert nc.codes.bits == bits and nc.codes.symmetric == sym and not nc.widened
        assert nc.codes.block_size == (min(256, 1 << (lin.k - 1).bit_length()) if gs == -1 else gs)


def test_gptq_v1_zero_overflow_kept_exact_with_8bit_codes(float_folder, tmp_path):
    # the v1 writer stores zero - 1; a zero of 0 leaves all ones, which the kernels read as 2**bits
    ref = make_gptq(float_folder, tmp_path / "q", bits=4, group_size=32, sym=False, fmt="gptq", zero_nibble=15)
    ck = pq.read_checkpoint(tmp_path / "q")
    _assert_same(ck, ref)
    widened = [pq.nbits_codes(lin) for lin in ck.linears.values()]
    assert all(nc.widened and nc.codes.bits == 8 for nc in widened)
    lin = next(iter(ck.linears.values()))
    assert lin.zero[0, 0] == 16 and np.array_equal(widened[0].codes.dequantize(), lin.dequantize())
    assert any("v1 zero point of 16" in n for n in ck.notes)


def test_awq_gemm_interleaved_order_bit_exact(float_folder, tmp_path):
    ref = make_awq(float_folder, tmp_path / "a", group_size=32)
    ck = pq.read_checkpoint(tmp_path / "a")
    assert ck.config.method == "awq" and ck.config.group_size == 32
    _assert_same(ck, ref)
    lin = ck.linears["model.layers.0.self_attn.q_proj"]
    nc = pq.nbits_codes(lin)
    assert nc.perm is None and nc.codes.block_size == 32 and not nc.codes.symmetric
    # a reader that ignored the interleave would put column 1's codes in column 4
    naive = pq.unpack_cols(_raw(tmp_path / "a", "model.layers.0.self_attn.q_proj.qweight"), 4)
    assert not np.array_equal(naive, lin.q)


def _raw(folder, key):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))[key]


@pytest.mark.parametrize("kind,double,dtype", [("nf4", True, "bfloat16"), ("fp4", False, "float16"), ("nf4", False, "float32")])
def test_bnb_4bit_dequantized_exactly(float_folder, tmp_path, kind, double, dtype):
    ref = make_bnb4(float_folder, tmp_path / "b", kind=kind, double_quant=double, dtype=dtype)
    cfg = pq.detect(tmp_path / "b")
    assert (cfg.method, cfg.checkpoint_format, cfg.double_quant, cfg.exact) == ("bnb-4bit", kind, double, False)
    ck = pq.read_checkpoint(tmp_path / "b")
    _assert_same(ck, ref)
    assert len(ck.quantized) == 7 * SPEC.layers and not ck.linears


def test_bnb_int8_dequantized_exactly(float_folder, tmp_path):
    ref = make_bnb8(float_folder, tmp_path / "b")
    ck = pq.read_checkpoint(tmp_path / "b")
    assert ck.config.method == "bnb-int8"
    _assert_same(ck, ref)


def _set_qc(folder, **kw):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(kw)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_format_rules_refused_in_one_line(float_folder, tmp_path):
    make_gptq(float_folder, tmp_path / "q", bits=4, group_size=32)
    _set_qc(tmp_path / "q", bits=3)
    with pytest.raises(ModelError, match="GPTQ 3-bit is not supported"):
        pq.detect(tmp_path / "q")
    _set_qc(tmp_path / "q", bits=4, group_size=64)  # the tensors were written for 32
    with pytest.raises(ModelError, match=r"down_proj.scales has shape \[8, 128\], expected \[4, 128\]") as e:
        pq.read_checkpoint(tmp_path / "q")
    assert "\n" not in e.value.one_line()
    make_awq(float_folder, tmp_path / "a")
    _set_qc(tmp_path / "a", version="gemv")
    with pytest.raises(ModelError, match="AWQ version 'gemv' is not supported"):
        pq.detect(tmp_path / "a")
    _set_qc(tmp_path / "a", quant_method="hqq")
    with pytest.raises(ModelError, match="'hqq' is not one edgeq imports"):
        pq.detect(tmp_path / "a")
    assert pq.detect(float_folder) is None


def test_group_boundaries_that_cannot_be_blocks_are_refused():
    lin = pq.QuantLinear("x", np.zeros((48, 8), np.uint8), np.ones((2, 8), np.float32), np.zeros((2, 8), np.int16),
                         np.arange(48) // 24, 4)
    with pytest.raises(ModelError, match="every 24 rows"):
        pq.nbits_codes(lin)


def _tokens(path, n=4, t=16, seed=0):
    ids = np.random.default_rng(seed).integers(0, SPEC.vocab_size, (n, t)).astype(np.int64)
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids))
    return ids


def _torch_logits(float_folder, state: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_pretrained(float_folder)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids))).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gptq-desc-act", "awq"])
def test_export_imports_the_codes_as_matmulnbits(runner, float_folder, tmp_path, fmt):
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file

    from edgeq.cli import app

    src = tmp_path / "ck"
    if fmt == "awq":
        ref = make_awq(float_folder, src, group_size=32)
    else:
        ref = make_gptq(float_folder, src, bits=4, group_size=32, desc_act=True, sym=False, fmt="gptq")
    ids = _tokens(tmp_path / "tokens.npz")
    out = tmp_path / "bundle"
    ref_opt = ["--reference", str(float_folder)] if fmt == "awq" else []
    r = runner.invoke(app, ["export", str(src), "--task", "text-generation", "--quant", "none", "--accuracy-level", "0",
                            "--calib", str(tmp_path / "tokens.npz"), "--no-profile", "-o", str(out), "--json", *ref_opt])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    model = onnx.load(str(out / "model.onnx"))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 7 * SPEC.layers
    # the fused decoder's packed q/k/v and gate/up MatMuls: one MatMulNBits per checkpoint linear, joined by a Concat
    assert sum(n.op_type == "Concat" and n.name.startswith("prequant_packed_") for n in model.graph.node) == 2 * SPEC.layers
    grouped = [n for n in model.graph.node if n.name.endswith("_group_order")]
    assert len(grouped) == (7 * SPEC.layers if fmt != "awq" else 0)
    assert all(a.i == 32 for n in nbits for a in n.attribute if a.name == "block_size")
    info = res["quantization"]["prequant"]
    assert info["method"] == ("awq" if fmt == "awq" else "gptq") and info["import"]["max_abs_diff"] == 0.0
    assert not info["import"]["unmatched"] and "lm_head.weight" in info["float_layers"]
    assert res["lm_quality"]["kl_mean"] <= 1e-5 and res["lm_quality"]["same_top_token"] == 1.0
    assert any("not re-rounded" in n for n in res["notes"])
    if ref_opt:  # against the float model the checkpoint came from: the quantization's own cost, reported
        vs = res["lm_quality_vs_reference"]
        assert vs["kl_mean"] > 10 * res["lm_quality"]["kl_mean"] and vs["tokens"] == res["lm_quality"]["tokens"]
        assert any("vs the float model (--reference)" in n for n in res["notes"])
    # logits against PyTorch holding the checkpoint's dequantized weights (and far from the original float ones)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from edgeq.exporters.decoder import prefill_feed  # text-generation exports a KV-cache decoder (issue 15)

    got = sess.run(["logits"], prefill_feed(sess.get_inputs(), ids))[0]
    want = _torch_logits(float_folder, ref, ids)
    orig = _torch_logits(float_folder, load_file(str(float_folder / "model.safetensors")), ids)
    err, err_orig = float(np.abs(got - want).max()), float(np.abs(got - orig).max())
    assert err < 1e-4 and err < 0.05 * err_orig, (err, err_orig)
    if fmt != "awq":  # the bundle re-checks on its own (checksums, golden outputs through MatMulNBits)
        r = runner.invoke(app, ["verify", str(out)])
        assert r.exit_code == 0, r.output


def test_inspect_folder_tells_format_bits_and_layers(runner, float_folder, tmp_path):
    from edgeq.cli import app

    make_gptq(float_folder, tmp_path / "q", bits=4, group_size=64, desc_act=True, sym=True)
    r = runner.invoke(app, ["inspect", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    assert "GPTQ 4-bit, group size 64, desc_act (g_idx), symmetric" in r.stdout
    assert "quantized layers (7," in r.stdout and "model.layers.N.self_attn.q_proj" in r.stdout
    assert "float layers" in r.stdout and "lm_head.weight" in r.stdout and "imported exactly" in r.stdout
    make_bnb4(float_folder, tmp_path / "b", kind="nf4", double_quant=True)
    d = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "b"), "--json"]).stdout)
    assert d["method"] == "bnb-4bit" and d["double_quant"] and not d["exact_import"] and len(d["quantized_layers"]) == 7
    r = runner.invoke(app, ["inspect", str(float_folder)])
    assert r.exit_code == 0 and "without quantization_config" in r.stdout
    r = runner.invoke(app, ["inspect", str(tmp_path)])  # no config.json
    assert r.exit_code == 2 and "no config.json" in r.stderr


@pytest.mark.slow
def test_export_bnb_nf4_is_requantized_and_says_so(runner, float_folder, tmp_path):
    import onnx

    from edgeq.cli import app

    make_bnb4(float_folder, tmp_path / "b", kind="nf4", double_quant=True, dtype="float32")
    _tokens(tmp_path / "tokens.npz")
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(tmp_path / "b"), "--task", "text-generation", "--quant", "int8-weight", "--accuracy-level", "0",
                            "--calib", str(tmp_path / "tokens.npz"), "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["prequant"]["method"] == "bnb-4bit" and res["quantization"]["prequant"]["import"] is None
    lm = res["lm_quality"]
    note = next(n for n in res["notes"] if "RE-QUANTIZED" in n)
    assert "NF4 with double quantization" in note and f"KL {lm['kl_mean']:.3g}" in note and lm["kl_mean"] > 0
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    # the linears and lm_head, by edgeq's 8-bit recipe; the fused decoder packs q/k/v and gate/up: 4 MatMuls per layer
    assert ops.count("MatMulNBits") == 4 * SPEC.layers + 1 and ops.count("GroupQueryAttention") == SPEC.layers


def test_rest_of_an_exact_import_gets_a_weight_only_mode(float_folder, tmp_path):
    make_gptq(float_folder, tmp_path / "q")
    ck = pq.read_checkpoint(tmp_path / "q")
    mode, why = pq.default_mode(ck, "int8-static", False, given=False)
    assert mode == "int4" and "--quant none" in why
    assert pq.default_mode(ck, "int8-static", False, given=True) == ("int8-static", None)
    assert pq.default_mode(ck, "int4", True, given=False) == ("int4", None)


def test_reference_must_be_a_float_folder_and_is_checked_before_export(runner, float_folder, tmp_path):
    from edgeq.cli import app

    make_awq(float_folder, tmp_path / "a")
    for ref, msg in ((tmp_path / "a", "is not a float Hugging Face folder"), (tmp_path / "nothing", "is not a float Hugging Face folder")):
        r = runner.invoke(app, ["export", str(tmp_path / "a"), "--task", "text-generation", "--reference", str(ref),
                                "--no-profile", "-o", str(tmp_path / "out")])
        assert r.exit_code == 2 and msg in r.stderr and "export (hf)" not in r.stderr, r.output
    r = runner.invoke(app, ["export", str(float_folder), "--task", "text-generation", "--reference", str(float_folder),
                            "--no-profile", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "--reference is for pre-quantized folders" in r.stderr


def test_gguf_q4_1_blocks_keep_the_codes(float_folder, tmp_path):
    gguf = pytest.importorskip("gguf")
    make_awq(float_folder, tmp_path / "a", group_size=32)
    ck = pq.read_checkpoint(tmp_path / "a")
    plan = pq.gguf_plan(ck, "q4_1")
    assert len(plan.blocks) == 7 and not plan.requantized
    for key, (kind, b) in plan.blocks.items():
        assert kind == "Q4_1"
        back = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.Q4_1)
        want = ck.floats[key]
        # the codes are the checkpoint's; only m = -scale * zero may be rounded to float16 (and is reported)
        assert np.abs(back - want).max() <= plan.rounded.get(key, 0.0) * 1.0001
        assert plan.rounded.get(key, 0.0) < 1e-3 * np.abs(want).max()
    make_gptq(float_folder, tmp_path / "d", bits=4, group_size=32, desc_act=True)
    plan = pq.gguf_plan(pq.read_checkpoint(tmp_path / "d"), "q4_0")
    assert not plan.blocks and set(plan.requantized.values()) == {"act-order g_idx (GGUF rows cannot be re-ordered)"}
    assert all(0 < e < 0.2 for e in plan.errors.values()) and len(plan.errors) == 7


@pytest.mark.slow
def test_export_gguf_writes_gptq_codes_as_exact_q4_1(runner, float_folder, tmp_path):
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")
    from edgeq.cli import app
    from edgeq.llamacpp.gguf import rotary_permute

    ref = make_gptq(float_folder, tmp_path / "q", bits=4, group_size=32, sym=True)
    out = tmp_path / "bundle"
    r = runner.invoke(app, ["export", str(tmp_path / "q"), "--target", "llamacpp-x86_64", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["quantization"]["mode"] == "q4_1" and len(res["prequant"]["gguf"]["exact"]) == 7
    assert any("7 exact" in n for n in res["notes"]) and res["verify"]["passed"]
    tensors = {t.name: t for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    for hf, gname, heads in (("self_attn.q_proj", "attn_q", SPEC.heads), ("self_attn.k_proj", "attn_k", SPEC.kv_heads),
                             ("mlp.down_proj", "ffn_down", None)):
        t = tensors[f"blk.0.{gname}.weight"]
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        want = ref[f"model.layers.0.{hf}.weight"]
        assert np.array_equal(got, rotary_permute(want, heads) if heads else want), gname


def test_import_codes_rewrites_any_graph_by_weight_values(float_folder, tmp_path):
    """The import finds a linear by its weight's values (as MatMul B, or behind a Transpose): it applies to
    whichever decoder graph the exporter wrote. Here: act-order rows and v1 zero points that need 8-bit codes."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    make_gptq(float_folder, tmp_path / "q", bits=4, group_size=32, desc_act=True, sym=False, zero_nibble=15)
    ck = pq.read_checkpoint(tmp_path / "q")
    w1 = ck.linears["model.layers.0.self_attn.q_proj"].dequantize()  # [128, 128]
    w2 = ck.linears["model.layers.0.mlp.down_proj"].dequantize()  # [256, 128]
    other = np.random.default_rng(1).normal(size=(128, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y1"]),
        helper.make_node("Transpose", ["w2_hf"], ["w2_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "w2_t"], ["y2"]),
        helper.make_node("MatMul", ["x", "other"], ["y3"]),
        helper.make_node("MatMul", ["x", "w1"], ["y4"]),  # a second reader of the same weight
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.ascontiguousarray(w2.T), "w2_hf"),
             numpy_helper.from_array(other, "other")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 128]), helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 5, 256])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, d]) for n, d in (("y1", 128), ("y2", 128), ("y3", 8), ("y4", 128))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rep = pq.import_codes(model, ck, accuracy_level=0)
    assert set(rep.imported) == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"}
    assert rep.permuted == 2 and rep.widened == 2 and rep.max_abs_diff == 0.0
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 3 and ops.count("MatMul") == 1 and "Transpose" not in ops and ops.count("Gather") == 2
    assert sum(i.name.endswith("_B") for i in model.graph.initializer) == 2  # codes stored once per linear
    assert all(a.i == 8 for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits")
    onnx.checker.check_model(model)
    rng = np.random.default_rng(2)
    x, h = rng.normal(size=(2, 5, 128)).astype(np.float32), rng.normal(size=(2, 5, 256)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2, y3, y4 = sess.run(None, {"x": x, "h": h})
    assert np.array_equal(y1, y4)
    np.testing.assert_allclose(y1, x @ w1, atol=1e-4)
    np.testing.assert_allclose(y2, h @ w2, atol=1e-4)
    np.testing.assert_allclose(y3, x @ other, atol=1e-4)


def test_gguf_nf4_goes_to_iq4_nl_and_says_it_is_a_requantization(float_folder, tmp_path):
    gguf = pytest.importorskip("gguf")
    make_bnb4(float_folder, tmp_path / "b", kind="nf4", double_quant=True, dtype="float32")
    ck = pq.read_checkpoint(tmp_path / "b")
    plan = pq.gguf_plan(ck, "q4_1", nonlinear=True)
    assert {t for t, _ in plan.blocks.values()} == {"IQ4_NL"} and len(plan.blocks) == 7 and not plan.exact
    for key, (_, b) in plan.blocks.items():
        w = ck.floats[key]
        back = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.IQ4_NL)
        rel = np.abs(back - w).max() / np.abs(w).max()
        assert rel == pytest.approx(plan.errors[key]) and rel < 0.15
        # the scale search does at least as well as the plain absmax scale
        x = w.reshape(-1, 32)
        amax = np.take_along_axis(x, np.abs(x).argmax(1)[:, None], 1)
        d0 = (amax / pq.IQ4_NL_VALUES[0]).astype(np.float16).astype(np.float32)
        q0 = np.abs(x[:, :, None] / d0[:, :, None] - pq.IQ4_NL_VALUES).argmin(-1)
        assert ((back.reshape(-1, 32) - x) ** 2).sum() <= ((d0 * pq.IQ4_NL_VALUES[q0] - x) ** 2).sum() * 1.0001
    note = " ".join(pq.gguf_notes(ck, plan, "q4_1"))
    assert "RE-QUANTIZED as IQ4_NL" in note and "max relative weight error" in note


def test_bf16_tensors_are_read_exactly_without_torch(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"w": t, "i": torch.arange(4, dtype=torch.int32)}, str(tmp_path / "model.safetensors"))
    got = pq.read_tensors(tmp_path)
    assert got["w"].dtype == np.float32 and np.array_equal(got["w"], t.float().numpy())
    assert np.array_equal(got["i"], np.arange(4, dtype=np.int32))
    # the rounding used for bitsandbytes' bfloat16 weights is torch's
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 7
    assert np.array_equal(pq.round_bf16(x), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
