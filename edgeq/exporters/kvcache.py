"""An int8 KV cache for the fused decoder: onnxruntime's GroupQueryAttention keeps past keys/values as int8.

``--kv-cache int8`` (``--task text-generation``, dynamic decoders whose attention is
``com.microsoft.GroupQueryAttention``) rewrites the decoder after weight quantization:

- every ``past_key_values.N.key/value`` input and ``present.N.key/value`` output becomes int8
  (a quarter of the fp32 cache's bytes per token; onnxruntime-genai allocates its buffers from
  the first past input's type);
- each GroupQueryAttention node gets ``k_quant_type``/``v_quant_type`` (``PER_TENSOR``: one scale
  per layer, or ``PER_CHANNEL``: one per KV head and channel, [1, kv_heads, 1, head_size]),
  ``kv_cache_bit_width`` 8 and its ``k_scale``/``v_scale`` constants as inputs 12 and 13;
- the scales are calibrated per layer: the absolute maximum of the fp32 decoder's own
  ``present`` keys (after rotary, as the kernel stores them) and values over the calibration
  windows (``--calib`` input_ids), divided by 127. Without windows the option is refused: the
  ranges are the model's own (key channels from 1.2 to 30 within one layer of the realistic
  fixture), and no data-free value holds for every model.

Which of the two scale layouts ships is measured at export (``choose``): both are calibrated on
the first windows and the mean KL of their next-token distributions against the same weights with
an fp32 cache is computed on the last windows (ones the scales did not see: per-channel maxima from
few windows clip on new text); the per-tensor form was the faster kernel on a 1B-shaped layer
(234 vs 274 us at 1,024 tokens, docs/llm.md), so it ships unless the per-channel form's KL is below ``PER_CHANNEL_GAIN`` times its own. The
shipped scales then come from every window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

KV_CACHE_TYPES = ("fp32", "int8")
QUANT_TYPES = ("PER_TENSOR", "PER_CHANNEL")
PER_CHANNEL_GAIN = 0.8  # per channel ships when its KL is under 0.8 x per tensor's (its kernel took 17% longer on a 1B shape)
_PAST, _PRESENT = "past_key_values.", "present."
_TINY = 1e-8  # a channel that is zero on every window still gets a usable scale


@dataclass(frozen=True)
class KvRanges:
    """Per layer, the absolute maximum of the fp32 decoder's present keys and values, [kv_heads, head_size] each."""

    key: tuple[np.ndarray, ...]
    value: tuple[np.ndarray, ...]
    windows: int
    tokens: int


def gqa_nodes(model: Any) -> list[Any]:
    return [n for n in model.graph.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]


