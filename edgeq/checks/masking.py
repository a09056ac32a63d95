"""Token masks: an embedding output [B, T, H] of a model fed an attention mask is judged on the positions
the mask marks, never on padding (whatever a model writes at a padded position, the app throws away).

One implementation for the verdict (edgeq.checks.comparison.verify) and the --max-drop search / --prefer
gate scoring (edgeq.quantization.int8.static.score_outputs): both pass each sample's mask here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MASK_INPUTS = ("attention_mask",)
"""the model inputs (tokenizer arrays) whose non-zero entries mark the real tokens of a sample"""


def token_masks(data: Any, n: int) -> list[np.ndarray] | None:
    """Each of the first ``n`` samples' attention mask (a SampleSet with an ``attention_mask`` array), else None."""
    arrays = getattr(data, "arrays", None) or {}
    key = next((k for k in MASK_INPUTS if k in arrays), None)
    if key is None:
        return None
    return [np.asarray(data.feed(i)[key]) for i in range(min(n, len(data)))]


def masked(specs: Any, per_output: list[list[np.ndarray]], masks: list[np.ndarray] | None) -> list[list[np.ndarray]]:
    """``per_output[output][sample]`` with each embedding output's [B, T, H] samples cut to the rows their
    mask marks ([k, H]); other outputs, and samples whose shape the mask does not fit, as they are."""
    if not masks:
        return per_output
    out = []
    for spec, samples in zip(specs, per_output):
        if getattr(spec, "kind", None) != "embedding":
            out.append(samples)
            continue
        out.append([_real_tokens(s, m) for s, m in zip(samples, masks)] + list(samples[len(masks):]))
    return out


def _real_tokens(sample: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s, m = np.asarray(sample), np.asarray(mask)
    if s.ndim != 3 or m.shape != s.shape[:2]:
        return s
    return s[m != 0]
