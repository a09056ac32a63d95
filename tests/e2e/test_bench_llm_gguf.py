"""tools/bench_llm_gguf.py: the GGUF rows of tools/bench_llm.py (quality vs fp32 PyTorch, llama.cpp timing in a child)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")


@pytest.mark.slow
def test_gguf_rows_quality_and_timing(tmp_path):
    pytest.importorskip("llama_cpp")
    from edgeq.llamacpp.gguf import compare_logits, llama_cpp_logits, reference_logits, tokenize_hf
    from fixtures.llm import save_lm
    import importlib.util
    from pathlib import Path

    # the benchmark's own module, loaded from its file (tests and tools do not import each other's packages)
    spec = importlib.util.spec_from_file_location("bench_llm_gguf", Path(__file__).resolve().parents[2] / "tools" / "bench_llm_gguf.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gguf_rows = bench.gguf_rows

    folder = save_lm(tmp_path / "lm", "llama")
    ids = tokenize_hf(folder, ["the quick brown fox jumps over the lazy dog", "def main(): return 0"])
    ref = reference_logits(folder, ids)
    rows = gguf_rows(folder, ids, ref, quants=["q8_0", "q4_k"], contexts=[16, 48], threads=[1, 0], steps=4, vocab=300,
                     work=tmp_path, log=lambda s: None)
    assert [r["name"] for r in rows] == ["GGUF q8_0 (llama.cpp)", "GGUF q4_k_m (llama.cpp)"]
    for r, q in zip(rows, ("q8_0", "q4_k")):
        gguf_path = tmp_path / f"model_{q}.gguf"
        assert r["bytes"] == gguf_path.stat().st_size
        # the quality columns are llama.cpp's logits on the same ids, compared as bench_llm.py compares its rows
        got, _ = llama_cpp_logits(gguf_path, ids)
        assert r["kl_mean"] == pytest.approx(compare_logits(ref, got, ids)["kl_mean"], rel=1e-3, abs=1e-9)
        assert sorted(r["timing"]) == ["0", "1"]
        for rows_t in r["timing"].values():
            assert [x["context"] for x in rows_t] == [16, 48]
            assert all(x["ttft_ms"] > 0 and x["decode_tokens_per_s"] > 0 for x in rows_t)
        assert r["peak_rss_bytes"] > 1 << 20
    assert rows[0]["kl_mean"] < rows[1]["kl_mean"]  # q8_0 is closer to fp32 than Q4_K_M
    assert "Q4_K" in rows[1]["tensor_types"] or "Q5_0" in rows[1]["tensor_types"]
