"""Block-wise low-bit weight codes and the algorithms that choose them.

A weight ``W`` of a MatMul is ``[K, N]`` (``y = x @ W``). Codes are formed in
blocks of ``block_size`` consecutive rows (input channels) of each column:

    W[k, n] ~= (q[k, n] - z[k // bs, n]) * s[k // bs, n]

which is exactly what com.microsoft ``MatMulNBits`` computes. ``pack_matmulnbits``
lays the codes out as that kernel reads them. The algorithms (RTN, HQQ, GPTQ,
AWQ) only decide ``q``, ``s``, ``z`` (and, for AWQ, a per-input-channel scale
that the activations are divided by).

Everything here is numpy / torch on arrays: no ONNX graph code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockCodes:
    """Codes for one ``[K, N]`` weight; ``K`` padded up to whole blocks."""

    q: np.ndarray  # uint8 [Kp, N], values in 0 .. 2**bits - 1
    scale: np.ndarray  # float32 [n_blocks, N]
    zero: np.ndarray  # uint8 [n_blocks, N] or float32 [n_blocks, N] (HQQ)
    bits: int
    block_size: int
    k: int  # the original K
    symmetric: bool
    act_scale: np.ndarray | None = None  # AWQ: activations are multiplied by this [K]

    @property
    def n_blocks(self) -> int:
        return self.scale.shape[0]

    def dequantize(self) -> np.ndarray:
        """The ``[K, N]`` float weight the codes stand for (AWQ scale folded back out)."""
        bs = self.block_size
        z = np.repeat(self.zero.astype(np.float32), bs, axis=0)
        s = np.repeat(self.scale, bs, axis=0)
        w = ((self.q.astype(np.float32) - z) * s)[: self.k]
        if self.act_scale is not None:
            w = w * self.act_scale[:, None]  # x @ (act_scale * stored) == (x * act_scale) @ stored
        return w

    def stored_weight(self) -> np.ndarray:
        """The ``[K, N]`` weight the MatMulNBits node holds (before the activation scale)."""
        bs = self.block_size
        z = np.repeat(self.zero.astype(np.float32), bs, axis=0)
        s = np.repeat(self.scale, bs, axis=0)
        return ((self.q.astype(np.float32) - z) * s)[: self.k]


def _pad_rows(w: np.ndarray, bs: int) -> np.ndarray:
    k = w.shape[0]
    kp = -(-k // bs) * bs
    if kp == k:
        return w
    return np.concatenate([w, np.zeros((kp - k, w.shape[1]), w.dtype)], axis=0)


def _blocks(w: np.ndarray, bs: int) -> np.ndarray:
    """[Kp, N] -> [n_blocks, bs, N]."""
    return w.reshape(w.shape[0] // bs, bs, w.shape[1])


def minmax_params(wb: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point per block of ``wb`` [..., bs, N] (block axis -2)."""
    qmax = 2**bits - 1
    if symmetric:
        # the value of largest magnitude maps to the most negative code (as llama.cpp's Q4_0):
        # one more level is used than with absmax / (2**(bits-1) - 1)
        half = 2 ** (bits - 1)
        idx = np.abs(wb).argmax(axis=-2)
        m = np.take_along_axis(wb, idx[..., None, :], axis=-2)[..., 0, :]
        scale = (m / -half).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale)
        zero = np.full(scale.shape, half, np.uint8)
        return scale, zero
    lo = np.minimum(wb.min(axis=-2), 0)
    hi = np.maximum(wb.max(axis=-2), 0)
    scale = ((hi - lo) / qmax).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    zero = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)
    return scale, zero


