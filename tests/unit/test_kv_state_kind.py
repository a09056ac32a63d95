"""A KV-cache decoder's present/past key-value outputs are state, not per-pixel class scores."""

from __future__ import annotations

import numpy as np

from edgeq.checks.kinds import Context, infer_all


def _kv(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((1, 2, 7, 32)).astype(np.float32) for _ in range(3)]


def test_kv_cache_outputs_of_a_token_model_are_checked_as_state():
    rng = np.random.default_rng(0)
    names = ("present.0.key", "present.1.value", "present_key_values.3.key")
    specs = infer_all(names, [_kv(rng) for _ in names], Context(token_inputs=True))
    for spec in specs:
        assert spec.kind == "regression" and "key/value cache" in spec.why, spec


def test_the_same_shape_elsewhere_is_not_taken_for_a_cache():
    rng = np.random.default_rng(1)
    # an image model's [B, 2, H, W] output is still per-pixel class scores, whatever it is called
    seg = infer_all(("present.0.key",), [_kv(rng)], Context(image_inputs=((1, 3, 7, 32),)))[0]
    assert seg.kind == "segmentation"
    # a token model's 4-D output not named like a cache keeps the old inference
    other = infer_all(("scores",), [_kv(rng)], Context(token_inputs=True))[0]
    assert "key/value cache" not in other.why
