"""`edgeq verify CANDIDATE --reference FP32` on KV-cache decoders whose cache types differ: an int8 cache's `present`
outputs are codes, not the reference's values, so they are reported and never compared; the logits decide, and a
genuinely broken int8 cache still fails (exit 1)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.cli import app  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.exporters import kvcache as K  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """(fp32-cache decoder, its int8-cache form per channel, one whose scales are 1/40 of the calibrated ones, data)"""
    d = tmp_path_factory.mktemp("kv8verify")
    art, _, _ = D.export_hf_decoder(make_lm("llama", hidden_size=64, head_dim=16), d / "fp32.onnx", load_target("cpu-x86_64"))
    ids = np.random.default_rng(0).integers(3, 300, (6, 16)).astype(np.int64)
    np.savez(d / "data.npz", input_ids=ids)
    ranges = K.collect_ranges(art.path, ids)
    K.apply_int8_cache(art.path, d / "int8.onnx", ranges, "PER_CHANNEL")
    small = K.KvRanges(key=tuple(k / 40 for k in ranges.key), value=tuple(v / 40 for v in ranges.value), windows=6, tokens=96)
    K.apply_int8_cache(art.path, d / "clipped.onnx", small, "PER_CHANNEL")  # keys and values clipped at 1/40 of their range
    return d / "fp32.onnx", d / "int8.onnx", d / "clipped.onnx", d / "data.npz"


def _verify(runner, cand, ref, data):
    return runner.invoke(app, ["verify", str(cand), "--reference", str(ref), "--data", str(data), "--json"])


def test_int8_cache_against_fp32_reference_compares_logits_and_reports_the_cache(runner, decoders):
    ref, int8, _, data = decoders
    assert {o.type.tensor_type.elem_type for o in onnx.load(str(int8)).graph.output if o.name.startswith("present.")} == {onnx.TensorProto.INT8}
    r = _verify(runner, int8, ref, data)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    tasks = {t["output"]: t for t in rep["tasks"]}
    assert tasks["logits"]["kind"] == "lm-logits" and tasks["logits"]["passed"] and tasks["logits"]["metrics"]["mean_kl"] > 0
    present = [t for n, t in tasks.items() if n.startswith("present.")]
    assert len(present) == 4 and all(t["kind"] == "not-compared" and not t["metrics"] for t in present)
    assert all(t["info"] == {"reference_dtype": "float32", "candidate_dtype": "int8"} for t in present)
    raw = {o["name"]: o for o in rep["outputs"]}
    assert raw["present.0.key"]["max_abs"] is None and raw["logits"]["cosine"] > 0.99  # codes are never put beside values


def test_int8_cache_as_its_own_reference_leaves_the_codes_out(runner, decoders):
    ref, int8, clipped, data = decoders  # both int8: same type, but codes of other scales are other values
    r = _verify(runner, int8, clipped, data)
    rep = json.loads(r.stdout) if r.stdout.strip().startswith("{") else None
    assert rep is not None, r.output
    kinds = {t["output"]: t["kind"] for t in rep["tasks"]}
    assert {k for n, k in kinds.items() if n.startswith("present.")} == {"not-compared"} and kinds["logits"] == "lm-logits"


def test_a_broken_int8_cache_still_fails_on_its_logits(runner, decoders):
    ref, _, clipped, data = decoders
    r = _verify(runner, clipped, ref, data)
    assert r.exit_code == 1, r.output
    rep = json.loads(r.stdout)
    assert not rep["passed"] and rep["failures"] and all(f.startswith("logits") or "logits" in f for f in rep["failures"]), rep["failures"]
    r = runner.invoke(app, ["verify", str(clipped), "--reference", str(ref), "--data", str(data)])
    assert r.exit_code == 1 and "outside target cpu-x86_64's tolerances" in r.output


def test_nothing_comparable_is_refused_not_passed(runner, tmp_path):
    from onnx import TensorProto, helper

    from edgeq.checks.comparison import encoding_differs

    def model(path, out_type):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
        y = helper.make_tensor_value_info("y", out_type, [1, 8])
        node = helper.make_node("Cast", ["x"], ["y"], to=out_type)
        onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]), str(path))

    model(tmp_path / "ref.onnx", TensorProto.FLOAT)
    model(tmp_path / "cand.onnx", TensorProto.INT8)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    r = runner.invoke(app, ["verify", str(tmp_path / "cand.onnx"), "--reference", str(tmp_path / "ref.onnx"), "--data", str(tmp_path / "d.npz")])
    assert r.exit_code == 2 and "nothing to compare" in r.output and len(r.stderr.strip().splitlines()) == 1, r.output

    f, i8 = [np.zeros((1, 2, 3, 4), np.float32)], [np.zeros((1, 2, 3, 4), np.int8)]
    assert encoding_differs("present.0.key", f, i8) and encoding_differs("logits", f, i8)  # any output, by type
    assert encoding_differs("present.3.value", i8, i8) and not encoding_differs("present.0.key", f, f)
    assert not encoding_differs("labels", [np.zeros(3, np.int64)], [np.zeros(3, np.int64)])  # integer outputs stay compared


def test_profile_reference_check_leaves_the_int8_cache_out_and_still_fails_a_broken_one(runner, decoders):
    ref, int8, clipped, data = decoders
    base = ["--reference", str(ref), "--data", str(data), "--budget", "0.2", "--json"]
    r = runner.invoke(app, ["profile", str(int8), *base])
    assert r.exit_code == 0, r.output  # was exit 1: per-channel codes against fp32 values, cosine 0.987-0.990 < 0.99
    vs = json.loads(r.stdout)["results"][0]["numerics"]["vs_reference"]
    assert vs["passed"] and [o["name"] for o in vs["outputs"]] == ["logits"] and vs["outputs"][0]["cosine"] > 0.99
    assert sorted(vs["not_compared"]) == ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    layers = json.loads(r.stdout)["results"][0]["layer_errors"]  # per-layer diagnostics ran with each model's empty past
    assert layers and all(np.isfinite(x["rel_rms_error"]) for x in layers) and not any(x["tensor"].startswith("present.") for x in layers)
    r = runner.invoke(app, ["profile", str(clipped), *base])
    assert r.exit_code == 1 and "'logits'" in r.stderr and "present" not in r.stderr, r.output
