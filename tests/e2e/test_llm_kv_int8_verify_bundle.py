"""`edgeq verify BUNDLE --reference FP32.onnx --data D` on an int8-cache LLM bundle: the bundle's own checks (golden pairs
with int8 past inputs and present outputs) and then its model against the fp32 reference, logits compared and the int8
cache codes reported; a reference the bundle disagrees with fails (exit 1); --reference without --data is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from edgeq.cli import app  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from fixtures.llm import make_lm, save_lm  # noqa: E402

SHAPE = dict(hidden_size=64, head_dim=16)  # head size 16: GroupQueryAttention, so the int8 cache applies


@pytest.fixture(scope="module")
def kv8_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("kv8bundle")
    folder = save_lm(d / "llama", "llama", **SHAPE)
    np.savez(d / "c.npz", input_ids=np.random.default_rng(0).integers(3, 300, (6, 16)).astype(np.int64))
    r = CliRunner().invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--calib", str(d / "c.npz"),
                                 "--kv-cache", "int8", "--no-profile", "-o", str(d / "b8")])
    assert r.exit_code == 0, r.output
    tg = load_target("cpu-x86_64")
    D.export_hf_decoder(make_lm("llama", **SHAPE), d / "fp32.onnx", tg)  # the same weights (seed 0), fp32 cache
    D.export_hf_decoder(make_lm("llama", seed=1, **SHAPE), d / "other.onnx", tg)  # another model of the same shape
    return d / "b8", d


@pytest.mark.slow
def test_int8_cache_bundle_against_its_fp32_reference(runner, kv8_bundle):
    b8, d = kv8_bundle
    r = runner.invoke(app, ["verify", str(b8), "--reference", str(d / "fp32.onnx"), "--data", str(d / "c.npz"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["pairs"]) == 3 and all(p["passed"] for p in res["pairs"])  # golden pairs: int8 past in, int8 present out
    ref = res["reference_check"]  # was silently left out before: --reference ignored for a bundle
    tasks = {t["output"]: t for t in ref["tasks"]}
    assert ref["passed"] and ref["samples"] == 6 and tasks["logits"]["kind"] == "lm-logits" and tasks["logits"]["passed"]
    assert {t["kind"] for n, t in tasks.items() if n.startswith("present.")} == {"not-compared"}
    r = runner.invoke(app, ["verify", str(b8), "--reference", str(d / "fp32.onnx"), "--data", str(d / "c.npz")])
    assert r.exit_code == 0 and "against --reference" in r.output and "not-compared" in r.output, r.output


@pytest.mark.slow
def test_int8_cache_bundle_against_another_model_fails(runner, kv8_bundle):
    b8, d = kv8_bundle
    r = runner.invoke(app, ["verify", str(b8), "--reference", str(d / "other.onnx"), "--data", str(d / "c.npz"), "--json"])
    assert r.exit_code == 1, r.output
    r = runner.invoke(app, ["verify", str(b8), "--reference", str(d / "other.onnx"), "--data", str(d / "c.npz")])
    assert r.exit_code == 1 and "against --reference" in r.stderr and "logits" in r.stderr, r.output
    assert "within the tolerances" not in r.stdout  # the bundle's own checks passed, its model did not
    r = runner.invoke(app, ["verify", str(b8), "--reference", str(d / "fp32.onnx")])
    assert r.exit_code == 2 and "--data" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
