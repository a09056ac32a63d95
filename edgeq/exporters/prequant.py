"""Pre-quantized Hugging Face folders: GPTQ, AWQ and bitsandbytes checkpoints read by edgeq itself.

A folder whose ``config.json`` holds a ``quantization_config`` was quantized by someone
else. Loading it through transformers needs the quantization library (and for some
formats a GPU) and gives float weights that edgeq would round a second time. Here the
tensors are read from the safetensors files (header checked by ``checkpoint.py``),
unpacked in numpy and checked against the format's rules; no AutoGPTQ / AutoAWQ /
bitsandbytes import.

| format | config | codes | what edgeq does |
|---|---|---|---|
| GPTQ (AutoGPTQ / GPTQModel) | ``quant_method: gptq`` | 2/4/8-bit ints packed along K in int32, zeros packed along N, fp16 scales per group, ``g_idx`` | imported as MatMulNBits codes (exact) |
| AWQ GEMM (AutoAWQ) | ``quant_method: awq``, ``version: gemm`` | 4-bit packed along N in int32 in the order 0,2,4,6,1,3,5,7 | imported as MatMulNBits codes (exact) |
| bitsandbytes NF4/FP4 | ``load_in_4bit`` | 4-bit indices into a 16-value table, absmax per block (itself 8-bit quantized with double quantization) | dequantized, then re-quantized by edgeq |
| bitsandbytes LLM.int8 | ``load_in_8bit`` | int8 per row, ``SCB`` row absmax | dequantized, then re-quantized by edgeq |

Conventions read (each one a rule here, checked by the tests against an independent packer):

- GPTQ ``W[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]``; the v1 checkpoint format
  (``checkpoint_format``/``format`` ``gptq``, the default) stores ``z - 1``; ``gptq_v2`` stores ``z``.
  A v1 zero point that reads back as ``2**bits`` (the writer's known overflow) is kept exactly by
  giving that tensor 8-bit codes.
- AWQ ``W[k, n] = (q[k, n] - z[k // gs, n]) * s[k // gs, n]``, zeros stored as is.
- Values are computed in float32 from the stored scales: that is the float reference the import
  is verified against, and exactly what MatMulNBits computes from the same codes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, first_line
from .checkpoint import check_safetensors_header

METHODS = ("gptq", "awq", "bitsandbytes")
GPTQ_BITS = (2, 4, 8)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed int32 holds output column 8c + AWQ_ORDER[i]
MAX_BLOCK = 256  # largest MatMulNBits block edgeq writes (onnxruntime's fast kernels take 16..256)
_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
       "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_FLOAT = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class PrequantConfig:
    """What ``quantization_config`` says, validated."""

    method: str  # gptq | awq | bnb-4bit | bnb-int8
    bits: int
    group_size: int  # -1: one group over all input channels; bitsandbytes: its block size (0 unknown yet)
    desc_act: bool = False
    sym: bool | None = None
    checkpoint_format: str = ""  # gptq | gptq_v2 | gemm | nf4 | fp4 | int8
    double_quant: bool = False

    @property
    def exact(self) -> bool:
        """Codes imported as they are (GPTQ/AWQ), not re-quantized (bitsandbytes)."""
        return self.method in ("gptq", "awq")

    def describe(self) -> str:
        if self.method == "gptq":
            gs = "per channel (one group)" if self.group_size == -1 else f"group size {self.group_size}"
            return (f"GPTQ {self.bits}-bit, {gs}, {'desc_act (g_idx)' if self.desc_act else 'in order'}, "
                    f"{'symmetric' if self.sym else 'asymmetric'}, checkpoint format {self.checkpoint_format}")
        if self.method == "awq":
            return f"AWQ GEMM {self.bits}-bit, group size {self.group_size}, zero points"
        if self.method == "bnb-4bit":
            return f"bitsandbytes {self.checkpoint_format.upper()}{' with double quantization' if self.double_quant else ''}"
        return "bitsandbytes LLM.int8 (per-row int8)"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "sym": self.sym, "checkpoint_format": self.checkpoint_format, "double_quant": self.double_quant,
                "exact_import": self.exact, "description": self.describe()}


@dataclass(frozen=True)
class QuantLinear:
    """One quantized linear of a GPTQ/AWQ checkpoint, unpacked: ``W = (q - z[g_idx]) * s[g_idx]`` ([K, N])."""

    name: str  # the HF module, e.g. model.layers.0.self_attn.q_proj
    q: np.ndarray  # uint8 [K, N]
    scale: np.ndarray  # float32 [G, N]
    zero: np.ndarray  # int16 [G, N] (a v1 overflow may read 2**bits)
    g_idx: np.ndarray  # int64 [K]
    bits: int

    @property
    def k(self) -> int:
        return int(self.q.shape[0])

    @property
    def n(self) -> int:
        return int(self.q.shape[1])

    def dequantize(self) -> np.ndarray:
        """The float32 ``[K, N]`` weight (``x @ W``); HF's ``Linear.weight`` is its transpose."""
        g = self.g_idx
        return ((self.q.astype(np.float32) - self.zero[g].astype(np.float32)) * self.scale[g]).astype(np.float32)


@dataclass(frozen=True)
class PrequantCheckpoint:
    """A pre-quantized folder read: the config, the quantized linears (GPTQ/AWQ) and every weight as float32."""

    folder: Path
    config: PrequantConfig
    linears: dict[str, QuantLinear]
    floats: dict[str, np.ndarray]  # HF state-dict name -> float32 (dequantized where quantized)
    quantized: tuple[str, ...]  # HF module names that were quantized in the checkpoint
    kept_float: tuple[str, ...]  # 2-D weights the checkpoint left float (e.g. lm_head, embeddings)
    notes: tuple[str, ...] = field(default=())
    params_quantized: int = 0


def _bad(folder: Path, what: str, hint: str = "re-save the checkpoint with its quantization library, or export the float model") -> ModelError:
    return ModelError(f"{folder.name}: {what}", hint)


