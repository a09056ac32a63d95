"""Dense detector heads (found on facenet-pytorch's MTCNN PNet, a fully-convolutional face detector
shipped in its wheel): a [B, 2, H, W] softmax face-score map beside a [B, 4, H, W] box-offset map
on the same grid. The offset map was read as 4 class scores per pixel (segmentation), so offsets
shrunk by a badly calibrated candidate kept every per-pixel argmax and passed. Built here from
tiny arrays, then from a tiny PNet-like torch module through the export trip.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.core.targets import Tolerances

TOL = Tolerances()
IMAGE = Context(image_inputs=((1, 3, 24, 24),))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pnet_outputs(rng: np.random.Generator, n: int = 12, grid: int = 11) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sample: box offsets [1, 4, g, g] (smooth, signed, ~0.1) and face probabilities [1, 2, g, g]
    (background almost everywhere, one face blob)."""
    boxes, probs = [], []
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    for _ in range(n):
        b = np.stack([0.1 * np.sin(rng.uniform(2, 6) * xx + rng.uniform(0, 6)) * np.cos(rng.uniform(2, 6) * yy)
                      + rng.normal(0, 0.02, (grid, grid)) for _ in range(4)])[None]
        cy, cx = rng.uniform(0.2, 0.8, 2)
        face = 6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01) - 3
        probs.append(_softmax(np.stack([np.zeros_like(face), face])[None]).astype(np.float32))
        boxes.append(b.astype(np.float32))
    return boxes, probs


def _judge(names, outs, cands, ctx=IMAGE):
    specs = infer_all(names, outs, ctx)
    return specs, [score(s, r, c, TOL) for s, r, c in zip(specs, outs, cands)]


def test_box_offset_map_beside_a_score_map_is_regression_and_shrunk_offsets_fail():
    rng = np.random.default_rng(3)
    boxes, probs = _pnet_outputs(rng)
    specs, checks = _judge(("boxes", "probs"), [boxes, probs], [boxes, probs])
    assert specs[0].kind == "regression" and "scores 'probs'" in specs[0].why, specs[0]
    assert specs[1].kind == "segmentation", specs[1]  # the face scores stay per-pixel classes
    healthy = [(b + rng.normal(0, 0.002, b.shape)).astype(np.float32) for b in boxes]
    _, checks = _judge(("boxes", "probs"), [boxes, probs], [healthy, probs])
    assert checks[0].passed and checks[1].passed, checks
    # a candidate that shrinks every offset to 40 %: every per-pixel argmax is kept (the old verdict passed),
    # every decoded face box is wrong
    shrunk = [0.4 * b for b in boxes]
    assert all((np.argmax(s, 1) == np.argmax(b, 1)).all() for s, b in zip(shrunk, boxes))
    _, checks = _judge(("boxes", "probs"), [boxes, probs], [shrunk, probs])
    assert not checks[0].passed and checks[1].passed, checks


def test_alone_or_beside_its_own_softmax_a_class_map_stays_segmentation():
    rng = np.random.default_rng(4)
    boxes, probs = _pnet_outputs(rng)
    # without a score map on its grid nothing says these are offsets: unchanged
    assert infer_all(("boxes",), [boxes], IMAGE)[0].kind == "segmentation"
    # a segmenter returning logits and their softmax: the logits hold the same classes
    logits = [np.log(p + 1e-6).astype(np.float32) for p in probs]
    specs = infer_all(("logits", "probs"), [logits, probs], IMAGE)
    assert [s.kind for s in specs] == ["segmentation", "segmentation"], specs
    # a segmenter's 5-class logits beside a one-channel sigmoid edge map: an auxiliary output, not scores
    seg = [rng.normal(0, 2, (1, 5, 11, 11)).astype(np.float32) for _ in boxes]
    edges = [p[:, 1:] for p in probs]
    assert infer_all(("seg", "edges"), [seg, edges], IMAGE)[0].kind == "segmentation"
    # an offset map on another grid is not beside the score map
    other = [np.repeat(np.repeat(b, 2, axis=2), 2, axis=3) for b in boxes]
    assert infer_all(("boxes", "probs"), [other, probs], IMAGE)[0].kind == "segmentation"
    # declared by the user: left as declared
    specs = infer_all(("boxes", "probs"), [boxes, probs], IMAGE, {"boxes": {"task": "segmentation"}})
    assert specs[0].kind == "segmentation"


