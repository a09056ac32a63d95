"""The KV-cache decoder writer at real model sizes: over the single-file threshold it streams its weights to
``<model>.onnx.data`` (no protobuf over 2 GiB, no full in-memory copy of the weights), and bf16 folders are
checked against fp32 compute. ``EDGEQ_EXTERNAL_DATA_BYTES`` lowers the threshold so a tiny model takes that path."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.onnxutil import EXTERNAL_DATA_ENV  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from fixtures.llm import make_lm, save_lm  # noqa: E402

CFG = dict(hidden_size=64, head_dim=16, intermediate_size=128, num_hidden_layers=4, tie_word_embeddings=True)


def _weight_bytes(model) -> int:
    return sum(4 * p.numel() for p in model.parameters())


@pytest.mark.parametrize("fused", [False, True])
def test_decoder_over_the_threshold_streams_its_weights_to_one_data_file(fused, tmp_path, monkeypatch):
    model = make_lm("llama", **CFG)
    arch = D.arch_from_config(model.config)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "65536")  # far under the model's weights
    out = D.build_decoder(arch, model.state_dict(), tmp_path / "m.onnx", fused=fused)
    data = tmp_path / "m.onnx.data"
    head = onnx.load(str(out), load_external_data=False)
    external = [t for t in head.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    # every weight matrix is in the one data file, beside the graph; the tied table once (lm_head's Gemm reads it)
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"m.onnx.data"}
    assert _weight_bytes(model) <= sum(int(np.prod(t.dims)) * 4 for t in external) < _weight_bytes(model) + 4 * model.config.vocab_size * 64
    assert out.stat().st_size < 100_000 < data.stat().st_size
    rows = D.check_decoder(model, out, arch.vocab, 1e-4, 1e-3)  # onnxruntime reads it and matches transformers
    assert all(ok for *_, ok in rows), rows
    # under the threshold: one file, as before
    monkeypatch.delenv(EXTERNAL_DATA_ENV)
    one = D.build_decoder(arch, model.state_dict(), tmp_path / "one.onnx", fused=fused)
    assert not (tmp_path / "one.onnx.data").exists()
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(one)).graph.initializer)


def test_streamed_build_holds_about_one_weight_at_a_time(tmp_path, monkeypatch):
    """Peak Python/numpy memory while writing: about one tensor at a time with the sink, while the in-memory path
    (under the threshold) holds every weight's bytes once more until it serializes them."""
    model = make_lm("llama", **{**CFG, "num_hidden_layers": 16})
    arch = D.arch_from_config(model.config)
    total = _weight_bytes(model)

    def peak(name: str) -> int:
        tracemalloc.start()
        try:
            D.build_decoder(arch, model.state_dict(), tmp_path / name)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    monkeypatch.setenv(EXTERNAL_DATA_ENV, "65536")
    D.build_decoder(arch, model.state_dict(), tmp_path / "warm.onnx")  # imports and caches out of the measure
    streamed = peak("m.onnx")
    monkeypatch.delenv(EXTERNAL_DATA_ENV)
    in_memory = peak("one.onnx")
    assert in_memory > total  # the measure sees a full copy of the weights...
    assert streamed < total / 3, (streamed, total)  # ...and the streamed build holds none


def test_bf16_folder_is_checked_against_fp32_compute(tmp_path):
    """Real checkpoints ship bf16 weights: the fp32 graph must be compared with fp32 compute, not bf16 logits."""
    folder = save_lm(tmp_path / "lm", "llama", hidden_size=64, head_dim=16, torch_dtype="bfloat16")
    model = make_lm("llama", hidden_size=64, head_dim=16).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    from edgeq.exporters import hf

    loaded = hf.load_hf_model(hf.inspect_folder(folder), "text-generation")
    assert next(loaded.parameters()).dtype == torch.float32
    art, check, _ = D.export_hf_decoder(loaded, tmp_path / "m.onnx", load_target("cpu-x86_64"))
    assert check.passed