def quantize_with(wb: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Codes of ``wb`` [nb, bs, N] for given per-block scale/zero [nb, N]."""
    q = np.round(wb / scale[:, None, :] + zero[:, None, :].astype(np.float32))
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockCodes:
    """Round to nearest with min/max (asymmetric) or signed-absmax (symmetric) block ranges."""
    k = w.shape[0]
    wb = _blocks(_pad_rows(np.asarray(w, np.float32), block_size), block_size)
    scale, zero = minmax_params(wb, bits, symmetric)
    q = quantize_with(wb, scale, zero, bits).reshape(-1, w.shape[1])
    return BlockCodes(q, scale, zero, bits, block_size, k, symmetric)


def _shrink_lp(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    ax = np.abs(x)
    return np.sign(x) * np.maximum(ax - (1.0 / beta) * np.power(ax + 1e-8, p - 1.0), 0.0)


def hqq(
    w: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    float_zero: bool = True,
) -> BlockCodes:
    """Half-quadratic quantization (Badri & Shaji, 2023): no data.

    Minimises ``||W - Q^-1(Q(W))||_p`` (p < 1, robust to outliers) over the zero
    point with a half-quadratic split: alternate a generalized soft-threshold of
    the error and a closed-form zero-point update. With ``symmetric`` the zero is
    fixed, so the scale is optimised instead (same split, least-squares step).
    The best iterate (by the lp error) is kept.
    """
    k, n = w.shape
    qmax = 2**bits - 1
    wb = _blocks(_pad_rows(np.asarray(w, np.float64), block_size), block_size)
    s32, z8 = minmax_params(wb.astype(np.float32), bits, symmetric)
    scale = s32.astype(np.float64)
    zero = z8.astype(np.float64)

    def lp_err(sc: np.ndarray, zz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qq = np.clip(np.round(wb / sc[:, None] + zz[:, None]), 0, qmax)
        return qq, np.sum(np.abs(wb - (qq - zz[:, None]) * sc[:, None]) ** p, axis=1)

    q, best_err = lp_err(scale, zero)
    best_scale, best_zero = scale.copy(), zero.copy()
    b = beta
    for _ in range(iters):
        wr = (q - zero[:, None]) * scale[:, None]
        we = _shrink_lp(wb - wr, b, p)
        target = wb - we  # what the dequantized weight should reproduce
        if symmetric:
            c = q - zero[:, None]
            num = np.sum(c * target, axis=1)
            den = np.sum(c * c, axis=1)
            scale = np.where(den > 0, num / np.maximum(den, 1e-30), scale)
            scale = np.where(scale == 0, best_scale, scale)
        else:
            zero = np.mean(q - target / scale[:, None], axis=1)
            if not float_zero:
                zero = np.clip(np.round(zero), 0, qmax)
        q, err = lp_err(scale, zero)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
        b *= kappa
    q, _ = lp_err(best_scale, best_zero)
    zero_out = best_zero.astype(np.float32) if (float_zero and not symmetric) else best_zero.astype(np.uint8)
    return BlockCodes(q.astype(np.uint8).reshape(-1, n), best_scale.astype(np.float32), zero_out, bits, block_size, k, symmetric)


def gptq(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    *,
    damp: float = 0.01,
    lazy_batch: int = 128,
    act_order: bool = True,
) -> BlockCodes:
    """GPTQ (Frantar et al., 2022): quantize input channels in order, spreading each
    channel's rounding error over the not-yet-quantized channels with the upper
    Cholesky factor of the inverse Hessian ``H = X^T X`` of the calibration inputs.

    Without ``act_order`` block ranges are chosen from the error-updated weights when
    each block starts. With ``act_order`` the channels are processed in order of
    decreasing ``diag(H)`` (the loudest inputs first, while the most unquantized
    channels are left to absorb their error); the block ranges are then fixed up
    front from the original weights ("static groups"), so each code still belongs to
    its MatMulNBits block in the original channel order (no g_idx needed).
    """
    k, n = w.shape
    bs = block_size
    kp = -(-k // bs) * bs
    W = np.zeros((kp, n), np.float64)
    W[:k] = np.asarray(w, np.float64)
    H = np.zeros((kp, kp), np.float64)
    H[:k, :k] = np.asarray(hessian, np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[dead, :] = 0.0
    nb = kp // bs
    qmax = 2**bits - 1
    static_s = static_z = None
    perm = np.arange(kp)
    if act_order:
        static_s, static_z = minmax_params(_blocks(W.astype(np.float32), bs), bits, symmetric)
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[perm]
        H = H[np.ix_(perm, perm)]
    H[np.diag_indices(kp)] += damp * np.mean(np.diag(H))
    try:
        Hinv_full = np.linalg.inv(H)
        Hinv_full = (Hinv_full + Hinv_full.T) / 2
        Hinv = np.linalg.cholesky(Hinv_full).T  # upper U with U^T U = H^-1
    except np.linalg.LinAlgError:
        return rtn(w, bits, block_size, symmetric)  # degenerate statistics: nothing to compensate with

    lazy_batch = max(lazy_batch, bs)  # a block never straddles two lazy batches
    Q = np.zeros((kp, n), np.uint8)
    if act_order:
        scales, zeros = static_s, static_z
    else:
        scales = np.zeros((nb, n), np.float32)
        zeros = np.zeros((nb, n), np.uint8)
    cur_s = cur_z = None
    for i1 in range(0, kp, lazy_batch):
        i2 = min(i1 + lazy_batch, kp)
        W1 = W[i1:i2].copy()
        E1 = np.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            row = i1 + j
            if act_order:
                b = perm[row] // bs
                cur_s = scales[b].astype(np.float64)
                cur_z = zeros[b].astype(np.float64)
            elif row % bs == 0:
                blk = W1[j : j + bs].astype(np.float32)
                s, z = minmax_params(blk[None], bits, symmetric)
                scales[row // bs], zeros[row // bs] = s[0], z[0]
                cur_s = s[0].astype(np.float64)
                cur_z = z[0].astype(np.float64)
            wrow = W1[j]
            q = np.clip(np.round(wrow / cur_s + cur_z), 0, qmax)
            Q[perm[row]] = q.astype(np.uint8)
            err = (wrow - (q - cur_z) * cur_s) / Hi[j, j]
            W1[j:] -= np.outer(Hi[j, j:], err)
            E1[j] = err
        W[i1:i2] = W1
        W[i2:] -= Hinv[i1:i2, i2:].T @ E1
    return BlockCodes(Q, scales, zeros, bits, bs, k, symmetric)


def _out_err(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    d = x @ (w - w_hat)
    return float(np.mean(d * d))


def _h_err(h: np.ndarray, dw: np.ndarray) -> float:
    """Mean squared output error ``E||x dW||^2`` from the second moment ``h = E[x^T x]``."""
    return float(np.sum(dw * (h @ dw)))


# AWQ's grids (llm-awq: 20 alpha steps in [0, 1); weight range shrunk by up to 50 % in 5 % steps)
AWQ_ALPHA_GRID = 20
AWQ_CLIP_RATIOS = tuple(round(1.0 - i / 20, 2) for i in range(10))


def awq_scale(
    ws: list[np.ndarray],
    h: np.ndarray,
    act_mean_abs: np.ndarray,
    bits: int | list[int],
    block_size: int,
    symmetric: bool,
    *,
    grid: int = AWQ_ALPHA_GRID,
) -> tuple[np.ndarray, float, float, float]:
    """AWQ's scale search for the weights ``ws`` ([K, N_i] each) that read the same input.

    ``s = mean|x|^alpha`` per input channel (normalised so ``sqrt(max * min) == 1``), alpha
    on a grid in [0, 1], chosen to minimise the summed output error
    ``E||x W - (x / s) Q(diag(s) W)||^2`` of all the weights, with ``h = E[x^T x]``
    of the calibration inputs (``bits`` per weight if they differ).
    Returns ``(s, alpha, error at alpha, error at alpha=0 (= RTN))``.
    """
    ws = [np.asarray(v, np.float64) for v in ws]
    bl = list(bits) if isinstance(bits, (list, tuple)) else [bits] * len(ws)
    h = np.asarray(h, np.float64)
    a = np.maximum(np.asarray(act_mean_abs, np.float64), 1e-8)
    best: tuple[np.ndarray, float, float] = (np.ones(ws[0].shape[0], np.float32), 0.0, np.inf)
    base = np.inf
    for i in range(grid):
        alpha = i / grid
        s = np.maximum(a**alpha, 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        e = 0.0
        for w, b in zip(ws, bl):
            codes = rtn((w * s[:, None]).astype(np.float32), b, block_size, symmetric)
            e += _h_err(h, w - codes.stored_weight() / s[:, None])
        if i == 0:
            base = e
        if e < best[2]:
            best = (s.astype(np.float32), alpha, e)
    return best[0], best[1], best[2], base


def awq_clip(
    w: np.ndarray, h: np.ndarray, bits: int, block_size: int, symmetric: bool, ratios: tuple[float, ...] = AWQ_CLIP_RATIOS,
    *, passes: int = 2,
) -> BlockCodes:
    """AWQ's clip search: per block and output column, shrink the weight range by one of ``ratios``.

    Start as llm-awq does (each block's ratio minimises that block's own output error
    ``E||x_b (W_b - Q(W_b))||^2``), then ``passes`` rounds of coordinate descent on the whole
    column's error ``E||x (W - Q(W))||^2`` (``h = E[x^T x]``): the cross terms between blocks
    matter when the input channels are correlated (after a norm they are), and the
    block-by-block choice alone lowered the layer error but not the model's KL at block 32.
    """
    k, n = w.shape
    bs = block_size
    wb = _blocks(_pad_rows(np.asarray(w, np.float32), bs), bs)  # [nb, bs, N]
    nb = wb.shape[0]
    hp = np.zeros((nb * bs, nb * bs))
    hp[:k, :k] = h
    hb = np.stack([hp[b * bs : (b + 1) * bs, b * bs : (b + 1) * bs] for b in range(nb)])  # [nb, bs, bs]
    cands = []
    for r in ratios:
        s, z = minmax_params(wb * np.float32(r), bits, symmetric)
        q = quantize_with(wb, s, z, bits)
        cands.append((s, z, (wb - (q.astype(np.float32) - z[:, None, :]) * s[:, None, :]).astype(np.float64)))
    best_err = np.full((nb, n), np.inf)
    best_s = np.zeros((nb, n), np.float32)
    best_z = np.zeros((nb, n), np.uint8)
    d_cur = np.zeros((nb, bs, n))
    for s, z, d in cands:
        e = np.einsum("bin,bin->bn", d, np.einsum("bij,bjn->bin", hb, d))
        better = e < best_err
        best_err = np.where(better, e, best_err)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, z, best_z)
        d_cur = np.where(better[:, None, :], d, d_cur)
    dflat = d_cur.reshape(-1, n)
    g = hp @ dflat  # h @ (W - Q(W)), kept up to date
    for _ in range(passes):
        for b in range(nb):
            sl = slice(b * bs, (b + 1) * bs)
            d_old = dflat[sl].copy()
            rest = g[sl] - hb[b] @ d_old  # what the other blocks' errors add to this block's gradient
            cur = np.sum(d_old * (hb[b] @ d_old), 0) + 2 * np.sum(d_old * rest, 0)
            d_new = d_old.copy()
            for s, z, d in cands:
                e = np.sum(d[b] * (hb[b] @ d[b]), 0) + 2 * np.sum(d[b] * rest, 0)
                better = e < cur
                cur = np.where(better, e, cur)
                best_s[b] = np.where(better, s[b], best_s[b])
                best_z[b] = np.where(better, z[b], best_z[b])
                d_new = np.where(better[None, :], d[b], d_new)
            g += hp[:, sl] @ (d_new - d_old)
            dflat[sl] = d_new
    q = quantize_with(wb, best_s, best_z, bits).reshape(-1, n)
    return BlockCodes(q, best_s, best_z, bits, bs, k, symmetric)


def awq(
    w: np.ndarray,
    x: np.ndarray,
    act_mean_abs: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    *,
    grid: int = AWQ_ALPHA_GRID,
    clip_grid: tuple[float, ...] = AWQ_CLIP_RATIOS,
) -> BlockCodes:
    """AWQ for one weight on its own: scale search, then clip search on the scaled weight.

    The stored weight is ``diag(s) W``; ``act_scale = 1/s`` must multiply the activations
    (``quantize()`` folds it into the op before when it can, see ``int4.py``).
    """
    w = np.asarray(w, np.float32)
    x = np.asarray(x, np.float64)
    h = x.T @ x / max(len(x), 1)
    s, _, _, _ = awq_scale([w], h, act_mean_abs, bits, block_size, symmetric, grid=grid)
    hs = h / s[:, None] / s[None, :]
    codes = awq_clip(w * s[:, None], hs, bits, block_size, symmetric, clip_grid)
    return BlockCodes(codes.q, codes.scale, codes.zero, bits, block_size, w.shape[0], symmetric, act_scale=(1.0 / s).astype(np.float32))


# ---------------------------------------------------------------- MatMulNBits layout


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes along the last axis, lowest bits first (``8 // bits`` codes per byte)."""
    per = 8 // bits
    q = np.asarray(q, np.uint8)
    if q.shape[-1] % per:
        pad = per - q.shape[-1] % per
        q = np.concatenate([q, np.zeros((*q.shape[:-1], pad), np.uint8)], axis=-1)
    q = q.reshape(*q.shape[:-1], -1, per)
    out = np.zeros(q.shape[:-1], np.uint8)
    for i in range(per):
        out |= (q[..., i] & (2**bits - 1)) << (bits * i)
    return out


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    p = np.asarray(packed, np.uint8)
    parts = [(p >> (bits * i)) & (2**bits - 1) for i in range(per)]
    return np.stack(parts, axis=-1).reshape(*p.shape[:-1], -1)[..., :count]


@dataclass(frozen=True)
class PackedNBits:
    b: np.ndarray  # uint8 [N, n_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(n_blocks * bits / 8)] or float32 [N, n_blocks]; None when symmetric

    @property
    def nbytes(self) -> int:
        return int(self.b.nbytes + self.scales.nbytes + (self.zero_points.nbytes if self.zero_points is not None else 0))


def pack_matmulnbits(codes: BlockCodes) -> PackedNBits:
    """Lay out codes as com.microsoft MatMulNBits reads them (B is stored transposed, [N, K])."""
    n = codes.q.shape[1]
    qt = codes.q.T.reshape(n, codes.n_blocks, codes.block_size)  # [N, nb, bs]
    b = pack_codes(qt, codes.bits)
    scales = np.ascontiguousarray(codes.scale.T.astype(np.float32))
    zp = None
    if codes.zero.dtype == np.float32:
        zp = np.ascontiguousarray(codes.zero.T)
    elif not codes.symmetric:
        zp = pack_codes(codes.zero.T, codes.bits)  # [N, ceil(nb * bits / 8)]
    return PackedNBits(np.ascontiguousarray(b), scales, zp)


@dataclass(frozen=True)
class PackedGather:
    data: np.ndarray  # uint8 [V, D * bits / 8] (4 bits) or [V, D] (8 bits)
    scales: np.ndarray  # float32 [V, D / bs]
    zero_points: np.ndarray | None  # uint8, packed like data

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.scales.nbytes + (self.zero_points.nbytes if self.zero_points is not None else 0))


def pack_gather(codes: BlockCodes) -> PackedGather:
    """Embedding table ``E [V, D]`` quantized as ``codes`` of ``E^T`` ([D, V], blocks along D)."""
    q = codes.q[: codes.k].T  # [V, D]
    data = pack_codes(q, codes.bits)
    scales = np.ascontiguousarray(codes.scale.T.astype(np.float32))
    zp = None if codes.symmetric else pack_codes(np.asarray(codes.zero, np.uint8).T, codes.bits)
    return PackedGather(np.ascontiguousarray(data), scales, zp)
