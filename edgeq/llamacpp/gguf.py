"""GGUF export for llama.cpp targets: a local Hugging Face Llama folder -> verified GGUF bundle.

Llama and Qwen2 are handled here; Phi-3 and Gemma 1/2/3 through ``arch.py`` (tensor names from the
``gguf`` package's own map, per-architecture rules), SentencePiece-style vocabularies through ``vocab.py``.

Stages (each a plain function)::

    read_llama(folder)                      -> LlamaSource (hyper-parameters, weight files, vocabulary)
    write_gguf(src, quant, path)            -> GGUFResult  (per-tensor types, notes)
    verify_gguf(folder, gguf, prompts, tol) -> dict        (llama.cpp vs fp32 PyTorch, next-token logits)
    export_llamacpp(folder, target, ...)    -> dict        (bundle: model.gguf, Modelfile, manifest.json)

The GGUF file is written with the ``gguf`` package (``GGUFWriter``, ``gguf.quants.quantize``),
one tensor at a time. Weights are read with ``safetensors`` only (no pickle). The tokenizer
metadata (model, pre-tokenizer, tokens, types, merges, special ids) is written by edgeq from
``tokenizer.json``, because llama.cpp's own converter recognises pre-tokenizers only by hashing
known vocabularies. ``q4_k`` is not in the ``gguf`` package's quantizers: edgeq writes an f32
GGUF and lets llama.cpp's own quantizer (``llama_model_quantize``, from llama-cpp-python)
produce Q4_K_M from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CheckFailed, EdgeqError, ModelError, ProviderError, QuantizationError, first_line
from . import arch as _arch
from .vocab import is_spm, spm_vocab

LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python version edgeq pins for verification (the `gguf` extra)."""

# quant name -> (ggml type name, llama file type name, writer); writer "gguf" = gguf.quants, "llama.cpp" = llama_model_quantize
QUANT_TYPES: dict[str, tuple[str, str, str]] = {
    "f32": ("F32", "ALL_F32", "gguf"),
    "f16": ("F16", "MOSTLY_F16", "gguf"),
    "bf16": ("BF16", "MOSTLY_BF16", "gguf"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0", "gguf"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1", "gguf"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0", "gguf"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1", "gguf"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0", "gguf"),
    "q4_k": ("Q4_K", "MOSTLY_Q4_K_M", "llama.cpp"),
}
QUANT_NAMES = tuple(QUANT_TYPES)
_LOW_BIT = {"q5_1", "q5_0", "q4_1", "q4_0"}

# Hugging Face pre-tokenizer regexes llama.cpp knows by name (tokenizer.ggml.pre)
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}", 1)  # Qwen2: digits one at a time
_PRE_BY_REGEX = {_GPT2_REGEX: "gpt-2", _LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}

DEFAULT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog. A small model running on a phone",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Edge devices have little memory, so language models are quantized before they ship.",
    "import os\nimport sys\n\n\ndef main(argv):\n    for name in sorted(os.listdir(argv[1])):\n        print(name)\n",
)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ProviderError(
            "the 'gguf' package is not installed", "pip install 'edgeq[gguf]'"
        ) from None
    return gguf


# ---------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LlamaParams:
    vocab_size: int
    context_length: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    arch: str = "llama"  # llama.cpp architecture: llama, or qwen2 (q/k/v biases, NEOX rotary: no row permutation)
    # phi3 / gemma / gemma2 / gemma3 (llamacpp/arch.py)
    rope_dims: int = 0  # rotary dims per head (0: head_dim); Phi-3's partial rotary
    sliding_window: int = 0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    original_context_length: int = 0
    rope_freq_factors: tuple[float, ...] = ()  # Llama 3.1+ "llama3" rope scaling: llama.cpp's rope_freqs tensor
    rope_long: tuple[float, ...] = ()  # Phi-3 LongRoPE: rope_factors_long / _short tensors, attention factor
    rope_short: tuple[float, ...] = ()
    rope_attn_factor: float = 1.0


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    chat_template: str | None
    scores: tuple[float, ...] = ()  # SentencePiece-style ("llama") vocabularies: merge priority per token
    add_space_prefix: bool | None = None  # "llama" vocabularies: '▁' in front of the text


@dataclass(frozen=True)
class LlamaSource:
    folder: Path
    name: str
    params: LlamaParams
    weight_files: tuple[Path, ...]
    vocab: Vocab


def _read_json(path: Path, what: str) -> dict[str, Any]:
    from ..core.fsutil import read_json_object

    try:
        return read_json_object(path, str(path), ModelError, hint="fix or re-save the file")
    except FileNotFoundError:
        raise ModelError(f"{path.parent} has no {path.name} ({what})", "pass a Hugging Face model folder saved with save_pretrained") from None


def _inside(folder: Path, name: str) -> Path:
    p = (folder / name).resolve()
    if folder.resolve() not in p.parents:
        raise ModelError(f"weight file '{name}' points outside {folder}", "the index must name files inside the model folder")
    return p


