"""A molecular fingerprint (minimol's ``fingerprint`` [graphs, 512], not unit-norm) was checked as classification:
top-1 "agreement" of its largest dimension, which keeps passing while every other dimension is wrong. Outputs named
like a fingerprint, descriptor or latent vector are embeddings (mean per-vector cosine)."""

from __future__ import annotations

import numpy as np

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.core.targets import Tolerances


def test_a_fingerprint_is_an_embedding_and_damage_to_it_fails():
    rng = np.random.default_rng(0)
    ref = [rng.normal(0, 0.3, (4, 512)) for _ in range(3)]
    for r in ref:
        r[np.arange(4), rng.integers(0, 512, 4)] = 5.0  # one dominant dimension per vector: top-1 keeps it
    bad = [np.where(r == 5.0, 5.0, rng.normal(0, 0.3, r.shape)) for r in ref]  # every other dimension scrambled
    for name in ("fingerprint", "descriptors", "z_latent"):
        spec = infer_all((name,), [ref], Context())[0]
        assert spec.kind == "embedding", (name, spec)
        assert not score(spec, ref, bad, Tolerances()).passed
        assert score(spec, ref, [r * 1.001 for r in ref], Tolerances()).passed
    # the same values under a plain name are still class scores (logits): their argmax is the task
    assert infer_all(("y",), [ref], Context())[0].kind == "classification"
    assert score(infer_all(("y",), [ref], Context())[0], ref, bad, Tolerances()).passed  # what the fingerprint got before
