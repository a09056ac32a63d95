"""KV-cache decoders with static shapes, for NPU runtimes that compile fixed shapes (QNN HTP, OpenVINO NPU, NNAPI, Core ML).

The graph (``build_decoder(..., static_context=M, chunk=C)``) takes ``C`` tokens per run at
``position_ids`` [1, C], a past of ``M`` slots per layer where slot = position, and an
``attention_mask`` [1, M] of the slots that hold tokens; it returns the logits of the ``C`` tokens
and the present (the past with the chunk written into its slots). Every dimension is fixed, and
the cache update is a one-hot MatMul, so a compiler sees no Concat growth and no dynamic shapes.
This module is the host side (numpy + an onnxruntime session); decoder.py writes and checks the graph.

Two graphs of the same weights cover generation: the decode step (``C`` = 1) and a prefill of
``C`` = ``chunk`` tokens (a short last chunk is padded with positions past the prompt: their slots
are overwritten by the next tokens before anything attends to them, or fall outside the buffer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_CONTEXT = 256  # slots of the fixed cache when the target names none (bounded by the model's context)


def _shape(sess: Any, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in next(i for i in sess.get_inputs() if i.name == name).shape)


class StaticCache:
    """The host side of the fixed cache: slot arrays per layer and the mask of filled slots."""

    def __init__(self, sess: Any) -> None:
        self.names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
        shape = _shape(sess, self.names[0])
        self.context = shape[2]
        self.past = {n: np.zeros(shape, np.float32) for n in self.names}
        self.mask = np.zeros((1, self.context), np.int64)
        self.length = 0

    def run(self, sess: Any, tokens: np.ndarray) -> np.ndarray:
        """Logits [n, V] of ``tokens`` (n <= the graph's chunk) at the next positions; the cache takes them."""
        chunk = _shape(sess, "input_ids")[1]
        n = len(tokens)
        if n > chunk or self.length + n > self.context:
            raise ValueError(f"{n} tokens at position {self.length} do not fit chunk {chunk} / context {self.context}")
        ids = np.zeros((1, chunk), np.int64)
        ids[0, :n] = tokens
        pos = np.arange(self.length, self.length + chunk, dtype=np.int64)[None]
        self.mask[0, self.length : self.length + n] = 1
        feed = {"input_ids": ids, "position_ids": pos, "attention_mask": self.mask, **self.past}
        outs = [o.name for o in sess.get_outputs()]
        res = dict(zip(outs, sess.run(None, feed)))
        self.past = {n: res[n.replace("past_key_values.", "present.")] for n in self.names}
        self.length += n
        return res["logits"][0, :n]


def logits_static(step: Any, ids: np.ndarray, split: int, prefill: Any | None = None) -> np.ndarray:
    """Logits [S, V] of ``ids`` [S]: ``ids[:split]`` through ``prefill`` in chunks (or ``step``), then one token per step."""
    cache = StaticCache(step)
    first = prefill or step
    chunk = _shape(first, "input_ids")[1]
    rows = [cache.run(first, ids[i : min(i + chunk, split)]) for i in range(0, split, chunk)]
    rows += [cache.run(step, ids[t : t + 1]) for t in range(split, len(ids))]
    return np.concatenate(rows, axis=0)


def greedy_static(step: Any, prompt: np.ndarray, new_tokens: int, prefill: Any | None = None) -> list[int]:
    """Greedy continuation of ``prompt`` for ``new_tokens`` tokens (fewer where the fixed context ends)."""
    cache = StaticCache(step)
    first = prefill or step
    chunk = _shape(first, "input_ids")[1]
    logits = None
    for i in range(0, len(prompt), chunk):
        logits = cache.run(first, prompt[i : i + chunk])
    out: list[int] = []
    while len(out) < new_tokens and logits is not None:
        out.append(int(np.argmax(logits[-1])))
        if cache.length >= cache.context or len(out) == new_tokens:
            break
        logits = cache.run(step, np.array(out[-1:], np.int64))
    return out

