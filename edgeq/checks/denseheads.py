"""Dense detector heads: per-cell score maps beside per-cell regression maps on the same grid.

Face and object detectors that leave their decode to the app (MTCNN's PNet, CenterNet, anchor-based
SSD/RetinaNet-style conv heads before reshaping) return, on one H x W grid, a score map (a softmax
over its channels or sigmoids in [0, 1]) and maps of box offsets, sizes or landmarks. Read alone,
a [B, 4, H, W] offset map looks like 4 class scores per pixel; its argmax means nothing, and
offsets can drift without moving it. This module names those maps so that they are compared as
numbers (``regression``) rather than as per-pixel classes.

Kept apart from ``kinds.py``: it reads only the fp32 values and the kinds already inferred.
"""

from __future__ import annotations

import numpy as np

# a map whose per-pixel argmax agrees with the score map's on this share of pixels holds the same
# classes (a segmenter returning both logits and their softmax), not regression values
_SAME_CLASSES_AGREEMENT = 0.9
_SAMPLES = 8


def _score_map(samples: list[np.ndarray]) -> bool:
    """[B, C, H, W] per-cell probabilities (a softmax over C, or sigmoids): every value in [0, 1]."""
    arrs = [np.asarray(a, np.float64) for a in samples[:_SAMPLES]]
    if not arrs or any(a.ndim != 4 or a.size == 0 or not np.isfinite(a).all() for a in arrs):
        return False
    return all(a.min() >= -1e-4 and a.max() <= 1 + 1e-4 for a in arrs)


def _unbounded(samples: list[np.ndarray]) -> bool:
    """Values outside [0, 1]: offsets, sizes and landmarks are signed or in pixels."""
    arrs = [np.asarray(a, np.float64) for a in samples[:_SAMPLES]]
    fin = [a[np.isfinite(a)] for a in arrs if a.size]
    return any(f.size and (f.min() < -1e-4 or f.max() > 1 + 1e-4) for f in fin)


def _argmax_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    n = min(len(a), len(b), _SAMPLES)
    hits = [np.mean(np.argmax(np.asarray(x), axis=1) == np.argmax(np.asarray(y), axis=1)) for x, y in zip(a[:n], b[:n])]
    return float(np.mean(hits)) if hits else 0.0


def regression_maps(candidates: list[str], outputs: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """Of ``candidates`` (outputs inferred as per-pixel class scores, not declared), those that are
    per-cell regression maps of a dense detector head: output name -> the score map beside it.

    A candidate qualifies when another output on the same batch and H x W grid holds per-cell
    probabilities, the candidate's own values leave [0, 1], and it does not hold the same classes
    (a different channel count, or per-pixel argmax agreeing on under 90 % of the pixels)."""
    shapes = {k: np.asarray(v[0]).shape for k, v in outputs.items() if v}
    scores = [k for k, s in shapes.items() if len(s) == 4 and _score_map(outputs[k])]
    found: dict[str, str] = {}
    for name in candidates:
        s = shapes.get(name)
        if s is None or len(s) != 4 or not _unbounded(outputs[name]):
            continue
        for sc in scores:
            t = shapes[sc]
            if sc == name or (t[0], t[2], t[3]) != (s[0], s[2], s[3]):
                continue
            if t[1] == s[1] and _argmax_agreement(outputs[name], outputs[sc]) >= _SAME_CLASSES_AGREEMENT:
                continue
            found[name] = sc
            break
    return found
