"""Pre-quantized Hugging Face folders written the way GPTQ / AWQ / bitsandbytes writers lay them out.

Written independently of ``edgeq/exporters/prequant.py`` (which only reads): codes are chosen
here, packed with loops over strided slices, and the float weight each format's kernel
computes is returned as the reference (``(q - z) * s`` per group, table value times absmax,
int8 times row scale / 127).

- GPTQ: ``qweight`` int32 ``[K * bits / 32, N]`` (codes along K, lowest bits first), ``qzeros``
  int32 ``[G, N * bits / 32]`` (along N), ``scales`` float16 ``[G, N]``, ``g_idx`` int32 ``[K]``
  (a random channel order per layer with ``desc_act``); the v1 format stores ``zero - 1``.
- AWQ GEMM: ``qweight`` int32 ``[K, N / 8]`` whose nibble ``i`` is column ``8c + (0,2,4,6,1,3,5,7)[i]``;
  ``qzeros`` likewise; float16 ``scales`` ``[K / gs, N]``.
- bitsandbytes 4-bit: the weight flattened row-major, blocks of 64, nearest of 16 table values,
  two codes per byte (first in the high nibble), ``absmax`` per block; with double quantization the
  absmax minus its mean is itself coded in 8 bits over blocks of 256; the state as JSON bytes.
- LLM.int8: ``weight`` int8 per row, ``SCB`` the row absmax.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]) / 12.0).astype(np.float32)
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _float_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v for p in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(p)).items()}


def _linear_names(t: dict[str, np.ndarray]) -> list[str]:
    return sorted(k[:-7] for k in t if k.endswith(".weight") and any(k.endswith(s + ".weight") for s in LINEARS))


def _copy_folder(src: Path, dst: Path, qconfig: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name != "config.json":
            shutil.copy(p, dst / p.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = qconfig
    cfg["torch_dtype"] = "float16"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def _save(dst: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})


def _pack_words(codes: np.ndarray, bits: int, axis: int, order=None) -> np.ndarray:
    """Pack uint codes along ``axis`` into int32 words: code j of a word at bit offset ``bits * j``."""
    per = 32 // bits
    c = np.moveaxis(codes.astype(np.int64), axis, 0)
    words = np.zeros((c.shape[0] // per, *c.shape[1:]), np.int64)
    for j in range(per):
        src = order[j] if order else j
        words += (c[src::per] & ((1 << bits) - 1)) << (bits * j)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)


def make_gptq(src: Path, dst: Path, *, bits: int = 4, group_size: int = 32, desc_act: bool = False, sym: bool = True,
              fmt: str = "gptq", seed: int = 0, zero_nibble: int | None = None) -> dict[str, np.ndarray]:
    """A GPTQ folder from the float folder ``src``; returns each linear's reference weight (HF layout [N, K])."""
    rng = np.random.default_rng(seed)
    t = _float_tensors(src)
    out: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    maxq = (1 << bits) - 1
    for name in _linear_names(t):
        w = t.pop(name + ".weight").astype(np.float32).T  # [K, N]
        k, n = w.shape
        gs = k if group_size == -1 else group_size
        groups = -(-k // gs)
        order = rng.permutation(k) if desc_act else np.arange(k)
        g_idx = np.empty(k, np.int32)
        g_idx[order] = np.arange(k) // gs
        scales = np.zeros((groups, n), np.float16)
        zeros = np.zeros((groups, n), np.int64)
        q = np.zeros((k, n), np.int64)
        wref = np.zeros((k, n), np.float32)
        for g in range(groups):
            rows = np.flatnonzero(g_idx == g)
            blk = w[rows]
            lo, hi = np.minimum(blk.min(0), 0), np.maximum(blk.max(0), 0)
            if sym:
                hi = np.maximum(np.abs(lo), hi)
                lo = -hi
            s = ((hi - lo) / maxq).astype(np.float16)
            s[s == 0] = 1
            z = np.full(n, (maxq + 1) // 2) if sym else np.clip(np.round(-lo / s.astype(np.float32)), 0, maxq).astype(np.int64)
            qq = np.clip(np.round(blk / s.astype(np.float32) + z), 0, maxq).astype(np.int64)
            scales[g], zeros[g], q[rows] = s, z, qq
            wref[rows] = (qq - z).astype(np.float32) * s.astype(np.float32)
        stored = zeros - 1 if fmt == "gptq" else zeros
        if zero_nibble is not None:  # what the v1 writer leaves for a zero point of 0: -1, i.e. all ones
            stored[0, 0] = zero_nibble
            wref[g_idx == 0, 0] = (q[g_idx == 0, 0] - (zero_nibble + (1 if fmt == "gptq" else 0))).astype(np.float32) * scales[0, 0].astype(np.float32)
        out[name + ".qweight"] = _pack_words(q, bits, 0)
        out[name + ".qzeros"] = _pack_words(stored & maxq, bits, 1)
        out[name + ".scales"] = scales
        out[name + ".g_idx"] = g_idx
        ref[name + ".weight"] = np.ascontiguousarray(wref.T)
    for k2, v in t.items():
        out[k2] = v.astype(np.float16)
        ref[k2] = v.astype(np.float16).astype(np.float32)
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
          "checkpoint_format": fmt, "damp_percent": 0.01, "true_sequential": True}
    _copy_folder(src, dst, qc)
    _save(dst, out)
    return ref


def make_awq(src: Path, dst: Path, *, group_size: int = 32) -> dict[str, np.ndarray]:
    t = _float_tensors(src)
    out: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    for name in _linear_names(t):
        w = t.pop(name + ".weight").astype(np.float32).T  # [K, N]
        k, n = w.shape
        wb = w.reshape(k // group_size, group_size, n)
        lo, hi = wb.min(1), wb.max(1)
        s = np.maximum((hi - lo) / 15, 1e-5).astype(np.float16)
        s32 = s.astype(np.float32)
        z = np.clip(-np.round(lo / s32), 0, 15).astype(np.int64)
        q = np.clip(np.round(wb / s32[:, None]) + z[:, None], 0, 15).astype(np.int64)
        wref = ((q - z[:, None]).astype(np.float32) * s32[:, None]).reshape(k, n)
        out[name + ".qweight"] = _pack_words(q.reshape(k, n), 4, 1, _AWQ_ORDER)
        out[name + ".qzeros"] = _pack_words(z, 4, 1, _AWQ_ORDER)
        out[name + ".scales"] = s
        ref[name + ".weight"] = np.ascontiguousarray(wref.T)
    for k2, v in t.items():
        out[k2] = v.astype(np.float16)
        ref[k2] = v.astype(np.float16).astype(np.float32)
    _copy_folder(src, dst, {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"})
    _save(dst, out)
    return ref


def _nearest(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.abs(values[:, None] - table[None, :]).argmin(1).astype(np.uint8)


def make_bnb4(src: Path, dst: Path, *, kind: str = "nf4", double_quant: bool = True, dtype: str = "bfloat16",
              blocksize: int = 64) -> dict[str, np.ndarray]:
    import torch

    table = NF4 if kind == "nf4" else FP4
    nmap = np.linspace(-1, 1, 256, dtype=np.float32)  # the 8-bit map of the absmax codes (stored in the file)
    t = _float_tensors(src)
    out: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    for name in _linear_names(t):
        w = t.pop(name + ".weight").astype(np.float32)
        flat = w.reshape(-1)
        nb = -(-flat.size // blocksize)
        padded = np.zeros(nb * blocksize, np.float32)
        padded[: flat.size] = flat
        absmax = np.abs(padded.reshape(nb, blocksize)).max(1).astype(np.float32)
        codes = _nearest((padded.reshape(nb, blocksize) / absmax[:, None]).reshape(-1), table)[: flat.size]
        if codes.size % 2:
            codes = np.concatenate([codes, np.zeros(1, np.uint8)])
        byte = (codes[0::2] << 4) | codes[1::2]
        key = name + ".weight"
        state = {"quant_type": kind, "blocksize": blocksize, "dtype": dtype, "shape": list(w.shape)}
        out[key] = byte.reshape(-1, 1)
        out[key + ".quant_map"] = table
        if double_quant:
            offset = float(absmax.mean())
            centred = absmax - np.float32(offset)
            nnb = -(-nb // 256)
            cp = np.zeros(nnb * 256, np.float32)
            cp[:nb] = centred
            nabs = np.abs(cp.reshape(nnb, 256)).max(1).astype(np.float32)
            qa = _nearest((cp.reshape(nnb, 256) / nabs[:, None]).reshape(-1), nmap)[:nb]
            out[key + ".absmax"] = qa
            out[key + ".nested_absmax"] = nabs
            out[key + ".nested_quant_map"] = nmap
            state.update(nested_blocksize=256, nested_offset=offset, nested_dtype="float32")
            used_absmax = torch.from_numpy(nmap)[torch.from_numpy(qa).long()] * torch.from_numpy(nabs).repeat_interleave(256)[:nb] + offset
        else:
            out[key + ".absmax"] = absmax
            used_absmax = torch.from_numpy(absmax)
        out[key + ".quant_state.bitsandbytes__" + kind] = np.frombuffer(json.dumps(state).encode(), np.uint8).copy()
        wt = torch.from_numpy(table)[torch.from_numpy(codes[: flat.size]).long()] * used_absmax.repeat_interleave(blocksize)[: flat.size]
        ref[key] = wt.to(tdt).float().numpy().reshape(w.shape)
    for k2, v in t.items():
        out[k2] = v
        ref[k2] = v.astype(np.float32)
    _copy_folder(src, dst, {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": kind,
                            "bnb_4bit_use_double_quant": double_quant, "bnb_4bit_compute_dtype": dtype})
    _save(dst, out)
    return ref


def make_bnb8(src: Path, dst: Path) -> dict[str, np.ndarray]:
    import torch

    t = _float_tensors(src)
    out: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    for name in _linear_names(t):
        w = t.pop(name + ".weight").astype(np.float32)
        scb = np.abs(w).max(1).astype(np.float32)
        cb = np.clip(np.round(w * 127 / scb[:, None]), -127, 127).astype(np.int8)
        out[name + ".weight"] = cb
        out[name + ".SCB"] = scb
        ref[name + ".weight"] = (torch.from_numpy(cb).float() * torch.from_numpy(scb).view(-1, 1) * 7.874015718698502e-3).numpy()
    for k2, v in t.items():
        out[k2] = v.astype(np.float16)
        ref[k2] = v.astype(np.float16).astype(np.float32)
    _copy_folder(src, dst, {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 6.0})
    _save(dst, out)
    return ref
