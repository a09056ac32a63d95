"""KV-cache decoders (edgeq/exporters/decoder.py): one graph for prefill and decode, checked against transformers."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from edgeq.errors import ModelError  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from fixtures.llm import KINDS, make_lm, save_lm  # noqa: E402


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_matches_transformers_with_and_without_cache(kind, tmp_path):
    model = make_lm(kind)
    art, check, arch = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    assert check.passed and arch.model_type.startswith(kind)
    names = art.io.input_names
    assert names[:3] == ("input_ids", "attention_mask", "position_ids")
    assert {"past_key_values.1.key", "past_key_values.1.value"} <= set(names)
    assert {"logits", "present.0.key", "present.1.value"} <= set(art.io.output_names)
    # independent of the builder's own check: 20 tokens, prefill 5, then 15 one-token steps
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, 300, (1, 20), dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    assert ref.std() > 0.3  # logits are O(1): errors below are meaningful
    got = D.decode_with_cache(sess, ids, 5)
    assert np.abs(got - ref).max() < 1e-3
    # a decode step reads the cache: it computes one row, and feeding the wrong position changes it
    feed = D.prefill_feed(sess.get_inputs(), ids[:, :19])
    outs = [o.name for o in sess.get_outputs()]
    res = dict(zip(outs, sess.run(None, feed)))
    step = {"input_ids": ids[:, 19:], "attention_mask": np.ones((1, 20), np.int64), "position_ids": np.array([[19]])}
    step.update({n: res[n.replace("past_key_values.", "present.")] for n in names if n.startswith("past_key_values.")})
    one = sess.run(["logits", "present.0.key"], step)
    assert one[0].shape == (1, 1, 300) and one[1].shape[2] == 20
    assert np.abs(one[0][0, 0] - ref[0, 19]).max() < 1e-3
    step["position_ids"] = np.array([[3]])
    assert np.abs(sess.run(["logits"], step)[0][0, 0] - ref[0, 19]).max() > 1e-2


@pytest.mark.parametrize("kind, rope", [
    ("llama", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    ("gemma3", {"rope_type": "linear", "factor": 8.0}),  # transformers applies it to the full-attention layers only
])
def test_rope_scaling_matches_transformers(kind, rope, tmp_path):
    model = make_lm(kind, rope_scaling=rope)
    plain = D.arch_from_config(make_lm(kind).config)
    arch = D.arch_from_config(model.config)
    assert arch.inv_freq != plain.inv_freq  # the scaling changed the frequencies
    art, check, _ = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(2).integers(0, 300, (1, 40), dtype=np.int64)  # past the original 16 positions
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    assert np.abs(D.decode_with_cache(sess, ids, 30) - ref).max() < 1e-3


def test_phi3_partial_rotary_and_sliding_window(tmp_path):
    model = make_lm("phi3", partial_rotary_factor=0.5, sliding_window=6)
    arch = D.arch_from_config(model.config)
    assert arch.rotary_dim == 4 and arch.window == 6 and all(arch.sliding)
    art, _, _ = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(5).integers(0, 300, (1, 20), dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    assert np.abs(D.decode_with_cache(sess, ids, 8) - ref).max() < 1e-3


def test_unknown_rope_scaling_is_refused():
    cfg = make_lm("llama").config
    cfg.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(ModelError) as e:
        D.arch_from_config(cfg)
    assert "yarn" in e.value.message


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gemma3"])  # gemma2/3: soft-capping, sliding window, q/k norms
def test_fused_group_query_attention_matches_transformers(kind, tmp_path):
    model = make_lm(kind, hidden_size=64, head_dim=16)  # onnxruntime's CPU kernel: head size a multiple of 16
    art, check, arch = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    import onnx

    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops
    assert any("GroupQueryAttention" in n for n in check.exporter_notes)
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(4).integers(0, 300, (1, 20), dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    assert np.abs(D.decode_with_cache(sess, ids, 5) - ref).max() < 1e-3
    # a target whose provider lacks the kernel gets plain ops
    art2, check2, _ = D.export_hf_decoder(model, tmp_path / "p.onnx", load_target("openvino-cpu"))
    assert "GroupQueryAttention" not in [n.op_type for n in onnx.load(str(art2.path)).graph.node]


def test_padding_in_the_attention_mask_is_honoured(tmp_path):
    model = make_lm("qwen2")
    art, _, _ = D.export_hf_decoder(model, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(1).integers(3, 300, (2, 9), dtype=np.int64)
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0  # left padding
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos)).logits.numpy()
    feed = D.prefill_feed(sess.get_inputs(), ids)
    feed.update(attention_mask=mask, position_ids=pos)
    got = sess.run(["logits"], feed)[0]
    assert np.abs(got[:, 3:] - ref[:, 3:]).max() < 1e-3  # the padded positions' own rows are undefined


def test_other_architectures_are_refused_naming_them():
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(ModelError) as e:
        D.arch_from_config(cfg)
    assert "gpt2" in e.value.message and "\n" not in e.value.one_line()


@pytest.mark.slow
def test_cli_int4_kv_decoder_from_input_ids_windows_alone(runner, tmp_path):
    folder = save_lm(tmp_path / "llama", "llama", tokenizer=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input_ids=rng.integers(0, 300, (8, 24)).astype(np.int64))  # input_ids only
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "int4", "--calib", str(tmp_path / "calib.npz"),
                            "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code in (0, 1), r.output
    res = json.loads(r.stdout)
    assert res["export"]["exporter"] == D.BUILDER and res["export"]["passed"]
    assert any("filled in by edgeq" in n for n in res["notes"]), res["notes"]
    lm = res["lm_quality"]
    assert lm is not None and lm["input_name"] == "input_ids" and lm["tokens"] == 8 * 23
    assert lm["kl_mean"] > 0 and 0.3 < lm["same_top_token"] <= 1.0
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert "past_key_values.0.key" in [i.name for i in sess.get_inputs()]


def test_cli_unsupported_architecture_one_line(runner, tmp_path):
    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "gpt2" in r.stderr and not (tmp_path / "b").exists()
    assert "--exporter torchscript" in r.stderr
