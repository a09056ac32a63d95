"""KV-cache decoders with static shapes, for NPU runtimes that compile fixed shapes (QNN HTP, OpenVINO NPU, NNAPI, Core ML).

The graph (``build_decoder(..., static_context=M, chunk=C)``) takes ``C`` tokens per run and a
past of ``M`` slots per layer where slot = position, and returns the logits of the ``C`` tokens
and the present (the past with the chunk written into its slots). Every dimension is fixed and
every node is an op an NPU's list has: what depends on the positions is computed here, on the
host, and fed as inputs:

| input | shape | |
|---|---|---|
| ``input_ids`` | int64 [1, C] | the chunk's tokens (a short last chunk padded) |
| ``attention_bias`` | float32 [1, 1, 1, C, M] | 0 where token c attends slot m (filled, not after it), ``MASK_VALUE`` elsewhere |
| ``attention_bias_sliding`` | float32 [1, 1, 1, C, M] | the same within the sliding window (models with one) |
| ``rotary_cos`` / ``rotary_sin`` | float32 [1, C, rot/2] | rotary rows at the chunk's positions (``_local``: Gemma 3's local base) |
| ``cache_write`` | float32 [1, M, C] | 1 where slot m takes token c (a one-hot MatMul writes the cache) |
| ``cache_keep`` | float32 [1, M, 1] | 1 where the past stays |
| ``past_key_values.N.key/value`` | float32 [1, kv_heads, M, head_dim] | |

Two graphs of the same weights cover generation: the decode step (``C`` = 1) and a prefill of
``C`` = chunk tokens; the prefill graph is the step graph with only its chunk dimensions changed
(``exporters/static_prefill.py``), and the two share one weights file in a bundle.

This module is the host side, the one implementation the export check, the bundle's run.py
(shipped beside generate.py), ``edgeq generate`` and the LLM profile use: standard library and
numpy only, and an onnxruntime session passed in.
"""

from __future__ import annotations

import json

import numpy as np

DEFAULT_CONTEXT = 256  # slots of the fixed cache when the target names none (bounded by the model's context)
DEFAULT_CHUNK = 64  # tokens per prefill run (bounded by the slots)
MASK_VALUE = -1.0e4  # additive bias of a masked slot: exp() of it is 0 in float32, and it stays finite in float16
BIAS, BIAS_SLIDING = "attention_bias", "attention_bias_sliding"
ROTARY = {"global": ("rotary_cos", "rotary_sin"), "local": ("rotary_cos_local", "rotary_sin_local")}
WRITE, KEEP = "cache_write", "cache_keep"
META_KEY = "edgeq_static_decoder"  # model metadata: rotary frequencies and sliding window, for the host
_MAX_META = 1 << 16


