"""Binned (ordinal) outputs: a histogram over ordered bins (pitch in 20-cent steps, age, angle,
depth) whose rows hold one smooth bump around the answer, softmax or per-bin sigmoids.

Neither class scores (top-1 punishes a peak moving to the neighbouring bin, which the app's
weighted average around the peak barely notices) nor multi-label decisions (the bins at the
bump's edges cross 0.5 with the least noise). Read by the peak's position, within a tolerance
of ``bins`` bins, and the peak's height (the confidence or voicing the app thresholds).
"""

from __future__ import annotations

import numpy as np

MIN_BINS = 16  # fewer bins: too few to tell a bump from a handful of classes
BUMP_FLOOR = 0.1  # a row's bump: its values above this fraction of the row's max
MIN_BUMP_SHARE = 0.6  # "most rows" hold one bump
SURE_BUMP_SHARE = 0.9  # below this (or on few rows) the kind is a guess


def _rows(samples: list[np.ndarray]) -> np.ndarray:
    c = np.asarray(samples[0]).shape[-1]
    return np.concatenate([np.asarray(x, np.float64).reshape(-1, c) for x in samples[:64] if np.asarray(x).shape[-1:] == (c,)])


def bump_share(samples: list[np.ndarray]) -> float | None:
    """Share of rows whose values above ``BUMP_FLOOR`` x the row's max form one run of 3 or more
    adjacent bins covering at most a quarter of them, rising to the peak and falling after it, for
    float [B, C >= 16] values in [0, 1] (softmax or sigmoids); None when the output is not such an
    array. A classifier's confident row has one bin above the floor, an unsure one scattered bins;
    independent labels are apart."""
    a = np.asarray(samples[0]) if samples else np.zeros(0)
    if a.ndim != 2 or a.dtype.kind != "f" or a.shape[-1] < MIN_BINS:
        return None
    x = _rows(samples)
    if not x.size or not np.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
        return None
    top = x.max(1, keepdims=True)
    above = (x > BUMP_FLOOR * top) & (top > 0)
    n = above.sum(1)
    idx = np.arange(x.shape[1])
    first = np.where(above, idx, x.shape[1]).min(1)
    last = np.where(above, idx, -1).max(1)
    bump = (n >= 3) & (last - first + 1 == n) & (n <= x.shape[1] // 4)
    # and it rises to the peak and falls after it (within noise of 5 % of the peak): a smooth bump, not
    # a few neighbouring classes of a classifier (dog breeds sit side by side in ImageNet's list)
    d = np.diff(x, axis=1)
    peak = x.argmax(1)[:, None]
    slack = 0.05 * top
    inside = above[:, 1:] & above[:, :-1]
    wrong = ((idx[None, :-1] < peak) & (d < -slack)) | ((idx[None, :-1] >= peak) & (d > slack))
    bump &= ~(inside & wrong).any(1)
    return float(np.mean(bump))


def peaks(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, height) of each row's peak."""
    pos = rows.argmax(1)
    return pos, rows[np.arange(len(rows)), pos]
