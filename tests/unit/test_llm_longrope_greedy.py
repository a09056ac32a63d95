"""The export's onnxruntime-genai greedy check across a LongRoPE switch: transformers' generate re-runs the sequence with
the long factors there, and the check's genai loop does the same (rewind, whole sequence), so an fp32 decoder agrees."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime_genai")

from edgeq.bundles.genai import genai_config, greedy_check, longrope_switch  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

SWITCH = 32


def _phi3():
    rng = np.random.default_rng(1)
    scaling = {"type": "longrope", "short_factor": (1.0 + rng.random(8)).tolist(), "long_factor": (2.0 + 6.0 * rng.random(8)).tolist()}
    return make_lm("phi3", hidden_size=64, intermediate_size=128, max_position_embeddings=128,
                   original_max_position_embeddings=SWITCH, rope_scaling=scaling)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_greedy_check_agrees_across_the_switch(fused, tmp_path):
    model = _phi3()
    arch = D.arch_from_config(model.config)
    D.build_decoder(arch, model.state_dict(), tmp_path / "model.onnx", fused=fused)
    (tmp_path / "genai_config.json").write_text(json.dumps(genai_config(arch, {}, share_buffer=fused)))
    assert longrope_switch(tmp_path / "model.onnx") == SWITCH
    rng = np.random.default_rng(5)
    # below it, across it from 20 tokens, from exactly the switch, and from past it (the long factors from the prefill on)
    prompts = [rng.integers(3, 300, n).tolist() for n in (6, 20, SWITCH, 40)]
    res = greedy_check(tmp_path, model, prompts, new_tokens=30, min_agreement=1.0, tie_atol=0.0)
    assert res.runtime == "onnxruntime-genai" and res.identical == 4 and res.passed, res.summary()
    # the check reaches past the switch: transformers' tokens there are what genai keeping its cache would miss
    assert res.agreement == 1.0 and res.first_divergence is None