def host_input_shapes(chunk: int, slots: int, half: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every host-computed input a static graph may take, in graph order."""
    rot = [(n, (1, chunk, half)) for kind in ("global", "local") for n in ROTARY[kind]]
    return [(BIAS, (1, 1, 1, chunk, slots)), (BIAS_SLIDING, (1, 1, 1, chunk, slots)), *rot, (WRITE, (1, slots, chunk)), (KEEP, (1, slots, 1))]


def layout_metadata(inv_freq, inv_freq_local, window: int | None, *, rotary_scale: float = 1.0) -> dict[str, str]:
    """The model metadata the host reads back (``StaticLayout``); ``rotary_scale``: LongRoPE's attention factor on cos/sin."""
    data = {"inv_freq": [float(x) for x in inv_freq], "inv_freq_local": None if inv_freq_local is None else [float(x) for x in inv_freq_local],
            "window": int(window) if window else None}
    if rotary_scale != 1.0:
        data["rotary_scale"] = float(rotary_scale)
    return {META_KEY: json.dumps(data, sort_keys=True)}


def _shape(sess, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in next(i for i in sess.get_inputs() if i.name == name).shape)


def _freqs(v, half: int, what: str) -> np.ndarray:
    if not (isinstance(v, list) and len(v) == half and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        raise ValueError(f"the static decoder's metadata has no valid {what} ({half} numbers)")
    return np.asarray(v, np.float32)


class StaticLayout:
    """What the host needs to feed a static graph: chunk, slots, rotary frequencies, sliding window, input names.

    ``shapes``: the graph's input shapes by name; ``meta``: its ``META_KEY`` metadata, parsed. Without it
    (``meta`` None: typical feeds for golden pairs, where no session is open) the rotary rows use the
    common base-10000 frequencies and a sliding window of the whole cache.
    """

    def __init__(self, shapes: dict, meta: dict | None) -> None:
        self.names = set(shapes)
        self.chunk = int(shapes["input_ids"][1])
        self.pasts = sorted(n for n in self.names if n.startswith("past_key_values."))
        if not self.pasts or self.chunk < 1:
            raise ValueError("not a static KV-cache decoder (no fixed input_ids / past_key_values)")
        self.context = int(shapes[self.pasts[0]][2])
        glob, local = ROTARY["global"][0] in self.names, ROTARY["local"][0] in self.names
        half = int(shapes[ROTARY["global" if glob else "local"][0]][2]) if glob or local else 0
        if meta is None:
            meta = {"inv_freq": (10000.0 ** (-np.arange(half) / max(half, 1))).tolist(), "window": self.context}
            meta["inv_freq_local"] = meta["inv_freq"]
        self.inv_freq = _freqs(meta.get("inv_freq"), half, "rotary frequencies") if glob else None
        self.inv_freq_local = _freqs(meta.get("inv_freq_local"), half, "local rotary frequencies") if local else None
        window = meta.get("window")
        if BIAS_SLIDING in self.names and not (isinstance(window, int) and not isinstance(window, bool) and 0 < window < 1 << 31):
            raise ValueError("the static decoder's metadata has no valid sliding window")
        self.window = window if BIAS_SLIDING in self.names else None
        scale = meta.get("rotary_scale", 1.0)
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0.0 < scale < 16.0):
            raise ValueError("the static decoder's metadata has no valid rotary scale")
        self.rotary_scale = float(scale)  # LongRoPE's attention factor (global rotary rows only)

    @classmethod
    def of_session(cls, sess) -> StaticLayout:
        """The layout of an onnxruntime session's graph (its shapes and its metadata)."""
        shapes = {i.name: i.shape for i in sess.get_inputs()}
        if not all(isinstance(d, int) for d in shapes.get("input_ids", [None])):
            raise ValueError("not a static KV-cache decoder (input_ids has no fixed length)")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for s in shapes.values() for d in s):
            raise ValueError("not a static KV-cache decoder (an input has no fixed shape)")  # the host sizes every input
        raw = sess.get_modelmeta().custom_metadata_map.get(META_KEY, "")
        if not raw or len(raw) > _MAX_META:
            raise ValueError(f"the static decoder has no '{META_KEY}' metadata (re-export it with this edgeq)")
        try:
            meta = json.loads(raw)
        except RecursionError:  # a model's metadata is data: nesting the parser cannot take is a bad model, not a crash
            raise ValueError(f"the static decoder's '{META_KEY}' metadata is nested too deeply") from None
        if not isinstance(meta, dict):
            raise ValueError(f"the static decoder's '{META_KEY}' metadata is not a JSON object")
        return cls(shapes, meta)


