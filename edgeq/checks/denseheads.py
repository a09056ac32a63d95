"""Detector heads that leave their decode to the app: scores beside box / landmark regression.

Face and object detectors that leave their decode to the app (MTCNN's PNet, CenterNet, anchor-based
SSD/RetinaNet-style conv heads before reshaping) return, on one H x W grid, a score map (a softmax
over its channels or sigmoids in [0, 1]) and maps of box offsets, sizes or landmarks. Read alone,
a [B, 4, H, W] offset map looks like 4 class scores per pixel; its argmax means nothing, and
offsets can drift without moving it. This module names those maps so that they are compared as
numbers (``regression``) rather than as per-pixel classes. The same holds per sample: MTCNN's
RNet / ONet return [B, 4] box offsets and [B, 10] landmarks beside [B, 2] face probabilities, and
the offsets were judged by their top-1 "class".

Kept apart from ``kinds.py``: it reads only the fp32 values and the kinds already inferred.
"""

from __future__ import annotations

import numpy as np

# a map whose per-pixel argmax agrees with the score map's on this share of pixels holds the same
# classes (a segmenter returning both logits and their softmax), not regression values
_SAME_CLASSES_AGREEMENT = 0.9
_SAMPLES = 8


def _unbounded(samples: list[np.ndarray]) -> bool:
    """Values outside [0, 1]: offsets, sizes and landmarks are signed or in pixels."""
    arrs = [np.asarray(a, np.float64) for a in samples[:_SAMPLES]]
    fin = [a[np.isfinite(a)] for a in arrs if a.size]
    return any(f.size and (f.min() < -1e-4 or f.max() > 1 + 1e-4) for f in fin)


def _argmax_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    n = min(len(a), len(b), _SAMPLES)
    hits = [np.mean(np.argmax(np.asarray(x), axis=1) == np.argmax(np.asarray(y), axis=1)) for x, y in zip(a[:n], b[:n])]
    return float(np.mean(hits)) if hits else 0.0


_MAX_COORDS = 16  # [B, C] regression heads: 4 box offsets, 10 landmark coordinates (an even count of coordinates)


def _probabilities(samples: list[np.ndarray]) -> bool:
    """[B, C] / [B, C, H, W] per-sample or per-cell probabilities (a softmax or sigmoids): every value in [0, 1]."""
    arrs = [np.asarray(a, np.float64) for a in samples[:_SAMPLES]]
    if not arrs or any(a.ndim not in (2, 4) or a.size == 0 or not np.isfinite(a).all() for a in arrs):
        return False
    return all(a.min() >= -1e-4 and a.max() <= 1 + 1e-4 for a in arrs)


def regression_maps(candidates: list[str], outputs: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """Of ``candidates`` (outputs inferred as class scores, per pixel or per sample, not declared),
    those that are regression heads of a detector: output name -> the score output beside them.

    A candidate qualifies when another output of the same rank, batch and H x W grid holds
    probabilities in two or more channels, the candidate's own values leave [0, 1], and it does not hold the same classes
    (a different channel count, or argmax agreeing on under 90 % of the pixels / samples). A
    [B, C] candidate must also be an even count of at most 16 coordinates (box offsets, landmarks):
    MTCNN's RNet / ONet return [B, 4] offsets and [B, 10] landmarks beside [B, 2] face scores."""
    shapes = {k: np.asarray(v[0]).shape for k, v in outputs.items() if v}
    # two or more score channels (face / background, C classes): a one-channel map beside a segmenter's logits is
    # an auxiliary output (edges, a foreground mask), not the detector's scores
    scores = [k for k, s in shapes.items() if len(s) in (2, 4) and s[1] >= 2 and _probabilities(outputs[k])]
    found: dict[str, str] = {}
    for name in candidates:
        s = shapes.get(name)
        if s is None or len(s) not in (2, 4) or not _unbounded(outputs[name]):
            continue
        if len(s) == 2 and (s[1] > _MAX_COORDS or s[1] % 2):
            continue
        for sc in scores:
            t = shapes[sc]
            if sc == name or len(t) != len(s) or (t[0], *t[2:]) != (s[0], *s[2:]):
                continue
            if t[1] == s[1] and _argmax_agreement(outputs[name], outputs[sc]) >= _SAME_CLASSES_AGREEMENT:
                continue
            found[name] = sc
            break
    return found


_MIN_BOX_ROWS = 0.9  # share of rows that must read as boxes (x2 >= x1 and y2 >= y1, or a width and height >= 0)


def offsets_not_boxes(samples: list[np.ndarray]) -> bool:
    """A [.., 4] output named like boxes whose rows are no boxes in any format: corners out of order
    (x2 < x1 or y2 < y1) and a negative third or fourth value (no width / height) on more than 10 % of
    the rows. Box regression offsets (MTCNN's dx1, dy1, dx2, dy2) are signed; boxes after NMS are not."""
    rows = [np.asarray(a, np.float64).reshape(-1, 4) for a in samples[:64] if np.asarray(a).size and np.asarray(a).shape[-1] == 4]
    r = np.concatenate(rows) if rows else np.zeros((0, 4))
    r = r[np.isfinite(r).all(axis=1)]
    if len(r) < 8:
        return False
    corners = (r[:, 2] >= r[:, 0]) & (r[:, 3] >= r[:, 1])
    sizes = (r[:, 2] >= 0) & (r[:, 3] >= 0)
    return bool(np.mean(corners | sizes) < _MIN_BOX_ROWS)
