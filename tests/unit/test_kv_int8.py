"""--kv-cache int8 (exporters/kvcache.py): scales calibrated from the fp32 decoder's keys/values, the rewritten graph, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeq.core.runtime import create_session, run  # noqa: E402
from edgeq.core.targets import load_target  # noqa: E402
from edgeq.errors import ModelError  # noqa: E402
from edgeq.exporters import decoder as D  # noqa: E402
from edgeq.exporters import kvcache as K  # noqa: E402
from fixtures.llm import make_lm  # noqa: E402

FUSED = dict(hidden_size=64, head_dim=16)  # head size 16: GroupQueryAttention


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    d = tmp_path_factory.mktemp("kv8")
    model = make_lm("llama", **FUSED)
    art, _, arch = D.export_hf_decoder(model, d / "m.onnx", load_target("cpu-x86_64"))
    return art.path, arch, d


def _windows(seed: int, n: int = 4, t: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 300, (n, t)).astype(np.int64)


def test_scales_are_the_fp32_presents_absmax_over_the_windows(fused):
    path, arch, _ = fused
    win = _windows(0)
    ranges = K.collect_ranges(path, win)
    assert len(ranges.key) == arch.layers and ranges.key[0].shape == (arch.kv_heads, arch.head_dim)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    top = np.zeros_like(ranges.key[1])
    for row in win:  # independently: each window's post-rotary keys of layer 1
        res = dict(zip(outs, sess.run(None, D.prefill_feed(sess.get_inputs(), row[None]))))
        top = np.maximum(top, np.abs(res["present.1.key"]).max(axis=(0, 2)))
    np.testing.assert_allclose(ranges.key[1], top, rtol=1e-6)
    # the scales follow the data: other windows, other scales; layers and channels differ (no constant)
    other = K.collect_ranges(path, _windows(1))
    assert not np.allclose(other.value[0], ranges.value[0])
    pc = K.scales_of(ranges, "PER_CHANNEL")
    assert pc[0][0].shape == (1, arch.kv_heads, 1, arch.head_dim) and pc[0][0].std() > 0
    assert K.scales_of(ranges, "PER_TENSOR")[0][0] != K.scales_of(ranges, "PER_TENSOR")[1][0]
    np.testing.assert_allclose(pc[1][1].reshape(arch.kv_heads, arch.head_dim), ranges.value[1] / 127, rtol=1e-6)


def test_int8_cache_graph_runs_through_the_cache_close_to_fp32_and_calibration_matters(fused):
    path, arch, d = fused
    ranges = K.collect_ranges(path, _windows(0))
    ids = _windows(5, n=2, t=20)
    ref = D.decode_with_cache(create_session(path), ids, 8)
    errs = {}
    for qt in K.QUANT_TYPES:
        out = K.apply_int8_cache(path, d / f"{qt}.onnx", ranges, qt)
        m = onnx.load(str(out))
        past = [t for t in m.graph.input if t.name.startswith("past_key_values.")]
        present = [t for t in m.graph.output if t.name.startswith("present.")]
        assert all(t.type.tensor_type.elem_type == onnx.TensorProto.INT8 for t in past + present) and len(past) == 2 * arch.layers
        for n in K.gqa_nodes(m):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["k_quant_type"] == qt.encode() and attrs["kv_cache_bit_width"] == 8 and len(n.input) == 14
        sess = create_session(out)
        assert {i.type for i in sess.get_inputs() if i.name.startswith("past_")} == {"tensor(int8)"}
        got = D.decode_with_cache(sess, ids, 8)
        errs[qt] = np.abs(got - ref).mean()
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.75, qt  # random weights: many near-ties
    # a scale not taken from the data (all channels 1/127: values clip at +-1) is far worse than the calibrated ones
    flat = K.KvRanges(key=tuple(np.ones_like(k) for k in ranges.key), value=tuple(np.ones_like(v) for v in ranges.value), windows=0, tokens=0)
    bad = D.decode_with_cache(create_session(K.apply_int8_cache(path, d / "flat.onnx", flat, "PER_TENSOR")), ids, 8)
    assert np.abs(bad - ref).mean() > 3 * max(errs.values())


def test_choose_measures_both_layouts_and_the_record_names_the_pick(fused):
    path, _, d = fused
    from edgeq.core.onnxutil import artifact_from

    win = _windows(0)
    art, record, notes = K.int8_cache_stage(path, artifact_from(path), win, d / "choose")
    kl = record["kl_vs_fp32_cache"]
    assert set(kl) == {"per_tensor", "per_channel"} and all(v > 0 for v in kl.values())
    want = "PER_CHANNEL" if kl["per_channel"] < K.PER_CHANNEL_GAIN * kl["per_tensor"] else "PER_TENSOR"
    assert record["quant_type"] == want and record["bytes_per_token"] * 4 == record["bytes_per_token_fp32"]
    assert {t.dtype for t in art.io.inputs if t.name.startswith("past_")} == {"int8"} and art.provenance[-1].startswith("kv-cache(int8")


def test_plain_attention_graph_is_refused(tmp_path):
    model = make_lm("llama", **FUSED)
    art, _, _ = D.export_hf_decoder(model, tmp_path / "p.onnx", load_target("openvino-cpu"))
    with pytest.raises(ModelError, match="GroupQueryAttention"):
        K.check_fused(art.path)


def test_run_casts_only_an_empty_feed_to_the_session_type(fused):
    path, _, d = fused
    ranges = K.collect_ranges(path, _windows(0, n=1))
    sess = create_session(K.apply_int8_cache(path, d / "cast.onnx", ranges, "PER_TENSOR"))
    feed = D.prefill_feed(create_session(path).get_inputs(), _windows(2, n=1))
    assert feed["past_key_values.0.key"].dtype == np.float32
    run(sess, feed)  # empty fp32 past: cast
    full = dict(feed, **{"past_key_values.0.key": np.zeros((1, 2, 3, 16), np.float32)})
    with pytest.raises(ModelError):  # values are never cast behind the caller's back
        run(sess, full)
