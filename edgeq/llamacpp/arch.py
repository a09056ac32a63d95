"""Phi-3 and Gemma 1/2/3 layouts for GGUF: what differs from a Llama folder.

Tensor names come from llama.cpp's own table (``gguf.get_tensor_name_map``, the map its
``convert_hf_to_gguf.py`` uses), not from a private list. What edgeq adds is the per-architecture
knowledge the file format does not carry:

- Phi-3 (``phi3``): fused ``qkv_proj`` and ``gate_up_proj`` are written fused (llama.cpp splits
  them), NEOX rotary over the first ``partial_rotary_factor`` of each head (no row permutation),
  an optional sliding window on every layer.
- Gemma (``gemma``): RMSNorm weights are stored as ``w`` but applied as ``1 + w`` (written +1),
  embeddings scaled by sqrt(hidden) and GeGLU (tanh GELU) inside llama.cpp, tied embeddings.
- Gemma 2 (``gemma2``): also post-attention / post-FFN norms, attention and final logit
  soft-caps, a sliding window on every other layer (the first one sliding, as transformers).
- Gemma 3 text (``gemma3``): Gemma 2 without soft-caps, with q/k norms; five sliding layers then a
  global one; llama.cpp fixes the sliding layers' rotary base at 10,000 (the global base is written).

Anything these layouts cannot express is refused with one line naming the setting.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ModelError

# llama.cpp arch -> (transformers model_type, class)
EXTRA_ARCHS = {"phi3": ("phi3", "Phi3ForCausalLM"), "gemma": ("gemma", "GemmaForCausalLM"),
               "gemma2": ("gemma2", "Gemma2ForCausalLM"), "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}
_GEMMA = ("gemma", "gemma2", "gemma3")
_GEMMA3_SWA_THETA = 10000.0  # llama.cpp's gemma3 uses this rotary base on its sliding layers, whatever the file says
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast")

# llama.cpp tensors each layer must have, per architecture (output.weight: see required_tensors)
_LAYER = {
    "phi3": ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"),
    "gemma": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"),
    "gemma2": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_norm",
               "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"),
}
_LAYER["gemma3"] = (*_LAYER["gemma2"], "attn_q_norm", "attn_k_norm")


def detect(cfg: dict[str, Any]) -> str | None:
    """The llama.cpp architecture of a Phi-3 / Gemma 1/2/3 config, or None."""
    archs = cfg.get("architectures") or []
    for name, (mtype, cls) in EXTRA_ARCHS.items():
        if cfg.get("model_type") == mtype or cls in archs:
            return name
    return None


def arch_params(p: Any, cfg: dict[str, Any], where: str) -> Any:
    """``p`` (LlamaParams) completed and checked for an extra architecture."""
    arch = p.arch
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ModelError(f"{where}: {flag} = true is not part of llama.cpp's {arch} layout", "convert a model without biases")
    if arch == "phi3":
        if p.tie_embeddings:
            raise ModelError(f"{where}: Phi-3 with tied embeddings is not supported by edgeq's GGUF writer",
                             "llama.cpp's phi3 needs its own output projection; convert an untied checkpoint")
        rp = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
        factor = float(cfg.get("partial_rotary_factor") or rp.get("partial_rotary_factor") or 1.0)  # transformers 5 may nest it
        rope_dims = int(p.head_dim * factor)
        if rope_dims % 2 or not 0 < rope_dims <= p.head_dim:
            raise ModelError(f"{where}: partial_rotary_factor {factor} gives {rope_dims} rotary dims of {p.head_dim}", "check config.json")
        orig = int(cfg.get("original_max_position_embeddings") or p.context_length)
        p = replace(p, rope_dims=rope_dims, sliding_window=int(cfg.get("sliding_window") or 0), original_context_length=orig)
        rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "longrope":
            p = _longrope(p, rs, where)
        return p
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _TANH_GELU:
        raise ModelError(f"{where}: Gemma activation '{act}' is not the tanh GELU llama.cpp computes", "convert a model with hidden_activation gelu_pytorch_tanh")
    if arch == "gemma":
        return p
    scalar = cfg.get("query_pre_attn_scalar")
    if scalar is not None and float(scalar) != float(p.head_dim):
        raise ModelError(f"{where}: query_pre_attn_scalar {scalar} differs from head_dim {p.head_dim}",
                         f"llama.cpp scales {arch} attention by 1/sqrt(head_dim) only; export this model for an ONNX "
                         "target instead (--target cpu-x86_64: its KV-cache decoder keeps the scalar)")
    period = 2 if arch == "gemma2" else 6  # llama.cpp: every period-th layer has full attention, the others slide
    layer_types = cfg.get("layer_types")
    if layer_types and layer_types != [("sliding_attention" if i % period < period - 1 else "full_attention") for i in range(p.layers)]:
        raise ModelError(f"{where}: {arch} layer_types {layer_types[:period]}... are not llama.cpp's pattern",
                         f"llama.cpp's {arch} gives every {period}th layer full attention and the others a sliding window")
    if arch == "gemma3":
        p = replace(p, rope_theta=_gemma3_theta(cfg, where))
    return replace(p, sliding_window=int(cfg.get("sliding_window") or 0),
                   attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
                   final_softcap=float(cfg.get("final_logit_softcapping") or 0.0))


def _gemma3_theta(cfg: dict[str, Any], where: str) -> float:
    """The full-attention rotary base; the sliding layers' must be llama.cpp's fixed 10,000."""
    rp = cfg.get("rope_parameters") or {}
    full, slide = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
    for kind, d in (("full", full), ("sliding", slide)):
        if d.get("rope_type", "default") != "default":
            raise ModelError(f"{where}: Gemma 3 rope scaling '{d.get('rope_type')}' ({kind} attention) is not supported by edgeq's GGUF writer",
                             "only plain rotary embeddings are converted")
    if isinstance(cfg.get("rope_scaling"), dict):
        raise ModelError(f"{where}: Gemma 3 rope_scaling is not supported by edgeq's GGUF writer", "only plain rotary embeddings are converted")
    local = float(slide.get("rope_theta") or cfg.get("rope_local_base_freq") or _GEMMA3_SWA_THETA)
    if local != _GEMMA3_SWA_THETA:
        raise ModelError(f"{where}: Gemma 3 sliding-layer rope base {local:g} is not 10000",
                         "llama.cpp's gemma3 uses a fixed rotary base of 10000 on its sliding layers")
    return float(full.get("rope_theta") or cfg.get("rope_theta") or 1_000_000.0)


def _longrope(p: Any, rs: dict[str, Any], where: str) -> Any:
    """Phi-3 LongRoPE: per-frequency short / long divisors and the cos/sin scale, as transformers computes them."""
    long, short = rs.get("long_factor"), rs.get("short_factor")
    n = p.rope_dims // 2
    if not (isinstance(long, list) and isinstance(short, list) and len(long) == len(short) == n):
        raise ModelError(f"{where}: longrope needs long_factor and short_factor of {n} values each", "check config.json")
    orig = int(rs.get("original_max_position_embeddings") or p.original_context_length)
    factor = float(rs.get("factor") or p.context_length / orig)
    attn = rs.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else float(np.sqrt(1 + np.log(factor) / np.log(orig)))
    return replace(p, original_context_length=orig, rope_long=tuple(map(float, long)), rope_short=tuple(map(float, short)),
                   rope_attn_factor=float(attn))


def tensor_name(name: str, p: Any) -> str | None:
    """GGUF name of a Hugging Face weight of an extra architecture (None: not written, "": unknown)."""
    import gguf

    if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and p.tie_embeddings):
        return None
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[p.arch.upper()], p.layers)
    return tmap.get_name(name, try_suffixes=(".weight", ".bias")) or ""


def required_tensors(p: Any) -> set[str]:
    need = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{t}.weight" for i in range(p.layers) for t in _LAYER[p.arch]}
    if not p.tie_embeddings:
        need.add("output.weight")
    return need


def transform(arr: np.ndarray, gname: str, p: Any) -> np.ndarray:
    """Gemma's RMSNorm multiplies by ``1 + w``: llama.cpp's by the stored weight."""
    if p.arch in _GEMMA and gname.endswith("norm.weight"):
        return arr + 1.0
    return arr


def add_metadata(w: Any, p: Any) -> None:
    """Keys beyond the Llama ones, as llama.cpp's loader reads them."""
    if p.sliding_window:
        w.add_sliding_window(p.sliding_window)
    if p.arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(p.original_context_length)
        if p.rope_long:
            w.add_rope_scaling_attn_factors(p.rope_attn_factor)
    if p.attn_softcap:
        w.add_attn_logit_softcapping(p.attn_softcap)
    if p.final_softcap:
        w.add_final_logit_softcapping(p.final_softcap)


