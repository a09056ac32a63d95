"""Hugging Face folders: tiny models made from a config here, save_pretrained, exported through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402


def _bert(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3,
    )
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    return folder


def _gpt2(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=90, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    return folder


def _ids(shape, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, shape).astype(np.int64), np.ones(shape, np.int64)


@pytest.mark.slow
def test_bert_text_classification_dynamo(runner, tmp_path, monkeypatch):
    from edgeq.exporters import hf_optimum

    folder = _bert(tmp_path / "bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # edgeq must force offline itself
    # no Optimum Python: --exporter auto uses torch's exporter and says why (with one: test_export_hf_optimum.py)
    monkeypatch.delenv("EDGEQ_OPTIMUM_PYTHON", raising=False)
    monkeypatch.setattr(hf_optimum, "in_process_available", lambda: False)
    out = tmp_path / "b"
    r = runner.invoke(app, [
        "export", str(folder), "--task", "text-classification", "--target", "arm64", "--quant", "none",
        "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ex = res["export"]
    assert ex["exporter"] == "torch.onnx dynamo" and ex["passed"]
    assert [o["name"] for o in ex["outputs"]] == ["logits"] and ex["outputs"][0]["shape"] == [2, 3]
    assert ex["outputs"][0]["max_abs"] < 1e-4
    assert ex["inputs_checked"] == ["example", "batch=3, sequence=9"]
    assert any("no Optimum Python configured" in n for n in res["notes"]), res["notes"]
    # the bundled model matches the reloaded HF model at a new batch and sequence length
    model = transformers.BertForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    ids, mask = _ids((4, 13), 120, seed=5)
    mask[1, 9:] = 0  # padding
    want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.detach().numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (4, 3) and np.abs(want - got).max() < 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"][0] == "source(hf:bert, task=text-classification)"


@pytest.mark.slow
def test_gpt2_text_generation_torchscript_static_shapes(runner, tmp_path):
    folder = _gpt2(tmp_path / "gpt2")
    out = tmp_path / "b"
    r = runner.invoke(app, [
        "export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--quant", "none",
        "--static-shape", "input_ids=1x12", "--static-shape", "attention_mask=1x12", "--exporter", "torchscript",
        "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ex = res["export"]
    assert ex["exporter"] == "torch.onnx TorchScript" and ex["passed"] and ex["opset"] == 17
    assert ex["outputs"][0]["shape"] == [1, 12, 90]
    assert ex["inputs_checked"] == ["example"]  # static: nothing else to check
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [[1, 12], [1, 12]]
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids, mask = _ids((1, 12), 90, seed=3)
    want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=False).logits
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.abs(want.detach().numpy() - got).max() < 1e-4


def test_hf_folder_needs_a_task(runner, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--task" in r.stderr and not (tmp_path / "b").exists()


def test_task_whose_head_is_not_in_the_folder_is_refused(runner, tmp_path):
    # a base BertModel exported as text-classification would get a randomly initialised head
    folder = tmp_path / "base"
    cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    transformers.BertModel(cfg).save_pretrained(folder)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-classification", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "classifier.weight" in r.stderr and "--task text-classification" in r.stderr
    assert not out.exists()