def check_fused(path: Path) -> None:
    """Refuse a decoder whose attention is not GroupQueryAttention (plain ops keep their cache in float)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if not gqa_nodes(m):
        raise ModelError("--kv-cache int8 needs the fused decoder (com.microsoft.GroupQueryAttention); this graph uses plain attention ops",
                         "use target cpu-x86_64 (or a target file whose first provider is CPUExecutionProvider), or --kv-cache fp32")


def collect_ranges(fp32_model: Path | str, windows: np.ndarray, *, max_windows: int = 16) -> KvRanges:
    """Run the fp32 decoder's prefill over up to ``max_windows`` input_ids windows [n, T]; per layer, the
    absolute maximum of each present key/value channel (keys after rotary, as GroupQueryAttention caches them)."""
    from ..core.runtime import create_session, run
    from .decoder import prefill_feed

    ids = np.asarray(windows, np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    ids = ids[:max_windows]
    sess = create_session(fp32_model)
    outs = [o.name for o in sess.get_outputs()]
    keys: dict[int, np.ndarray] = {}
    vals: dict[int, np.ndarray] = {}
    for row in ids:
        res = dict(zip(outs, run(sess, prefill_feed(sess.get_inputs(), row[None]))))
        for name, arr in res.items():
            if not name.startswith(_PRESENT):
                continue
            layer, kind = int(name.split(".")[1]), name.rsplit(".", 1)[1]
            top = np.abs(np.asarray(arr, np.float32)).max(axis=(0, 2))  # [kv_heads, head_size]
            store = keys if kind == "key" else vals
            store[layer] = np.maximum(store[layer], top) if layer in store else top
    if not keys:
        raise ModelError("the decoder has no present.N.key/value outputs", "--kv-cache applies to KV-cache decoders (--task text-generation)")
    n = len(keys)
    return KvRanges(key=tuple(keys[i] for i in range(n)), value=tuple(vals[i] for i in range(n)), windows=len(ids), tokens=int(ids.size))


def scales_of(ranges: KvRanges, quant_type: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer (k_scale, v_scale) in the shapes GroupQueryAttention takes: [1] per tensor, [1, kv, 1, hd] per channel."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(quant_type)

    def one(top: np.ndarray) -> np.ndarray:
        if quant_type == "PER_TENSOR":
            return np.array([max(float(top.max()), _TINY) / 127.0], np.float32)
        return (np.maximum(top, _TINY) / 127.0).astype(np.float32)[None, :, None, :]

    return [(one(k), one(v)) for k, v in zip(ranges.key, ranges.value)]


def apply_int8_cache(src: Path | str, out: Path | str, ranges: KvRanges, quant_type: str) -> Path:
    """Write ``src`` with an int8 KV cache at ``out``: int8 past/present, scales as constants, kernel attributes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..core.onnxutil import save_model

    model = onnx.load(str(src))
    nodes = gqa_nodes(model)
    scales = scales_of(ranges, quant_type)
    if not nodes:
        raise ModelError("--kv-cache int8 needs the fused decoder (com.microsoft.GroupQueryAttention)", "use --kv-cache fp32")
    if len(nodes) != len(scales):
        raise ModelError(f"the decoder has {len(nodes)} attention nodes but {len(scales)} calibrated layers", "re-export the decoder")
    cache_names = set()
    for i, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("k_quant_type", b"NONE") not in (b"NONE", "NONE", b"", "") or attrs.get("kv_cache_bit_width", 0):
            raise ModelError(f"attention node {node.name} already has a quantized cache", "export from the fp32 decoder")
        kept = [a for a in node.attribute if a.name not in ("k_quant_type", "v_quant_type", "kv_cache_bit_width")]  # defaults written out
        del node.attribute[:]
        node.attribute.extend(kept)
        k_s, v_s = scales[i]
        while len(node.input) < 12:  # optional inputs up to head_sink (10 and 11) stay empty
            node.input.append("")
        del node.input[12:]
        base = node.name.rsplit(".", 1)[0] if "." in node.name else f"gqa{i}"
        for kind, arr in (("k_scale", k_s), ("v_scale", v_s)):
            model.graph.initializer.append(numpy_helper.from_array(arr, f"{base}.{kind}"))
            node.input.append(f"{base}.{kind}")
        node.attribute.extend([helper.make_attribute("k_quant_type", quant_type), helper.make_attribute("v_quant_type", quant_type),
                               helper.make_attribute("kv_cache_bit_width", 8)])
        cache_names.update((node.input[3], node.input[4], node.output[1], node.output[2]))
    for t in list(model.graph.input) + list(model.graph.output):
        if t.name in cache_names:
            t.type.tensor_type.elem_type = TensorProto.INT8
    out = Path(out)
    save_model(model, out)
    return out


def _mean_kl(ref: Any, cand: Any, windows: np.ndarray) -> float:
    from ..checks.lmeval import compare_logits
    from ..core.runtime import run
    from .decoder import prefill_feed

    kls = []
    for row in windows:
        feed = prefill_feed(ref.get_inputs(), row[None])
        r = np.asarray(run(ref, feed)[0])
        c = np.asarray(run(cand, feed)[0])
        kls.append(compare_logits(r, c, row[None])["kl"])
    return float(np.concatenate(kls).mean())