def quantization_config(folder: Path) -> dict[str, Any] | None:
    """``config.json``'s ``quantization_config`` (None when the folder is not pre-quantized)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    from ..core.fsutil import read_json_object

    try:
        cfg = read_json_object(path, f"{Path(folder).name}: config.json", ModelError, hint="re-save the model with save_pretrained")
    except OSError:
        raise _bad(Path(folder), "config.json is not valid JSON", "re-save the model with save_pretrained") from None
    qc = cfg.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise _bad(Path(folder), "quantization_config in config.json is not a JSON object")
    return qc


def _int(qc: dict, key: str, default: Any, folder: Path) -> int:
    v = qc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(folder, f"quantization_config.{key} must be an integer, got {v!r}")
    return v


def detect(folder: Path) -> PrequantConfig | None:
    """The folder's pre-quantization, validated against what edgeq reads; None for a float folder."""
    folder = Path(folder)
    qc = quantization_config(folder)
    if qc is None:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method not in METHODS:
        raise _bad(folder, f"quantization method {method or '(none)'!r} is not one edgeq imports",
                   f"edgeq reads {', '.join(METHODS)} folders; export the float model instead")
    if method == "gptq":
        bits = _int(qc, "bits", 4, folder)
        if bits not in GPTQ_BITS:
            raise _bad(folder, f"GPTQ {bits}-bit is not supported (edgeq imports {', '.join(map(str, GPTQ_BITS))}-bit GPTQ)")
        gs = _int(qc, "group_size", 128, folder)
        if gs != -1 and gs <= 0:
            raise _bad(folder, f"GPTQ group_size {gs} is invalid (a positive size or -1)")
        fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise _bad(folder, f"GPTQ checkpoint format {fmt!r} is not supported (gptq or gptq_v2)",
                       "re-save it in the gptq or gptq_v2 format with GPTQModel")
        return PrequantConfig("gptq", bits, gs, bool(qc.get("desc_act", False)), bool(qc.get("sym", True)), fmt)
    if method == "awq":
        bits = _int(qc, "bits", qc.get("w_bit", 4), folder)
        gs = _int(qc, "group_size", qc.get("q_group_size", 128), folder)
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise _bad(folder, f"AWQ version {version!r} is not supported (edgeq reads the GEMM packing)",
                       "re-save it with AutoAWQ version='GEMM'")
        if bits != 4:
            raise _bad(folder, f"AWQ {bits}-bit is not supported (AWQ GEMM is 4-bit)")
        if gs <= 0:
            raise _bad(folder, f"AWQ group_size {gs} is invalid (a positive size)")
        if qc.get("zero_point", True) is False:
            raise _bad(folder, "AWQ without zero points is not supported", "re-save it with zero_point=True")
        return PrequantConfig("awq", 4, gs, sym=False, checkpoint_format="gemm")
    if qc.get("load_in_4bit") or qc.get("_load_in_4bit"):
        kind = str(qc.get("bnb_4bit_quant_type", "fp4")).lower()
        if kind not in ("nf4", "fp4"):
            raise _bad(folder, f"bitsandbytes 4-bit type {kind!r} is not supported (nf4 or fp4)")
        return PrequantConfig("bnb-4bit", 4, 0, checkpoint_format=kind, double_quant=bool(qc.get("bnb_4bit_use_double_quant")))
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        return PrequantConfig("bnb-int8", 8, 0, checkpoint_format="int8")
    raise _bad(folder, "bitsandbytes quantization_config says neither load_in_4bit nor load_in_8bit")


# ---------------------------------------------------------------- reading tensors


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of the folder's safetensors files as numpy (headers checked first; BF16 widened to float32)."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise _bad(folder, "no .safetensors weights (pre-quantized folders are read from safetensors only)",
                   "re-save the checkpoint with safe_serialization=True")
    out: dict[str, np.ndarray] = {}
    for path in files:
        header = check_safetensors_header(path)
        n = 8 + int.from_bytes(_head8(path), "little")  # where the data section starts
        try:
            from safetensors import safe_open
        except ImportError:
            raise ModelError("reading .safetensors needs the safetensors package", "pip install 'edgeq[hf]'") from None
        bf16 = {k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"}
        others = {k for k, v in header.items() if k != "__metadata__" and v["dtype"] not in ("BF16", "F8_E4M3", "F8_E5M2")}
        bad = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] in ("F8_E4M3", "F8_E5M2"))
        if bad:
            raise _bad(folder, f"{path.name}: tensor '{bad[0]}' is float8, which edgeq does not read")
        try:
            with safe_open(str(path), framework="numpy") as f:
                for k in others:
                    out[k] = f.get_tensor(k)
        except Exception as e:  # noqa: BLE001 - SafetensorError
            raise _bad(folder, f"cannot read {path.name}: {first_line(e, 200)}") from None
        if bf16:  # numpy has no bfloat16: widen the raw 16-bit patterns (the header was checked above)
            with open(path, "rb") as fh:
                for k in bf16:
                    s, e = header[k]["data_offsets"]
                    fh.seek(n + s)
                    raw = np.frombuffer(fh.read(e - s), dtype="<u2")
                    out[k] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(header[k]["shape"])
        for k in bf16 | others:
            if k in out and out[k].dtype.kind == "f" and not np.all(np.isfinite(out[k])):
                raise ModelError(f"{path.name} holds non-finite weights (NaN or Inf) in {k}",
                                 "the checkpoint is corrupt; export a finite one")
    return out