def host_inputs(layout: StaticLayout, start: int, n: int, first: int = 0) -> dict[str, np.ndarray]:
    """The host-computed inputs for ``n`` tokens (``n`` <= chunk) at positions ``start``.. after slots ``first``..``start``
    were filled (``first`` > 0: a sequence that began at slot ``first``, as calibration windows spread over the cache do)."""
    c, m = layout.chunk, layout.context
    pos = np.arange(start, start + c, dtype=np.int64)  # padded rows continue the positions (their outputs are unused)
    slots = np.arange(m, dtype=np.int64)
    # [C, M]: empty (before the sequence or past its last token), or after the token
    masked = (slots[None, :] > pos[:, None]) | (slots[None, :] >= start + n) | (slots[None, :] < first)
    feed: dict[str, np.ndarray] = {}
    if BIAS in layout.names:
        feed[BIAS] = (masked * np.float32(MASK_VALUE)).reshape(1, 1, 1, c, m)
    if BIAS_SLIDING in layout.names:
        far = slots[None, :] <= pos[:, None] - int(layout.window)
        feed[BIAS_SLIDING] = ((masked | far) * np.float32(MASK_VALUE)).reshape(1, 1, 1, c, m)
    for kind, inv in (("global", layout.inv_freq), ("local", layout.inv_freq_local)):
        if inv is not None:  # float32 as transformers computes it: angle = position * frequency, then cos / sin
            ang = pos.astype(np.float32)[:, None] * inv[None, :]
            cos, sin = ROTARY[kind]
            f = np.float32(layout.rotary_scale if kind == "global" else 1.0)
            feed[cos], feed[sin] = np.cos(ang)[None] * f, np.sin(ang)[None] * f
    write = np.zeros((1, m, c), np.float32)
    real = np.arange(min(n, m - start))
    write[0, pos[real], real] = 1.0  # only the real tokens are written: padded rows leave the cache as it was
    keep = np.ones((1, m, 1), np.float32)
    keep[0, start : start + len(real)] = 0.0
    feed[WRITE], feed[KEEP] = write, keep
    return feed


class StaticCache:
    """The host side of the fixed cache: slot arrays per layer and how many slots are filled (slot = position)."""

    def __init__(self, sess) -> None:
        self.layouts: dict[int, StaticLayout] = {}
        first = self.layout(sess)
        self.names = first.pasts
        self.context = first.context
        self.past = {n: np.zeros(_shape(sess, n), np.float32) for n in self.names}
        self.length = 0

    def layout(self, sess) -> StaticLayout:
        if id(sess) not in self.layouts:
            self.layouts[id(sess)] = StaticLayout.of_session(sess)
        return self.layouts[id(sess)]

    def run(self, sess, tokens) -> np.ndarray:
        """Logits [n, V] of ``tokens`` (n <= the graph's chunk) at the next positions; the cache takes them."""
        lay = self.layout(sess)
        n = len(tokens)
        if n < 1 or n > lay.chunk or self.length + n > self.context or lay.context != self.context:
            raise ValueError(f"{n} tokens at position {self.length} do not fit chunk {lay.chunk} / context {self.context}")
        ids = np.zeros((1, lay.chunk), np.int64)
        ids[0, :n] = tokens
        feed = {"input_ids": ids, **host_inputs(lay, self.length, n), **self.past}
        outs = [o.name for o in sess.get_outputs()]
        res = dict(zip(outs, sess.run(None, feed)))
        self.past = {k: res[k.replace("past_key_values.", "present.")] for k in self.names}
        self.length += n
        return res["logits"][0, :n]

    def extend(self, sess, tokens) -> np.ndarray:
        """Logits [len(tokens), V]: ``tokens`` through ``sess`` in chunks of its size (the last one padded)."""
        chunk = self.layout(sess).chunk
        return np.concatenate([self.run(sess, tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)], axis=0)


def logits_static(step, ids: np.ndarray, split: int, prefill=None) -> np.ndarray:
    """Logits [S, V] of ``ids`` [S]: ``ids[:split]`` through ``prefill`` in chunks (or ``step``), then one token per step."""
    cache = StaticCache(step)
    rows = [cache.extend(prefill or step, ids[:split])]
    rows += [cache.run(step, ids[t : t + 1]) for t in range(split, len(ids))]
    return np.concatenate(rows, axis=0)


def greedy_static(step, prompt: np.ndarray, new_tokens: int, prefill=None) -> list[int]:
    """Greedy continuation of ``prompt`` for ``new_tokens`` tokens (fewer where the fixed context ends)."""
    cache = StaticCache(step)
    logits = cache.extend(prefill or step, prompt)
    out: list[int] = []
    while len(out) < new_tokens:
        out.append(int(np.argmax(logits[-1])))
        if cache.length >= cache.context or len(out) == new_tokens:
            break
        logits = cache.run(step, np.array(out[-1:], np.int64))
    return out
