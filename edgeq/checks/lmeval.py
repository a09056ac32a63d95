"""Language-model quality of a quantized model against its fp32 reference, as llama.cpp reports it.

Both models read the same token windows; at every position the next-token
distributions are compared:

- perplexity of each model on the windows' own next tokens,
- mean KL divergence KL(p_fp32 || p_quant) of the next-token distributions,
- same-top-token %: how often both models rank the same token first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.data import SampleSet
from ..core.runtime import create_session, run


@dataclass(frozen=True)
class LMQuality:
    windows: int
    tokens: int
    perplexity_fp32: float
    perplexity_quant: float
    kl_mean: float
    kl_p99: float
    same_top_token: float
    input_name: str
    output_name: str

    @property
    def perplexity_change(self) -> float:
        return self.perplexity_quant / self.perplexity_fp32 - 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["perplexity_change"] = self.perplexity_change
        return d


def lm_io(io: Any) -> tuple[str, int] | None:
    """(token input name, logits output index) when the model looks like a language model."""
    ids = [t for t in io.inputs if t.dtype in ("int64", "int32") and len(t.shape) == 2]
    if len(ids) > 1:  # a decoder with input_ids and attention_mask
        ids = [t for t in ids if t.name == "input_ids"] or ids
    outs = [i for i, t in enumerate(io.outputs) if t.dtype == "float32" and len(t.shape) == 3]
    if len(ids) != 1 or not outs:
        return None
    return ids[0].name, outs[0]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, cand: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position statistics for logits ``[B, T, V]`` predicting ``ids[:, 1:]``."""
    lr = _log_softmax(ref[:, :-1])
    lc = _log_softmax(cand[:, :-1])
    tgt = ids[:, 1:, None]
    nll_r = -np.take_along_axis(lr, tgt, axis=-1)[..., 0]
    nll_c = -np.take_along_axis(lc, tgt, axis=-1)[..., 0]
    kl = np.sum(np.exp(lr) * (lr - lc), axis=-1)
    same = lr.argmax(-1) == lc.argmax(-1)
    return {"nll_ref": nll_r.ravel(), "nll_cand": nll_c.ravel(), "kl": np.maximum(kl, 0).ravel(), "same": same.ravel()}


def lm_quality(
    reference: Path | str,
    candidate: Path | str,
    data: SampleSet,
    io: Any,
    *,
    max_windows: int = 64,
    providers: list[str] | None = None,
) -> LMQuality | None:
    """Run both models over the token windows in ``data``; None if the model is not an LM."""
    found = lm_io(io)
    if found is None or len(data) == 0:
        return None
    name, out_idx = found
    rs = create_session(reference, providers=providers)
    cs = create_session(candidate, providers=providers)
    parts: dict[str, list[np.ndarray]] = {}
    n = min(len(data), max_windows)
    for i in range(n):
        feed = data.feed(i)
        ids = np.asarray(feed[name])
        r = np.asarray(run(rs, feed)[out_idx])
        c = np.asarray(run(cs, feed)[out_idx])
        for k, v in compare_logits(r, c, ids).items():
            parts.setdefault(k, []).append(v)
    st = {k: np.concatenate(v) for k, v in parts.items()}
    return LMQuality(
        windows=n,
        tokens=int(st["kl"].size),
        perplexity_fp32=float(np.exp(st["nll_ref"].mean())),
        perplexity_quant=float(np.exp(st["nll_cand"].mean())),
        kl_mean=float(st["kl"].mean()),
        kl_p99=float(np.quantile(st["kl"], 0.99)),
        same_top_token=float(st["same"].mean()),
        input_name=name,
        output_name=io.outputs[out_idx].name,
    )
