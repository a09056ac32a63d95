"""Raw CTC logits from non-image (sequence) inputs are inferred as ``sequence``, with their layout
and blank class; plain regression outputs of the same shape stay ``regression``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.checks import infer_all
from edgeq.checks.kinds import Context, context_from_model

AUDIO = Context(sequence_inputs=((1, 100, 80),))  # [B, frames, features] float input


def _ctc_logits(rng: np.random.Generator, t: int = 40, c: int = 12, blank: int = 0, tbc: bool = False) -> np.ndarray:
    x = rng.normal(0, 1, (t, c))
    win = np.where(rng.random(t) < 0.6, blank, rng.integers(1, c - 1, t))  # blank most of the time, characters elsewhere
    x[np.arange(t), win] += 8.0
    return (x[:, None, :] if tbc else x[None]).astype(np.float32)


def test_raw_ctc_logits_from_a_sequence_input_are_a_sequence_with_layout_and_blank():
    rng = np.random.default_rng(0)
    spec = infer_all(("logits",), [[_ctc_logits(rng) for _ in range(4)]], AUDIO)[0]
    assert spec.kind == "sequence" and spec.params == {"layout": "BTC", "blank": 0} and "blank" in spec.why
    # time first ([T, 1, C], as PyTorch's CTC loss takes it), blank last (as Keras puts it)
    spec = infer_all(("logits",), [[_ctc_logits(rng, blank=11, tbc=True) for _ in range(4)]], AUDIO)[0]
    assert spec.kind == "sequence" and spec.params == {"layout": "TBC", "blank": 11}
    # without a sequence (or image) input nothing says these are per-step classes: left as they were
    assert infer_all(("logits",), [[_ctc_logits(rng) for _ in range(4)]], Context())[0].kind == "regression"


def test_softmax_steps_get_their_layout_and_blank_too():
    rng = np.random.default_rng(3)
    logits = [_ctc_logits(rng, blank=11, tbc=True) for _ in range(4)]
    probs = [np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in logits]
    spec = infer_all(("probs",), [probs], Context())[0]  # a softmax at every step: a sequence whatever the input
    assert spec.kind == "sequence" and spec.params == {"layout": "TBC", "blank": 11}
    logp = [np.log(p) for p in probs]
    assert infer_all(("logp",), [logp], Context())[0].params == {"layout": "TBC", "blank": 11}


def test_plain_regression_of_the_same_shape_stays_regression():
    rng = np.random.default_rng(1)
    plain = [rng.normal(0, 3, (1, 40, 12)).astype(np.float32) for _ in range(4)]  # no peaked steps
    assert infer_all(("y",), [plain], AUDIO)[0].kind == "regression"
    hidden = [rng.normal(0, 1, (1, 40, 12)).astype(np.float32) for _ in range(4)]
    for h in hidden:  # one outlier channel wins every step (hidden states): not a blank among characters
        h[..., 0] += 20.0
    assert infer_all(("y",), [hidden], AUDIO)[0].kind == "regression"
    middle = [_ctc_logits(rng, blank=5) for _ in range(4)]  # the dominant class sits mid-vocabulary: no CTC blank
    assert infer_all(("y",), [middle], AUDIO)[0].kind == "regression"


def test_a_model_with_a_feature_sequence_input_gives_the_context_and_verify_decodes(tmp_path):
    from edgeq.checks.comparison import verify
    from edgeq.core.data import SampleSet
    from edgeq.core.targets import Tolerances

    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (20, 12)).astype(np.float32)
    w[:, 0] = 0.0
    g = helper.make_graph([helper.make_node("MatMul", ["feats", "w"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["logits"])],
                          "ctc", [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", 20])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", 12])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([6.0] + [0.0] * 11, np.float32), "bias")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "ctc.onnx"))
    assert context_from_model(m).sequence_inputs == ((1, 1, 20),) and not context_from_model(m).image_inputs
    feats = np.zeros((6, 30, 20), np.float32)
    hits = rng.random((6, 30)) < 0.35  # a few frames carry a character: strong, sparse features
    feats[hits] = rng.normal(0, 4, (int(hits.sum()), 20))
    data = SampleSet(arrays={"feats": feats}, stacked={"feats": False}, labels=None, source="test")
    rep = verify(tmp_path / "ctc.onnx", tmp_path / "ctc.onnx", data, Tolerances(), output_names=("logits",))
    task = rep.tasks[0]
    assert task["kind"] == "sequence" and task["metrics"] == {"sequence_match": 1.0} and task["info"]["blank"] == 0
