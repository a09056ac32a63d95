"""KV-cache decoders: a Hugging Face causal LM -> one ONNX graph for prefill and one-token decode.

The graph is written op by op from the model's weights (plain ONNX ops, opset 17, or where the
target's provider has them onnxruntime's fused kernels: see ``build_decoder``), in the
input/output naming onnxruntime-genai loads:

| name | shape | |
|---|---|---|
| ``input_ids`` | int64 [batch, sequence] | new tokens |
| ``attention_mask`` | int64 [batch, total_sequence] | past + new, 1 = attend |
| ``position_ids`` | int64 [batch, sequence] | positions of the new tokens |
| ``past_key_values.%d.key/value`` | float32 [batch, kv_heads, past_sequence, head_dim] | empty (past 0) at prefill |
| ``logits`` | float32 [batch, sequence, vocab] | |
| ``present.%d.key/value`` | float32 [batch, kv_heads, total_sequence, head_dim] | the cache to feed back |

Per generated token the graph computes one query row against the cache, so decode cost grows
with the context only through the attention product (no re-run of the prefix).

Architectures: Llama (and Mistral / SmolLM / TinyLlama), Qwen2 (q/k/v biases), Phi-3 (fused
qkv and gate_up projections, partial rotary), Gemma, Gemma 2 (post norms, soft-capping,
sliding window), Gemma 3 text (q/k norms, local rope base). Anything else is refused with one
line naming the architecture. The export is checked against transformers: full-sequence logits,
then prefill + decode steps through the cache (``check_decoder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, ModelError
from .rope_longrope import longrope_parts, longrope_note

OPSET = 17
PAST_KEY = "past_key_values.%d.key"
PAST_VALUE = "past_key_values.%d.value"
PRESENT_KEY = "present.%d.key"
PRESENT_VALUE = "present.%d.value"
SUPPORTED = ("llama", "mistral", "qwen2", "phi3", "gemma", "gemma2", "gemma3_text")
_NEG = -3.0e38  # large negative for masked scores (float32 min is -3.4e38; stays finite after adding)


@dataclass(frozen=True)
class DecoderArch:
    """What the graph builder needs from a config, with each family's differences as data."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    inv_freq: tuple[float, ...]  # rotary frequencies (rope scaling applied)
    inv_freq_local: tuple[float, ...] | None = None  # gemma3: sliding layers use another base
    inv_freq_long: tuple[float, ...] | None = None  # longrope: frequencies once the sequence passes rope_switch
    rope_switch: int = 0  # longrope: original_max_position_embeddings (total length above it: the long factors)
    rope_scale: float = 1.0  # longrope: attention factor multiplying cos and sin
    rotary_dim: int = 0  # 0 = head_dim
    qkv_bias: bool = False
    act: str = "silu"  # silu | gelu_tanh
    norm_offset: float = 0.0  # gemma: weight is (1 + w)
    embed_scale: float = 1.0
    post_norms: bool = False  # gemma2/3: post-attention and pre/post feed-forward norms
    qk_norm: bool = False
    attn_scale: float = 0.0  # 0 = 1/sqrt(head_dim)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding: tuple[bool, ...] = ()  # per layer
    window: int | None = None
    tied: bool = False
    bos: int | list[int] | None = None
    eos: int | list[int] | None = None
    pad: int | None = None
    context: int = 2048
    notes: tuple[str, ...] = field(default_factory=tuple)

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    v = cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)
    return default if v is None else v


