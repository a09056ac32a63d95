"""Token windows for language-model graphs: ``input_ids`` alone is enough.

A calibration or evaluation file for a Hugging Face decoder holds ``input_ids`` windows
``[n, T]`` (or ``[n, 1, T]``). The other inputs such graphs take are filled here, the way a
prefill sees them: ``attention_mask`` all ones, ``position_ids`` 0..T-1 and, for KV-cache
decoders, every ``past_key_values.N.key/value`` empty (past length 0). Anything else missing
is still refused by the caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IDS = "input_ids"
_FILLED = ("attention_mask", "position_ids")
_PAST = "past_key_values."


def fillable(name: str) -> bool:
    return name in _FILLED or name.startswith(_PAST)


def fill_lm_inputs(raw: dict[str, np.ndarray], io: Any, where: str = "") -> tuple[dict[str, np.ndarray], list[str]]:
    """``raw`` with the LM inputs it lacks filled in, and a note saying which; unchanged when it is not that case."""
    names = io.input_names
    missing = [n for n in names if n not in raw]
    if IDS not in names or IDS not in raw or not missing or not all(fillable(n) for n in missing):
        return raw, []
    ids = np.asarray(raw[IDS])
    if ids.ndim < 2 or ids.dtype.kind not in "iu":  # else the caller would name the filled inputs as missing
        from ..errors import CalibrationError

        raise CalibrationError(f"{where + ': ' if where else ''}{IDS} is {ids.dtype}{list(ids.shape)}: token windows are integer ids [n, T]",
                               "save the tokenized windows as an int64 array of shape [n, T] under input_ids")
    lead, t = ids.shape[:-1], ids.shape[-1]
    out = dict(raw)
    for n in missing:
        spec = io.input(n)
        dt = np.dtype(spec.dtype)
        if n == "attention_mask":
            out[n] = np.ones(ids.shape, dt)
        elif n == "position_ids":
            out[n] = np.broadcast_to(np.arange(t, dtype=dt), ids.shape).copy()
        else:  # [batch, kv_heads, past, head_dim]: the sample axes of input_ids, then an empty past
            kv, hd = spec.shape[1], spec.shape[3]
            if not (isinstance(kv, int) and isinstance(hd, int)):
                return raw, []
            out[n] = np.zeros((*lead, kv, 0, hd), dt)
    pasts = sum(1 for n in missing if n.startswith(_PAST))
    what = [n for n in missing if not n.startswith(_PAST)] + ([f"{pasts} empty past key/value inputs"] if pasts else [])
    return out, [f"{', '.join(what)} filled in by edgeq for the input_ids windows (mask of ones, positions 0..{t - 1}, no past)"]


def check_token_windows(ids: np.ndarray | None, vocab: int, context: int, what: str) -> None:
    """Refuse ``input_ids`` windows a decoder cannot take: ids outside its vocabulary, or windows longer than its context
    (onnxruntime would stop inside a Gather or GroupQueryAttention kernel instead)."""
    from ..errors import CalibrationError

    if ids is None or not np.asarray(ids).size:
        return
    ids = np.asarray(ids)
    lo, hi = int(ids.min()), int(ids.max())
    if vocab > 0 and (lo < 0 or hi >= vocab):
        raise CalibrationError(f"{what}: {IDS} holds token id {lo if lo < 0 else hi}, outside the model's vocabulary of {vocab} (0..{vocab - 1})",
                               "tokenize the windows with the model's own tokenizer")
    if context > 0 and ids.shape[-1] > context:
        raise CalibrationError(f"{what}: {IDS} windows of {ids.shape[-1]} tokens are longer than the model's context of {context}",
                               f"cut the windows to at most {context} tokens")
