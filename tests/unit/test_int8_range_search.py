"""Entropy and MSE ranges: every candidate threshold evaluated at once gives what one-by-one evaluation gave."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeq.quantization.int8.calibrate import TensorStats


def _entropy_one_by_one(st: TensorStats, levels: int = 128) -> float:
    h = st._abs_hist()
    width = st.R / h.size
    last = int(np.max(np.nonzero(h))) + 1
    if last <= levels:
        return last * width
    best_kl, best_i = math.inf, last
    for i in range(levels, last + 1, max(1, (last - levels) // 128)):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        nz = h[:i] > 0
        idx = (np.arange(i) * levels) // i
        sums = np.bincount(idx, weights=h[:i], minlength=levels)
        cnts = np.bincount(idx, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, sums[idx] / np.maximum(cnts[idx], 1), 0.0)
        pn, qn = p / p.sum(), q / q.sum()
        m = pn > 0
        kl = math.inf if np.any(qn[m] == 0) else float(np.sum(pn[m] * np.log(pn[m] / qn[m])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _mse_one_by_one(st: TensorStats, levels: int = 256) -> tuple[float, float]:
    edges = st._edges()
    centres = (edges[:-1] + edges[1:]) / 2
    best = (math.inf, st.lo, st.hi)
    amax = max(abs(st.lo), abs(st.hi))
    for t in np.geomspace(amax / 1024, amax, 160):
        lo, hi = min(max(st.lo, -t), 0.0), max(min(st.hi, t), 0.0)
        step = (hi - lo) / (levels - 1) if hi > lo else 1e-12
        err = float(np.sum(st.hist * ((centres - np.clip(centres, lo, hi)) ** 2 + step * step / 12.0)))
        if err < best[0]:
            best = (err, lo, hi)
    return best[1], best[2]


@pytest.mark.parametrize("kind", ["normal", "relu-heavy-tail", "sparse", "two-sided-outliers"])
def test_vectorised_threshold_searches_match_the_loops(kind):
    rng = np.random.default_rng(7)
    st = TensorStats()
    for _ in range(6):
        if kind == "normal":
            x = rng.normal(0, 1, 50_000)
        elif kind == "relu-heavy-tail":
            x = np.maximum(rng.standard_t(2.5, 50_000), 0.0)
        elif kind == "sparse":
            x = rng.choice([-3.0, 0.0, 0.5, 7.0], 2_000) + rng.normal(0, 1e-3, 2_000)
        else:
            x = np.concatenate([rng.laplace(0, 0.3, 50_000), [-40.0, 55.0]])
        st.update(x.astype(np.float32))
    assert st._entropy_threshold() == _entropy_one_by_one(st)
    assert st._mse_range() == _mse_one_by_one(st)