def read_params(cfg: dict[str, Any], where: str) -> LlamaParams:
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") == "qwen2" or "Qwen2ForCausalLM" in archs:
        arch = "qwen2"
    elif cfg.get("model_type") == "llama" or "LlamaForCausalLM" in archs:
        arch = "llama"
    elif _arch.detect(cfg):
        arch = _arch.detect(cfg)  # type: ignore[assignment]
    else:
        raise ModelError(
            f"{where}: model_type '{cfg.get('model_type')}' ({', '.join(archs) or 'no architectures'}) is not a model edgeq converts to GGUF",
            "llama.cpp targets take Llama, Qwen2, Phi-3 and Gemma 1/2/3 (text) folders (LlamaForCausalLM, Qwen2ForCausalLM, "
            "Phi3ForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM)",
        )
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise ModelError(f"{where}: Qwen2 with use_sliding_window is not supported by edgeq's GGUF writer", "convert a model without a sliding window")
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise ModelError(f"{where}: missing or non-integer {', '.join(missing)}", "re-save config.json with transformers")
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    rtype = rs.get("rope_type", rs.get("type", "default")) if isinstance(rs, dict) else None
    llama3_rope = arch == "llama" and rtype == "llama3"
    if rtype not in ("default", None) and not llama3_rope and not (arch == "phi3" and rtype == "longrope"):  # longrope: arch.py
        raise ModelError(
            f"{where}: rope scaling '{rs.get('rope_type', rs.get('type'))}' is not supported by edgeq's GGUF writer yet",
            "only plain rotary embeddings (no rope_scaling) are converted",
        )
    for flag in ("attention_bias", "mlp_bias") if arch == "llama" else ("mlp_bias",) if arch == "qwen2" else ():  # qwen2: q/k/v biases by design
        if cfg.get(flag):
            raise ModelError(f"{where}: {flag} = true is not supported by edgeq's GGUF writer", "convert a model without biases")
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    if heads % kv or head_dim % 2:
        raise ModelError(f"{where}: {heads} heads / {kv} kv heads / head_dim {head_dim} is not a valid Llama layout", "check config.json")
    theta = cfg.get("rope_theta")
    if theta is None and isinstance(rs, dict):
        theta = rs.get("rope_theta")

    def _tid(key: str) -> int | None:
        v = cfg.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        return v if isinstance(v, int) else None

    params = LlamaParams(
        vocab_size=cfg["vocab_size"],
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        hidden=hidden,
        intermediate=cfg["intermediate_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        rope_theta=float(theta if theta is not None else 10000.0),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=_tid("bos_token_id"),
        eos_token_id=_tid("eos_token_id"),
        arch=arch,
    )
    if llama3_rope:
        params = replace(params, rope_freq_factors=_arch.llama3_rope_factors(rs, params.rope_theta, params.head_dim, where))
    return _arch.arch_params(params, cfg, where) if arch in _arch.EXTRA_ARCHS else params


def _pre_name(pre: dict[str, Any] | None, where: str) -> str:
    """llama.cpp's name for a Hugging Face byte-level pre-tokenizer, or a clear error."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if pre.get("add_prefix_space"):
            raise ModelError(f"{where}: ByteLevel pre-tokenizer with add_prefix_space is not supported", "save the tokenizer with add_prefix_space=False")
        return "gpt-2"
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        byte = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte) == 1 and not byte[0].get("use_regex", True):
            regex = (splits[0].get("pattern") or {}).get("Regex")
            if regex in _PRE_BY_REGEX:
                return _PRE_BY_REGEX[regex]
    raise ModelError(
        f"{where}: pre-tokenizer {json.dumps(pre)[:120]} is not one edgeq can name for llama.cpp",
        "supported: byte-level BPE with the GPT-2 regex ('gpt-2'), the Llama 3 regex ('llama-bpe') or Qwen2's ('qwen2')",
    )


def read_vocab(folder: Path, params: LlamaParams) -> Vocab:
    """Tokenizer metadata for GGUF from ``tokenizer.json`` (byte-level BPE only)."""
    where = f"{folder.name}/tokenizer.json"
    tj = _read_json(folder / "tokenizer.json", "the tokenizer")
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelError(f"{where}: tokenizer model '{model.get('type')}' is not supported", "edgeq writes byte-level BPE (GPT-2 / Llama 3 / Qwen2 style) and SentencePiece-style BPE with byte fallback (Llama 2 / Phi-3 / Gemma)")
    spm = is_spm(tj)  # SentencePiece-style BPE (Llama 2, Phi-3, Gemma): llama.cpp tokenizer model "llama", scores
    pre = "default" if spm else _pre_name(tj.get("pre_tokenizer"), where)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in tj.get("added_tokens") or []}
    for content, t in added.items():
        vocab[content] = int(t["id"])
    n = max(params.vocab_size, max(vocab.values(), default=-1) + 1)
    if n > params.vocab_size:
        raise ModelError(
            f"{where}: the tokenizer has ids up to {n - 1} but the model's vocab_size is {params.vocab_size}",
            "the tokenizer does not belong to this model",
        )
    sv = spm_vocab(tj, n, where) if spm else None
    tokens: list[str | None] = [None] * n
    for tok, i in vocab.items():
        if tokens[i] is not None and tokens[i] != tok:
            raise ModelError(f"{where}: id {i} is used by two tokens", "the tokenizer file is inconsistent")
        tokens[i] = tok
    types = []
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i] = f"[PAD{i}]"
            types.append(5)  # UNUSED
        elif tok in added:
            types.append(3 if added[tok].get("special") else 4)  # CONTROL / USER_DEFINED
        else:
            types.append(1)  # NORMAL
    merges = []
    for m in model.get("merges") or []:
        merges.append(m if isinstance(m, str) else " ".join(m))
    if sv is not None:
        tokens, types, merges = list(sv.tokens), list(sv.types), []
    elif not merges:
        raise ModelError(f"{where}: the BPE tokenizer has no merges", "llama.cpp refuses a BPE vocabulary without merges ('cannot find tokenizer merges')")
    tc: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        tc = _read_json(folder / "tokenizer_config.json", "tokenizer settings")

    def _special(name: str, fallback: int | None) -> int | None:
        v = tc.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str) and v in vocab:
            return vocab[v]
        return fallback

    bos = _special("bos_token", params.bos_token_id)
    eos = _special("eos_token", params.eos_token_id)
    add_bos = _adds_bos(folder, bos)
    template = tc.get("chat_template") if isinstance(tc.get("chat_template"), str) else None
    if sv is not None:
        return Vocab("llama", pre, tuple(tokens), tuple(types), (), bos, eos, add_bos, template,  # type: ignore[arg-type]
                     scores=sv.scores, add_space_prefix=sv.add_space_prefix)
    return Vocab("gpt2", pre, tuple(tokens), tuple(types), tuple(merges), bos, eos, add_bos, template)  # type: ignore[arg-type]


def _adds_bos(folder: Path, bos: int | None) -> bool:
    """Whether the Hugging Face tokenizer puts BOS in front of a text (asked of the tokenizer itself)."""
    if bos is None:
        return False
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ProviderError("the 'tokenizers' package is not installed", "pip install 'edgeq[gguf]'") from None
    try:
        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("a", add_special_tokens=True).ids
    except Exception as e:  # noqa: BLE001 - the Rust tokenizer's own errors
        raise ModelError(f"{folder.name}/tokenizer.json cannot be loaded: {e}", "re-save the tokenizer with transformers") from None
    return bool(ids) and ids[0] == bos


def read_llama(folder: Path) -> LlamaSource:
    """Read and check a local Hugging Face Llama folder (nothing is loaded but JSON)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}", "pass a Hugging Face folder (config.json, *.safetensors, tokenizer.json)")
    cfg = _read_json(folder / "config.json", "the model configuration")
    params = read_params(cfg, f"{folder.name}/config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        wm = _read_json(index, "the weight index").get("weight_map") or {}
        files = tuple(sorted({_inside(folder, f) for f in wm.values()}))
    elif (folder / "model.safetensors").is_file():
        files = (folder / "model.safetensors",)
    else:
        files = tuple(sorted(folder.glob("*.safetensors")))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        raise ModelError(
            f"{folder} has no .safetensors weights" + (f" (found {', '.join(pickled)}: pickle files are never loaded)" if pickled else ""),
            "re-save the model with save_pretrained(..., safe_serialization=True)",
        )
    for f in files:
        if not f.is_file():
            raise ModelError(f"weight file {f.name} named in the index is missing", "copy the complete model folder")
    vocab = read_vocab(folder, params)
    name = str(cfg.get("_name_or_path") or folder.name).rstrip("/").split("/")[-1] or folder.name
    _arch.check_vocab(params, name, vocab.tokens, f"{folder.name}/tokenizer.json")
    return LlamaSource(folder, name, params, files, vocab)


# ---------------------------------------------------------------------------------- tensors


def hf_to_gguf_name(name: str, layers: int) -> str | None:
    """GGUF tensor name for a Hugging Face Llama weight (None: not written)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.q_proj.bias": "attn_q.bias",  # Qwen2
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        i = int(parts[2])
        if parts[3].endswith("rotary_emb.inv_freq"):
            return None
        if parts[3] in per_layer and i < layers:
            return f"blk.{i}.{per_layer[parts[3]]}"
    return ""  # unknown


def rotary_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows (rotate-half halves) -> llama.cpp's interleaved rotary pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _iter_weights(files: tuple[Path, ...]):
    """(name, float32 array) for every tensor, one at a time, read with safetensors (never pickle)."""
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                names = list(st.keys())
                for n in names:
                    try:
                        arr = st.get_tensor(n)
                    except (TypeError, ValueError):  # bf16 has no numpy dtype
                        arr = _bf16_tensor(f, n)
                    yield n, np.asarray(arr, dtype=np.float32)
        except EdgeqError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' own header/format errors
            raise ModelError(f"{f.name} cannot be read as safetensors: {e}", "re-save the weights with safetensors") from None


def _bf16_tensor(path: Path, name: str) -> np.ndarray:
    try:
        import torch  # noqa: F401
        from safetensors import safe_open
    except ImportError:
        raise ProviderError(f"{path.name} holds bfloat16 weights, which need torch to read", "pip install torch==2.13.0") from None
    with safe_open(str(path), framework="pt") as st:
        return st.get_tensor(name).float().numpy()


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    qtype: str  # ggml type name


def tensor_type(gguf_name: str, shape: tuple[int, ...], quant: str, params: LlamaParams) -> tuple[str, str | None]:
    """(ggml type, note) for one tensor under a requested quant type."""
    gguf = _gguf()
    if len(shape) == 1:
        return "F32", None
    want = QUANT_TYPES[quant][0]
    is_output = gguf_name == "output.weight" or (gguf_name == "token_embd.weight" and params.tie_embeddings)
    if quant in _LOW_BIT and is_output:
        want = "Q8_0"
    if want in ("F32", "F16", "BF16"):
        return want, None
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[want]][0]
    if shape[-1] % block:
        return "F16", f"{gguf_name}: rows of {shape[-1]} are not a multiple of {block}; kept as F16"
    return want, None


# ---------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GGUFResult:
    path: Path
    quant: str
    tensor_types: dict[str, int]
    notes: tuple[str, ...]
    bytes: int
    source_bytes: int  # the same weights as fp32 (what the fp32 reference holds)


def _add_metadata(w, src: LlamaSource, quant: str) -> None:
    gguf = _gguf()
    p, v = src.params, src.vocab
    w.add_name(src.name)
    w.add_context_length(p.context_length)
    w.add_embedding_length(p.hidden)
    w.add_block_count(p.layers)
    w.add_feed_forward_length(p.intermediate)
    w.add_head_count(p.heads)
    w.add_head_count_kv(p.kv_heads)
    w.add_key_length(p.head_dim)
    w.add_value_length(p.head_dim)
    w.add_rope_dimension_count(p.rope_dims or p.head_dim)
    w.add_rope_freq_base(p.rope_theta)
    w.add_layer_norm_rms_eps(p.rms_eps)
    w.add_vocab_size(p.vocab_size)
    _arch.add_metadata(w, p)
    w.add_file_type(int(gguf.LlamaFileType[QUANT_TYPES[quant][1]]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(list(v.tokens))
    w.add_token_types(list(v.types))
    if v.merges:
        w.add_token_merges(list(v.merges))
    if v.scores:
        w.add_token_scores(list(v.scores))
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    if v.bos_id is not None:
        w.add_bos_token_id(v.bos_id)
    if v.eos_id is not None:
        w.add_eos_token_id(v.eos_id)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(False)
    if v.chat_template:
        w.add_chat_template(v.chat_template)


def _plan(src: LlamaSource, quant: str, blocks: dict[str, tuple[str, np.ndarray]] | None = None) -> tuple[list[tuple[str, str, TensorPlan]], list[str]]:
    """Which HF tensor goes to which GGUF tensor and type; reads only safetensors headers."""
    from safetensors import safe_open

    p = src.params
    plan, notes = [], []
    seen = set()
    for f in src.weight_files:
        with safe_open(str(f), framework="numpy") as st:
            for n in st.keys():
                gname = _arch.tensor_name(n, p) if p.arch in _arch.EXTRA_ARCHS else hf_to_gguf_name(n, p.layers)
                if gname is None:
                    continue
                if gname == "":
                    raise ModelError(f"{f.name}: tensor '{n}' is not part of a {p.arch} model edgeq knows", f"convert a plain {p.arch} checkpoint")
                if gname == "output.weight" and p.tie_embeddings:
                    continue
                shape = tuple(st.get_slice(n).get_shape())
                qt, note = (blocks[n][0], None) if blocks and n in blocks else tensor_type(gname, shape, quant, p)
                if note:
                    notes.append(note)
                plan.append((n, gname, TensorPlan(gname, shape, qt)))
                seen.add(gname)
    need = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(p.layers)
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    if p.arch == "qwen2":
        need |= {f"blk.{i}.attn_{t}.bias" for i in range(p.layers) for t in ("q", "k", "v")}
    if p.arch in _arch.EXTRA_ARCHS:
        need = _arch.required_tensors(p)
    if not p.tie_embeddings:
        need.add("output.weight")
    missing = sorted(need - seen)
    if missing:
        raise ModelError(f"{src.folder.name}: weights missing for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}", "the checkpoint is incomplete")
    for gname, values in computed_tensors(p).items():  # not in the checkpoint: computed from config.json's rope scaling
        plan.append((f"<{gname}>", gname, TensorPlan(gname, (len(values),), "F32")))
    order = {"token_embd.weight": 0, "output_norm.weight": 2, "output.weight": 3}
    plan.sort(key=lambda x: (order.get(x[1], 1), _blk_key(x[1])))
    notes += _arch.notes(p)
    if quant in _LOW_BIT:
        notes.append("the output projection is Q8_0 (llama.cpp's own quantizer keeps it at higher precision too)")
    return plan, notes


def _blk_key(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blk" else (-1, name)


def _convert(arr: np.ndarray, gname: str, tp: TensorPlan, p: LlamaParams) -> np.ndarray:
    gguf = _gguf()
    arr = _arch.transform(arr, gname, p)
    if p.arch == "llama" and gname.endswith("attn_q.weight"):  # qwen2 runs NEOX (rotate-half) rotary: rows as they are
        arr = rotary_permute(arr, p.heads)
    elif p.arch == "llama" and gname.endswith("attn_k.weight"):
        arr = rotary_permute(arr, p.kv_heads)
    if tp.qtype == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if tp.qtype == "F16":
        return np.ascontiguousarray(arr, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType[tp.qtype])


def _rotary_rows(rows: np.ndarray, gname: str, p: LlamaParams) -> np.ndarray:
    """Block bytes per output row, in llama.cpp's rotary row order for q/k."""
    if p.arch == "llama" and gname.endswith("attn_q.weight"):
        return np.ascontiguousarray(rotary_permute(rows, p.heads))
    if p.arch == "llama" and gname.endswith("attn_k.weight"):
        return np.ascontiguousarray(rotary_permute(rows, p.kv_heads))
    return rows


def computed_tensors(p: LlamaParams) -> dict[str, tuple[float, ...]]:
    """GGUF tensors edgeq computes rather than reads (planned under the key ``<name>``): rotary scaling factors."""
    out = {}
    if p.rope_freq_factors:
        out["rope_freqs.weight"] = p.rope_freq_factors
    if p.rope_long:
        out["rope_factors_long.weight"], out["rope_factors_short.weight"] = p.rope_long, p.rope_short
    return out


def write_gguf(src: LlamaSource, quant: str, path: Path, *, on_tensor: Callable[[str], None] | None = None,
               blocks: dict[str, tuple[str, np.ndarray]] | None = None) -> GGUFResult:
    """Write ``src`` as GGUF to ``path`` (a staging path: the caller publishes it).

    ``blocks``: HF weight name -> (GGML type, block bytes per output row) written as they are (a pre-quantized
    checkpoint's codes)."""
    quant = check_quant(quant)
    if QUANT_TYPES[quant][2] == "llama.cpp":
        return _write_via_llama_cpp(src, quant, path, on_tensor=on_tensor)
    gguf = _gguf()
    plan, notes = _plan(src, quant, blocks)
    w = gguf.GGUFWriter(str(path), arch=src.params.arch)
    _add_metadata(w, src, quant)
    types: dict[str, int] = {}
    for _, gname, tp in plan:
        qt = gguf.GGMLQuantizationType[tp.qtype]
        if tp.qtype in ("F32", "F16"):
            dtype = np.dtype(np.float32 if tp.qtype == "F32" else np.float16)
            w.add_tensor_info(gname, tp.shape, dtype, int(np.prod(tp.shape)) * dtype.itemsize, raw_dtype=qt)
        else:
            bshape = gguf.quant_shape_to_byte_shape(tp.shape, qt)
            w.add_tensor_info(gname, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=qt)
        types[tp.qtype] = types.get(tp.qtype, 0) + 1
    byname = {hf: (g, tp) for hf, g, tp in plan}
    pending: dict[str, np.ndarray] = {}
    source_bytes = 0
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        # tensors must go out in plan order; safetensors files are read one tensor at a time
        want = [hf for hf, _, _ in plan]
        k = 0
        for gname, values in computed_tensors(src.params).items():
            pending[f"<{gname}>"] = np.asarray(values, dtype=np.float32)
        for hf, arr in _iter_weights(src.weight_files):
            if hf not in byname:
                continue
            source_bytes += arr.size * 4
            g, tp = byname[hf]
            pending[hf] = _rotary_rows(blocks[hf][1], g, src.params) if blocks and hf in blocks else _convert(arr, g, tp, src.params)
            while k < len(want) and want[k] in pending:
                w.write_tensor_data(pending.pop(want[k]))
                if on_tensor:
                    on_tensor(want[k])
                k += 1
        if k != len(want):  # pragma: no cover - every planned tensor was read above
            raise ModelError(f"{src.folder.name}: {len(want) - k} tensors could not be written", "report this to edgeq")
    finally:
        w.close()
    return GGUFResult(Path(path), quant, dict(sorted(types.items())), tuple(notes), Path(path).stat().st_size, source_bytes)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ProviderError(
            f"llama-cpp-python is not installed (edgeq verifies GGUF files with llama.cpp itself; q4_k uses its quantizer)",
            f"pip install 'edgeq[gguf]' (llama-cpp-python=={LLAMA_CPP_PYTHON}; it compiles llama.cpp, several minutes)",
        ) from None
    return llama_cpp


def _write_via_llama_cpp(src: LlamaSource, quant: str, path: Path, *, on_tensor=None) -> GGUFResult:
    import ctypes

    llama_cpp = _llama_cpp()
    gguf = _gguf()
    path = Path(path)
    f32 = path.with_name(path.name + ".f32")
    try:
        base = write_gguf(src, "f32", f32, on_tensor=on_tensor)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(gguf.LlamaFileType[QUANT_TYPES[quant][1]])
        params.nthread = min(4, os.cpu_count() or 1)
        with _quiet_llama(llama_cpp):
            rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(path).encode(), ctypes.byref(params))
        if rc != 0:
            raise QuantizationError(f"llama.cpp's quantizer failed ({rc}) to write {quant}", "try q4_0 or q8_0")
    finally:
        f32.unlink(missing_ok=True)
    types = gguf_tensor_types(path)
    notes = []
    fallback = {t: n for t, n in types.items() if t not in ("F32", "Q4_K", "Q6_K")}
    if fallback:
        notes.append(
            "llama.cpp's Q4_K_M put " + ", ".join(f"{n} tensors in {t}" for t, n in fallback.items())
            + " (k-quants need rows that are a multiple of 256; Q4_K_M keeps some tensors in Q6_K)"
        )
    return GGUFResult(path, quant, types, tuple(notes), path.stat().st_size, base.source_bytes)


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """Count of tensors per ggml type, read back from the file."""
    gguf = _gguf()
    r = gguf.GGUFReader(str(path))
    out: dict[str, int] = {}
    for t in r.tensors:
        out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
    return dict(sorted(out.items()))


