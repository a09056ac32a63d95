"""An LLM bundle as an app developer meets it: inputs the model cannot take end in one line and exit 2, never a traceback."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from fixtures.llm import run_script, save_lm  # noqa: E402

LONG = "the quick brown fox " * 100  # about 400 tokens: past the fixture's 128-token context


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama folder with head size 16 (the fused GroupQueryAttention decoder), context 128, with its tokenizer."""
    return save_lm(tmp_path_factory.mktemp("llm") / "llama", "llama", hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def fused_bundle(llama):
    """Its fp32 bundle."""
    from typer.testing import CliRunner

    out = llama.parent / "b"
    r = CliRunner().invoke(app, ["export", str(llama), "--task", "text-generation", "--quant", "none", "--no-profile",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
def test_prompt_longer_than_the_context_is_refused_in_one_line(runner, fused_bundle, tmp_path):
    # before: onnxruntime's "cos_cache dimension 0 shall not be less than total_sequence_length" as an internal error
    # (edgeq generate, after echoing the prompt) and a traceback from run.py
    r = runner.invoke(app, ["generate", str(fused_bundle), "--prompt", LONG, "--max-new-tokens", "4"])
    assert r.exit_code == 2, r.output
    assert "longer than the model's context of 128 tokens" in r.output and "shorten the prompt" in r.output
    assert "internal error" not in r.output and "quick brown" not in r.output  # refused before the prompt is echoed
    p = run_script(fused_bundle / "run.py", ["--prompt", LONG, "--max-new-tokens", "4"], tmp_path / "cwd")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "longer than the model's context of 128 tokens" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""
    from edgeq.bundles.llmgen import main

    (tmp_path / "notok").mkdir()  # a bundle exported from a folder without its tokenizer: run.py said so in a traceback
    assert main(["--prompt", "x"], root=str(tmp_path / "notok")) == 2
    empty = run_script(fused_bundle / "run.py", ["--prompt", ""], tmp_path / "cwd")
    assert empty.returncode == 2 and "Traceback" not in empty.stderr and "no tokens: give a non-empty --prompt" in empty.stderr
    # a prompt that fits still generates up to the context
    ok = run_script(fused_bundle / "run.py", ["--prompt", "the quick brown fox " * 5, "--max-new-tokens", "200", "--json"],
                    tmp_path / "cwd")
    assert ok.returncode == 0, ok.stderr
    assert '"stop": "context"' in ok.stdout or '"stop": "eos"' in ok.stdout


def test_stream_ends_its_line_before_the_summary(tmp_path, monkeypatch):
    """run.py's streamed text is flushed with its newline before the summary goes to stderr (one file for both: in order)."""
    import io
    from argparse import Namespace

    from edgeq.bundles import llmgen

    class Tok:
        def encode(self, text):
            return Namespace(ids=[5, 6])

        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    class Dec:
        context, eos, chunk = 16, set(), 0

        def step(self, ids, past, total):
            import numpy as np

            return np.eye(30)[7], None

    class Out(io.StringIO):
        flushed = ""

        def flush(self):
            self.flushed = self.getvalue()

    out = Out()
    monkeypatch.setattr(llmgen, "load_tokenizer", lambda root: Tok())
    monkeypatch.setattr(llmgen, "Decoder", lambda root, **kw: Dec())
    args = Namespace(prompt="ab", max_new_tokens=3, temperature=0.0, top_k=0, top_p=1.0, seed=0)
    res = llmgen.run(str(tmp_path), args, out=out)
    assert res["tokens"] == [7, 7, 7]
    assert out.flushed == "abhhh\n"  # the newline is flushed, not left in the buffer behind stderr's summary
    Dec.context = 1
    with pytest.raises(llmgen.PromptError, match="2 tokens, longer than the model's context of 1"):
        llmgen.run(str(tmp_path), args, out=io.StringIO())


@pytest.mark.slow
def test_greedy_check_gives_both_runtimes_the_same_prompt_when_it_holds_the_pad_id(fused_bundle, llama):
    """onnxruntime-genai masks pad ids in a prompt, transformers (mask of ones) does not: a random prompt with the pad id
    (how a folder without a tokenizer is checked) failed an fp32 export at new token 0."""
    pytest.importorskip("onnxruntime_genai")
    import json

    from edgeq.bundles.genai import greedy_check
    from edgeq.exporters import hf

    pad = json.loads((fused_bundle / "genai_config.json").read_text())["model"]["pad_token_id"]
    model = hf.load_hf_model(hf.inspect_folder(llama), "text-generation")
    prompts = [[189, 163, 167, 280, 83, 244, 201, pad], [pad, 52, 243, 194]]
    res = greedy_check(fused_bundle, model, prompts, new_tokens=12, min_agreement=1.0, tie_atol=1e-3)
    assert res is not None and res.passed and res.identical == 2, res.summary()


def test_half_precision_checkpoints_are_loaded_in_float32(tmp_path):
    """transformers 5 keeps a bf16 folder in bf16: the KV-cache decoder (float32) then failed its export check against
    a bf16 reference (max abs 0.27 on this Qwen2)."""
    import numpy as np
    import torch

    from edgeq.exporters import hf
    from edgeq.exporters.decoder import arch_from_config, build_decoder, check_decoder
    from fixtures.llm import make_lm

    m = make_lm("qwen2", hidden_size=64, intermediate_size=128).to(torch.bfloat16)
    m.save_pretrained(tmp_path / "bf16", safe_serialization=True)
    model = hf.load_hf_model(hf.inspect_folder(tmp_path / "bf16"), "text-generation")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    arch = arch_from_config(model.config)
    build_decoder(arch, model.state_dict(), tmp_path / "d.onnx", fused=True)
    rows = check_decoder(model, tmp_path / "d.onnx", arch.vocab, 1e-4, 1e-3)
    assert all(ok for *_, ok in rows) and max(a for _, a, _, _ in rows) < 1e-4, rows
    assert np.isfinite(max(a for _, a, _, _ in rows))


def test_token_windows_are_checked_against_dtype_vocabulary_and_context():
    import numpy as np

    from edgeq.core.artifact import IoSpec, TensorSpec
    from edgeq.core.lmdata import check_token_windows, fill_lm_inputs
    from edgeq.errors import CalibrationError

    io = IoSpec(inputs=(TensorSpec("input_ids", "int64", ("b", "s")), TensorSpec("attention_mask", "int64", ("b", "t"))),
                outputs=(TensorSpec("logits", "float32", ("b", "s", 300)),))
    filled, notes = fill_lm_inputs({"input_ids": np.ones((2, 5), np.int64)}, io, "calibration data c.npz")
    assert filled["attention_mask"].shape == (2, 5) and notes
    # before: float or 1-D ids were passed on and refused as "missing input(s) attention_mask, ..."
    for bad in (np.ones((2, 5), np.float32), np.ones(5, np.int64)):
        with pytest.raises(CalibrationError, match=r"c\.npz: input_ids is .*integer ids \[n, T\]"):
            fill_lm_inputs({"input_ids": bad}, io, "calibration data c.npz")
    check_token_windows(np.full((2, 128), 299), 300, 128, "x")  # fits exactly
    # before: onnxruntime's Gather / GroupQueryAttention errors, reported as internal errors of edgeq
    with pytest.raises(CalibrationError, match="token id 300, outside the model's vocabulary of 300"):
        check_token_windows(np.full((2, 8), 300), 300, 128, "x")
    with pytest.raises(CalibrationError, match="token id -1"):
        check_token_windows(np.full((2, 8), -1), 300, 128, "x")
    with pytest.raises(CalibrationError, match="windows of 129 tokens are longer than the model's context of 128"):
        check_token_windows(np.ones((2, 129), np.int64), 300, 128, "x")


@pytest.mark.slow
def test_export_refuses_windows_the_decoder_cannot_take_in_one_line(runner, llama, tmp_path):
    import numpy as np

    for name, ids, want in (("oov", np.full((4, 16), 5000), "outside the model's vocabulary of 300"),
                            ("long", np.ones((2, 400)), "windows of 400 tokens are longer than the model's context of 128")):
        calib = tmp_path / f"{name}.npz"
        np.savez(calib, input_ids=ids.astype(np.int64))
        r = runner.invoke(app, ["export", str(llama), "--task", "text-generation", "--quant", "int4", "--algo", "gptq",
                                "--calib", str(calib), "--no-profile", "-o", str(tmp_path / name)])
        assert r.exit_code == 2, r.output
        assert want in r.output and "internal error" not in r.output
    # the target's default (static INT8) without data: the hint names the LLM's own data format and int4 RTN
    r = runner.invoke(app, ["export", str(llama), "--task", "text-generation", "--no-profile", "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "needs calibration data" in r.output, r.output
    assert "input_ids [n, T]" in r.output and "--quant int4 (RTN needs no data)" in r.output


@pytest.mark.slow
def test_gguf_run_py_refuses_a_prompt_longer_than_its_context(runner, llama, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "g"
    r = runner.invoke(app, ["export", str(llama), "--target", "llamacpp-x86_64", "--quant", "f32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    # before: a numpy broadcast traceback from inside llama-cpp-python's eval
    p = run_script(out / "run.py", ["--prompt", LONG, "--max-new-tokens", "4"], tmp_path / "cwd")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "longer than the context of 128 tokens" in p.stderr
    ok = run_script(out / "run.py", ["--prompt", "the quick brown fox", "--max-new-tokens", "4"], tmp_path / "cwd")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_verify_of_an_fp32_llm_bundle_says_what_the_export_did_check(runner, fused_bundle):
    """No data, but the greedy check against transformers ran and passed: verify said "nothing proven"."""
    import json

    reason = json.loads((fused_bundle / "manifest.json").read_text())["verdict"]["reason"]
    assert "greedy generation check passed" in reason
    r = runner.invoke(app, ["verify", str(fused_bundle)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "SKIPPED" in out and "greedy generation check passed" in out and "nothing proven" not in out


@pytest.mark.slow
def test_gguf_export_honours_accept_failed_and_verify_reads_the_verdict(runner, llama, tmp_path):
    """q4_0 of this random 64-wide model is far outside the target's KL tolerance. Before: --accept-failed was ignored
    on llama.cpp targets (exit 1 regardless) and edgeq verify said PASS for a bundle written only for inspection."""
    pytest.importorskip("llama_cpp")
    import json

    args = ["export", str(llama), "--target", "llamacpp-x86_64", "--quant", "q4_0"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "kept")])
    assert r.exit_code == 1 and "outside target llamacpp-x86_64's tolerances" in r.output, r.output
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["verdict"]["status"] == "fail"
    v = runner.invoke(app, ["verify", str(tmp_path / "kept")])
    assert v.exit_code == 1 and "failed its export check" in v.output, v.output
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "shipped"), "--accept-failed"])
    assert r.exit_code == 0 and "ACCEPTED-FAILED" in r.output, r.output
    verdict = json.loads((tmp_path / "shipped" / "manifest.json").read_text())["verdict"]
    assert verdict["status"] == "accepted-failed" and "mean KL" in verdict["reason"]
    v = runner.invoke(app, ["verify", str(tmp_path / "shipped")])
    assert v.exit_code == 0 and "ACCEPTED-FAILED" in v.output, v.output


def _fused_genai_folder(tmp_path, context: int):
    """The fused decoder of a tiny Llama with ``context`` positions and its genai/tokenizer files: (folder, transformers model)."""
    from edgeq.bundles.genai import bundle_files
    from edgeq.exporters import hf
    from edgeq.exporters.decoder import arch_from_config, build_decoder

    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64, intermediate_size=128, max_position_embeddings=context)
    model = hf.load_hf_model(hf.inspect_folder(folder), "text-generation")
    b = tmp_path / "b"
    b.mkdir()
    build_decoder(arch_from_config(model.config), model.state_dict(), b / "model.onnx", fused=True)
    for name, data in bundle_files(folder, b / "model.onnx")[0]:
        (b / name).write_bytes(data)
    return b, model


def test_llm_profile_also_times_the_longest_power_of_two_that_fits(tmp_path):
    """A 1,280-token model: 2,048 does not fit; before, the decode curve stopped at 512 tokens."""
    from edgeq.profiling.llm import measure

    b, _ = _fused_genai_folder(tmp_path, 1280)
    r = measure(str(b), steps=2, repeats=1, threads=1)
    assert [d["context"] for d in r["decode"]] == [128, 512, 1024]
    assert r["decode_growth"] == r["decode"][-1]["decode_ms_per_token"] / r["decode"][0]["decode_ms_per_token"]


def test_generation_loop_shares_the_cache_buffers_like_onnxruntime_genai(tmp_path):
    """run.py / edgeq generate / edgeq profile on a GroupQueryAttention decoder: one buffer per past/present pair, grown
    as needed, extended in place (before: the whole cache copied into new present arrays every token, 5.3 vs 2.1 ms
    per token at 1,024 tokens on the realistic bench fixture). Same logits as transformers across a buffer growth."""
    import numpy as np
    import torch

    from edgeq.bundles.llmgen import Decoder

    b, model = _fused_genai_folder(tmp_path, 512)
    dec = Decoder(str(b))
    assert dec.share  # genai_config.json's past_present_share_buffer, as the export writes it for GroupQueryAttention
    ids = np.random.default_rng(0).integers(3, 300, (1, 300))
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits[0].numpy()
    logits, cache = dec.step(ids[:, :250], None, 250)  # buffers of 256 positions
    got = [logits]
    for t in range(250, 300):  # past 256: the buffers grow (to 512) with their contents
        logits, cache = dec.step(ids[:, t : t + 1], cache, t + 1)
        got.append(logits)
    assert cache["past_key_values.0.key"][0].shape[2] == 512
    np.testing.assert_allclose(np.stack(got[:-1]), want[249:299], atol=1e-4, rtol=1e-3)


def test_accuracy_level_times_one_generated_token_of_a_kv_decoder(tmp_path):
    """The level choice reports a per-token time for language models; for a Hugging Face KV decoder the one-token feed
    kept the window-long attention_mask/position_ids, onnxruntime refused it, and the rule timed the whole window
    instead (180 vs 179 ms: "level 4 was not faster", while per token it is 12x faster on the realistic fixture)."""
    import numpy as np

    from edgeq.core.data import load_samples
    from edgeq.core.onnxutil import artifact_from
    from edgeq.core.targets import load_target
    from edgeq.exporters import hf
    from edgeq.exporters.decoder import arch_from_config, build_decoder
    from edgeq.quantization import quantize
    from edgeq.quantization.selection import acclevel
    from edgeq.quantization.spec import QuantSpec

    folder = save_lm(tmp_path / "llama", "llama", hidden_size=64, intermediate_size=128)
    model = hf.load_hf_model(hf.inspect_folder(folder), "text-generation")
    build_decoder(arch_from_config(model.config), model.state_dict(), tmp_path / "fp32.onnx", fused=True)
    ref = artifact_from(tmp_path / "fp32.onnx")
    q = quantize(ref, QuantSpec(mode="int4", algo="rtn", block_size=32), tmp_path / "int4.onnx").artifact
    np.savez(tmp_path / "w.npz", input_ids=np.random.default_rng(0).integers(3, 300, (2, 16)))
    data = load_samples(tmp_path / "w.npz", ref.io, what="evaluation")
    choice, _ = acclevel.compare(ref, q, data, load_target("cpu-x86_64"), tmp_path, 4)
    assert all(m.ms_token is not None for m in choice.measures), choice
    assert "per token" in choice.reason