def _head8(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


# ---------------------------------------------------------------- GPTQ / AWQ


def _u32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 ``[R, C]`` with ``32 // bits`` codes per word along the rows (lowest bits first) -> uint8 ``[R * per, C]``."""
    per, mask = 32 // bits, (1 << bits) - 1
    p = _u32(packed)
    parts = np.stack([(p >> np.uint32(bits * j)) & np.uint32(mask) for j in range(per)], axis=1)  # [R, per, C]
    return parts.reshape(p.shape[0] * per, p.shape[1]).astype(np.uint8)


def unpack_cols(packed: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    """int32 ``[R, C]`` with codes packed along the columns -> uint8 ``[R, C * per]``.

    Code ``i`` of word ``c`` is column ``c * per + order[i]`` (``order`` None: ``i``)."""
    per, mask = 32 // bits, (1 << bits) - 1
    p = _u32(packed)
    out = np.empty((p.shape[0], p.shape[1], per), np.uint8)
    for i in range(per):
        out[:, :, order[i] if order else i] = (p >> np.uint32(bits * i)) & np.uint32(mask)
    return out.reshape(p.shape[0], p.shape[1] * per)


def _need(t: dict[str, np.ndarray], key: str, folder: Path) -> np.ndarray:
    if key not in t:
        raise _bad(folder, f"tensor '{key}' is missing")
    return t[key]


def _check(cond: bool, folder: Path, what: str) -> None:
    if not cond:
        raise _bad(folder, what)


def _gptq_linear(t: dict[str, np.ndarray], prefix: str, cfg: PrequantConfig, folder: Path) -> QuantLinear:
    bits, per = cfg.bits, 32 // cfg.bits
    qw, qz, sc = (_need(t, f"{prefix}.{s}", folder) for s in ("qweight", "qzeros", "scales"))
    for name, a in (("qweight", qw), ("qzeros", qz)):
        _check(a.dtype == np.int32 and a.ndim == 2, folder, f"{prefix}.{name} must be a 2-D int32 tensor, got {a.dtype} {list(a.shape)}")
    _check(sc.dtype.kind == "f" and sc.ndim == 2, folder, f"{prefix}.scales must be a 2-D float tensor, got {sc.dtype} {list(sc.shape)}")
    k, n = qw.shape[0] * per, qw.shape[1]
    groups = 1 if cfg.group_size == -1 else math.ceil(k / cfg.group_size)
    _check(sc.shape == (groups, n), folder,
           f"{prefix}.scales has shape {list(sc.shape)}, expected {[groups, n]} for {bits}-bit GPTQ with K={k}, group size {cfg.group_size}")
    _check(qz.shape == (groups, n // per) and n % per == 0, folder,
           f"{prefix}.qzeros has shape {list(qz.shape)}, expected {[groups, n // per]} ({bits}-bit zeros packed {per} per int32)")
    if f"{prefix}.g_idx" in t:
        g = t[f"{prefix}.g_idx"]
        _check(g.dtype.kind == "i" and g.shape == (k,), folder, f"{prefix}.g_idx must be {k} integers, got {g.dtype} {list(g.shape)}")
        g = g.astype(np.int64)
        _check(bool(g.size == 0 or (g.min() >= 0 and g.max() < groups)), folder, f"{prefix}.g_idx names groups outside 0..{groups - 1}")
    else:
        g = np.arange(k, dtype=np.int64) // (k if cfg.group_size == -1 else cfg.group_size)
    # g_idx is honoured as stored, with or without desc_act: it is what the checkpoint's kernels read
    q = unpack_rows(qw, bits)
    z = unpack_cols(qz, bits).astype(np.int16)
    if cfg.checkpoint_format == "gptq":  # v1 stores zero - 1
        z = z + 1
    return QuantLinear(prefix, q, sc.astype(np.float32), z, g, bits)


def _awq_linear(t: dict[str, np.ndarray], prefix: str, cfg: PrequantConfig, folder: Path) -> QuantLinear:
    qw, qz, sc = (_need(t, f"{prefix}.{s}", folder) for s in ("qweight", "qzeros", "scales"))
    for name, a in (("qweight", qw), ("qzeros", qz)):
        _check(a.dtype == np.int32 and a.ndim == 2, folder, f"{prefix}.{name} must be a 2-D int32 tensor, got {a.dtype} {list(a.shape)}")
    _check(sc.dtype.kind == "f" and sc.ndim == 2, folder, f"{prefix}.scales must be a 2-D float tensor, got {sc.dtype} {list(sc.shape)}")
    k, n = qw.shape[0], qw.shape[1] * 8
    _check(k % cfg.group_size == 0, folder, f"{prefix}: input size {k} is not a multiple of AWQ group size {cfg.group_size}")
    groups = k // cfg.group_size
    _check(sc.shape == (groups, n), folder, f"{prefix}.scales has shape {list(sc.shape)}, expected {[groups, n]} (AWQ GEMM, group size {cfg.group_size})")
    _check(qz.shape == (groups, n // 8), folder, f"{prefix}.qzeros has shape {list(qz.shape)}, expected {[groups, n // 8]} (AWQ GEMM)")
    q = unpack_cols(qw, 4, AWQ_ORDER)
    z = unpack_cols(qz, 4, AWQ_ORDER).astype(np.int16)
    return QuantLinear(prefix, q, sc.astype(np.float32), z, np.arange(k, dtype=np.int64) // cfg.group_size, 4)


# ---------------------------------------------------------------- bitsandbytes


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return r.view(np.float32)


def _to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to the checkpoint's compute dtype, the weights bitsandbytes hands to the matmul."""
    d = dtype.replace("torch.", "")
    if d == "float16":
        return x.astype(np.float16).astype(np.float32)
    if d == "bfloat16":
        return round_bf16(x)
    return x.astype(np.float32)


def _bnb4_weight(t: dict[str, np.ndarray], key: str, folder: Path) -> np.ndarray:
    """Dequantize one bitsandbytes 4-bit ``weight`` (NF4/FP4, maybe double-quantized) to float32 [out, in]."""
    states = [k for k in t if k.startswith(key + ".quant_state.bitsandbytes__")]
    _check(len(states) == 1, folder, f"{key} has {len(states)} quant_state entries (expected one)")
    try:
        state = json.loads(bytes(np.asarray(t[states[0]], np.uint8).reshape(-1)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(folder, f"{states[0]} is not a JSON quantization state") from None
    _check(isinstance(state, dict), folder, f"{states[0]} is not a JSON object")
    kind = str(state.get("quant_type", ""))
    _check(kind in ("nf4", "fp4"), folder, f"{key}: 4-bit type {kind!r} is not nf4/fp4")
    shape = state.get("shape")
    _check(isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape), folder,
           f"{key}: quant_state shape {shape!r} is not a 2-D weight shape")
    bs = state.get("blocksize")
    _check(isinstance(bs, int) and bs > 0, folder, f"{key}: quant_state blocksize {bs!r} is invalid")
    numel = shape[0] * shape[1]
    packed = np.asarray(t[key]).reshape(-1).view(np.uint8) if t[key].dtype != np.uint8 else t[key].reshape(-1)
    _check(packed.size == (numel + 1) // 2, folder, f"{key} holds {packed.size} bytes, expected {(numel + 1) // 2} for {shape} 4-bit codes")
    codes = np.empty(packed.size * 2, np.uint8)
    codes[0::2] = packed >> 4  # first value of a pair in the high nibble
    codes[1::2] = packed & 0x0F
    codes = codes[:numel]
    qmap = _need(t, key + ".quant_map", folder).astype(np.float32).reshape(-1)
    _check(qmap.size == 16, folder, f"{key}.quant_map has {qmap.size} values, expected 16")
    nblocks = math.ceil(numel / bs)
    absmax = _need(t, key + ".absmax", folder).reshape(-1)
    _check(absmax.size == nblocks, folder, f"{key}.absmax has {absmax.size} values, expected {nblocks} (blocks of {bs})")
    if "nested_absmax" in state or key + ".nested_absmax" in t:  # double quantization: absmax is 8-bit codes
        nabs = _need(t, key + ".nested_absmax", folder).astype(np.float32).reshape(-1)
        nmap = _need(t, key + ".nested_quant_map", folder).astype(np.float32).reshape(-1)
        nbs = state.get("nested_blocksize")
        off = state.get("nested_offset")
        _check(isinstance(nbs, int) and nbs > 0 and isinstance(off, (int, float)), folder, f"{key}: nested blocksize/offset missing")
        _check(absmax.dtype == np.uint8 and nmap.size == 256 and nabs.size == math.ceil(nblocks / nbs), folder,
               f"{key}: double-quantized absmax must be uint8 codes with a 256-value map and {math.ceil(nblocks / nbs)} nested scales")
        absmax = nmap[absmax.astype(np.int64)] * np.repeat(nabs, nbs)[:nblocks] + np.float32(off)
    absmax = absmax.astype(np.float32)
    w = qmap[codes] * np.repeat(absmax, bs)[:numel]
    return _to_dtype(w.astype(np.float32), str(state.get("dtype", "float32"))).reshape(shape)


def _bnb8_weight(t: dict[str, np.ndarray], prefix: str, folder: Path) -> np.ndarray:
    w = _need(t, prefix + ".weight", folder)
    scb = _need(t, prefix + ".SCB", folder).astype(np.float32).reshape(-1)
    _check(w.dtype == np.int8 and w.ndim == 2, folder, f"{prefix}.weight must be a 2-D int8 tensor for LLM.int8, got {w.dtype} {list(w.shape)}")
    _check(scb.size == w.shape[0], folder, f"{prefix}.SCB has {scb.size} values, expected {w.shape[0]} (one per output row)")
    # the same product, in the same order, as bitsandbytes' int8 dequantization: CB * SCB * (1/127)
    return ((w.astype(np.float32) * scb[:, None]) * np.float32(7.874015718698502e-3)).astype(np.float32)


# ---------------------------------------------------------------- the folder


def read_checkpoint(folder: Path, cfg: PrequantConfig | None = None, *, keep_floats: bool = True) -> PrequantCheckpoint:
    """Read, unpack and check every quantized tensor; every weight also comes back as float32
    (``keep_floats=False``: checked, then dropped, as ``edgeq inspect`` needs no float copy)."""
    folder = Path(folder)
    cfg = cfg or detect(folder)
    if cfg is None:
        raise _bad(folder, "config.json has no quantization_config: the folder is not pre-quantized",
                   "export it as a float folder (edgeq export FOLDER --task ...)")
    t = read_tensors(folder)
    linears: dict[str, QuantLinear] = {}
    floats: dict[str, np.ndarray] = {}
    used: set[str] = set()
    notes: list[str] = []
    params = 0
    names: list[str] = []

    def keep(name: str, w: np.ndarray) -> None:
        nonlocal params
        params += int(w.size)
        names.append(name)
        if keep_floats:
            floats[name + ".weight" if not name.endswith(".weight") else name] = np.ascontiguousarray(w)

    if cfg.method in ("gptq", "awq"):
        prefixes = sorted(k[: -len(".qweight")] for k in t if k.endswith(".qweight"))
        _check(bool(prefixes), folder, f"{cfg.method.upper()} config but no '*.qweight' tensors")
        for p in prefixes:
            lin = _gptq_linear(t, p, cfg, folder) if cfg.method == "gptq" else _awq_linear(t, p, cfg, folder)
            linears[p] = lin
            used |= {f"{p}.{s}" for s in ("qweight", "qzeros", "scales", "g_idx")}
            if keep_floats:
                keep(p, lin.dequantize().T)
            else:
                params += lin.k * lin.n
                names.append(p)
        over = sum(int((lin.zero > (1 << lin.bits) - 1).any()) for lin in linears.values())
        if over:
            notes.append(f"{over} tensor(s) have a v1 zero point of {1 << cfg.bits} (stored -1, the GPTQ v1 writer's overflow): "
                         "ONNX keeps them exactly with 8-bit codes")
    elif cfg.method == "bnb-4bit":
        keys = sorted({k.split(".quant_state.bitsandbytes__")[0] for k in t if ".quant_state.bitsandbytes__" in k})
        _check(bool(keys), folder, "bitsandbytes 4-bit config but no quant_state tensors")
        for key in keys:
            keep(key, _bnb4_weight(t, key, folder))
            used |= {k for k in t if k == key or (k.startswith(key + ".") and k[len(key) + 1:].split(".")[0] in (
                "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state"))}
    else:
        prefixes = sorted(k[: -len(".SCB")] for k in t if k.endswith(".SCB"))
        _check(bool(prefixes), folder, "bitsandbytes 8-bit config but no '*.SCB' tensors")
        for p in prefixes:
            keep(p, _bnb8_weight(t, p, folder))
            used |= {p + ".weight", p + ".SCB", p + ".weight_format"}
    quantized = tuple(sorted(k[: -len(".weight")] if k.endswith(".weight") else k for k in names))
    done = {q + ".weight" for q in quantized}
    kept = []
    for k, v in t.items():
        if k in used or k in done:
            continue
        if v.dtype.kind == "f" and v.ndim == 2:
            kept.append(k)
        if keep_floats:
            floats[k] = v.astype(np.float32) if v.dtype.kind == "f" else v
    return PrequantCheckpoint(folder, cfg, linears, floats, quantized, tuple(sorted(kept)), tuple(notes), params)


def summary(ck: PrequantCheckpoint) -> dict[str, Any]:
    """What the folder holds, for ``edgeq inspect`` and the export report."""
    d = ck.config.to_dict()
    d["quantized_layers"] = list(ck.quantized)
    d["float_layers"] = list(ck.kept_float)
    d["params_quantized"] = ck.params_quantized
    d["notes"] = list(ck.notes)
    return d


def write_float_folder(ck: PrequantCheckpoint, out: Path) -> Path:
    """A float32 save_pretrained folder of the dequantized weights: the float reference the import is verified against."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ck.folder / "config.json").read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    cfg.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file({k: np.ascontiguousarray(v) for k, v in ck.floats.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    # tokenizer and generation files travel as they are (regular files only, small)
    for p in sorted(ck.folder.iterdir()):
        if p.name == "config.json" or p.suffix == ".safetensors" or p.name.endswith(".index.json") or p.is_symlink() or not p.is_file():
            continue
        if p.suffix in (".json", ".txt", ".model") and p.stat().st_size <= 64 << 20:
            (out / p.name).write_bytes(p.read_bytes())
    return out


# ---------------------------------------------------------------- GPTQ/AWQ -> MatMulNBits


@dataclass(frozen=True)
class NBitsCodes:
    """One imported linear laid out for MatMulNBits: rows in ``perm`` order (None: as stored), blocks of ``block_size``."""

    codes: Any  # edgeq.quantization.weight_only.blockwise.BlockCodes over the permuted rows
    perm: np.ndarray | None
    widened: bool  # stored with 8-bit codes to keep a v1 zero point of 2**bits


def _pow2_divisor(v: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and v % (b * 2) == 0:
        b *= 2
    return b


def nbits_codes(lin: QuantLinear) -> NBitsCodes:
    """Lay out ``lin`` as MatMulNBits blocks without changing any code, scale or zero point.

    Rows are sorted by group (stable) when ``g_idx`` is not in order (desc_act); the block size
    is the largest power of two (16..256) that every group boundary is a multiple of."""
    from ..quantization.weight_only.blockwise import BlockCodes

    g = lin.g_idx
    perm = np.argsort(g, kind="stable")
    sg = g[perm]
    if np.array_equal(perm, np.arange(lin.k)):
        perm_out = None
    else:
        perm_out = perm
    starts = np.flatnonzero(np.diff(sg)) + 1  # row where each new group begins (sorted order)
    if starts.size:
        d = int(np.gcd.reduce(starts))
        bs = _pow2_divisor(d, MAX_BLOCK)
        if bs < 16:
            raise ModelError(
                f"{lin.name}: its groups start every {d} rows, which is not a multiple of 16, so they cannot be MatMulNBits blocks",
                "re-quantize the float model with edgeq (--quant int4), or a checkpoint with group size 16, 32, 64 or 128",
            )
    else:
        bs = min(MAX_BLOCK, max(16, 1 << (max(lin.k, 1) - 1).bit_length()))
    k, n = lin.k, lin.n
    kp = -(-k // bs) * bs
    nb = kp // bs
    first = np.minimum(np.arange(nb) * bs, k - 1)
    grp = sg[first]  # each block's group
    scale = np.ascontiguousarray(lin.scale[grp], np.float32)
    zero16 = lin.zero[grp]
    widened = bool((zero16 > (1 << lin.bits) - 1).any())
    bits = 8 if widened else lin.bits
    zero = zero16.astype(np.uint8)
    q = lin.q[perm] if perm_out is not None else lin.q
    if kp != k:  # padded rows carry the block's zero point: they stand for 0 and meet no activation
        q = np.concatenate([q, np.repeat(zero[-1:], kp - k, axis=0)], axis=0)
    sym = bool(np.all(zero == (1 << (bits - 1))))
    codes = BlockCodes(np.ascontiguousarray(q, np.uint8), scale, zero, bits, bs, k, sym)
    return NBitsCodes(codes, perm_out, widened)


def _key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, np.float32)
    return (a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest())


@dataclass(frozen=True)
class ImportReport:
    """What the import did to the graph."""

    imported: tuple[str, ...]  # HF module names now MatMulNBits with the checkpoint's codes
    unmatched: tuple[str, ...]  # quantized linears whose weight was not found in the graph
    permuted: int  # imported linears whose input channels are gathered into group order (desc_act)
    widened: int  # imported with 8-bit codes (v1 zero-point overflow)
    max_abs_diff: float  # max |dequantized MatMulNBits codes - checkpoint weight| over all imported linears (0: exact)
    bytes_quantized: int

    def notes(self, cfg: PrequantConfig) -> list[str]:
        out = [f"pre-quantized {cfg.describe()}: {len(self.imported)} linear(s) imported as MatMulNBits with the checkpoint's own "
               f"codes, scales and zero points (not re-rounded; max |difference| from the checkpoint's weights {self.max_abs_diff:g})"]
        if self.permuted:
            out.append(f"{self.permuted} imported linear(s) read their input channels in group order (desc_act): a Gather before MatMulNBits")
        if self.widened:
            out.append(f"{self.widened} imported linear(s) stored with 8-bit codes to keep a v1 zero point of {1 << cfg.bits} exactly")
        if self.unmatched:
            out.append(f"WARNING: {len(self.unmatched)} quantized linear(s) not found in the exported graph, left to the recipe: "
                       + ", ".join(self.unmatched[:3]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"imported": list(self.imported), "unmatched": list(self.unmatched), "permuted": self.permuted,
                "widened": self.widened, "max_abs_diff": self.max_abs_diff, "bytes_quantized": self.bytes_quantized}


def _splice(model: Any, new_nodes: dict[int, list[Any]], new_inits: list[Any]) -> None:
    """Put the replacement nodes in place; drop Transposes and initializers nothing reads any more."""
    graph = model.graph
    nodes = [m for i, n in enumerate(graph.node) for m in new_nodes.get(i, [n])]
    outputs = {o.name for o in graph.output}
    read = {i for n in nodes for i in n.input} | outputs
    nodes = [n for n in nodes if not (n.op_type == "Transpose" and n.output[0] not in read)]
    read = {i for n in nodes for i in n.input} | outputs
    inits = [t for t in [*graph.initializer, *new_inits] if t.name in read]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _packed_parts(arr: np.ndarray, want: dict[tuple, str], widths: dict[int, set[int]]) -> list[str]:
    """The checkpoint linears whose weights, side by side, are ``arr`` [K, N] (a packed q/k/v or gate/up
    projection, e.g. edgeq's fused decoder), in column order; [] unless every column is covered."""
    k, n = arr.shape
    parts: list[str] = []
    off = 0
    while off < n:
        for w in sorted(widths.get(k, ()), reverse=True):
            name = want.get(_key(arr[:, off : off + w])) if off + w <= n else None
            if name is not None:
                parts.append(name)
                off += w
                break
        else:
            return []
    return parts if len(parts) > 1 else []


def import_codes(model: Any, ck: PrequantCheckpoint, *, accuracy_level: int = 0) -> ImportReport:
    """Replace, in the ONNX ``model`` (in place), every MatMul whose constant weight is one of the checkpoint's
    dequantized linears by MatMulNBits holding that linear's codes. Works on any decoder graph (plain or KV-cache):
    the weight is recognised by its values, whatever the exporter named it. A MatMul whose weight is several
    linears side by side (the fused decoder's packed q/k/v and gate/up) gets one MatMulNBits per linear and a Concat."""
    from onnx import TensorProto, helper, numpy_helper

    from ..quantization.weight_only.blockwise import pack_matmulnbits

    ms = "com.microsoft"
    want: dict[tuple, str] = {}
    for name, lin in ck.linears.items():
        want.setdefault(_key(lin.dequantize()), name)
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    new_nodes: dict[int, list[Any]] = {}
    new_inits: list[Any] = []
    done: dict[str, str] = {}
    made: dict[str, tuple] = {}  # HF linear -> (NBitsCodes, initializer names, (perm name, digest) | None)
    gathered: dict[tuple, str] = {}  # (activation, perm digest) -> gathered activation
    max_diff, permuted, widened, stored = 0.0, 0, 0, 0
    widths: dict[int, set[int]] = {}  # K -> output widths of the checkpoint's linears (packed projections)
    for lin in ck.linears.values():
        widths.setdefault(lin.k, set()).add(lin.n)

    def emit(name: str, a_in: str, out: str, idx: int) -> list[Any]:
        """MatMulNBits nodes computing ``out`` = ``a_in`` @ linear ``name`` with the checkpoint's codes."""
        nonlocal max_diff, permuted, widened, stored
        lin = ck.linears[name]
        if name not in made:  # one set of initializers per linear, however many MatMuls read it
            nc = nbits_codes(lin)
            ref = lin.dequantize() if nc.perm is None else lin.dequantize()[nc.perm]
            max_diff = max(max_diff, float(np.max(np.abs(nc.codes.dequantize() - ref))) if ref.size else 0.0)
            packed = pack_matmulnbits(nc.codes)
            base = "prequant_" + name.replace(".", "_")
            wnames = [base + "_B", base + "_scales"]
            new_inits.extend([numpy_helper.from_array(packed.b, wnames[0]), numpy_helper.from_array(packed.scales.reshape(-1), wnames[1])])
            if packed.zero_points is not None:
                wnames.append(base + "_zp")
                new_inits.append(numpy_helper.from_array(packed.zero_points.reshape(-1), wnames[2]))
            perm = None
            if nc.perm is not None:
                perm = (base + "_perm", hashlib.blake2b(nc.perm.tobytes(), digest_size=8).hexdigest())
                new_inits.append(numpy_helper.from_array(nc.perm.astype(np.int64), perm[0]))
                permuted += 1
            stored += packed.nbytes
            widened += int(nc.widened)
            made[name] = (nc, wnames, perm)
        nc, wnames, perm = made[name]
        tag = "prequant_" + name.replace(".", "_") + f"_{idx}"
        nodes = []
        if perm is not None:  # the activation's channels in group order, gathered once per (input, order)
            pkey = (a_in, perm[1])
            if pkey not in gathered:
                gathered[pkey] = tag + "_in_grouped"
                nodes.append(helper.make_node("Gather", [a_in, perm[0]], [gathered[pkey]], axis=-1, name=tag + "_group_order"))
            a_in = gathered[pkey]
        nodes.append(helper.make_node(
            "MatMulNBits", [a_in, *wnames], [out], name=tag, domain=ms, K=lin.k, N=lin.n, bits=nc.codes.bits,
            block_size=nc.codes.block_size, accuracy_level=accuracy_level,
        ))
        done[name] = tag
        return nodes

    for idx, node in enumerate(model.graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or node.input[0] in inits:
            continue
        b = node.input[1]
        arr = None
        if b in inits and inits[b].data_type == TensorProto.FLOAT and len(inits[b].dims) == 2:
            arr = numpy_helper.to_array(inits[b])
        elif b in producers and producers[b].op_type == "Transpose":
            tn = producers[b]
            perm_attr = [list(a.ints) for a in tn.attribute if a.name == "perm"]
            src = tn.input[0]
            if src in inits and len(inits[src].dims) == 2 and perm_attr in ([], [[1, 0]]) and inits[src].data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(inits[src]).T
        if arr is None:
            continue
        name = want.get(_key(arr))
        parts = [name] if name is not None else _packed_parts(arr, want, widths)
        if not parts:
            continue
        nodes = []
        outs = [node.output[0]] if len(parts) == 1 else [f"prequant_packed_{idx}_{j}" for j in range(len(parts))]
        for name, out in zip(parts, outs):
            nodes += emit(name, node.input[0], out, idx)
        if len(parts) > 1:  # a packed projection (q/k/v, gate/up): one MatMulNBits per linear, joined again
            nodes.append(helper.make_node("Concat", outs, [node.output[0]], axis=-1, name=f"prequant_packed_{idx}_concat"))
        new_nodes[idx] = nodes
    if new_nodes:
        _splice(model, new_nodes, new_inits)
        if not any(o.domain == ms for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(ms, 1))
    unmatched = tuple(sorted(set(ck.linears) - set(done)))
    return ImportReport(tuple(sorted(done)), unmatched, permuted, widened, max_diff, stored)


# ---------------------------------------------------------------- pipeline hooks


def prepare(source: Path, work: Path) -> tuple[PrequantCheckpoint | None, Path]:
    """For a pre-quantized folder: (checkpoint read, float folder of its dequantized weights to export);
    otherwise (None, source) unchanged. The float folder keeps the source folder's name."""
    cfg = detect(Path(source))
    if cfg is None:
        return None, Path(source)
    ck = read_checkpoint(Path(source), cfg)
    return ck, write_float_folder(ck, Path(work) / "prequant" / Path(source).name)


def apply(art: Any, ck: PrequantCheckpoint, out_path: Path, *, accuracy_level: int = 0) -> tuple[Any, ImportReport]:
    """The float decoder ``art`` with the checkpoint's GPTQ/AWQ linears as MatMulNBits, written to ``out_path``."""
    from ..core.onnxutil import load_model, save_model

    model = load_model(art.path)
    report = import_codes(model, ck, accuracy_level=accuracy_level)
    if not report.imported:
        raise ModelError(
            f"none of the {len(ck.linears)} quantized linears of {ck.folder.name} was found in the exported graph",
            "the exporter changed the weights (e.g. fused them); export with --exporter dynamo or torchscript",
        )
    save_model(model, Path(out_path))
    return art.then(Path(out_path), f"import({ck.config.method}, {len(report.imported)} linears, exact codes)"), report


def default_mode(ck: PrequantCheckpoint | None, mode: str, weight_only: bool, given: bool) -> tuple[str, str | None]:
    """The quantization mode for the rest of an imported model: a GPTQ/AWQ import runs MatMulNBits, so a
    target whose default is not weight-only gets int4 for the parts left float (unless --quant was given)."""
    if ck is None or not ck.config.exact or given or weight_only or mode == "none":
        return mode, None
    return "int4", (f"the target's default {mode} does not apply to a weight-only import: the parts the checkpoint "
                    "left float are quantized with int4 (pass --quant none to keep them float)")


def report_notes(ck: PrequantCheckpoint, report: ImportReport | None, lm: Any, mode: str) -> list[str]:
    """Notes for the export report: exact import, or bitsandbytes re-quantization with its KL cost."""
    notes = list(ck.notes)
    if report is not None:
        notes += report.notes(ck.config)
        if lm is not None:
            what = "imported model" if mode == "none" else f"model (imported codes, the parts left float by {mode})"
            notes.append(f"{what} vs the checkpoint's own dequantized weights: KL {lm.kl_mean:.3g}, "
                         f"same top token {100 * lm.same_top_token:.2f} %")
    else:
        cost = (f": KL {lm.kl_mean:.3g} vs the checkpoint's dequantized weights, same top token {100 * lm.same_top_token:.2f} %"
                if lm is not None else " (pass --calib/--eval token windows to measure its KL cost)")
        notes.append(f"pre-quantized {ck.config.describe()}: dequantized exactly in numpy, then RE-QUANTIZED by edgeq's "
                     f"recipe ({mode}), a second rounding{cost}")
    return notes


# ---------------------------------------------------------------- edgeq inspect FOLDER


def inspect_prequant(folder: Path) -> dict[str, Any]:
    """What a Hugging Face folder holds, before any export: pre-quantization format, bits, group size, layers."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)", "pass a folder written by save_pretrained")
    cfg = detect(folder)
    if cfg is None:
        return {"folder": folder.name, "prequantized": False}
    ck = read_checkpoint(folder, cfg, keep_floats=False)
    d = {"folder": folder.name, "prequantized": True, **summary(ck)}
    if ck.linears:
        d["block_sizes"] = sorted({nbits_codes(lin).codes.block_size for lin in ck.linears.values()})
        d["desc_act_layers"] = sum(int(not np.array_equal(lin.g_idx, np.sort(lin.g_idx))) for lin in ck.linears.values())
    return d


def _grouped(names: list[str]) -> str:
    import re

    counts: dict[str, int] = {}
    for n in names:
        key = re.sub(r"\.\d+\.", ".N.", n)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())


def folder_lines(d: dict[str, Any]) -> list[str]:
    if not d.get("prequantized"):
        return [f"{d['folder']}: Hugging Face folder without quantization_config (float weights; edgeq quantizes them itself)"]
    how = ("imported exactly: the codes become MatMulNBits (ONNX)" if d["exact_import"]
           else "dequantized exactly, then re-quantized by edgeq's recipe (a second rounding)")
    lines = [
        f"{d['folder']}: {d['description']}",
        f"bits {d['bits']}, group size {d['group_size'] if d['group_size'] else 'per bitsandbytes block'}"
        + (f", MatMulNBits block size {'/'.join(map(str, d['block_sizes']))}" if d.get("block_sizes") else "")
        + (f", {d['desc_act_layers']} layer(s) with act-order g_idx" if d.get("desc_act_layers") else ""),
        f"export: {how}",
        f"quantized layers ({len(d['quantized_layers'])}, {d['params_quantized']} parameters): {_grouped(d['quantized_layers'])}",
        f"float layers ({len(d['float_layers'])}): {_grouped(d['float_layers']) or 'none'}",
    ]
    return lines + [f"note: {n}" for n in d["notes"]]


# ---------------------------------------------------------------- GGUF (llama.cpp targets)

Q4_1_BLOCK = 32


def q4_1_blocks(lin: QuantLinear) -> tuple[np.ndarray | None, str, float]:
    """GGML Q4_1 blocks holding ``lin``'s codes: uint8 ``[N, K / 32 * 20]`` (rows are outputs, as in GGUF), the reason
    when impossible, and the largest change of a weight (0: exact). A Q4_1 block is ``y = d * q + m`` over 32 inputs:
    ``d = s`` and ``m = -s * z``, both float16; ``m`` is rounded when ``s * z`` is not a float16 value."""
    if lin.bits != 4:
        return None, f"{lin.bits}-bit codes", 0.0
    if lin.k % Q4_1_BLOCK:
        return None, f"K={lin.k} is not a multiple of 32", 0.0
    if not np.array_equal(lin.g_idx, np.sort(lin.g_idx)):
        return None, "act-order g_idx (GGUF rows cannot be re-ordered)", 0.0
    g = lin.g_idx.reshape(-1, Q4_1_BLOCK)
    if not np.all(g == g[:, :1]):
        return None, "groups do not align with blocks of 32", 0.0
    grp = g[:, 0]
    z = lin.zero[grp].astype(np.float32)  # [K/32, N]
    if (z > 15).any():
        return None, "a v1 zero point of 16", 0.0
    s = lin.scale[grp]
    d16 = s.astype(np.float16)
    if not np.array_equal(d16.astype(np.float32), s):
        return None, "scales are not float16 values", 0.0
    m = -s * z  # exact in float32 (an 11-bit scale times a 4-bit integer)
    m16 = m.astype(np.float16)
    err = float(np.abs(m16.astype(np.float32) - m).max()) if m.size else 0.0
    q = lin.q.T.reshape(lin.n, -1, Q4_1_BLOCK)  # [N, K/32, 32]
    qs = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
    head = np.stack([d16.T, m16.T], axis=-1).view(np.uint8).reshape(lin.n, -1, 4)  # d then m, little-endian
    return np.ascontiguousarray(np.concatenate([head, qs], axis=-1).reshape(lin.n, -1)), "", err


IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def iq4_nl_blocks(w: np.ndarray, chunk: int = 4096) -> np.ndarray | None:
    """GGML IQ4_NL blocks of a float ``[N, K]`` weight: 32 inputs share a float16 ``d``, each value is ``d * table[q]``
    with llama.cpp's non-linear 4-bit table (the nearest thing llama.cpp has to NF4). The scale of each block is the
    best of a few candidates by squared error (as llama.cpp's quantizer searches). None when K is not a multiple of 32."""
    n, k = w.shape
    if k % 32:
        return None
    x = np.ascontiguousarray(w, np.float32).reshape(-1, 32)
    out = np.empty((x.shape[0], 18), np.uint8)
    kv = IQ4_NL_VALUES
    mid = (kv[1:] + kv[:-1]) / 2
    for a in range(0, x.shape[0], chunk):
        xb = x[a : a + chunk]
        amax = np.take_along_axis(xb, np.abs(xb).argmax(1)[:, None], 1)[:, 0]
        amax = np.where(amax == 0, np.float32(1e-30), amax)
        best_d = np.zeros(len(xb), np.float32)
        best_q = np.zeros(xb.shape, np.uint8)
        best_e = np.full(len(xb), np.inf)
        for t in range(-7, 8):
            inv = (kv[0] + t * 1.0) / amax  # maps the largest value near the table's end
            q = np.searchsorted(mid, xb * inv[:, None]).astype(np.uint8)
            v = kv[q]
            d = (v * xb).sum(1) / np.maximum((v * v).sum(1), 1e-30)  # least-squares scale for these codes
            d = d.astype(np.float16).astype(np.float32)
            e = ((xb - d[:, None] * v) ** 2).sum(1)
            better = e < best_e
            best_e, best_d = np.where(better, e, best_e), np.where(better, d, best_d)
            best_q[better] = q[better]
        out[a : a + chunk, :2] = best_d.astype(np.float16)[:, None].view(np.uint8)
        out[a : a + chunk, 2:] = best_q[:, :16] | (best_q[:, 16:] << 4)
    return out.reshape(n, -1)


@dataclass(frozen=True)
class GGUFPlan:
    blocks: dict[str, tuple[str, np.ndarray]]  # HF weight name -> (GGML type, block bytes in HF row order)
    rounded: dict[str, float]  # Q4_1 weights whose m = -scale * zero was rounded to float16: max |change|
    requantized: dict[str, str]  # HF weight name -> why its codes could not be kept
    errors: dict[str, float]  # re-quantized: max |re-quantized - checkpoint| / max |checkpoint|, where measured

    @property
    def exact(self) -> list[str]:
        return [k for k, (t, _) in self.blocks.items() if t == "Q4_1" and k not in self.rounded]

    def to_dict(self) -> dict[str, Any]:
        return {"exact": sorted(self.exact), "codes_kept_min_rounded": self.rounded, "requantized": self.requantized,
                "iq4_nl": sorted(k for k, (t, _) in self.blocks.items() if t == "IQ4_NL"),
                "requantized_relative_error": self.errors}


def gguf_plan(ck: PrequantCheckpoint, quant: str, *, nonlinear: bool = False) -> GGUFPlan:
    """Which quantized linears go to GGUF as Q4_1 blocks of their own codes (bitsandbytes 4-bit with ``nonlinear``:
    IQ4_NL blocks); the error of the rest under ``quant``."""
    blocks: dict[str, tuple[str, np.ndarray]] = {}
    rounded: dict[str, float] = {}
    why: dict[str, str] = {}
    errs: dict[str, float] = {}
    for name in ck.quantized:
        key = name + ".weight"
        lin = ck.linears.get(name)
        b, reason, err = q4_1_blocks(lin) if lin is not None else (None, "bitsandbytes codes are not Q4_1 blocks", 0.0)
        if b is not None:
            blocks[key] = ("Q4_1", b)
            if err:
                rounded[key] = err
            continue
        why[key] = reason
        w = ck.floats[key]
        if ck.config.method == "bnb-4bit" and nonlinear and (b := iq4_nl_blocks(w)) is not None:
            import gguf

            why[key] = "NF4/FP4 codes mapped onto llama.cpp's IQ4_NL table (blocks of 32)"
            blocks[key] = ("IQ4_NL", b)
            back = gguf.quants.dequantize(b, gguf.GGMLQuantizationType.IQ4_NL)
            errs[key] = float(np.abs(back - w).max() / max(float(np.abs(w).max()), 1e-30))
            continue
        try:
            import gguf

            qt = gguf.GGMLQuantizationType[quant.upper()]
            back = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(w, np.float32), qt), qt)
            errs[key] = float(np.abs(back - w).max() / max(float(np.abs(w).max()), 1e-30))
        except (ImportError, KeyError, NotImplementedError, ValueError, TypeError):  # k-quants: written by llama.cpp
            pass
    return GGUFPlan(blocks, rounded, why, errs)


def gguf_notes(ck: PrequantCheckpoint, plan: GGUFPlan, quant: str) -> list[str]:
    notes = []
    q41 = [k for k, (t, _) in plan.blocks.items() if t == "Q4_1"]
    if q41:
        notes.append(f"pre-quantized {ck.config.describe()}: {len(q41)} linear(s) written as Q4_1 blocks of the "
                     f"checkpoint's own codes (d = scale, m = -scale * zero point): {len(plan.exact)} exact")
    if plan.rounded:
        notes.append(f"{len(plan.rounded)} of them keep their codes with m rounded to float16 (max weight change "
                     f"{max(plan.rounded.values()):.3g})")
    if plan.requantized:
        reasons = sorted(set(plan.requantized.values()))
        err = f"; max relative weight error {max(plan.errors.values()):.3g}" if plan.errors else ""
        nl = sum(t == "IQ4_NL" for t, _ in plan.blocks.values())
        as_ = "IQ4_NL" if nl == len(plan.requantized) else (f"{quant} ({nl} as IQ4_NL)" if nl else quant)
        notes.append(f"pre-quantized {ck.config.describe()}: {len(plan.requantized)} quantized linear(s) dequantized and "
                     f"RE-QUANTIZED as {as_} ({'; '.join(reasons)}){err}")
    return notes