def check_quant(quant: str) -> str:
    q = quant.lower()
    if q not in QUANT_TYPES:
        raise QuantizationError(
            f"GGUF quant type '{quant}' is not supported",
            f"edgeq writes {', '.join(QUANT_NAMES)} (q4_k through llama.cpp's own quantizer; "
            "the gguf package has no quantizer for the other k-quants or i-quants)",
        )
    return q


# ---------------------------------------------------------------------------------- verify


class _quiet_llama:
    """Silence llama.cpp's C logging for the duration (it writes to stderr directly)."""

    def __init__(self, llama_cpp) -> None:
        self.llama_cpp = llama_cpp

    def __enter__(self):
        from llama_cpp._utils import suppress_stdout_stderr

        self.ctx = suppress_stdout_stderr(disable=False)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def _softmax_log(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(ref: list[np.ndarray], cand: list[np.ndarray], ids: list[list[int]]) -> dict[str, Any]:
    """Perplexity (on the prompts' own next tokens), KL(ref || cand), same top token, max abs logit error."""
    nll_r, nll_c, kls, same, maxabs, n_pos = 0.0, 0.0, [], 0, 0.0, 0
    n_next = 0
    for r, c, t in zip(ref, cand, ids):
        lr, lc = _softmax_log(r), _softmax_log(c)
        kl = (np.exp(lr) * (lr - lc)).sum(-1)
        kls.append(kl)
        same += int((r.argmax(-1) == c.argmax(-1)).sum())
        maxabs = max(maxabs, float(np.abs(r - c).max()))
        n_pos += len(t)
        nxt = np.asarray(t[1:])
        nll_r -= float(lr[np.arange(len(nxt)), nxt].sum())
        nll_c -= float(lc[np.arange(len(nxt)), nxt].sum())
        n_next += len(nxt)
    kl = np.concatenate(kls)
    return {
        "positions": n_pos,
        "perplexity_fp32": math.exp(nll_r / max(1, n_next)),
        "perplexity": math.exp(nll_c / max(1, n_next)),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": same / max(1, n_pos),
        "max_abs_logit_error": maxabs,
    }


def reference_logits(folder: Path, ids: list[list[int]]) -> list[np.ndarray]:
    """fp32 PyTorch logits of ``LlamaForCausalLM`` (safetensors only, no remote code)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ProviderError(
            "the fp32 reference needs torch and transformers", "pip install torch==2.13.0, then pip install 'edgeq[gguf]'"
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, trust_remote_code=False,
                                                     attn_implementation="eager")  # eager: Gemma 2's soft-cap, sliding windows
    except Exception as e:  # noqa: BLE001 - transformers' own load errors
        raise ModelError(f"transformers cannot load {folder} as a causal LM: {first_line(e, 200)}", "check the folder") from None
    model = model.float().eval()
    out = []
    with torch.no_grad():
        for t in ids:
            out.append(model(input_ids=torch.tensor([t])).logits[0].numpy().astype(np.float32))
    return out


def llama_cpp_logits(gguf_path: Path, ids: list[list[int]], texts: list[str] | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """llama.cpp's logits at every position of each token sequence, plus tokenizer agreement and timing."""
    llama_cpp = _llama_cpp()
    n_ctx = max(len(t) for t in ids) + 8
    extra = not _host_has_amx()
    with _quiet_llama(llama_cpp), _extra_buffer_types(extra):
        try:
            llm = llama_cpp.Llama(
                model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=min(4, os.cpu_count() or 1), seed=0, verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - llama.cpp refused the file
            raise ModelError(f"llama.cpp refused {Path(gguf_path).name}: {e}", "report this to edgeq with the model's config.json") from None
    outs, agree, secs = [], [], 0.0
    for i, t in enumerate(ids):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(t)
        secs += time.perf_counter() - t0
        outs.append(np.array(llm.scores[: len(t)], dtype=np.float32))
        if texts is not None:
            agree.append(llm.tokenize(texts[i].encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=False) == t)
    info = {
        "llama_cpp_extra_buffer_types": extra,
        "tokenizer_agreement": (sum(agree) / len(agree)) if agree else None,
        "host_ms_per_token": 1000 * secs / sum(len(t) for t in ids),
        "n_vocab": llm.n_vocab(),
    }
    llm.close() if hasattr(llm, "close") else None
    return outs, info


def _host_has_amx() -> bool:
    """Intel AMX on this host: llama.cpp's AMX matmul (an "extra buffer type") segfaulted here on Q8_0/Q4_0."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " amx_int8" in flags or " amx_tile" in flags


class _extra_buffer_types:
    """Load models with llama.cpp's extra buffer types (AMX, weight repacking) on or off.

    llama-cpp-python does not expose ``use_extra_bufts``; its ``Llama`` reads the model
    defaults from ``llama_model_default_params``, which is wrapped for the duration.
    """

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self):
        import llama_cpp.llama_cpp as lc

        self.lc, self.orig = lc, lc.llama_model_default_params
        if not self.on:
            orig = self.orig

            def params():
                p = orig()
                p.use_extra_bufts = False
                return p

            lc.llama_model_default_params = params
        return self

    def __exit__(self, *exc):
        self.lc.llama_model_default_params = self.orig
        return False


def tokenize_hf(folder: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    return [tok.encode(t, add_special_tokens=True).ids for t in texts]


def verify_gguf(folder: Path, gguf_path: Path, prompts: list[str], tol: Any, quant: str) -> dict[str, Any]:
    """llama.cpp (on the GGUF) vs the fp32 PyTorch model, on the same token ids."""
    import llama_cpp as _lc  # noqa: F401 - fail early with the clear error below

    texts = [p for p in prompts if p.strip()]
    if not texts:
        raise EdgeqError("no prompts to verify on", "pass a text file with prompts separated by blank lines")
    ids = tokenize_hf(folder, texts)
    ids = [t for t in ids if len(t) >= 2]
    if not ids:
        raise EdgeqError("the prompts are too short (need at least 2 tokens each)", "pass longer prompts")
    ref = reference_logits(folder, ids)
    cand, info = llama_cpp_logits(gguf_path, ids, texts if len(ids) == len(texts) else None)
    m = compare_logits(ref, cand, ids)
    m.update(info)
    m["prompts"] = len(ids)
    m["perplexity_ratio"] = m["perplexity"] / m["perplexity_fp32"]
    failures = []
    if tol is None:
        failures.append(f"the target has no tolerances for {quant}")
    else:
        if m["kl_mean"] > tol.max_kl:
            failures.append(f"mean KL {m['kl_mean']:.4g} > {tol.max_kl:g}")
        if m["top1_agreement"] < tol.min_top1:
            failures.append(f"same top token {100 * m['top1_agreement']:.1f} % < {100 * tol.min_top1:.1f} %")
        if m["perplexity_ratio"] > tol.max_ppl_ratio:
            failures.append(f"perplexity x{m['perplexity_ratio']:.4f} > x{tol.max_ppl_ratio:g}")
    if m["tokenizer_agreement"] is not None and m["tokenizer_agreement"] < 1.0:
        failures.append(f"llama.cpp tokenizes {100 * (1 - m['tokenizer_agreement']):.0f} % of the prompts differently from the Hugging Face tokenizer")
    m["tolerances"] = None if tol is None else vars(tol).copy()
    m["failures"] = failures
    m["passed"] = not failures
    m["runtime"] = f"llama.cpp (llama-cpp-python {_lc.__version__})"
    return m


# ---------------------------------------------------------------------------------- bundle


def modelfile_text(src: LlamaSource, context: int) -> str:
    v = src.vocab
    lines = [
        "# Ollama model file: ollama create NAME -f Modelfile",
        "FROM ./model.gguf",
    ]
    if v.chat_template:
        lines.append("# the chat template is stored in the GGUF (tokenizer.chat_template); Ollama reads it from there")
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    if v.eos_id is not None:
        lines.append(f"PARAMETER stop {json.dumps(v.tokens[v.eos_id])}")
    lines.append(f"PARAMETER num_ctx {min(context, src.params.context_length)}")
    return "\n".join(lines) + "\n"


def read_prompts(path: Path | None) -> list[str]:
    """Prompts from a UTF-8 text file, separated by blank lines; built-in ones without a file."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    from ..core.fsutil import require_regular_file

    require_regular_file(path, "prompt file")
    if Path(path).is_file() and Path(path).stat().st_size > 64 << 20:
        raise EdgeqError(f"prompt file {path} is larger than 64 MiB", "a few dozen prompts are enough to verify on")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeqError(f"prompt file not found: {path}", "pass a UTF-8 text file, prompts separated by blank lines") from None
    except UnicodeDecodeError:
        raise EdgeqError(f"{path} is not UTF-8 text", "llama.cpp targets verify on text prompts (blank-line separated)") from None
    prompts = [p for p in text.split("\n\n") if p.strip()]
    if not prompts:
        raise EdgeqError(f"{path} holds no prompts", "write prompts separated by blank lines")
    return prompts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from ..core.version import __version__

    out = {"edgeq": __version__, "numpy": np.__version__}
    for pkg in ("gguf", "llama-cpp-python", "torch", "transformers", "safetensors", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def export_llamacpp(
    folder: Path, target: Any, out: Path, *, quant: str | None = None, prompts: list[str] | None = None,
    force: bool = False, progress: Callable[[str], Any] | None = None,
    blocks: dict[str, tuple[str, np.ndarray]] | None = None, extra_notes: tuple[str, ...] = (), accept_failed: bool = False,
) -> dict[str, Any]:
    """HF Llama folder -> bundle (model.gguf, Modelfile, manifest.json) for a llama.cpp target.

    The bundle is written even when verification fails (for inspection); ``result['passed']`` says, and the
    manifest's ``verdict`` (as an ONNX bundle's: pass, fail, or accepted-failed with ``accept_failed``) records it.
    """
    from ..core.fsutil import staging
    from ..bundles.reader import write_manifest
    from ..bundles.runner import SCHEMA_VERSION

    settings = target.gguf
    q = check_quant(quant or settings.quant)
    folder = Path(folder)
    src = read_llama(folder)
    _llama_cpp()  # verification is part of the trip: fail before writing anything
    tol = settings.tolerance(q)
    prompts = list(prompts) if prompts is not None else list(DEFAULT_PROMPTS)
    stage = progress or (lambda name: _nullctx())
    out = Path(out)
    with staging(out, force=force, is_dir=True) as root:
        with stage(f"convert to GGUF {q}"):
            res = write_gguf(src, q, root / "model.gguf", blocks=blocks)
        with stage("verify with llama.cpp"):
            ver = verify_gguf(folder, root / "model.gguf", prompts, tol, q)
        (root / "Modelfile").write_text(modelfile_text(src, settings.context), encoding="utf-8")
        from . import gguf_run  # run.py: checksums, then generation through llama.cpp (extra buffer types off on AMX hosts)

        shutil.copyfile(Path(gguf_run.__file__), root / "run.py")
        golden = _write_golden(root, folder, prompts)
        recipe = {
            "format": "gguf",
            "mode": q,
            "tensor_types": res.tensor_types,
            "writer": "gguf package" if QUANT_TYPES[q][2] == "gguf" else "llama.cpp llama_model_quantize (Q4_K_M)",
            "notes": [*extra_notes, *res.notes],
        }
        size = {"fp32_bytes": res.source_bytes, "model_bytes": res.bytes, "ratio": res.bytes / res.source_bytes if res.source_bytes else None}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "runtime": "llama.cpp",
            "created_by": _versions(),
            "target": {"name": target.name, "description": target.description, "arch": target.arch, "runtime": "llama.cpp"},
            "model": {"gguf": "model.gguf", "modelfile": "Modelfile", "architecture": src.params.arch, "params": vars(src.params).copy(),
                      "context": min(settings.context, src.params.context_length),  # run.py's default n_ctx, as the Modelfile's
                      "tokenizer": {"model": src.vocab.model, "pre": src.vocab.pre, "tokens": len(src.vocab.tokens), "merges": len(src.vocab.merges)}},
            "source": {"folder": folder.name, "name": src.name},
            "quantization": recipe,
            "provenance": [f"source({folder.name})", f"gguf({q})"],
            "verify": ver,
            "verdict": _verdict(ver, accept_failed),
            "size": size,
            "golden": golden,
        }
        write_manifest(root, manifest, kind="gguf")  # checksums of every file, the GGUF schema, atomic
    return {
        "target": target.name, "bundle": str(out), "quantization": recipe, "verify": ver, "size": size,
        "passed": ver["passed"], "verdict": _verdict(ver, accept_failed), "notes": [*extra_notes, *res.notes],
    }


def _verdict(ver: dict[str, Any], accept_failed: bool) -> dict[str, str]:
    status = "pass" if ver["passed"] else "accepted-failed" if accept_failed else "fail"
    return {"status": status, "reason": "; ".join(ver.get("failures") or ())[:4096]}


GOLDEN_ATOL = 1e-2
GOLDEN_RTOL = 1e-2


def _write_golden(root: Path, folder: Path, prompts: list[str]) -> dict[str, Any]:
    """Token ids of each prompt and llama.cpp's logits at its last position, to re-check on a device."""
    ids = [t for t in tokenize_hf(folder, [p for p in prompts if p.strip()]) if len(t) >= 2]
    logits, _ = llama_cpp_logits(root / "model.gguf", ids)
    (root / "golden").mkdir()
    pairs = []
    for i, (t, lg) in enumerate(zip(ids, logits)):
        np.save(root / f"golden/{i:03d}_tokens.npy", np.asarray(t, dtype=np.int32), allow_pickle=False)
        np.save(root / f"golden/{i:03d}_logits.npy", lg[-1].astype(np.float32), allow_pickle=False)
        pairs.append({"id": f"{i:03d}", "tokens": f"golden/{i:03d}_tokens.npy", "logits": f"golden/{i:03d}_logits.npy"})
    return {"atol": GOLDEN_ATOL, "rtol": GOLDEN_RTOL, "what": "llama.cpp logits at the last position", "pairs": pairs}


def is_gguf_bundle(path: Path) -> bool:
    from ..bundles.reader import peek_kind

    return peek_kind(path) == "gguf"  # bounded: stat before reading, regular files only


def check_gguf_bundle(path: Path) -> dict[str, Any]:
    """Checksums and file list, then llama.cpp re-runs the golden prompts; raises on failure."""
    from ..errors import BundleError
    from ..bundles.reader import read_bundle

    b = read_bundle(Path(path))  # manifest, GGUF schema, file list and checksums
    if b.kind != "gguf":
        raise BundleError(f"bundle {path} is not a llama.cpp bundle", "check it with edgeq verify")
    manifest, n = b.manifest, len(b.files)
    golden = manifest["golden"]
    try:
        atol, rtol = float(golden["atol"]), float(golden["rtol"])
        ids = [b.array(p["tokens"]).tolist() for p in golden["pairs"]]
        want = [b.array(p["logits"]) for p in golden["pairs"]]
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise BundleError(f"bundle {path} has no usable golden data: {e}", "rebuild it with edgeq export") from None
    from .probe import probe_gguf

    probe_gguf(b.path(manifest["model"]["gguf"]))  # a stranger's GGUF: opened in a child first (a native crash is one error)
    t0 = time.perf_counter()
    got, info = llama_cpp_logits(b.path(manifest["model"]["gguf"]), ids)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(ids))
    pairs = []
    for p, g, w in zip(golden["pairs"], got, want):
        g = g[-1].astype(np.float64)
        diff = np.abs(g - w)
        ok = bool(np.all(diff <= atol + rtol * np.abs(w))) and int(g.argmax()) == int(w.argmax())
        pairs.append({"pair": p["id"], "passed": ok, "max_abs_error": float(diff.max()), "ms": ms})
    result = {
        "files_checked": n, "target": manifest["target"]["name"], "model": manifest["model"]["gguf"],
        "providers": ["llama.cpp" + ("" if info["llama_cpp_extra_buffer_types"] else " (no extra buffer types)")],
        "atol": atol, "rtol": rtol, "pairs": pairs, "passed": all(p["passed"] for p in pairs),
        "max_abs_error": max((p["max_abs_error"] for p in pairs), default=0.0),
    }
    if not result["passed"]:
        bad = [p["pair"] for p in pairs if not p["passed"]]
        raise CheckFailed(
            f"golden prompt(s) {', '.join(bad)} outside tolerance (max abs logit error {result['max_abs_error']:.3g}, atol {atol}, rtol {rtol})",
            "llama.cpp here computes different logits than when the bundle was built",
        )
    from ..bundles.runner import export_verdict
    from ..core.safetext import escape_text

    verdict = export_verdict(manifest)  # older bundles: from the manifest's verify report
    result["verdict"], result["verdict_reason"] = verdict["status"], verdict["reason"]
    if verdict["status"] == "fail":  # written for inspection, not shipped: as edgeq verify says of an ONNX bundle
        raise CheckFailed(f"bundle {path} failed its export check: {escape_text(verdict['reason'])[:500]}",
                          "the GGUF model is outside its target's tolerances; re-export it (or ship it knowingly with --accept-failed)")
    return result


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def gguf_table(r: dict[str, Any]):
    from rich.table import Table

    from ..reporting.tables import fmt
    from ..core.units import human_bytes

    t = Table(title=f"edgeq export -> {r['target']} (llama.cpp)", header_style="bold")
    for c in ("metric", "fp32 (PyTorch)", r["quantization"]["mode"] + " (llama.cpp)", "note"):
        t.add_column(c, justify="left" if c in ("metric", "note") else "right")
    s, v = r["size"], r["verify"]
    t.add_row("model size", human_bytes(s["fp32_bytes"]), human_bytes(s["model_bytes"]), f"{fmt(s['ratio'], '.3f')} x fp32")
    t.add_row("tensor types", "", ", ".join(f"{k}:{n}" for k, n in r["quantization"]["tensor_types"].items()), r["quantization"]["writer"])
    t.add_row("perplexity", f"{v['perplexity_fp32']:.4f}", f"{v['perplexity']:.4f}", f"x{v['perplexity_ratio']:.4f}; {v['prompts']} prompts, {v['positions']} positions")
    t.add_row("mean KL divergence", "", f"{v['kl_mean']:.3g}", f"max {v['kl_max']:.3g}")
    t.add_row("same top token", "", f"{100 * v['top1_agreement']:.2f} %", "")
    t.add_row("max abs logit error", "", fmt(v["max_abs_logit_error"]), "")
    if v["tokenizer_agreement"] is not None:
        t.add_row("tokenizer agreement", "", f"{100 * v['tokenizer_agreement']:.0f} %", "llama.cpp vs Hugging Face ids")
    t.add_row("prompt eval", "", f"{v['host_ms_per_token']:.3f} ms/token", "this host, not device timing"
              + ("" if v.get("llama_cpp_extra_buffer_types", True) else "; AMX/repack buffers off (AMX host)"))
    t.add_row("verify", "", "[green]pass[/]" if v["passed"] else "[red]FAIL[/]", "; ".join(v["failures"]))
    t.add_row("bundle", "", r["bundle"], "")
    return t


def gguf_export(source: Path, target: Any, out: Path, *, quant: str | None, prompts: list[str], force: bool,
                progress: Any, accept_failed: bool = False) -> dict[str, Any]:
    """A pre-quantized folder -> llama.cpp GGUF bundle: GPTQ/AWQ codes as Q4_1 blocks where the layout allows,
    the rest (and bitsandbytes) dequantized and re-quantized, all verified against the dequantized checkpoint."""
    from ..exporters.prequant import GGUFPlan, gguf_notes, gguf_plan, prepare, summary
    from ..core.fsutil import scratch_dir

    with scratch_dir("edgeq-prequant-") as work:
        with progress("read pre-quantized checkpoint"):
            ck, folder = prepare(Path(source), work)
        assert ck is not None
        notes: list[str] = []
        q = check_quant(quant) if quant else None
        nonlinear = q is None and ck.config.method == "bnb-4bit"  # NF4/FP4 -> IQ4_NL unless a type was asked for
        if q is None:
            q = "q4_1" if ck.linears or nonlinear else check_quant(target.gguf.quant)
            if ck.linears:
                notes.append("q4_1 chosen for the rest of the model: Q4_1 blocks can hold the checkpoint's 4-bit codes "
                             "(the target's default is written by llama.cpp's quantizer, which would round them again)")
            elif nonlinear:
                notes.append("q4_1 chosen for the rest of the model: its 4-bit linears go to IQ4_NL blocks, which the "
                             "target's default writer (llama.cpp's quantizer) would not keep")
        if QUANT_TYPES[q][2] == "llama.cpp":  # k-quants: llama.cpp quantizes an f32 file, nothing can be kept
            plan = GGUFPlan({}, {}, {k + ".weight": f"--quant {q} is written by llama.cpp's quantizer" for k in ck.quantized}, {})
        else:
            plan = gguf_plan(ck, q, nonlinear=nonlinear)
        notes += list(ck.notes) + gguf_notes(ck, plan, q)
        r = export_llamacpp(folder, target, out, quant=q, prompts=prompts, force=force, progress=progress, accept_failed=accept_failed,
                               blocks=plan.blocks, extra_notes=tuple(notes))
    r["prequant"] = {**summary(ck), "gguf": plan.to_dict()}
    return r
