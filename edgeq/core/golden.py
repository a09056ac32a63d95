"""Inputs for golden pairs and timing when no data was given: typical values, never zeros.

- token ids: uniform in the vocabulary (the row count of the embedding table the ids index);
- attention masks: every token real (ones; zeros for a padding mask such as ``key_padding_mask``, or
  one the app file declares ``mask = "padding"``); token type / segment ids: zeros; position ids: 0, 1, 2, ...;
- images: raw pixels in [0, 255] through the app's declared scale/mean/std (``--preprocess``),
  or in [0, 1] when nothing is declared; ``dtype = "uint8"`` inputs get raw pixels;
- other floats: standard normal.

Symbolic axes: batch 1; sequence 16 tokens; image height/width from the app's crop/resize or
the model's ``imgsz`` metadata, else 224.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 16
IMAGE_SIDE = 224
FALLBACK_VOCAB = 1000


_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def _load_graph(model_path: Path | str | None) -> Any:
    """The model without its external weights (shapes and metadata only), or None."""
    if model_path is None:
        return None
    try:
        import onnx

        return onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a hint only
        return None


def _vocab_sizes(m: Any) -> dict[str, int]:
    """Input name -> rows of the embedding table a Gather reads with it (the vocabulary).

    The ids may reach the Gather through shape-only ops (Cast, Reshape, ...: a TorchScript
    export reshapes them first). An integer input whose table is not found gets the
    smallest table's row count under the key ``""``: in range for every table.
    """
    if m is None:
        return {}
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    origin = {i.name: i.name for i in m.graph.input}  # tensor -> the graph input it is a reshaped copy of
    for n in m.graph.node:
        if n.op_type in _PASSTHROUGH and n.input and n.input[0] in origin:
            for o in n.output:
                origin[o] = origin[n.input[0]]
    out: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[0] in inits and inits[n.input[0]]:
            rows = int(inits[n.input[0]][0])
            out[""] = min(out.get("", rows), rows)
            if n.input[1] in origin:
                name = origin[n.input[1]]
                out[name] = min(out.get(name, rows), rows)
    return out


def _shape(t: Any, spec: dict[str, Any], side: tuple[int, int] | None) -> list[int]:
    dims = list(t.shape)
    out: list[int] = []
    hw = spec.get("crop") or (spec.get("resize") if isinstance(spec.get("resize"), list) else None) or side
    layout = spec.get("layout", "NHWC" if len(dims) == 4 and isinstance(dims[-1], int) and dims[-1] in (1, 3, 4) and not (isinstance(dims[1], int) and dims[1] in (1, 3, 4)) else "NCHW")
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(1)
        elif len(dims) == 4:
            spatial = (2, 3) if layout == "NCHW" else (1, 2)
            out.append(int((hw or (IMAGE_SIDE, IMAGE_SIDE))[spatial.index(i)]) if i in spatial else 3)
        else:
            out.append(SEQ_LEN)
    return out


def _image(rng: np.random.Generator, shape: list[int], spec: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    raw = rng.integers(0, 256, shape).astype(np.float64)
    if dtype.kind in "iu":
        return raw.astype(dtype)
    if not any(k in spec for k in ("scale", "mean", "std")):
        return (raw / 255.0).astype(dtype)
    x = raw * float(spec.get("scale", 1.0))
    axis = 1 if spec.get("layout", "NCHW") == "NCHW" else len(shape) - 1

    def per_channel(v: list[float]) -> np.ndarray:
        arr = np.asarray(v, np.float64)
        if arr.size == 1 or arr.size != shape[axis]:
            return arr.reshape(()) if arr.size == 1 else np.asarray(arr.mean())
        s = [1] * len(shape)
        s[axis] = arr.size
        return arr.reshape(s)

    x = (x - per_channel(spec.get("mean", [0.0]))) / per_channel(spec.get("std", [1.0]))
    return x.astype(dtype)


def typical_ints(name: str, shape: list[int], dt: np.dtype, rng: np.random.Generator, vocab: int = FALLBACK_VOCAB) -> np.ndarray:
    """An integer input by its role: mask ones, type ids zeros, positions 0..n-1, else ids in the vocabulary."""
    low = name.lower()
    if "mask" in low:
        v = np.ones(shape)
    elif "type" in low or "segment" in low:
        v = np.zeros(shape)
    elif "position" in low:
        v = np.broadcast_to(np.arange(shape[-1]), shape) if shape else np.zeros(shape)
    else:
        v = rng.integers(0, max(1, min(vocab, int(np.iinfo(dt).max))), shape)
    return np.asarray(v).astype(dt)


def typical_feed(model_path: Path | str | None, io: Any, app_inputs: dict[str, dict[str, Any]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed of typical values for every model input (see the module docstring)."""
    rng = np.random.default_rng(seed)
    graph = _load_graph(model_path)  # read once: embedding tables and the declared imgsz
    vocab = _vocab_sizes(graph)
    from ..exporters.decoder import is_kv_decoder, prefill_feed

    if is_kv_decoder(io):  # a KV-cache decoder: a consistent prefill (mask and positions cover the window, empty past)
        rows = vocab.get("input_ids", vocab.get("", FALLBACK_VOCAB))
        return prefill_feed(io.inputs, rng.integers(0, rows, (1, SEQ_LEN), dtype=np.int64))
    from .appio import mask_meaning
    from .modelmeta import declared_imgsz

    side = declared_imgsz(graph) if graph is not None else None
    app_inputs = app_inputs or {}
    feed: dict[str, np.ndarray] = {}
    for t in io.inputs:
        spec = app_inputs.get(t.name, {})
        shape = _shape(t, spec, side)
        dt = np.dtype(t.dtype) if t.dtype != "bool" else np.dtype(bool)
        if dt.kind in "biu" and mask_meaning(t.name, spec) == "padding":  # non-zero marks padding: none, every token real
            feed[t.name] = np.zeros(shape, dt)
        elif dt.kind == "b":
            feed[t.name] = np.ones(shape, bool)
        elif dt.kind in "iu" and len(shape) != 4:
            feed[t.name] = typical_ints(t.name, shape, dt, rng, vocab.get(t.name, vocab.get("", FALLBACK_VOCAB)))
        elif len(shape) == 4 or spec.get("dtype") == "uint8":
            feed[t.name] = _image(rng, shape, spec, dt)
        elif dt.kind == "f":
            feed[t.name] = rng.standard_normal(shape).astype(dt)
        else:
            feed[t.name] = np.ones(shape, dt)
    return feed