def check_vocab(p: Any, name: str, tokens: tuple[str, ...], where: str) -> None:
    """Tokens llama.cpp's loader looks up by text for this architecture (it fails with 'unordered_map::at' otherwise)."""
    low = name.lower()
    if p.arch == "phi3" and ("phi3" in low or "phi-3" in low):  # llama.cpp sets attributes of Phi-3's special tokens by name
        missing = [t for t in ("<unk>", "<s>", "</s>", "<|endoftext|>") if t not in tokens]
        if missing:
            raise ModelError(f"{where}: a model named '{name}' has no {', '.join(missing)} token, which llama.cpp's Phi-3 loader looks up",
                             "Phi-3 tokenizers have <unk>, <s>, </s> and <|endoftext|>; convert the model's own tokenizer")


def notes(p: Any) -> list[str]:
    """What the GGUF computes differently from transformers, in words for the report."""
    out = []
    if p.arch == "phi3" and 0 < p.sliding_window < p.context_length:
        out.append(f"llama.cpp runs Phi-3 without its sliding window (disabled in llama.cpp): outputs equal transformers' "
                   f"up to {p.sliding_window} tokens of context and differ beyond")
    if p.rope_long:
        out.append(f"LongRoPE: llama.cpp uses the long factors whenever its context (n_ctx, rounded up to a multiple of 256) "
                   f"is above {p.original_context_length} tokens, transformers only for sequences longer than that; load with "
                   f"n_ctx <= {p.original_context_length} for transformers' outputs on shorter texts")
    return out


def llama3_rope_factors(rs: dict[str, Any], theta: float, head_dim: int, where: str) -> tuple[float, ...]:
    """Per-frequency divisors of Llama 3.1's rope scaling, which llama.cpp reads from its ``rope_freqs`` tensor.

    Frequencies whose wavelength is shorter than original_context / high_freq_factor keep their value,
    those longer than original_context / low_freq_factor are divided by ``factor``, and the ones in
    between are interpolated smoothly (transformers' "llama3" rope type).
    """
    try:
        factor = float(rs["factor"])
        low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
        old = float(rs["original_max_position_embeddings"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}: llama3 rope scaling needs factor and original_max_position_embeddings", "re-save config.json with transformers") from None
    if not (factor > 0 and high > low > 0 and old > 0):
        raise ModelError(f"{where}: llama3 rope scaling factor {factor}, low/high {low}/{high} are not usable", "check config.json")
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * theta ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(out)
