"""A target's [static_decoder] table sets the static decoder's cache slots and prefill chunk."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.targets import load_target, targets_dir  # noqa: E402
from edgeq.errors import TargetError  # noqa: E402


def _target(tmp_path, table: str):
    text = (targets_dir() / "qnn-htp.toml").read_text().replace('name = "qnn-htp"', 'name = "qnn-htp-chunk"')
    path = tmp_path / "qnn-htp-chunk.toml"
    path.write_text(text + "\n[static_decoder]\n" + table + "\n")
    return path


@pytest.mark.parametrize("table, problem", [("prefill_chunk = 0", "prefill_chunk"), ("slots = 'many'", "slots"),
                                            ("chunk = 16", "not a known key")])
def test_bad_static_decoder_settings_are_refused_when_the_target_loads(tmp_path, table, problem):
    with pytest.raises(TargetError, match=problem):
        load_target(_target(tmp_path, table))


@pytest.mark.slow
def test_the_targets_slots_and_prefill_chunk_reach_the_bundle(runner, tmp_path):
    from edgeq.cli import app
    from fixtures.llm import save_lm

    tg = _target(tmp_path, "slots = 48\nprefill_chunk = 16")
    assert (load_target(tg).static_slots, load_target(tg).prefill_chunk) == (48, 16)
    folder = save_lm(tmp_path / "gemma2", "gemma2")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--target", str(tg), "--quant", "none",
                            "--no-profile", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["generation"]["passed"] and any("prefill graph (16 per run)" in o["name"] for o in res["export"]["outputs"])
    assert json.loads((out / "manifest.json").read_text())["model"]["prefill"]["chunk"] == 16
    g = onnx.load(str(out / "prefill.onnx"), load_external_data=False).graph
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in g.input}
    assert dims["input_ids"] == [1, 16] and dims["past_key_values.0.key"][2] == 48 and dims["attention_bias_sliding"] == [1, 1, 1, 16, 48]


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn not installed")
def test_the_qnn_context_binary_compiles_from_the_shared_weights_file(runner, tmp_path):
    """model.onnx reads its weights from model.onnx.data: the QNN context still compiles (the same bytes each time)."""
    from edgeq.cli import app
    from fixtures.llm import save_lm

    folder = save_lm(tmp_path / "llama", "llama")
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    calib = tmp_path / "calib.npz"  # the HTP runs fixed point only: QDQ weights come with activation QDQ, calibrated on windows
    np.savez(calib, input_ids=np.random.default_rng(0).integers(3, vocab, (4, 16)))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = runner.invoke(app, ["export", str(folder), "--task", "text-generation", "--target", "qnn-htp", "--quant", "int8-weight",
                                "--calib", str(calib), "--no-profile", "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs.append(out)
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    ctx = manifest["model"]["ep_context"]
    assert manifest["model"]["onnx_external_data"] == "model.onnx.data" and ctx.get("model") == "model_ctx.onnx", ctx
    for f in ctx["files"]:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
