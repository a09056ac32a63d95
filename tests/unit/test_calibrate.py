"""Streaming calibration statistics: histograms, range methods, non-finite values, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgeq.errors import EdgeqError
from edgeq.quantization.int8.calibrate import Calibration, TensorStats, collect


def _stream(chunks, bins=512, hist=True):
    st = TensorStats(bins, histogram=hist)
    for c in chunks:
        st.update(c)
    return st


def test_histogram_growth_is_exact_and_mergeable():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(0, s, 1000).astype(np.float32) for s in (0.1, 1.0, 10.0, 0.5)]
    st = _stream(chunks)
    assert st.hist.sum() == 4000  # every finite value lands in a bin after each doubling
    assert st.lo == pytest.approx(min(c.min() for c in chunks))
    assert st.hi == pytest.approx(max(c.max() for c in chunks))
    # two half streams merged equal the whole stream
    a, b = _stream(chunks[:2]), _stream(chunks[2:])
    m = a.merge(b)
    assert m.count == st.count and m.hist.sum() == 4000
    assert m.R == st.R
    np.testing.assert_allclose(m.hist, st.hist)


def test_nonfinite_values_are_counted_and_excluded():
    x = np.array([-np.inf, 1.0, -2.0, np.nan, np.inf, 0.5], np.float32)
    st = _stream([x])
    assert st.nonfinite == 3
    assert (st.lo, st.hi) == (-2.0, 1.0)
    assert st.hist.sum() == 3
    for m in ("minmax", "percentile:99.9", "entropy", "mse"):
        lo, hi = st.range(Calibration.parse(m))
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi


def test_methods_give_different_ranges_on_heavy_tails():
    rng = np.random.default_rng(1)
    # ReLU-like activation with rare large outliers
    data = [np.abs(rng.standard_t(2, 20000)).astype(np.float32) for _ in range(5)]
    st = _stream(data, bins=2048)
    mm = st.range(Calibration.parse("minmax"))
    pc = st.range(Calibration.parse("percentile:99.9"))
    en = st.range(Calibration.parse("entropy"))
    ms = st.range(Calibration.parse("mse"))
    allv = np.concatenate(data)
    assert mm[1] == pytest.approx(allv.max())
    # percentile near the true 99.9th percentile (histogram resolution)
    assert pc[1] == pytest.approx(np.percentile(allv, 99.9), rel=0.1, abs=st.R / 1024)
    # entropy clips the tail far below min-max; mse clips less (t(2) tails carry squared error)
    assert en[1] < 0.5 * mm[1]
    assert ms[1] < mm[1]
    assert en[0] == 0.0 and ms[0] == 0.0


def test_mse_range_reduces_quantization_error():
    rng = np.random.default_rng(2)
    x = rng.laplace(0, 1, 200000).astype(np.float32)
    st = _stream([x], bins=2048)

    def err(lo, hi):
        s = (hi - lo) / 255
        q = np.clip(np.round((x - lo) / s), 0, 255) * s + lo
        return float(np.mean((q - x) ** 2))

    assert err(*st.range(Calibration.parse("mse"))) < err(*st.range(Calibration.parse("minmax")))


def test_bad_calibration_values_are_refused():
    for bad in ("kl", "percentile:101", "percentile:x", "entropy:5"):
        with pytest.raises(EdgeqError):
            Calibration.parse(bad)
    with pytest.raises(EdgeqError):
        Calibration.parse("entropy", bins=100)
    assert Calibration.parse("percentile:99.99").percentile == 99.99


def test_collect_memory_does_not_grow_with_samples():
    """Peak traced memory for 10 and 150 samples of 256 KB activations stays the same."""
    rng = np.random.default_rng(3)

    def run(feed):
        x = feed["x"]
        return {"a": x * 2.0, "b": np.maximum(x, 0)}

    def feeds(n):
        for _ in range(n):
            yield {"x": rng.normal(size=(64, 1024)).astype(np.float32)}

    peaks = {}
    for n in (10, 150):
        tracemalloc.start()
        stats = collect(run, feeds(n), ["a", "b"], cal=Calibration.parse("percentile:99.99"))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats.samples == n and stats.tensors["a"].count == n * 64 * 1024
        assert stats.tensors["b"].hist.sum() == n * 64 * 1024
    assert peaks[150] < 1.5 * peaks[10], peaks
    assert peaks[150] < 10 * 2**20  # a few sample-sized buffers, not 150 of them (75 MB)
