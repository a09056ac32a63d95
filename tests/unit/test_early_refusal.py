"""Calibration / evaluation arrays the model will never take, or of the wrong dtype or shape, are refused in one
line (exit 2, nothing written) BEFORE the export work, for every source kind (issue 14, item 5): ONNX files,
PyTorch modules, Hugging Face folders through Optimum, KV-cache decoders (``input_ids`` alone stays valid there:
the mask, positions and past are filled in by edgeq). Each export here is replaced by a sentinel: reaching it
means the data was let through, and a refusal must come before it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq.cli import app
from tests.models import cnn_data, make_cnn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


class ExportRan(Exception):
    pass


def _sentinel(*a, **k):
    raise ExportRan("the export ran")


def _export(runner, source, calib: Path, out: Path, *extra: str):
    return runner.invoke(app, ["export", str(source), "--calib", str(calib), "--quant", "none", "--no-profile", "-o", str(out), *extra])


def _refused(r, out: Path, *words: str) -> str:
    assert not isinstance(r.exception, ExportRan) and "the export ran" not in r.output, "refused only after the export"
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and all(w in r.stderr for w in words), r.stderr
    assert not out.exists()
    return err


def _let_through(r):
    """The sentinel raised (directly, or reported as the user's code when called inside a user_code block)."""
    assert isinstance(r.exception, ExportRan) or "the export ran" in r.output, r.output


# ---- ONNX files: the inputs are in the file; checked before any stage -------------------------------------------

def test_onnx_file_extra_array_and_wrong_dtype_are_refused_before_any_work(runner, tmp_path):
    model = make_cnn(tmp_path / "m.onnx")
    data = cnn_data(8)
    np.savez(tmp_path / "extra.npz", **data, pixel_mask=np.ones((8, 8), np.int64))
    _refused(_export(runner, model, tmp_path / "extra.npz", tmp_path / "b1"), tmp_path / "b1", "unknown array(s) pixel_mask")
    np.savez(tmp_path / "dtype.npz", **{k: v.astype(np.float64) for k, v in data.items()})
    _refused(_export(runner, model, tmp_path / "dtype.npz", tmp_path / "b2"), tmp_path / "b2", "dtype float64", "float32")


# ---- PyTorch modules: dtype and shape from the example inputs ---------------------------------------------------

@pytest.fixture
def no_torch_export(monkeypatch):
    import edgeq.exporters.torch as et

    monkeypatch.setattr(et, "export_torch_checked", _sentinel)


def test_module_wrong_dtype_and_shape_are_refused_before_the_export(runner, tmp_path, no_torch_export):
    src = "tests.unit.test_export_torch:tiny_mlp"
    np.savez(tmp_path / "dtype.npz", x=np.zeros((4, 10), np.int64))
    _refused(_export(runner, src, tmp_path / "dtype.npz", tmp_path / "b1", "--example-shape", "x=1x10"), tmp_path / "b1",
             "'x' has dtype int64", "float32")
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 12), np.float32))
    _refused(_export(runner, src, tmp_path / "shape.npz", tmp_path / "b2", "--example-shape", "x=1x10"), tmp_path / "b2",
             "sample shape [1, 12]", "axis 1")
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 10), np.float32))  # along the batch axis (dynamic): fine
    _let_through(_export(runner, src, tmp_path / "ok.npz", tmp_path / "b3", "--example-shape", "x=1x10"))


# ---- Hugging Face folders ---------------------------------------------------------------------------------------

def _save(folder: Path, config, model_cls) -> Path:
    torch.manual_seed(0)
    model_cls(config).eval().save_pretrained(folder)
    return folder


def _bert(folder: Path) -> Path:
    return _save(folder, transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, max_position_embeddings=32, num_labels=2),
                 transformers.BertForSequenceClassification)


def _llama(folder: Path) -> Path:
    return _save(folder, transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32),
                 transformers.LlamaForCausalLM)


def _ids(n=4, t=8, dtype=np.int64):
    return np.random.default_rng(0).integers(1, 50, (n, t)).astype(dtype)


@pytest.fixture
def optimum_sentinel(monkeypatch):
    from edgeq.exporters import hf_optimum as ho

    fake = ho.OptimumPython(Path(sys.executable), "test")
    monkeypatch.setattr(ho, "find_python", lambda: fake)
    monkeypatch.setattr(ho, "require_python", lambda: fake)
    monkeypatch.setattr(ho, "export_hf_optimum", _sentinel)


@pytest.mark.parametrize("exporter", ["optimum", "auto"])
def test_optimum_export_refuses_names_and_layouts_before_the_export(runner, tmp_path, optimum_sentinel, exporter):
    folder = _bert(tmp_path / "bert")
    args = ("--task", "text-classification", "--exporter", exporter)
    ids = _ids()
    np.savez(tmp_path / "extra.npz", input_ids=ids, attention_mask=np.ones_like(ids), pixel_values=np.zeros((4, 3), np.float32))
    err = _refused(_export(runner, folder, tmp_path / "extra.npz", tmp_path / "b1", *args), tmp_path / "b1",
                   "unknown array(s) pixel_values", "input_ids", "attention_mask", "token_type_ids")
    assert len(err.splitlines()) == 1
    np.savez(tmp_path / "dtype.npz", input_ids=ids.astype(np.int32))
    _refused(_export(runner, folder, tmp_path / "dtype.npz", tmp_path / "b2", *args), tmp_path / "b2", "'input_ids' has dtype int32")
    np.savez(tmp_path / "rank.npz", input_ids=ids.reshape(4, 2, 2, 2))
    _refused(_export(runner, folder, tmp_path / "rank.npz", tmp_path / "b3", *args), tmp_path / "b3", "'input_ids' has shape [4, 2, 2, 2]")
    np.savez(tmp_path / "ok.npz", input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.ones_like(ids),
             labels=np.zeros(4, np.int64))
    _let_through(_export(runner, folder, tmp_path / "ok.npz", tmp_path / "b4", *args))