def _inv_freq(p: dict[str, Any], rot: int, mt: str) -> tuple[float, ...]:
    """Rotary frequencies as transformers computes them for rope types default, linear and llama3."""
    theta = float(p.get("rope_theta") or 10000.0)
    inv = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    kind = p.get("rope_type", p.get("type")) or "default"
    if kind == "linear":
        inv = inv / float(p.get("factor", 1.0))
    elif kind == "llama3":
        factor, lo, hi = float(p["factor"]), float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
        old = float(p["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    elif kind == "longrope":  # the short factors; the long ones and the switch: rope_longrope.longrope_parts
        inv = inv / np.asarray(p["short_factor"], np.float64)
    elif kind != "default":
        raise ModelError(f"KV-cache export does not support rope scaling '{kind}' ({mt})",
                         "supported: default, linear, llama3, longrope; pass --exporter torchscript for a full-sequence graph")
    return tuple(float(x) for x in inv)


def arch_from_config(cfg: Any) -> DecoderArch:
    """The builder's description of a transformers config; refuses what the builder does not write."""
    mt = str(_get(cfg, "model_type", "?"))
    if mt not in SUPPORTED:
        archs = _get(cfg, "architectures", []) or []
        name = f"{mt} ({', '.join(map(str, archs))})" if archs else mt
        raise ModelError(
            f"KV-cache export does not support architecture {name}",
            f"supported: {', '.join(SUPPORTED)}; for others pass --exporter torchscript (a full-sequence graph without KV cache)",
        )
    hidden = int(_get(cfg, "hidden_size"))
    heads = int(_get(cfg, "num_attention_heads"))
    kv = int(_get(cfg, "num_key_value_heads", heads))
    head_dim = int(_get(cfg, "head_dim", hidden // heads))
    layers = int(_get(cfg, "num_hidden_layers"))
    # rope: transformers >= 5 keeps it in rope_parameters (per attention kind for gemma3), older configs
    # in rope_theta + rope_scaling + partial_rotary_factor (+ rope_local_base_freq)
    theta = float(_get(cfg, "rope_theta", 10000.0))
    params = _get(cfg, "rope_parameters", None)
    prf = float(_get(cfg, "partial_rotary_factor", None) or (params.get("partial_rotary_factor") if isinstance(params, dict) else None) or 1.0)
    rot = int(head_dim * prf) if prf != 1.0 else 0
    scaling = _get(cfg, "rope_scaling", None)
    local = None
    if isinstance(params, dict) and "full_attention" in params:
        glob, local = dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    elif isinstance(params, dict):
        glob = dict(params)
    else:
        glob = dict(scaling or {}, rope_theta=theta)
    if mt == "gemma3_text" and local is None:
        local = {"rope_type": "default", "rope_theta": _get(cfg, "rope_local_base_freq", 10000.0)}
    glob.setdefault("rope_theta", theta)
    context = int(_get(cfg, "max_position_embeddings", 2048))
    long_rope = longrope_parts(glob, rot or head_dim, context, _get(cfg, "original_max_position_embeddings", None), mt)
    if long_rope:  # Phi-3's old names ("su", "yarn") for it too
        glob["rope_type"] = "longrope"
    inv = _inv_freq(glob, rot or head_dim, mt)
    inv_local = _inv_freq(local, rot or head_dim, mt) if local is not None else None
    act = str(_get(cfg, "hidden_act", _get(cfg, "hidden_activation", "silu")))
    if mt.startswith("gemma"):
        act = str(_get(cfg, "hidden_activation", act))
    acts = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
    if act not in acts:
        raise ModelError(f"KV-cache export does not support activation '{act}' ({mt})", "use the full-sequence export")
    kw: dict[str, Any] = {}
    if mt.startswith("gemma"):
        kw.update(norm_offset=1.0, embed_scale=math.sqrt(hidden))
    if mt in ("gemma2", "gemma3_text"):
        kw.update(post_norms=True, attn_scale=float(_get(cfg, "query_pre_attn_scalar", head_dim)) ** -0.5)
        kw.update(attn_softcap=_get(cfg, "attn_logit_softcapping", None), final_softcap=_get(cfg, "final_logit_softcapping", None))
    if mt == "gemma3_text":
        kw.update(qk_norm=True)
    window = _get(cfg, "sliding_window", None)
    types = _get(cfg, "layer_types", None)
    if types:
        sliding = tuple(t == "sliding_attention" for t in types)
    elif mt == "gemma2":
        sliding = tuple(i % 2 == 0 for i in range(layers))
    elif mt in ("mistral", "phi3") and window:  # transformers masks every layer with the window
        sliding = (True,) * layers
    elif mt == "qwen2" and _get(cfg, "use_sliding_window", False):
        top = int(_get(cfg, "max_window_layers", layers))
        sliding = tuple(i >= top for i in range(layers))
    else:
        sliding = (False,) * layers
    if not any(sliding):
        window = None
    return DecoderArch(
        model_type=mt, layers=layers, hidden=hidden, heads=heads, kv_heads=kv, head_dim=head_dim,
        vocab=int(_get(cfg, "vocab_size")), eps=float(_get(cfg, "rms_norm_eps", 1e-6)), inv_freq=inv, inv_freq_local=inv_local,
        rotary_dim=rot, qkv_bias=mt == "qwen2" or bool(_get(cfg, "attention_bias", False)), act=acts[act],
        sliding=sliding, window=int(window) if window else None, tied=bool(_get(cfg, "tie_word_embeddings", False)),
        bos=_get(cfg, "bos_token_id", None), eos=_get(cfg, "eos_token_id", None), pad=_get(cfg, "pad_token_id", None),
        context=context, **long_rope, **kw,
    )


class _Graph:
    """A small helper over onnx.helper: unique names, constants as initializers."""

    def __init__(self, sink: Any = None) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self.sink = sink  # a weight_sink.WeightSink: weights go to the external-data file as they are made

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        if self.sink is not None and np.asarray(arr).size > 16:  # constants stay inline
            self.inits.append(self.sink.tensor(name, arr))
        else:
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, arr: Any, hint: str = "c") -> str:
        return self.init(self.name(hint), np.asarray(arr))

    def op(self, op: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        base = self.name(hint or op)
        outs = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs


def _np(t: Any) -> np.ndarray:
    return t.detach().to(dtype=__import__("torch").float32).cpu().numpy()


def _weights(state: dict[str, Any], arch: DecoderArch) -> dict[str, np.ndarray]:
    """Per-layer float32 arrays under one naming, splitting Phi-3's fused projections."""
    w: dict[str, np.ndarray] = {}
    missing: list[str] = []

    def take(key: str, optional: bool = False) -> np.ndarray | None:
        if key in state:
            return _np(state[key])
        if not optional:
            missing.append(key)
        return None

    w["embed"] = take("model.embed_tokens.weight")
    w["norm"] = take("model.norm.weight")
    head = take("lm_head.weight", optional=True)
    w["lm_head"] = head if head is not None and not arch.tied else w["embed"]
    qd, kd = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    for i in range(arch.layers):
        p = f"model.layers.{i}."
        if arch.model_type == "phi3":
            qkv = take(p + "self_attn.qkv_proj.weight")
            gu = take(p + "mlp.gate_up_proj.weight")
            if qkv is not None:
                w[f"{i}.q"], w[f"{i}.k"], w[f"{i}.v"] = qkv[:qd], qkv[qd : qd + kd], qkv[qd + kd :]
            if gu is not None:
                half = gu.shape[0] // 2
                w[f"{i}.gate"], w[f"{i}.up"] = gu[:half], gu[half:]
        else:
            for n in ("q", "k", "v"):
                w[f"{i}.{n}"] = take(p + f"self_attn.{n}_proj.weight")
                if arch.qkv_bias:
                    w[f"{i}.{n}.bias"] = take(p + f"self_attn.{n}_proj.bias")
            for n in ("gate", "up"):
                w[f"{i}.{n}"] = take(p + f"mlp.{n}_proj.weight")
        w[f"{i}.o"] = take(p + "self_attn.o_proj.weight")
        w[f"{i}.down"] = take(p + "mlp.down_proj.weight")
        w[f"{i}.ln1"] = take(p + "input_layernorm.weight")
        w[f"{i}.ln2"] = take(p + "post_attention_layernorm.weight")
        if arch.post_norms:
            w[f"{i}.ln_pre_ff"] = take(p + "pre_feedforward_layernorm.weight")
            w[f"{i}.ln_post_ff"] = take(p + "post_feedforward_layernorm.weight")
        if arch.qk_norm:
            w[f"{i}.q_norm"] = take(p + "self_attn.q_norm.weight")
            w[f"{i}.k_norm"] = take(p + "self_attn.k_norm.weight")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelError(f"{arch.model_type} weights missing: {', '.join(missing[:3])}{more}", "re-save the folder with save_pretrained")
    return w


# providers with a GroupQueryAttention kernel; elsewhere (QNN, OpenVINO, CoreML, NNAPI...) plain ops
FUSED_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider", "WebGpuExecutionProvider")


def fused_attention_fits(arch: DecoderArch, target: Any) -> tuple[bool, str]:
    """(use GroupQueryAttention, why): the target's first provider has it and the head size suits its CPU kernel."""
    first = target.providers[0].name if target.providers else "?"
    if first not in FUSED_PROVIDERS:
        return False, f"plain attention ops: {first} has no GroupQueryAttention kernel"
    if arch.head_dim % 16:
        return False, f"plain attention ops: head size {arch.head_dim} is not a multiple of 16 (onnxruntime's GroupQueryAttention)"
    outside = arch.rotary_dim not in (0, arch.head_dim) and (arch.rotary_dim // 2) % 8 != 0
    rotary = (f"rotary as plain ops (partial rotary over {arch.rotary_dim} dims: the kernel takes multiples of 16)" if outside
              else "rotary inside it (cos/sin caches at position_ids)")
    return True, (f"attention fused as com.microsoft.GroupQueryAttention ({first}); {rotary}; packed q/k/v and gate/up projections; "
                  f"norms as SkipSimplifiedLayerNormalization; right padding only")


def build_decoder(arch: DecoderArch, state: dict[str, Any], out: Path, *, fused: bool = False,
                  static_context: int = 0, chunk: int = 1) -> Path:
    """Write the KV-cache decoder ONNX for ``arch`` with the weights in ``state`` (a state dict).

    ``fused`` (targets whose provider has onnxruntime's contrib kernels) writes what those kernels
    run fastest, as onnxruntime-genai's own builder does:

    - attention (cache update, causal mask, soft-cap, sliding window) as ``com.microsoft.GroupQueryAttention``,
      with rotary inside it (``do_rotary``: cos/sin caches of the model's context length, read at
      ``position_ids``; partial rotary too when its width is a multiple of 16, as the kernel requires,
      else plain ops in front of it);
    - q/k/v as one MatMul (one bias Add) whose packed rows go to the kernel as they are (split only
      where Gemma 3's q/k norms or partial rotary need them apart), gate/up as one MatMul then Split:
      one MatMulNBits each after weight-only quantization;
    - every RMSNorm over the hidden size as ``com.microsoft.SkipSimplifiedLayerNormalization``,
      the residual Add folded in.

    The mask then follows GroupQueryAttention's rules: right padding only. Without ``fused`` the
    graph is plain opset-17 ops any provider runs (separate projections, concatenated cache).

    ``static_context`` (> 0; plain ops only) writes the form NPU runtimes compile: every shape fixed,
    batch 1, ``chunk`` tokens per run (1: the decode step; more: a prefill chunk, padded at the end),
    past and present of ``static_context`` slots where slot = position. The new keys/values are
    written into their slots by a one-hot MatMul at ``position_ids`` (no Concat, no ScatterND), and
    a slot is attended when ``attention_mask`` [1, static_context] marks it and it is not after the
    query's position (nor outside the sliding window). See ``static_decoder.py`` for the loop.
    """
    import onnx
    from onnx import TensorProto, helper

    static = static_context > 0
    if static and fused:
        raise ValueError("static shapes use plain attention ops")
    if static and arch.inv_freq_long and static_context > arch.rope_switch:
        raise ValueError(f"a static LongRoPE decoder takes at most {arch.rope_switch} slots (its short factors)")
    from .weight_sink import WeightSink, over_threshold, planned_bytes

    w = _weights(state, arch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.with_name(out.name + ".data")
    data.unlink(missing_ok=True)
    # the weights go to <out>.data as they are made (weight_sink.py): the graph protobuf stays small, so building it holds
    # no copy of them; over the threshold they stay there, else
    # they are read back into one file at the end (one copy, then the serialized bytes)
    # a tied lm_head reads the embedding's initializer (Gemm, transB) except in the static form, where it is written apart
    big = over_threshold(planned_bytes(state, 4 * w["embed"].size if arch.tied and static else 0))
    g = _Graph(WeightSink(data))
    H, nh, nkv, hd = arch.hidden, arch.heads, arch.kv_heads, arch.head_dim
    rep = nh // nkv
    rot = arch.rotary_dim or hd

    ids, mask, pos = "input_ids", "attention_mask", "position_ids"
    if not static:
        t_len = g.op("Gather", [g.op("Shape", [mask]), g.const(np.int64(1))])
        one = g.const(np.int64(1))
    bias_full = bias_slide = ""
    if static:  # everything that depends on the positions comes from the host (static_decoder.host_inputs)
        from .static_decoder import BIAS, BIAS_SLIDING, KEEP, WRITE

        bias_full = BIAS  # [1, 1, 1, C, M] additive: 0 where query c attends slot m
        bias_slide = BIAS_SLIDING if arch.window else BIAS
        hit, keep = WRITE, KEEP  # [1, M, C]: 1 where slot m takes the chunk's token c; [1, M, 1]: 1 where the past stays
    elif not fused:  # GroupQueryAttention masks by itself
        zero = g.const(np.int64(0))
        # --- masks [B, 1, 1, S, T] (additive), causal + padding (+ sliding window)
        s_len = g.op("Gather", [g.op("Shape", [ids]), g.const(np.int64(1))])
        past_len = g.op("Sub", [t_len, s_len])
        q_idx = g.op("Add", [g.op("Range", [zero, s_len, one]), past_len])  # [S] absolute positions of queries
        k_idx = g.op("Range", [zero, t_len, one])  # [T]
        q_col = g.op("Unsqueeze", [q_idx, g.const(np.array([1], np.int64))])  # [S,1]
        causal = g.op("LessOrEqual", [k_idx, q_col])  # [S,T]
        pad = g.op("Cast", [g.op("Unsqueeze", [mask, g.const(np.array([1, 2, 3], np.int64))])], to=TensorProto.BOOL)  # [B,1,1,1,T]
        allowed = g.op("And", [causal, pad])  # [B,1,1,S,T]
        zf, negf = g.const(np.float32(0.0)), g.const(np.float32(_NEG))
        bias_full = g.op("Where", [allowed, zf, negf], hint="mask_bias")
        bias_slide = bias_full
        if arch.window:
            near = g.op("Greater", [k_idx, g.op("Sub", [q_col, g.const(np.int64(arch.window))])])
            bias_slide = g.op("Where", [g.op("And", [allowed, near]), zf, negf], hint="mask_bias_sliding")

    # --- rotary tables [B, 1, 1, S, rot/2] (cos, sin) per base
    def rope_tables(inv: tuple[float, ...], kind: str = "global") -> tuple[str, str]:
        if static:  # host inputs [1, C, rot/2]: the rows of the chunk's positions (broadcast over heads)
            from .static_decoder import ROTARY

            return ROTARY[kind]
        posf = g.op("Unsqueeze", [g.op("Cast", [pos], to=TensorProto.FLOAT), g.const(np.array([-1], np.int64))])  # [B,S,1]
        freqs = g.const(np.asarray(inv, np.float32), "inv_freq")
        if long_rope and kind == "global":  # LongRoPE: the long frequencies once the total length passes the switch
            freqs = g.op("Where", [long_now, g.const(np.asarray(arch.inv_freq_long, np.float32), "inv_freq_long"), freqs])
        fr = g.op("Mul", [posf, freqs])  # [B,S,rot/2]
        # plain attention: [B,1,1,S,rot/2] (q as [B,kv,rep,S,hd]); fused: [B,S,1,rot/2] (q as [B,S,heads,hd])
        fr = g.op("Unsqueeze", [fr, g.const(np.array([2] if fused else [1, 2], np.int64))])
        cos, sin = g.op("Cos", [fr], hint="rope_cos"), g.op("Sin", [fr], hint="rope_sin")
        if arch.rope_scale != 1.0 and kind == "global":  # LongRoPE's attention factor scales cos and sin
            f = g.const(np.float32(arch.rope_scale))
            cos, sin = g.op("Mul", [cos, f]), g.op("Mul", [sin, f])
        return cos, sin

    def rope_caches(inv: tuple[float, ...], hint: str) -> tuple[str, str]:
        """GroupQueryAttention's cos_cache / sin_cache [context, rot/2], computed here in float64 (LongRoPE: short
        rows 0..switch-1, then long rows of the whole context, read at position_ids shifted by the switch)."""
        rows = max(arch.context, 1)
        ang = np.arange(rows, dtype=np.float64)[:, None] * np.asarray(inv, np.float64)[None, :]
        if long_rope and hint.endswith("global"):
            ang_long = np.arange(rows, dtype=np.float64)[:, None] * np.asarray(arch.inv_freq_long, np.float64)[None, :]
            ang = np.concatenate([ang[: arch.rope_switch], ang_long])
        f = arch.rope_scale if hint.endswith("global") else 1.0
        return (g.init(f"{hint}.cos_cache", (np.cos(ang) * f).astype(np.float32)),
                g.init(f"{hint}.sin_cache", (np.sin(ang) * f).astype(np.float32)))

    # partial rotary goes in too where the kernel takes its table width (rot/2 a multiple of 8), else plain ops in front
    rotary_in_gqa = fused and (rot == hd or (rot // 2) % 8 == 0)
    long_rope = bool(arch.inv_freq_long) and not static  # static graphs: short rows from the host, slots capped at the switch
    rope_pos = pos
    if long_rope:  # one switch per run: the total length (the mask's) above original_max_position_embeddings
        long_now = g.op("Greater", [t_len, g.const(np.int64(arch.rope_switch))], hint="longrope_switch")
        if rotary_in_gqa:  # read the long rows of the cache: positions + switch
            shift = g.op("Mul", [g.op("Cast", [long_now], to=TensorProto.INT64), g.const(np.int64(arch.rope_switch))])
            rope_pos = g.op("Add", [pos, shift], hint="longrope_position_ids")
    bases = {"global": arch.inv_freq}
    if arch.inv_freq_local is not None:
        bases["local"] = arch.inv_freq_local
    made: dict[str, tuple[str, str]] = {}

    def table(kind: str) -> tuple[str, str]:
        """The (cos, sin) pair of one rotary base, made on first use (no unused initializers)."""
        if kind not in made:
            made[kind] = rope_caches(bases[kind], f"rotary_{kind}") if rotary_in_gqa else rope_tables(bases[kind], kind)
        return made[kind]

    def rope(x: str, cs: tuple[str, str]) -> str:
        """Rotate-half rotary on the first ``rot`` dims of x [B, G, R, S, hd]."""
        cos, sin = cs
        half = rot // 2
        if rot < hd:
            xr, xp = g.op("Split", [x, g.const(np.array([rot, hd - rot], np.int64))], n_out=2, axis=-1)
        else:
            xr, xp = x, None
        x1, x2 = g.op("Split", [xr, g.const(np.array([half, half], np.int64))], n_out=2, axis=-1)
        a = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
        b = g.op("Add", [g.op("Mul", [x2, cos]), g.op("Mul", [x1, sin])])
        y = g.op("Concat", [a, b], axis=-1)
        return g.op("Concat", [y, xp], axis=-1) if xp is not None else y

    def rmsnorm(x: str, weight: np.ndarray, hint: str) -> str:
        var = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
        root = g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(arch.eps))])])
        scaled = g.op("Div", [x, root]) if static else g.op("Mul", [x, g.op("Reciprocal", [root])])  # Reciprocal: not on the HTP
        return g.op("Mul", [scaled, g.init(f"{hint}.weight", (weight + arch.norm_offset).astype(np.float32))], hint=hint)

    def add_norm(x: str, y: str | None, weight: np.ndarray, hint: str) -> tuple[str, str]:
        """(rmsnorm(x + y), x + y); fused: one com.microsoft.SkipSimplifiedLayerNormalization.

        Without ``y`` (the first layer's norm, Gemma 2/3's post norms) the fused op gets ``x`` twice and 4 x epsilon:
        rmsnorm(2x, 4 eps) = rmsnorm(x, eps) exactly (doubling is exact in floating point), and
        the residual stream stays ``x``. ONNX's checker refuses the plain SimplifiedLayerNormalization
        onnxruntime registers in the default domain, so this keeps the norm one kernel.
        """
        if not fused:
            if y is not None:
                x = g.op("Add", [x, y], hint=f"{hint}.residual")
            return rmsnorm(x, weight, hint), x
        out, total = f"{hint}.out", f"{hint}.residual"
        gamma = g.init(f"{hint}.weight", (weight + arch.norm_offset).astype(np.float32))
        eps = float(arch.eps) * (4.0 if y is None else 1.0)
        g.nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [x if y is None else y, x, gamma], [out] if y is None else [out, "", "", total],
            name=f"{hint}.SkipSimplifiedLayerNormalization", domain="com.microsoft", epsilon=eps))
        return out, x if y is None else total

    def linear(x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        y = g.op("MatMul", [x, g.init(f"{name}.weight", weight.T.astype(np.float32))], hint=name)
        return g.op("Add", [y, g.init(f"{name}.bias", bias.astype(np.float32))]) if bias is not None else y

    def softcap(x: str, cap: float) -> str:
        c = g.const(np.float32(cap))
        return g.op("Mul", [g.op("Tanh", [g.op("Div", [x, c])]), c])

    if fused:
        seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", [mask, g.const(np.array([1], np.int64))], keepdims=0), one])],
                       to=TensorProto.INT32, hint="seqlens_k")
        total32 = g.op("Cast", [t_len], to=TensorProto.INT32, hint="total_sequence_length")
    x = g.op("Gather", [g.init("embed_tokens.weight", w["embed"].astype(np.float32)), ids], hint="embed")
    if arch.embed_scale != 1.0:
        x = g.op("Mul", [x, g.const(np.float32(arch.embed_scale))])
    scale = arch.attn_scale or hd**-0.5
    b_, s_, t_, p_ = (1, int(chunk), int(static_context), int(static_context)) if static else ("batch", "sequence", "total_sequence", "past_sequence")
    inputs = [
        helper.make_tensor_value_info(ids, TensorProto.INT64, [b_, s_]),
        helper.make_tensor_value_info(mask, TensorProto.INT64, [b_, t_]),
        helper.make_tensor_value_info(pos, TensorProto.INT64, [b_, s_]),
    ] if not static else [helper.make_tensor_value_info(ids, TensorProto.INT64, [b_, s_])]  # + the host inputs it uses (below)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b_, s_, arch.vocab])]
    pending: str | None = None  # the last block's output, added to the residual stream by the next norm
    for i in range(arch.layers):
        pk, pv, ok, ov = PAST_KEY % i, PAST_VALUE % i, PRESENT_KEY % i, PRESENT_VALUE % i
        for n in (pk, pv):
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [b_, nkv, p_, hd]))
        for n in (ok, ov):
            outputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [b_, nkv, t_, hd]))
        pre = f"layers.{i}"
        h, x = add_norm(x, pending, w[f"{i}.ln1"], f"{pre}.input_layernorm")
        sliding = bool(arch.sliding and arch.sliding[i])
        cs = table("local" if sliding and "local" in bases else "global")
        if fused:
            # one MatMul for q, k and v (and one bias Add): the kernel takes the packed rows as they are
            qkv_w = np.concatenate([w[f"{i}.q"], w[f"{i}.k"], w[f"{i}.v"]], axis=0)
            qkv_b = np.concatenate([w[f"{i}.{n}.bias"] for n in "qkv"]) if arch.qkv_bias else None
            qkv = linear(h, qkv_w, f"{pre}.attn.qkv_proj", qkv_b)
            if arch.qk_norm or not rotary_in_gqa:
                q, k, v = g.op("Split", [qkv, g.const(np.array([nh * hd, nkv * hd, nkv * hd], np.int64))], n_out=3, axis=-1)
                q = g.op("Reshape", [q, g.const(np.array([0, 0, nh, hd], np.int64))])
                k = g.op("Reshape", [k, g.const(np.array([0, 0, nkv, hd], np.int64))])
                if arch.qk_norm:
                    q = rmsnorm(q, w[f"{i}.q_norm"], f"{pre}.attn.q_norm")
                    k = rmsnorm(k, w[f"{i}.k_norm"], f"{pre}.attn.k_norm")
                if not rotary_in_gqa:
                    q, k = rope(q, cs), rope(k, cs)
                q = g.op("Reshape", [q, g.const(np.array([0, 0, nh * hd], np.int64))])
                k = g.op("Reshape", [k, g.const(np.array([0, 0, nkv * hd], np.int64))])
            else:
                q, k, v = qkv, "", ""
            attrs: dict[str, Any] = {"num_heads": nh, "kv_num_heads": nkv, "scale": float(scale), "do_rotary": int(rotary_in_gqa)}
            if arch.attn_softcap:
                attrs["softcap"] = float(arch.attn_softcap)
            if sliding and arch.window:
                attrs["local_window_size"] = int(arch.window)
            gqa_in = [q, k, v, pk, pv, seqlens, total32]
            if rotary_in_gqa:
                gqa_in += [cs[0], cs[1], rope_pos]  # rotary from the caches at position_ids
            g.nodes.append(helper.make_node("GroupQueryAttention", gqa_in, [f"{pre}.attn.out", ok, ov],
                                            name=f"{pre}.attn.GroupQueryAttention", domain="com.microsoft", **attrs))
            attn = linear(f"{pre}.attn.out", w[f"{i}.o"], f"{pre}.attn.o_proj")
        else:
            q = linear(h, w[f"{i}.q"], f"{pre}.attn.q_proj", w.get(f"{i}.q.bias"))
            k = linear(h, w[f"{i}.k"], f"{pre}.attn.k_proj", w.get(f"{i}.k.bias"))
            v = linear(h, w[f"{i}.v"], f"{pre}.attn.v_proj", w.get(f"{i}.v.bias"))
            # q -> [B, kv, rep, S, hd]; k, v -> [B, kv, S, hd]
            q = g.op("Transpose", [g.op("Reshape", [q, g.const(np.array([0, 0, nkv, rep, hd], np.int64))])], perm=[0, 2, 3, 1, 4])
            k = g.op("Transpose", [g.op("Reshape", [k, g.const(np.array([0, 0, nkv, hd], np.int64))])], perm=[0, 2, 1, 3])
            v = g.op("Transpose", [g.op("Reshape", [v, g.const(np.array([0, 0, nkv, hd], np.int64))])], perm=[0, 2, 1, 3])
            if arch.qk_norm:
                q = rmsnorm(q, w[f"{i}.q_norm"], f"{pre}.attn.q_norm")
                k = rmsnorm(k, w[f"{i}.k_norm"], f"{pre}.attn.k_norm")
            q = rope(q, cs)
            cs4 = cs if static else tuple(g.op("Squeeze", [t, g.const(np.array([1], np.int64))]) for t in cs)  # [B,1,S,rot/2]
            k = rope(k, cs4)
            if static:  # past * keep + write @ new: each chunk token lands in the slot of its position
                k_all = g.op("Add", [g.op("Mul", [pk, keep]), g.op("MatMul", [hit, k])])
                v_all = g.op("Add", [g.op("Mul", [pv, keep]), g.op("MatMul", [hit, v])])
            else:
                k_all = g.op("Concat", [pk, k], axis=2)
                v_all = g.op("Concat", [pv, v], axis=2)
            g.nodes.append(helper.make_node("Identity", [k_all], [ok], name=f"{ok}_out"))
            g.nodes.append(helper.make_node("Identity", [v_all], [ov], name=f"{ov}_out"))
            k5 = g.op("Unsqueeze", [k_all, g.const(np.array([2], np.int64))])  # [B,kv,1,T,hd]
            v5 = g.op("Unsqueeze", [v_all, g.const(np.array([2], np.int64))])
            scores = g.op("MatMul", [q, g.op("Transpose", [k5], perm=[0, 1, 2, 4, 3])])  # [B,kv,rep,S,T]
            scores = g.op("Mul", [scores, g.const(np.float32(scale))])
            if arch.attn_softcap:
                scores = softcap(scores, float(arch.attn_softcap))
            scores = g.op("Add", [scores, bias_slide if sliding else bias_full])
            probs = g.op("Softmax", [scores], axis=-1)
            ctx = g.op("MatMul", [probs, v5])  # [B,kv,rep,S,hd]
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2, 4]), g.const(np.array([0, 0, nh * hd], np.int64))])
            attn = linear(ctx, w[f"{i}.o"], f"{pre}.attn.o_proj")
        if arch.post_norms:
            attn, _ = add_norm(attn, None, w[f"{i}.ln2"], f"{pre}.post_attention_layernorm")
            h, x = add_norm(x, attn, w[f"{i}.ln_pre_ff"], f"{pre}.pre_feedforward_layernorm")
        else:
            h, x = add_norm(x, attn, w[f"{i}.ln2"], f"{pre}.post_attention_layernorm")
        if fused:  # one MatMul for gate and up, split after
            gu = linear(h, np.concatenate([w[f"{i}.gate"], w[f"{i}.up"]], axis=0), f"{pre}.mlp.gate_up_proj")
            inter = w[f"{i}.gate"].shape[0]
            gate, up = g.op("Split", [gu, g.const(np.array([inter, inter], np.int64))], n_out=2, axis=-1)
        else:
            gate = linear(h, w[f"{i}.gate"], f"{pre}.mlp.gate_proj")
            up = linear(h, w[f"{i}.up"], f"{pre}.mlp.up_proj")
        if arch.act == "silu":
            a = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        else:  # gelu, tanh approximation
            cube = g.op("Mul", [g.op("Mul", [gate, gate]), gate])
            inner = g.op("Mul", [g.op("Add", [gate, g.op("Mul", [cube, g.const(np.float32(0.044715))])]), g.const(np.float32(math.sqrt(2 / math.pi)))])
            a = g.op("Mul", [g.op("Mul", [gate, g.const(np.float32(0.5))]), g.op("Add", [g.op("Tanh", [inner]), g.const(np.float32(1.0))])])
        mlp = linear(g.op("Mul", [a, up]), w[f"{i}.down"], f"{pre}.mlp.down_proj")
        if arch.post_norms:
            mlp, _ = add_norm(mlp, None, w[f"{i}.ln_post_ff"], f"{pre}.post_feedforward_layernorm")
        pending = mlp
    x, _ = add_norm(x, pending, w["norm"], "norm")
    if arch.tied and not static:  # one copy of the table: Gemm reads it transposed (transB), a 2-D product between Reshapes
        lead = g.op("Shape", [x], end=2, hint="lm_head.shape")
        x2 = g.op("Reshape", [x, g.const(np.array([-1, H], np.int64))], hint="lm_head.rows")
        y2 = g.op("Gemm", [x2, "embed_tokens.weight"], hint="lm_head", transB=1)
        logits = g.op("Reshape", [y2, g.op("Concat", [lead, g.const(np.array([w["embed"].shape[0]], np.int64))], axis=0)], hint="lm_head.out")
    else:
        logits = linear(x, w["lm_head"], "lm_head")
    if arch.final_softcap:
        logits = softcap(logits, float(arch.final_softcap))
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_out"))
    if static:
        from .static_decoder import host_input_shapes, layout_metadata

        used = {n for node in g.nodes for n in node.input}
        inputs[1:1] = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))
                       for n, shape in host_input_shapes(int(chunk), int(static_context), rot // 2) if n in used]
        g.nodes = _without_output_identities(g.nodes)  # Identity is not in the HTP's op list
    graph = helper.make_graph(g.nodes, "edgeq_decoder", inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeq")
    if static:  # what the host needs to compute the rotary rows and masks (static_decoder.StaticLayout)
        helper.set_model_props(model, layout_metadata(arch.inv_freq, arch.inv_freq_local if "local" in made else None, arch.window,
                                                       rotary_scale=arch.rope_scale))
    elif long_rope:  # where the bundle's generation loop re-runs the sequence (bundles/llmgen.py, as transformers' generate)
        helper.set_model_props(model, {"edgeq_longrope_switch": str(int(arch.rope_switch))})
    model.ir_version = 8
    g.sink.close()
    if not big:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(out.parent))
        data.unlink()
    out.write_bytes(model.SerializeToString())  # over the threshold: the tensors point at <out>.data
    return out


def _without_output_identities(nodes: list[Any]) -> list[Any]:
    """``nodes`` with each ``Identity(x) -> graph output`` dropped and ``x`` renamed to the output's name."""
    ident = {n.input[0]: n.output[0] for n in nodes if n.op_type == "Identity"}
    kept = []
    for n in nodes:
        if n.op_type == "Identity":
            continue
        for field_ in (n.input, n.output):
            for k, name in enumerate(field_):
                if name in ident:
                    field_[k] = ident[name]
        kept.append(n)
    return kept


def _dims(t: Any) -> tuple[Any, ...]:
    return tuple(t.shape)


def empty_past(inputs: Any, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past key/values for a prefill; ``inputs``: an IoSpec's or a session's inputs."""
    feeds: dict[str, np.ndarray] = {}
    for t in inputs:
        if t.name.startswith("past_key_values."):
            shape = _dims(t)
            kind = str(getattr(t, "dtype", "") or getattr(t, "type", ""))  # IoSpec "int8", session "tensor(int8)": --kv-cache int8
            feeds[t.name] = np.zeros((batch, int(shape[1]), 0, int(shape[3])), np.int8 if kind in ("int8", "tensor(int8)") else np.float32)
    return feeds


def is_kv_decoder(io: Any) -> bool:
    names = set(io.input_names)
    return "input_ids" in names and any(n.startswith("past_key_values.") for n in names)


def prefill_feed(inputs: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
    """A prefill feed for token windows ``ids`` [B, S]: mask of ones, positions 0..S-1, empty past."""
    inputs = list(inputs)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    shapes = {t.name: _dims(t) for t in inputs}
    if all(isinstance(d, int) for d in shapes.get("input_ids", ("?",))):  # static decoder: its fixed shapes, slots from 0
        from .static_decoder import StaticLayout, host_inputs

        lay = StaticLayout(shapes, None)  # no session here: typical rotary rows (static_decoder.StaticLayout)
        n = min(lay.chunk, ids.shape[1])
        fixed = np.zeros((1, lay.chunk), np.int64)
        fixed[0, :n] = ids[0, :n]
        feed = {"input_ids": fixed, **host_inputs(lay, 0, n)}
        feed.update({k: np.zeros(d, np.float32) for k, d in shapes.items() if k.startswith("past_key_values.")})
        return feed
    b, s = ids.shape
    feed = {"input_ids": ids, "attention_mask": np.ones((b, s), np.int64), "position_ids": np.tile(np.arange(s, dtype=np.int64), (b, 1))}
    feed.update(empty_past(inputs, b))
    names = {t.name for t in inputs}
    return {k: v for k, v in feed.items() if k in names}


def decode_with_cache(session: Any, ids: np.ndarray, split: int) -> np.ndarray:
    """Logits [B, S, V] from a prefill of ``ids[:, :split]`` then one token at a time through the cache."""
    from ..core.runtime import run

    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    b, s = ids.shape
    feed = prefill_feed(session.get_inputs(), ids[:, :split])
    res = dict(zip(outs, run(session, feed)))
    logits = [res["logits"]]
    for t in range(split, s):
        feed = {"input_ids": ids[:, t : t + 1], "attention_mask": np.ones((b, t + 1), np.int64),
                "position_ids": np.full((b, 1), t, np.int64)}
        for n in names:
            if n.startswith("past_key_values."):
                feed[n] = res[n.replace("past_key_values.", "present.")]
        res = dict(zip(outs, run(session, feed)))
        logits.append(res["logits"])
    return np.concatenate(logits, axis=1)


def _errors(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    d = np.abs(got.astype(np.float64) - ref)
    rel = d / np.maximum(np.abs(ref), 1e-12)
    return float(d.max()), float(rel.max()), bool((d <= atol + rtol * np.abs(ref)).all())


def check_decoder(model: Any, onnx_path: Path, vocab: int, atol: float, rtol: float, *, seq: int = 12, steps: int = 4, seed: int = 0,
                  long_from: int = 0):
    """Per-check (label, max abs, max rel, passed): full sequence, and prefill + cached decode steps, vs transformers.

    ``long_from`` (LongRoPE: original_max_position_embeddings, when below the context) adds the same two checks on one
    sequence of ``long_from + 1 + steps`` tokens, whose prefill already passes the switch to the long factors."""
    import torch

    from ..core.runtime import create_session

    rng = np.random.default_rng(seed)
    sess = create_session(onnx_path)
    rows = []
    for b, n in [(2, seq)] + ([(1, long_from + 1 + steps)] if long_from else []):
        ids = rng.integers(0, vocab, (b, n), dtype=np.int64)
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.double().numpy()
        rows += [
            (f"full sequence {b}x{n}", *_errors(ref, decode_with_cache(sess, ids, n), atol, rtol)),
            (f"prefill {b}x{n - steps} + {steps} cached decode steps", *_errors(ref, decode_with_cache(sess, ids, n - steps), atol, rtol)),
        ]
    return rows


def check_static_decoder(model: Any, step_path: Any, vocab: int, atol: float, rtol: float, *, seq: int = 12, split: int = 8, seed: int = 0,
                         prefill_path: Any = None):
    """Per-check (label, max abs, max rel, passed) of the static graph(s) against transformers (batch 1): the step
    graph alone, and with ``prefill_path`` a prompt of one full chunk and a padded one through the prefill graph, then steps."""
    import torch

    from ..core.runtime import create_session
    from .static_decoder import StaticLayout, logits_static

    step = create_session(step_path)
    runs = [(np.random.default_rng(seed).integers(0, vocab, seq, dtype=np.int64), split, None, "the step graph")]
    if prefill_path is not None:
        pre = create_session(prefill_path)
        lay = StaticLayout.of_session(pre)
        n = min(lay.context, lay.chunk + 12)
        runs.append((np.random.default_rng(seed + 1).integers(0, vocab, n, dtype=np.int64), n - 4, pre, f"the prefill graph ({lay.chunk} per run)"))
    rows = []
    for ids, cut, pre, how in runs:
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids[None]), use_cache=False).logits.double().numpy()[0]
        rows.append((f"{cut} prompt tokens through {how} + {len(ids) - cut} steps through the fixed slots",
                     *_errors(ref, logits_static(step, ids, cut, pre), atol, rtol)))
    return rows


def build_checked_static(model: Any, arch: Any, out: Any, target: Any, *, context: int = 0, chunk: int = 0) -> tuple[list, tuple[str, ...], str]:
    """Write the one-token static decoder of ``model`` at ``out`` and check it, with the prefill graph derived from it
    (static_prefill.py, written for the check and removed): (check rows, notes, provenance label)."""
    from .static_decoder import DEFAULT_CONTEXT
    from .static_prefill import chunk_for, write_prefill

    slots = min(int(context), arch.context) if context else min(arch.context, DEFAULT_CONTEXT)  # never past the model's context
    if arch.inv_freq_long:  # LongRoPE: the host computes short-factor rows, so the slots end at the switch
        slots = min(slots, arch.rope_switch)
    chunk = chunk_for(slots, chunk)
    build_decoder(arch, model.state_dict(), out, static_context=slots, chunk=1)
    tol = target.tolerances
    pre = Path(out).with_name(Path(out).stem + ".prefill-check.onnx")
    try:
        rows = check_static_decoder(model, out, arch.vocab, tol.export_atol, tol.export_rtol,
                                    prefill_path=write_prefill(out, pre, chunk) if chunk > 1 else None)
    finally:
        pre.unlink(missing_ok=True)
    notes = (f"static KV-cache decoder ({arch.model_type}, {arch.layers} layers): batch 1, {slots} cache slots (slot = position); "
             f"a one-token step graph and a {chunk}-token prefill graph derived from it (same nodes and weights); "
             f"past_key_values.N.key/value in, present.N.key/value out; {arch.kv_bytes_per_token() * slots} KV bytes (fp32)",
             f"plain attention ops, every shape static ({target.name} compiles fixed shapes); attention bias, rotary rows and "
             f"cache-write matrix computed on the host (exporters/static_decoder.py)")
    return rows, notes, f"static {slots} slots, prefill chunk {chunk}"


BUILDER = "edgeq KV-cache decoder builder"


def export_hf_decoder(model: Any, out: Path, target: Any, provenance: tuple[str, ...] = ()):
    """Build the decoder from a loaded transformers causal LM and check it: ``(Artifact, ExportCheck, DecoderArch)``."""
    from ..core.artifact import Artifact
    from ..core.onnxutil import artifact_from
    from .torch import ExportCheck, OutputError

    arch = arch_from_config(model.config)
    tol = target.tolerances
    if target.static_shapes:  # NPU targets: fixed cache slots, step and prefill graphs (static_decoder.py)
        rows, notes, kind = build_checked_static(model, arch, out, target, context=target.static_slots, chunk=target.prefill_chunk)
        batch = 1
    else:
        fused, why = fused_attention_fits(arch, target)
        build_decoder(arch, model.state_dict(), out, fused=fused)
        long_from = arch.rope_switch if arch.inv_freq_long and arch.rope_switch + 5 <= arch.context else 0
        rows = check_decoder(model, out, arch.vocab, tol.export_atol, tol.export_rtol, long_from=long_from)
        notes = (f"KV-cache decoder ({arch.model_type}, {arch.layers} layers, {arch.kv_heads} kv heads x {arch.head_dim}): "
                 f"past_key_values.N.key/value in, present.N.key/value out; {arch.kv_bytes_per_token()} KV bytes per token (fp32)", why)
        kind, batch = ("GroupQueryAttention" if fused else "plain attention"), 2
    lr_note = longrope_note(arch, static=bool(target.static_shapes))
    if lr_note:
        notes = (*notes, lr_note)
    outs = tuple(OutputError(name=f"logits ({label})", shape=(batch, 12, arch.vocab), max_abs=a, max_rel=r, passed=ok) for label, a, r, ok in rows)
    check = ExportCheck(
        exporter=BUILDER, fallback_reason=None, opset=OPSET, inputs_checked=tuple(r[0] for r in rows), outputs=outs,
        atol=tol.export_atol, rtol=tol.export_rtol, external_data=False, exporter_notes=notes,
    )
    if not check.passed:
        bad = "; ".join(f"{o.name} max abs {o.max_abs:.3g}" for o in outs if not o.passed)
        raise CheckFailed(f"the KV-cache decoder differs from transformers beyond target {target.name}'s export tolerance: {bad}",
                          "report the model's architecture; pass --exporter torchscript for a full-sequence graph meanwhile")
    art = artifact_from(out)
    worst = max(o.max_abs for o in outs)
    art = Artifact(path=art.path, io=art.io, opset=art.opset, provenance=provenance + (
        f"export({BUILDER}, {arch.model_type}, {kind}, opset={OPSET})", f"export-check(max_abs={worst:.3g}, outputs=1, passed)"))
    return art, check, arch
