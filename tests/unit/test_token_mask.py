"""Embedding outputs [B, T, H] of a model with an attention_mask input are judged on the real tokens only,
in the verdict and in the --max-drop search / gate scoring alike (issue 14; MiniLM scored 0.85 with padding
counted, 0.93 on its real tokens). The candidate here differs from the reference only at padded positions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks.comparison import verify
from edgeq.checks.masking import masked, token_masks
from edgeq.checks.metrics import embedding
from edgeq.core.data import SampleSet
from edgeq.core.targets import load_target
from edgeq.quantization.int8 import static

V, H, T = 20, 16, 8


def _encoder(path, *, pad_noise: bool):
    """input_ids, attention_mask [N, T] -> Gather -> MatMul -> last_hidden_state [N, T, H]; with ``pad_noise``
    a large vector is added at every padded position (what a quantized model may write there)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (V, H)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.3, (H, H)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"])]
    out = "h"
    if pad_noise:
        inits += [numpy_helper.from_array(np.float32(1.0).reshape(()), "one"),
                  numpy_helper.from_array(np.full(H, -5.0, np.float32), "noise"),
                  numpy_helper.from_array(np.array([-1], np.int64), "last")]
        nodes += [helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "mf"], ["pad"]), helper.make_node("Unsqueeze", ["pad", "last"], ["pad3"]),
                  helper.make_node("Mul", ["pad3", "noise"], ["n"]), helper.make_node("Add", ["h", "n"], ["hn"])]
        out = "hn"
    nodes.append(helper.make_node("Identity", [out], ["last_hidden_state"]))
    g = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", T]),
                                         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", T])],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["N", T, H])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _data() -> SampleSet:
    rng = np.random.default_rng(1)
    ids = rng.integers(1, V, (12, T)).astype(np.int64)
    mask = np.ones((12, T), np.int64)
    mask[:, T // 2:] = 0  # half of every sample is padding
    ids[mask == 0] = 0
    arrays = {"input_ids": ids, "attention_mask": mask}
    return SampleSet(arrays=arrays, stacked={k: False for k in arrays}, labels=None, source="test")


def test_padding_noise_does_not_fail_the_verdict_and_real_tokens_are_what_is_scored(tmp_path):
    ref, cand, data = _encoder(tmp_path / "ref.onnx", pad_noise=False), _encoder(tmp_path / "cand.onnx", pad_noise=True), _data()
    tol = load_target("cpu-x86_64").tolerances
    report = verify(ref, cand, data, tol, output_names=("last_hidden_state",))
    check = report.tasks[0]
    assert check["kind"] == "embedding"
    assert report.passed and check["metrics"]["mean_cosine"] > 0.9999, check
    assert check["info"]["vectors"] == 12 * T // 2  # only the real tokens
    # the same outputs with padding counted: the padded vectors flip the verdict
    ro = static.all_outputs(onnx.load(str(ref)), data, len(data))
    co = static.all_outputs(onnx.load(str(cand)), data, len(data))
    spec = static.output_tasks(onnx.load(str(ref)), ro)[0]
    assert not embedding(spec, ro[0], co[0], tol).passed
    assert embedding(spec, *[masked([spec], o, token_masks(data, len(data)))[0] for o in (ro, co)], tol).passed


def test_the_search_scores_the_real_tokens_as_the_verdict_does(tmp_path):
    ref, cand, data = _encoder(tmp_path / "ref.onnx", pad_noise=False), _encoder(tmp_path / "cand.onnx", pad_noise=True), _data()
    ro = static.all_outputs(onnx.load(str(ref)), data, len(data))
    co = static.all_outputs(onnx.load(str(cand)), data, len(data))
    specs = static.output_tasks(onnx.load(str(ref)), ro)
    fp32 = static.score_outputs(specs, ro, ro, None, token_masks(data, len(data)))
    assert static.score_outputs(specs, co, ro, None, token_masks(data, len(data))).drop_from(fp32) < 1e-6
    assert static.score_outputs(specs, co, ro, None).drop_from(static.score_outputs(specs, ro, ro, None)) > 0.1  # padding counted
    assert token_masks(SampleSet(arrays={"x": np.zeros((2, 3))}, stacked={"x": False}, labels=None, source="t"), 2) is None