def test_optimum_takes_no_token_types_without_them_in_the_config(runner, tmp_path, optimum_sentinel):
    """A RoBERTa-like config (type_vocab_size 1): Optimum's graph has no token_type_ids; non-zero ones are refused
    early, all-zero ones (what a tokenizer writes) are let through to be dropped with a note."""
    from edgeq.core.data import check_arrays_early
    from edgeq.errors import CalibrationError
    from edgeq.exporters import expected

    exp = expected.optimum({"type_vocab_size": 1}, "text-classification")
    ids = _ids()
    np.savez(tmp_path / "zeros.npz", input_ids=ids, token_type_ids=np.zeros_like(ids))
    check_arrays_early(tmp_path / "zeros.npz", exp, what="calibration")
    np.savez(tmp_path / "ones.npz", input_ids=ids, token_type_ids=np.ones_like(ids))
    with pytest.raises(CalibrationError, match="token_type_ids"):
        check_arrays_early(tmp_path / "ones.npz", exp, what="calibration")


@pytest.fixture
def kv_sentinel(monkeypatch):
    from edgeq.exporters import hf

    monkeypatch.setattr(hf, "load_hf_model", _sentinel)  # the decoder export starts by loading the model


def test_kv_decoder_takes_input_ids_alone_and_refuses_what_it_never_takes(runner, tmp_path, kv_sentinel):
    folder = _llama(tmp_path / "llama")
    args = ("--task", "text-generation")
    ids = _ids()
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    _let_through(_export(runner, folder, tmp_path / "ids.npz", tmp_path / "b0", *args))
    np.savez(tmp_path / "full.npz", input_ids=ids, attention_mask=np.ones_like(ids), position_ids=np.tile(np.arange(8), (4, 1)),
             **{"past_key_values.1.value": np.zeros((4, 1, 1, 0, 8), np.float32)})
    _let_through(_export(runner, folder, tmp_path / "full.npz", tmp_path / "b1", *args))
    np.savez(tmp_path / "extra.npz", input_ids=ids, token_type_ids=np.ones_like(ids), pixel_values=np.zeros((4, 3), np.float32))
    err = _refused(_export(runner, folder, tmp_path / "extra.npz", tmp_path / "b2", *args), tmp_path / "b2",
                   "unknown array(s) pixel_values, token_type_ids", "input_ids", "filled in by edgeq")
    assert len(err.splitlines()) == 1
    np.savez(tmp_path / "layer.npz", input_ids=ids, **{"past_key_values.2.key": np.zeros((4, 1, 1, 0, 8), np.float32)})
    _refused(_export(runner, folder, tmp_path / "layer.npz", tmp_path / "b3", *args), tmp_path / "b3", "past_key_values.2.key")
    np.savez(tmp_path / "dtype.npz", input_ids=ids.astype(np.float32))
    _refused(_export(runner, folder, tmp_path / "dtype.npz", tmp_path / "b4", *args), tmp_path / "b4", "'input_ids' has dtype float32")


def test_static_kv_decoder_takes_token_windows_only(runner, tmp_path, kv_sentinel):
    folder = _llama(tmp_path / "llama")
    ids = _ids()
    np.savez(tmp_path / "mask.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    _refused(_export(runner, folder, tmp_path / "mask.npz", tmp_path / "b1", "--task", "text-generation", "--target", "qnn-htp"),
             tmp_path / "b1", "unknown array(s) attention_mask", "computed by edgeq")
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    _let_through(_export(runner, folder, tmp_path / "ids.npz", tmp_path / "b2", "--task", "text-generation", "--target", "qnn-htp"))


def test_a_pre_quantized_folder_is_checked_before_its_weights_are_dequantized(runner, tmp_path, monkeypatch):
    """GPTQ/AWQ folders are dequantized before the export (edgeq.exporters.prequant.prepare): the data is
    checked from config.json before that work too."""
    from edgeq.exporters import prequant

    folder = _llama(tmp_path / "llama")
    monkeypatch.setattr(prequant, "detect", lambda f: object())  # stands in for a GPTQ folder
    monkeypatch.setattr(prequant, "prepare", _sentinel)
    ids = _ids()
    np.savez(tmp_path / "extra.npz", input_ids=ids, pixel_values=np.zeros((4, 3), np.float32))
    _refused(_export(runner, folder, tmp_path / "extra.npz", tmp_path / "b", "--task", "text-generation"), tmp_path / "b",
             "unknown array(s) pixel_values")
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    _let_through(_export(runner, folder, tmp_path / "ids.npz", tmp_path / "b2", "--task", "text-generation"))
