"""LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): the rotary parameters the KV-cache builder exports.

transformers computes LongRoPE as two sets of frequencies, ``base^(-2i/rot) / short_factor[i]`` and
``... / long_factor[i]``, and an attention factor multiplying cos and sin
(``attention_factor``, else ``sqrt(1 + log(factor) / log(original_max_position_embeddings))`` with
``factor`` = max / original max positions). Each forward pass picks one set for all its positions:
the long one when its highest position + 1 (the total sequence length) passes
``original_max_position_embeddings``.

What edgeq exports (``decoder.build_decoder``) is the same per-pass switch on the total length
(the attention mask's length): plain ops pick the frequencies with one ``Where``; the fused graph
keeps one GroupQueryAttention cos/sin cache of ``original + context`` rows (short rows, then long
rows) and shifts ``position_ids`` by ``original`` when the total passes it (what onnxruntime-genai's
builder does with two caches). Logits therefore equal transformers' for any prompt and any decode
step, below and above the switch, given the same cache.

When a generation *crosses* the switch, the keys
already in the cache were computed with the short factors; transformers' ``generate`` (Phi-3's
``prepare_inputs_for_generation``) then drops its cache and re-runs the whole sequence with the long
factors. The bundle's run.py and ``edgeq generate`` (bundles/llmgen.py) do the same: the switch is
in the decoder's metadata (``edgeq_longrope_switch``) and the loop re-runs the sequence once there.
onnxruntime-genai goes on with its cache (as with its own builder's models), so through it only
generations that stay on one side (prompt + new tokens <= the switch, or a prompt longer than it)
are identical; the export note says so.

The static NPU graphs take their rotary rows from the host: they get the short factors and the
attention factor, and their cache slots are capped at the switch (``static_slots``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelError


def longrope_parts(p: dict[str, Any], rot: int, context: int, original: Any, mt: str) -> dict[str, Any]:
    """The DecoderArch fields of a LongRoPE config ``p`` (rope parameters): {} for other rope types.

    ``original``: the config's top-level ``original_max_position_embeddings`` (Phi-3 keeps it there;
    transformers gives it priority over the one inside the rope parameters).
    """
    kind = p.get("rope_type", p.get("type")) or "default"
    if kind in ("su", "yarn") and mt == "phi3":  # transformers reads Phi-3's old names as longrope
        kind = "longrope"
    if kind != "longrope":
        return {}
    short, long_ = p.get("short_factor"), p.get("long_factor")
    for name, v in (("short_factor", short), ("long_factor", long_)):
        if not (isinstance(v, (list, tuple)) and len(v) == rot // 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)):
            raise ModelError(f"longrope {name} of {mt} is not {rot // 2} positive numbers", "fix rope_scaling in the folder's config.json")
    orig = int(original or p.get("original_max_position_embeddings") or context)
    if orig < 1:
        raise ModelError(f"longrope original_max_position_embeddings of {mt} is {orig}", "fix config.json")
    factor = p.get("factor") or context / orig
    scale = p.get("attention_factor")
    if scale is None:
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    theta = float(p.get("rope_theta") or 10000.0)
    base = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    return {"inv_freq_long": tuple(float(x) for x in base / np.asarray(long_, np.float64)), "rope_switch": orig,
            "rope_scale": float(scale)}


def longrope_note(arch: Any, *, static: bool = False) -> str | None:
    """The export note of a LongRoPE decoder (None for others): what the graph does at the switch."""
    if not arch.inv_freq_long:
        return None
    n = arch.rope_switch
    if static:
        return (f"LongRoPE: static graphs use the short factors (attention factor {arch.rope_scale:.4g}), so their cache "
                f"slots end at original_max_position_embeddings = {n}")
    return (f"LongRoPE: short factors while the total length is <= {n} tokens, long factors above (switch per run on the "
            f"attention mask's length, attention factor {arch.rope_scale:.4g}); the bundle's run.py and edgeq generate re-run "
            f"the sequence once when a generation crosses {n}, as transformers' generate does; onnxruntime-genai keeps "
            f"its cache there, so its tokens after position {n} may differ from transformers' when prompt <= {n} < prompt + new tokens")
