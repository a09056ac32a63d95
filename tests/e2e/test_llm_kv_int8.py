"""`edgeq export --kv-cache int8` on a trained tiny Llama: the bundle generates like the fp32-cache bundle through
onnxruntime-genai, run.py and edgeq generate; the manifest and the LLM profile say int8; refusals are one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from fixtures.llm import greedy_json  # noqa: E402

SPEC = dict(hidden=64, intermediate=128, steps=120, seq=32, context=64)  # 4 heads of 16: GroupQueryAttention
PROMPTS = ("def main():", "import os", "the quick")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tokenizers import Tokenizer

    from fixtures.lm import TinyLlamaSpec, corpus_text, make_tiny_llama

    d = tmp_path_factory.mktemp("kv8e2e")
    folder = make_tiny_llama(d / "llama", TinyLlamaSpec(**SPEC))
    ids = np.array(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(corpus_text()[0][:30000]).ids, np.int64)
    np.savez(d / "calib.npz", input_ids=np.stack([ids[i * 300 : i * 300 + 32] for i in range(12)]))
    return folder, d / "calib.npz"


def _export(runner, folder, calib, out, kv):
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--calib", str(calib),
                            "--kv-cache", kv, "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow
def test_int8_cache_bundle_generates_like_the_fp32_cache_bundle(runner, trained, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from edgeq.core.targets import load_target

    folder, calib = trained
    res32 = _export(runner, folder, calib, tmp_path / "b32", "fp32")
    res8 = _export(runner, folder, calib, tmp_path / "b8", "int8")
    b32, b8 = tmp_path / "b32", tmp_path / "b8"
    # the graph and the manifest: int8 past/present, per-layer scales, the record of the choice
    m = onnx.load(str(b8 / "model.onnx"))
    assert {t.type.tensor_type.elem_type for t in m.graph.input if t.name.startswith("past_")} == {onnx.TensorProto.INT8}
    manifest = json.loads((b8 / "manifest.json").read_text())
    kv = manifest["quantization"]["kv_cache"]
    assert kv["dtype"] == "int8" and kv["quant_type"] in ("PER_TENSOR", "PER_CHANNEL") and kv["calibration_windows"] == 12
    assert {i["dtype"] for i in manifest["inputs"] if i["name"].startswith("past_")} == {"int8"}
    assert "kv_cache" not in json.loads((b32 / "manifest.json").read_text())["quantization"]
    # the export's own checks ran on the int8-cache model: LM figures, onnxruntime-genai greedy vs transformers (target tolerance)
    tol = load_target("cpu-x86_64").tolerances
    lm = res8["lm_quality"]
    assert 0 < lm["kl_mean"] <= tol.max_lm_kl and lm["same_top_token"] >= tol.min_lm_top1, lm
    gen8, gen32 = res8["generation"], res32["generation"]
    assert gen32["identical"] == 3 and gen8["passed"] and gen8["min_agreement"] == tol.min_greedy_agreement
    assert gen8["agreement"] >= 0.9, gen8  # stated tolerance for this trained fixture: 90 % of greedy tokens as transformers
    # onnxruntime-genai on each bundle as an app runs it: the int8 cache's greedy tokens are the fp32 cache's
    import onnxruntime_genai as og

    from edgeq.bundles.genai import prompt_ids

    def genai_greedy(bundle, ids):
        m = og.Model(str(bundle))
        params = og.GeneratorParams(m)
        params.set_search_options(do_sample=False, max_length=len(ids) + 24)
        g = og.Generator(m, params)
        g.append_tokens(ids)
        while not g.is_done():
            g.generate_next_token()
        return list(g.get_sequence(0))[len(ids):]

    same = total = 0
    for ids in prompt_ids(b8, list(PROMPTS), 320):
        a, b = genai_greedy(b32, ids), genai_greedy(b8, ids)
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
    assert total and same / total >= 0.9, (same, total)
    # run.py (isolated child) and edgeq generate on the int8 bundle: the fp32-cache bundle's greedy tokens
    same = total = 0
    for p in PROMPTS:
        a = greedy_json(b32 / "run.py", p, 24, tmp_path / "cwd")["tokens"]
        b = greedy_json(b8 / "run.py", p, 24, tmp_path / "cwd")["tokens"]
        same += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
    assert same / total >= 0.9, (same, total)
    r = runner.invoke(app, ["generate", str(b8), "--prompt", PROMPTS[0], "--max-new-tokens", "24", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tokens"] == greedy_json(b8 / "run.py", PROMPTS[0], 24, tmp_path / "cwd")["tokens"]
    # edgeq profile: KV bytes per token a quarter of the fp32 cache's
    prof = {}
    for name, b in (("fp32", b32), ("int8", b8)):
        r = runner.invoke(app, ["profile", str(b), "--json", "--budget", "0.2"])
        assert r.exit_code == 0, r.output
        prof[name] = json.loads(r.stdout)["results"][0]["llm"]
    assert prof["int8"]["kv_cache_dtype"] == "int8" and prof["int8"]["kv_bytes_per_token"] * 4 == prof["fp32"]["kv_bytes_per_token"]


@pytest.mark.parametrize("args, words", [
    (["--target", "openvino-cpu"], "GroupQueryAttention"),
    (["--target", "qnn-htp"], "static"),
    (["--target", "llamacpp-x86_64"], "GGUF"),
    (["--exporter", "torchscript"], "KV-cache decoder"),
    (["--no-calib"], "--calib"),
    (["--kv-cache", "int4"], "unknown --kv-cache"),
    (["--quant", "int8-static"], "weight-only"),
])
def test_kv_cache_refusals_are_one_line_exit_2_before_any_work(runner, tmp_path, args, words):
    from fixtures.llm import save_lm

    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64, head_dim=16, tokenizer=False)
    np.savez(tmp_path / "c.npz", input_ids=np.arange(32, dtype=np.int64).reshape(2, 16))
    calib = [] if "--no-calib" in args else ["--calib", str(tmp_path / "c.npz")]
    extra = [a for a in args if a != "--no-calib"]
    kv = [] if "--kv-cache" in extra else ["--kv-cache", "int8"]
    quant = [] if "--quant" in extra else ["--quant", "int4"]
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", *calib, *kv, *quant, *extra, "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert words in r.output and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists()


def test_kv_cache_int8_on_an_onnx_file_is_refused(runner, tmp_path, cnn, cnn_calib):
    r = runner.invoke(app, ["export", str(cnn), "--calib", str(cnn_calib), "--kv-cache", "int8", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Hugging Face folder" in r.output and len(r.stderr.strip().splitlines()) == 1
