"""Verification of an LLM keeps both models' logits for every window: the number of windows is capped by a memory
budget (a 49k-150k token vocabulary over 32 x 128-token windows is GBs), while non-LM models verify on all samples."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks.lmbudget import LOGITS_BUDGET, windows_within
from edgeq.core.data import SampleSet
from edgeq.core.onnxutil import artifact_from


def _lm(path, vocab: int):
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Gather", ["E", "input_ids"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["logits"])], "lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])],
        [numpy_helper.from_array(rng.normal(size=(64, 8)).astype(np.float32), "E"),
         numpy_helper.from_array(rng.normal(size=(8, vocab)).astype(np.float32), "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return artifact_from(path).io


def _windows(n: int, tokens: int) -> SampleSet:
    ids = np.random.default_rng(0).integers(0, 64, (n, 1, tokens)).astype(np.int64)
    return SampleSet(arrays={"input_ids": ids}, stacked={"input_ids": True}, labels=None, source="test")


def test_lm_windows_are_capped_by_the_logits_budget(tmp_path):
    vocab, tokens = 50_000, 128
    io = _lm(tmp_path / "lm.onnx", vocab)
    data = _windows(32, tokens)
    n = windows_within(data, io)
    assert n == LOGITS_BUDGET // (2 * 4 * tokens * vocab) == 10  # both models' float32 logits under the budget
    assert windows_within(data, io, budget=1) == 1  # never zero
    small = _lm(tmp_path / "small.onnx", 300)
    assert windows_within(data, small) == 32  # a small vocabulary: every window


def test_a_model_that_is_not_an_lm_verifies_on_every_sample(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    io = artifact_from(tmp_path / "m.onnx").io
    data = SampleSet(arrays={"x": np.zeros((50, 1, 4), np.float32)}, stacked={"x": True}, labels=None, source="t")
    assert windows_within(data, io, budget=1) == 50
