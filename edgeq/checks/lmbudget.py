"""How many token windows a full-output comparison of a language model may hold at once.

``verify`` keeps every output of both models for every sample, then computes its metrics in
float64: for a decoder that is windows x tokens x vocabulary logits, twice. SmolLM-135M (49,152
tokens of vocabulary) with 32 windows of 128 tokens held 805 MB of logits per model and peaked at
12 GiB in the accuracy-level comparison; Qwen2.5-0.5B's 151,936-token vocabulary triples that.
``windows_within`` caps the windows so both models' logits stay under ``LOGITS_BUDGET``; the LM
figures (perplexity, KL, same top token: ``lmeval.lm_quality``) stream window by window and keep
using every window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOGITS_BUDGET = 512 << 20  # bytes of float32 logits, reference and candidate together


def windows_within(data: Any, io: Any, budget: int = LOGITS_BUDGET) -> int:
    """The number of samples of ``data`` to verify on: all of them unless the model is an LM whose logits would
    exceed ``budget`` (then at least 1)."""
    from .lmeval import lm_io

    n = len(data)
    found = lm_io(io)
    if found is None or n == 0:
        return n
    name, idx = found
    vocab = io.outputs[idx].shape[-1]
    if not isinstance(vocab, int) or vocab <= 0:
        return n
    tokens = int(np.asarray(data.feed(0)[name]).size)
    per_window = 2 * 4 * tokens * vocab
    return int(max(1, min(n, budget // max(per_window, 1))))