def choose(src: Path | str, work: Path, fp32_model: Path | str, windows: np.ndarray, *, max_held: int = 4) -> tuple[str, dict[str, float]]:
    """Which scale layout ships: each applied to ``src`` (the quantized decoder, fp32 cache) with ranges from the first
    windows, its mean KL against ``src`` on the last ones (up to ``max_held``, windows the ranges did not see; with one
    window, that one): (the quant type, {quant type: KL})."""
    from ..core.runtime import create_session

    ids = np.asarray(windows, np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    held = ids[-min(max_held, len(ids) // 2):] if len(ids) > 1 else ids
    fit = ids[: len(ids) - len(held)] if len(ids) > 1 else ids
    ranges = collect_ranges(fp32_model, fit)
    ref = create_session(src)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    kl: dict[str, float] = {}
    for qt in QUANT_TYPES:
        kl[qt] = _mean_kl(ref, create_session(apply_int8_cache(src, work / f"kv8-{qt.lower()}.onnx", ranges, qt)), held)
    return ("PER_CHANNEL" if kl["PER_CHANNEL"] < PER_CHANNEL_GAIN * kl["PER_TENSOR"] else "PER_TENSOR"), kl


# providers whose GroupQueryAttention kernel was measured to run an int8 cache (onnxruntime 1.32's CPU kernel; docs/llm.md)
INT8_CACHE_PROVIDERS = ("CPUExecutionProvider",)


def check_option(kv_cache: str, *, kind: str, task: str | None, exporter: str, static_shapes: bool, target: Any,
                 folder: Path | None, calib: Path | None, quant: str = "none", weights_only: bool = True) -> None:
    """Refuse ``--kv-cache`` where it cannot work, in one line, before any work."""
    if kv_cache not in KV_CACHE_TYPES:
        raise ModelError(f"unknown --kv-cache '{kv_cache}'", f"choose one of {', '.join(KV_CACHE_TYPES)}")
    if kv_cache == "fp32":
        return
    if target.runtime == "llama.cpp":
        raise ModelError(f"--kv-cache int8 is an onnxruntime decoder option; target {target.name} writes GGUF",
                         "llama.cpp sets its cache type at run time (--cache-type-k q8_0); drop --kv-cache")
    if kind != "hf" or task != "text-generation" or exporter != "auto" or static_shapes:
        raise ModelError("--kv-cache int8 applies to the KV-cache decoder of a Hugging Face folder only",
                         "pass a folder with --task text-generation (no --exporter, no --static-shape), or drop --kv-cache")
    if target.static_shapes:
        raise ModelError(f"--kv-cache int8 needs the dynamic GroupQueryAttention decoder; target {target.name} gets the static one",
                         "use target cpu-x86_64 (or a target file whose first provider is CPUExecutionProvider), or drop --kv-cache")
    first = target.providers[0].name if target.providers else "?"
    if first not in INT8_CACHE_PROVIDERS:
        raise ModelError(f"--kv-cache int8: {first} has no int8-cache GroupQueryAttention kernel (target {target.name})",
                         f"use a target whose first provider is {' or '.join(INT8_CACHE_PROVIDERS)}, or drop --kv-cache")
    if folder is not None:
        from . import hf
        from .decoder import arch_from_config, fused_attention_fits

        fits, why = fused_attention_fits(arch_from_config(hf.inspect_folder(folder).config), target)
        if not fits:
            raise ModelError(f"--kv-cache int8 needs GroupQueryAttention; this model gets {why}", "drop --kv-cache")
    if not weights_only:  # activation and fp16 modes change the graph the cache scales were measured on
        raise ModelError(f"--kv-cache int8 goes with weight-only quantization, not --quant {quant}",
                         "pass --quant int4 (or int8-weight, or none) with --kv-cache int8")
    if calib is None:
        raise ModelError("--kv-cache int8 needs --calib: the cache scales come from the model's own keys and values",
                         "pass --calib WINDOWS.npz (input_ids [n, T] token windows)")


def int8_cache_stage(fp32_model: Path | str, quantized: Any, windows: np.ndarray, work: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """The quantized decoder ``quantized`` (an Artifact) with an int8 cache: (Artifact, manifest record, notes).

    Scales from ``fp32_model``'s presents on ``windows``; the layout chosen by KL against ``quantized`` itself."""
    from ..core.artifact import Artifact
    from ..core.onnxutil import artifact_from

    check_fused(Path(quantized.path))
    qt, kl = choose(quantized.path, work, fp32_model, windows)
    ranges = collect_ranges(fp32_model, windows)  # the shipped scales: every window
    art = artifact_from(apply_int8_cache(quantized.path, Path(work) / "kv8.onnx", ranges, qt))
    prov = f"kv-cache(int8, {qt}, scales from {ranges.windows} windows)"
    art = Artifact(path=art.path, io=art.io, opset=art.opset, provenance=tuple(quantized.provenance) + (prov,))
    per_token = sum(int(t.shape[1]) * int(t.shape[3]) for t in art.io.inputs if t.name.startswith(_PAST))
    record = {"dtype": "int8", "quant_type": qt, "bit_width": 8, "bytes_per_token": per_token, "bytes_per_token_fp32": 4 * per_token,
              "calibration_windows": ranges.windows, "calibration_tokens": ranges.tokens,
              "kl_vs_fp32_cache": {k.lower(): v for k, v in kl.items()}}
    notes = [f"KV cache int8 ({qt.lower().replace('_', '-')} scales, per layer from the fp32 decoder's keys/values on {ranges.windows} "
             f"calibration windows): {per_token} bytes per token instead of {4 * per_token}; mean KL against the same weights with "
             f"an fp32 cache (scales from the first windows, KL on the last): per tensor {kl['PER_TENSOR']:.3g}, per channel "
             f"{kl['PER_CHANNEL']:.3g}"]
    return art, record, notes
