"""An image recognizer whose output is [T, 1, C] (one sequence, time first, as ddddocr's captcha model
emits) is a sequence even when the verification data does not make its logits look like CTC (few
distinct characters win): it was checked as "regression" by cosine on its raw logits."""

from __future__ import annotations

import numpy as np

from edgeq.checks import infer_all
from edgeq.checks.kinds import Context


def test_time_first_single_sequence_from_an_image_is_a_sequence_in_tbc_layout():
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(4):
        a = rng.normal(0, 0.3, (20, 1, 30)).astype(np.float32)  # flat logits: not peaked, so not "CTC-like"
        a[:, 0, 0] += 0.5
        outs.append(a)
    ctx = Context(image_inputs=((1, 1, 64, 160),))
    spec = infer_all(("387",), [outs], ctx)[0]
    assert spec.kind == "sequence" and spec.params.get("layout") == "TBC", spec
    # the same output from a non-image model stays a regression (nothing says it is a recognizer)
    assert infer_all(("387",), [outs], Context())[0].kind == "regression"
