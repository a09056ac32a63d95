"""``auto``'s output energies (autocal.output_energies) equal float64 sums over the finite reference entries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeq.quantization.int8.autocal import output_energies


def _reference(ref, cand):
    """The float64 formula the scores are defined by: signal and noise over the reference's finite entries."""
    out = []
    for j in range(len(ref[0])):
        sig = noise = 0.0
        for r, c in zip(ref, cand):
            a, b = np.asarray(r[j], np.float64).ravel(), np.asarray(c[j], np.float64).ravel()
            fin = np.isfinite(a)
            d = a[fin] - b[fin]
            sig += float(np.sum(a[fin] ** 2))
            noise += float(np.sum(d**2)) if np.all(np.isfinite(d)) else math.inf
        out.append((sig, noise))
    return out


def test_energies_match_float64_sums_with_masks_and_nan():
    rng = np.random.default_rng(3)
    ref = [[rng.normal(0, 30, (1, 84, 2100)).astype(np.float32), rng.normal(size=(1, 10)).astype(np.float16)] for _ in range(3)]
    cand = [[r + rng.normal(0, 0.01, r.shape).astype(r.dtype) for r in s] for s in ref]
    ref[1][0][0, 3, :50] = -np.inf  # a mask in the reference: those entries are left out
    got = output_energies(ref, cand)
    want = _reference(ref, cand)
    for (s, n), (ws, wn) in zip(got, want):
        assert math.isclose(s, ws, rel_tol=1e-12) and math.isclose(n, wn, rel_tol=1e-9)
    cand[2][1][0, 4] = np.nan  # a NaN in a candidate: infinite noise for that output only
    got = output_energies(ref, cand)
    assert got[1][1] == math.inf and math.isfinite(got[0][1])
    # continuing from earlier sums: the same as summing all samples at once
    first = output_energies(ref[:1], cand[:1])
    assert output_energies(ref[1:], cand[1:], first)[0] == pytest.approx(got[0], rel=1e-12)
