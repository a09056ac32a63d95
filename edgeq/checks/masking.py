"""Token masks: an embedding output [B, T, H] of a model fed a token mask is judged on the positions
the mask marks as real tokens, never on padding (whatever a model writes at a padded position, the app
throws away).

One implementation for the verdict (edgeq.checks.comparison.verify) and the --max-drop search / --prefer
gate scoring (edgeq.quantization.int8.static.score_outputs): both pass each sample's mask here.

Which input is the mask is found by meaning, not by one name (:func:`find_mask`):

- a name used in the wild: ``attention_mask``, ``input_mask``, ``mask``, ``attn_mask``, ``token_mask``,
  ``*_attention_mask``, ``*_input_mask`` (non-zero = a real token), or ``padding_mask``,
  ``key_padding_mask``, ``pad_mask``, ``*_padding_mask`` (non-zero = padding);
- and its values say so: only 0 and 1 (or booleans), in the token input's shape (``input_ids``, or the one
  integer input of the same rank) when the model has one.

The app TOML overrides the names: ``[inputs.NAME] mask = "real"`` (non-zero marks real tokens),
``"padding"`` (non-zero marks padding) or ``"none"`` (not a token mask). A declared mask whose values are
not 0/1 is not used either: the verdict then scores every position, as without a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.appio import MASK_MEANINGS as MEANINGS
from ..core.appio import mask_meaning

MASK_INPUTS = ("attention_mask",)
"""the name tokenizers give the mask (kept for callers); any name edgeq.core.appio.mask_meaning knows is read"""
REAL, PADDING, NONE = MEANINGS  # values of ``[inputs.NAME] mask`` in the app TOML
TOKEN_INPUT = "input_ids"


@dataclass(frozen=True)
class TokenMask:
    input: str
    meaning: str
    """real: non-zero marks a real token; padding: non-zero marks padding"""
    why: str

    def describe(self) -> str:
        return f"{self.input} ({self.why})"


def _token_input(feed: dict[str, np.ndarray], masks: set[str]) -> str | None:
    if TOKEN_INPUT in feed:
        return TOKEN_INPUT
    ints = [k for k, v in feed.items() if k not in masks and v.dtype.kind in "iu" and v.ndim >= 2]
    return ints[0] if len(ints) == 1 else None


def _zero_one(arr: np.ndarray) -> bool:
    a = np.asarray(arr)
    if a.dtype.kind == "b":
        return True
    return a.dtype.kind in "iuf" and bool(np.isin(a, (0, 1)).all())


def find_mask(data: Any) -> TokenMask | None:
    """The sample set's token-mask input (see the module doc), or None."""
    arrays = getattr(data, "arrays", None) or {}
    if not arrays or not len(data):
        return None
    declared = dict(getattr(data, "mask_roles", ()) or ())
    named = {k: declared.get(k) or mask_meaning(k) for k in arrays}
    named = {k: m for k, m in named.items() if m in (REAL, PADDING)}
    if not named:
        return None
    feed = data.feed(0)
    tokens = _token_input(feed, set(named))
    for key in sorted(named, key=lambda k: (k not in declared, k not in MASK_INPUTS, k)):
        if np.ndim(feed[key]) != 2 or (tokens is not None and np.shape(feed[key]) != np.shape(feed[tokens])):
            continue  # a token mask is [batch, sequence], in the token input's shape
        if not _zero_one(arrays[key]):
            continue
        src = "declared in the app file" if key in declared else "named as a mask"
        shape = f", {tokens}'s shape" if tokens is not None else ""
        return TokenMask(key, named[key], f"{src}; 0/1 values{shape}; non-zero marks {'real tokens' if named[key] == REAL else 'padding'}")
    return None


def with_app_masks(data: Any, app_inputs: dict[str, dict[str, Any]] | None) -> Any:
    """``data`` carrying the app TOML's ``[inputs.NAME] mask = ...`` declarations (a SampleSet), else as it is."""
    roles = tuple(sorted((k, v["mask"]) for k, v in (app_inputs or {}).items() if "mask" in v))
    if data is None or not roles or not hasattr(data, "mask_roles"):
        return data
    return replace(data, mask_roles=roles)


def token_masks(data: Any, n: int) -> list[np.ndarray] | None:
    """Each of the first ``n`` samples' real-token mask (non-zero = a real token), else None."""
    found = find_mask(data)
    if found is None:
        return None
    out = []
    for i in range(min(n, len(data))):
        m = np.asarray(data.feed(i)[found.input])
        out.append(m == 0 if found.meaning == PADDING else m != 0)
    return out


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