def test_box_offsets_and_landmarks_beside_face_probabilities_are_regression():
    """RNet / ONet: [1, 4] offsets (and [1, 10] landmarks) beside a [1, 2] softmax, per face crop."""
    rng = np.random.default_rng(5)
    n = 40
    boxes = [rng.normal(0, 0.1, (1, 4)).astype(np.float32) for _ in range(n)]
    marks = [rng.normal(0, 0.3, (1, 10)).astype(np.float32) for _ in range(n)]
    probs = [_softmax(rng.normal(0, 3, (1, 2))).astype(np.float32) for _ in range(n)]
    names, outs = ("output_0", "output_1", "output_2"), [boxes, marks, probs]  # as exported: no telling names
    specs = infer_all(names, outs, IMAGE)
    assert [s.kind for s in specs] == ["regression", "regression", "classification"], specs
    assert 'task = "classification"' in specs[0].why  # a guess: how to declare otherwise
    # read as class scores, offsets were judged by their largest coordinate: a false FAIL when two are near
    # equal (MTCNN's RNet: top-1 0.969 on a healthy int8), a false PASS when every offset shrinks alike
    healthy = [(b + rng.normal(0, 0.003, b.shape)).astype(np.float32) for b in boxes]
    assert score(specs[0], boxes, healthy, TOL).passed
    shrunk = [0.4 * b for b in boxes]  # every box 60 % too small, the same largest coordinate
    assert all(np.argmax(s) == np.argmax(b) for s, b in zip(shrunk, boxes))
    assert not score(specs[0], boxes, shrunk, TOL).passed
    # logits beside their own softmax hold the same classes; odd or wide heads are not coordinates
    logits = [np.log(p + 1e-6).astype(np.float32) for p in probs]
    assert infer_all(("logits", "probs"), [logits, probs], IMAGE)[0].kind == "classification"
    wide = [rng.normal(0, 1, (1, 20)).astype(np.float32) for _ in range(n)]
    assert infer_all(("wide", "probs"), [wide, probs], IMAGE)[0].kind != "regression"


def test_offsets_named_boxes_are_regression_real_boxes_stay_detections():
    """`--output-names boxes,probs` on RNet: the name made [1, 4] offsets "boxes after NMS" (xyxy), and a
    healthy int8 RNet failed with detection F1 0.125 (degenerate boxes matched by IoU)."""
    rng = np.random.default_rng(6)
    n = 40
    offsets = [rng.normal(0, 0.1, (1, 4)).astype(np.float32) for _ in range(n)]
    probs = [_softmax(rng.normal(0, 3, (1, 2))).astype(np.float32) for _ in range(n)]
    spec = infer_all(("boxes", "probs"), [offsets, probs], IMAGE)[0]
    assert spec.kind == "regression" and "no boxes" in spec.why, spec
    shrunk = [0.4 * b for b in offsets]
    assert score(spec, offsets, [(b + rng.normal(0, 0.003, b.shape)).astype(np.float32) for b in offsets], TOL).passed
    assert not score(spec, offsets, shrunk, TOL).passed
    # post-NMS boxes in pixels, xyxy: corners in order
    xy = [rng.uniform(0, 200, (1, 5, 2)) for _ in range(n)]
    real = [np.concatenate([p, p + rng.uniform(5, 60, p.shape)], axis=-1).astype(np.float32) for p in xy]
    assert infer_all(("boxes", "probs"), [real, probs], IMAGE)[0].kind == "detection"
    # declared: kept
    assert infer_all(("boxes",), [offsets], IMAGE, {"boxes": {"task": "detection"}})[0].kind == "detection"
