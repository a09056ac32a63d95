"""Hugging Face folders through Optimum (in its own Python) and folders with custom code (auto_map).

The Optimum tests run when ``EDGEQ_OPTIMUM_PYTHON`` names a Python with optimum-onnx
(CI creates one: see .ci/run); the folders are saved by this environment's transformers
and read there by transformers 4.x.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from edgeq.exporters import hf_optimum  # noqa: E402

needs_optimum = pytest.mark.skipif(
    not os.environ.get("EDGEQ_OPTIMUM_PYTHON"), reason="set EDGEQ_OPTIMUM_PYTHON to a Python with optimum-onnx (see .ci/run)"
)


def _bert(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3, initializer_range=0.2,
    )
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    return folder


def _llama(folder: Path, theta: float) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    return folder


def _gpt2(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=90, n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.2)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    return folder


def _export(runner, folder: Path, out: Path, *extra: str):
    r = runner.invoke(app, ["export", str(folder), "--quant", "none", "--no-profile", "-o", str(out), "--json", *extra])
    return r


@pytest.fixture
def no_optimum(monkeypatch):
    monkeypatch.delenv("EDGEQ_OPTIMUM_PYTHON", raising=False)
    monkeypatch.setattr(hf_optimum, "in_process_available", lambda: False)


# --- Optimum: errors (no Optimum needed) ---------------------------------------------------------


def test_missing_optimum_python_is_one_line_exit_2(runner, tmp_path, no_optimum):
    folder = _bert(tmp_path / "bert")
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-classification", "--exporter", "optimum")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "EDGEQ_OPTIMUM_PYTHON" in lines[0] and "pip install" in lines[0] and "optimum-onnx" in lines[0]
    assert not out.exists()


def test_optimum_python_that_is_not_a_file(runner, tmp_path, monkeypatch):
    folder = _bert(tmp_path / "bert")
    monkeypatch.setenv("EDGEQ_OPTIMUM_PYTHON", str(tmp_path / "nope" / "python"))
    r = _export(runner, folder, tmp_path / "b", "--task", "text-classification", "--exporter", "optimum")
    assert r.exit_code == 2 and "is not a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_optimum_python_without_optimum(runner, tmp_path, monkeypatch):
    # this test's own Python has no optimum.exporters.onnx: the child reports the import failure
    if hf_optimum.in_process_available():
        pytest.skip("optimum-onnx is importable in this Python")
    folder = _bert(tmp_path / "bert")
    monkeypatch.setenv("EDGEQ_OPTIMUM_PYTHON", sys.executable)
    r = _export(runner, folder, tmp_path / "b", "--task", "text-classification", "--exporter", "optimum")
    assert r.exit_code == 2, r.output
    assert "cannot import Optimum's ONNX exporter" in r.stderr and "pip install" in r.stderr
    assert not (tmp_path / "b").exists()


def test_exporter_optimum_is_for_hf_folders_only(runner, tmp_path):
    r = runner.invoke(app, ["export", "tests.models:make_mlp", "--example-shape", "x=1x3x8x8", "--exporter", "optimum",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "Hugging Face folders" in r.stderr, r.output


def test_compat_config_writes_rope_parameters_in_the_transformers_4_form():
    cfg, changes = hf_optimum.compat_config({"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})
    assert cfg["rope_theta"] == 500.0 and "rope_scaling" not in cfg and changes == ["rope_parameters.rope_theta -> rope_theta"]
    rp = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    cfg, _ = hf_optimum.compat_config({"rope_parameters": rp})
    assert cfg["rope_theta"] == 5e5
    assert cfg["rope_scaling"] == {k: v for k, v in rp.items() if k != "rope_theta"}
    # nested per layer type (not convertible), or already in the old form: left alone
    nested = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    assert hf_optimum.compat_config(nested) == (nested, [])
    old = {"rope_theta": 10.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10.0}}
    assert hf_optimum.compat_config(old) == (old, [])


# --- Optimum: exports (need EDGEQ_OPTIMUM_PYTHON) ------------------------------------------------


@needs_optimum
@pytest.mark.slow
def test_bert_auto_exports_through_optimum_and_matches_the_source(runner, tmp_path, monkeypatch):
    folder = _bert(tmp_path / "bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # edgeq forces offline itself, in the child too
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-classification", "--target", "arm64")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ex = res["export"]
    assert ex["exporter"].startswith("optimum-onnx ") and "transformers 4." in ex["exporter"], ex["exporter"]
    assert ex["passed"] and [o["name"] for o in ex["outputs"]] == ["logits"] and ex["outputs"][0]["shape"] == [2, 3]
    assert 0 < ex["outputs"][0]["max_abs"] < 1e-4  # 0 would mean nothing was compared
    assert ex["inputs_checked"] == ["example", "batch=3, sequence=9"]
    assert any("EDGEQ_OPTIMUM_PYTHON" in n and "--exporter auto" in n for n in res["notes"]), res["notes"]
    # Optimum's graph takes token_type_ids too; it matches the reloaded model at a new batch and length
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    model = transformers.BertForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    rng = np.random.default_rng(5)
    ids, types = rng.integers(0, 120, (4, 13)), rng.integers(0, 2, (4, 13))
    mask = np.ones((4, 13), np.int64)
    mask[1, 9:] = 0  # padding
    want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types)).logits.detach().numpy()
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    assert got.shape == (4, 3) and np.abs(want - got).max() < 1e-4 and np.abs(want).max() > 1e-2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"][0] == "source(hf:bert, task=text-classification)"
    assert manifest["provenance"][1].startswith("export(optimum-onnx ")


@needs_optimum
@pytest.mark.slow
def test_llama_text_generation_through_optimum_keeps_rope_theta(runner, tmp_path, monkeypatch):
    folder = _llama(tmp_path / "llama", theta=50.0)
    cfg = json.loads((folder / "config.json").read_text())
    assert "rope_theta" not in cfg and cfg["rope_parameters"]["rope_theta"] == 50.0  # the transformers 5 form
    theta_model = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    # without the config rewrite transformers 4 uses its default RoPE base (10000): the check fails, exit 1
    with monkeypatch.context() as m:
        m.setattr(hf_optimum, "compat_config", lambda c: (dict(c), []))
        r = _export(runner, folder, tmp_path / "bad", "--task", "text-generation", "--exporter", "optimum")
    assert r.exit_code == 1, r.output
    assert "differs from the source" in r.stderr and "output 'logits' max abs" in r.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-generation", "--exporter", "optimum")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ex = res["export"]
    assert ex["exporter"].startswith("optimum-onnx ") and ex["passed"]
    assert ex["outputs"][0]["name"] == "logits" and ex["outputs"][0]["shape"] == [2, 8, 100]
    assert ex["outputs"][0]["max_abs"] < 1e-4
    assert any("rope_parameters.rope_theta -> rope_theta" in n for n in res["notes"]), res["notes"]
    assert any("without past key values" in n for n in res["notes"])
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]  # no KV cache
    ids = np.random.default_rng(2).integers(0, 100, (1, 11))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(11)[None]}
    with torch.no_grad():
        want = theta_model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(sess.run(None, feed)[0] - want).max() < 1e-4


@needs_optimum
@pytest.mark.slow
def test_gpt2_through_optimum_for_a_static_shape_target(runner, tmp_path):
    folder = _gpt2(tmp_path / "gpt2")
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-generation", "--exporter", "optimum", "--target", "qnn-htp",
                "--static-shape", "input_ids=1x12")
    assert r.exit_code == 0, r.output
    ex = json.loads(r.stdout)["export"]
    assert ex["passed"] and ex["inputs_checked"] == ["example"] and ex["outputs"][0]["shape"] == [1, 12, 90]
    assert ex["opset"] == 17
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [[1, 12]] * 3
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = np.random.default_rng(3).integers(0, 90, (1, 12))
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    got = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(12)[None]})[0]
    assert np.abs(got - want).max() < 1e-4


# --- custom code (auto_map) ----------------------------------------------------------------------

_CONFIG_PY = '''
from pathlib import Path

with open({marker!r}, "a") as f:
    f.write("configuration_tiny imported\\n")

from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "edgeq-tiny-custom"

    def __init__(self, vocab_size=50, hidden_size=8, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

_MODELING_PY = '''
with open({marker!r}, "a") as f:
    f.write("modeling_tiny imported\\n")

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_tiny import TinyConfig


class TinyForSequenceClassification(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, return_dict=True, **kwargs):
        h = torch.tanh(self.embed(input_ids))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(pooled))
'''


def _custom_folder(tmp_path: Path):
    """A folder whose model exists only as its own code; the code appends to a marker file when imported."""
    from safetensors.numpy import save_file

    folder, marker = tmp_path / "custom", tmp_path / "imported.txt"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(_CONFIG_PY.format(marker=str(marker)))
    (folder / "modeling_tiny.py").write_text(_MODELING_PY.format(marker=str(marker)))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "edgeq-tiny-custom", "architectures": ["TinyForSequenceClassification"],
        "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig",
                     "AutoModelForSequenceClassification": "modeling_tiny.TinyForSequenceClassification"},
        "vocab_size": 50, "hidden_size": 8, "id2label": {"0": "a", "1": "b", "2": "c"},
        "label2id": {"a": 0, "b": 1, "c": 2},
    }))
    rng = np.random.default_rng(0)
    w = {"embed.weight": rng.normal(size=(50, 8)).astype(np.float32),
         "classifier.weight": rng.normal(size=(3, 8)).astype(np.float32),
         "classifier.bias": rng.normal(size=(3,)).astype(np.float32)}
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder, marker, w


@pytest.fixture
def hf_modules(tmp_path, monkeypatch):
    """transformers copies trusted code into HF_MODULES_CACHE and imports it from there: keep that in tmp_path."""
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("transformers_modules"):
            del sys.modules[name]


@pytest.mark.slow
def test_custom_code_folder_refused_then_trusted(runner, tmp_path, no_optimum, hf_modules):
    folder, marker, w = _custom_folder(tmp_path)
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-classification")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "auto_map" in lines[0] and "--trust-remote-code" in lines[0]
    assert "configuration_tiny.py" in lines[0] and "modeling_tiny.py" in lines[0]
    assert not marker.exists() and not out.exists()  # nothing from the folder ran
    assert not (tmp_path / "hf_modules").exists()

    r = _export(runner, folder, out, "--task", "text-classification", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    assert set(marker.read_text().splitlines()) == {"configuration_tiny imported", "modeling_tiny imported"}
    res = json.loads(r.stdout)
    ex = res["export"]
    assert ex["passed"] and ex["exporter"] == "torch.onnx dynamo" and ex["outputs"][0]["shape"] == [2, 3]
    assert any("no Optimum Python configured" in n for n in res["notes"])
    # the bundled ONNX computes the custom model's function (written out here in numpy), padding included
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (3, 7))
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    h = np.tanh(w["embed.weight"][ids]) * mask[..., None]
    want = (h.sum(1) / mask.sum(1, keepdims=True)) @ w["classifier.weight"].T + w["classifier.bias"]
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (3, 3) and np.abs(got - want).max() < 1e-4


@needs_optimum
@pytest.mark.slow
def test_auto_uses_torch_when_optimum_cannot_export(runner, tmp_path, hf_modules):
    # Optimum has no ONNX config for a custom architecture: auto says so and exports with torch
    folder, marker, _ = _custom_folder(tmp_path)
    out = tmp_path / "b"
    r = _export(runner, folder, out, "--task", "text-classification", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["export"]["exporter"] == "torch.onnx dynamo" and res["export"]["passed"]
    assert any("--exporter auto: Optimum could not export custom" in n and "torch's exporter ran instead" in n
               for n in res["notes"]), res["notes"]
    r = _export(runner, folder, tmp_path / "b2", "--task", "text-classification", "--trust-remote-code", "--exporter", "optimum")
    assert r.exit_code == 2 and "Optimum could not export custom" in r.stderr and not (tmp_path / "b2").exists()
