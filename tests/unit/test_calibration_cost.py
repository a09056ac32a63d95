"""Calibration cost on large activations: the histogram bins a strided sample, the range sees every value."""

from __future__ import annotations

import numpy as np

from edgeq.quantization.int8.calibrate import HIST_VALUES, Calibration, TensorStats


def test_large_tensor_histogram_is_sampled_but_ranges_stay_right():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 4 * HIST_VALUES + 123).astype(np.float32)
    x[1] = 60.0  # one outlier, off the stride: min-max must still see it
    full, sampled = TensorStats(), TensorStats()
    sampled.update(x)
    assert sampled.hi == 60.0 and sampled.count == x.size
    assert abs(sampled.hist.sum() - x.size) / x.size < 0.01  # weighted back to the full count
    # percentiles from the sample agree with numpy's on all values within a bin or two
    lo, hi = sampled.range(Calibration.parse("percentile:99.9"))
    want = np.percentile(x, 99.9)
    assert abs(hi - want) < 4 * (2 * sampled.R / sampled.bins)
    # a tensor at or below the cap is binned exactly as before
    small = x[: HIST_VALUES]
    full.update(small)
    idx = ((small + np.float32(full.R)) * np.float32(full.bins / (2.0 * full.R))).astype(np.int32).clip(0, full.bins - 1)
    assert np.array_equal(full.hist, np.bincount(idx, minlength=full.bins).astype(np.float64))
