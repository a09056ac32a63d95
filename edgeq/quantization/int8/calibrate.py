"""Streaming calibration statistics: one pass, memory bounded by the model, not the data.

Each calibrated tensor keeps a running min/max and a fixed-bin histogram over a
symmetric range [-R, R] (R a power of two) that doubles when a larger value arrives (adjacent bins
are merged pairwise, so re-binning is exact and histograms stay mergeable).
Non-finite values (masks of -inf, overflowed NaN) are counted and excluded from
both the range and the histogram; they are reported, never folded in.
Large tensors (over ``HIST_VALUES`` values per sample) feed the histogram a strided sample
(a prime stride, so image rows and channels do not alias); min and max always see every value.
Binning was most of calibration's time on conv nets with large activations.

Range selection from the statistics:
- ``minmax``: the observed finite min/max;
- ``percentile:P``: the P-th upper (and 100-P lower) percentile of the histogram;
- ``entropy``: the clipping threshold minimising the KL divergence between the
  clipped |x| distribution and its 128-level quantized version (TensorRT's recipe),
  never below the 99.9th percentile of |x| (KL on sparse histograms clips signal);
- ``mse``: the clipping threshold minimising the expected squared quantization
  error (clipping error plus uniform rounding noise) over the histogram;
- ``auto``: every method above from the same histograms, each written as a QDQ model and
  scored by its output error against fp32 (``autocal.choose``); the best one is used.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import EdgeqError

MAX_BINS = 65536  # --calib-bins: more bins cost time (O(bins) per tensor per batch) and buy nothing
DEFAULT_BINS = 2048
HIST_VALUES = 1 << 16  # values per tensor per sample binned into the histogram (a strided sample above)


def _prime_at_least(n: int) -> int:
    k = max(2, n)
    while any(k % p == 0 for p in range(2, int(k**0.5) + 1)):
        k += 1
    return k


def sample_step(size: int) -> int:
    """Stride of the histogram's sample of a tensor of ``size`` values: 1 up to ``HIST_VALUES``, else a
    prime (so image rows and channels do not alias) that leaves at most ``HIST_VALUES`` values."""
    return 1 if size <= HIST_VALUES else _prime_at_least(-(-size // HIST_VALUES))


STEP_TABLE = 1 << 15  # graph_step's table: strides of tensors up to STEP_TABLE * HIST_VALUES (2**31) values


@functools.lru_cache(maxsize=1)
def step_table() -> np.ndarray:
    """Entry ``k``: ``sample_step`` of a tensor of ``k`` x ``HIST_VALUES`` values, i.e. 1 for k <= 1, else the
    least prime >= k. A probe graph looks its stride up here from its tensor's size (``reduce.CalibProbe``)."""
    sieve = np.ones(2 * STEP_TABLE + 64, bool)
    sieve[:2] = False
    for p in range(2, int(sieve.size**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    primes = np.nonzero(sieve)[0]
    table = primes[np.searchsorted(primes, np.maximum(np.arange(STEP_TABLE), 2))].astype(np.int64)
    table[:2] = 1
    return table


def graph_step(size: int) -> int:
    """The stride a probe graph takes for a tensor of ``size`` values: ``sample_step(size)`` (the table's
    last entry past 2**31 values)."""
    return int(step_table()[min(-(-size // HIST_VALUES), STEP_TABLE - 1)])


METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
# what ``auto`` tries, in order of preference on a tie
AUTO_CANDIDATES = ("minmax", "percentile:99.99", "percentile:99.9", "entropy", "mse")


@dataclass(frozen=True)
class Calibration:
    """A parsed ``--calibration`` value: ``minmax``, ``percentile:99.99``, ``entropy``, ``mse``, ``auto``."""

    method: str = "minmax"
    percentile: float = 99.99
    bins: int = DEFAULT_BINS

    @classmethod
    def parse(cls, text: str, bins: int = DEFAULT_BINS) -> Calibration:
        name, _, arg = text.partition(":")
        if name not in METHODS:
            raise EdgeqError(f"unknown calibration method '{text}'", "choose auto, minmax, percentile:99.99, entropy or mse")
        if bins < 128 or bins % 4 or bins > MAX_BINS:
            raise EdgeqError(f"calibration bins must be a multiple of 4 from 128 to {MAX_BINS}, got {bins}", "use e.g. 2048")
        if name == "percentile":
            try:
                p = float(arg) if arg else 99.99
            except ValueError:
                p = -1.0
            if not 50.0 < p <= 100.0:
                raise EdgeqError(f"bad percentile in '{text}'", "write e.g. percentile:99.99 (between 50 and 100)")
            return cls("percentile", p, bins)
        if arg:
            raise EdgeqError(f"calibration method '{name}' takes no argument", f"write just '{name}'")
        return cls(name, 99.99, bins)

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def __str__(self) -> str:
        return f"percentile:{self.percentile:g}" if self.method == "percentile" else self.method


class TensorStats:
    """Running statistics of one tensor; ``update`` is O(bins) memory, whatever the data."""

    __slots__ = ("bins", "hist", "lo", "hi", "R", "count", "nonfinite")

    def __init__(self, bins: int = DEFAULT_BINS, histogram: bool = True) -> None:
        self.bins = bins
        self.hist = np.zeros(bins, np.float64) if histogram else None
        self.lo = math.inf
        self.hi = -math.inf
        self.R = 0.0
        self.count = 0
        self.nonfinite = 0

    def update(self, arr: np.ndarray) -> None:
        a = np.asarray(arr)
        if a.dtype.kind != "f" or a.size == 0:
            return
        a = a.reshape(-1)
        mn, mx = float(a.min()), float(a.max())
        if not (math.isfinite(mn) and math.isfinite(mx)):  # only then pay for a mask
            fin = np.isfinite(a)
            nf = int(a.size - np.count_nonzero(fin))
            self.nonfinite += nf
            a = a[fin]
            if a.size == 0:
                return
            mn, mx = float(a.min()), float(a.max())
        a = a.astype(np.float32, copy=False)
        self.lo, self.hi = min(self.lo, mn), max(self.hi, mx)
        self.count += int(a.size)
        if self.hist is None:
            return
        step = sample_step(a.size)  # the histogram's shape from a strided sample (weighted back); the range above saw every value
        self._bin(a[::step], max(abs(mn), abs(mx)), step)

    def update_reduced(self, mn: float, mx: float, size: int, sample: np.ndarray | None = None, step: int = 1) -> None:
        """The same as ``update`` from what was reduced elsewhere (in the graph, see ``reduce``): the finite
        ``mn``/``mx`` and ``size`` of every value, and ``sample`` = the flattened values ``[::step]``
        (``step`` = ``graph_step`` of the size)."""
        if size <= 0:
            return
        self.lo, self.hi = min(self.lo, float(mn)), max(self.hi, float(mx))
        self.count += int(size)
        if self.hist is None or sample is None:
            return
        self._bin(np.asarray(sample, np.float32).reshape(-1), max(abs(float(mn)), abs(float(mx))), step)

    def _bin(self, a: np.ndarray, need: float, step: int) -> None:
        if self.R == 0.0:
            # a power of two, so that any two histograms re-bin onto the same edges (exact merge)
            self.R = 2.0 ** math.ceil(math.log2(need)) if need > 0 else 2.0**-30
        while need > self.R:
            self._double()
        # bincount on computed bin indices: several times faster than np.histogram
        idx = ((a + np.float32(self.R)) * np.float32(self.bins / (2.0 * self.R))).astype(np.int32)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.hist += np.bincount(idx, minlength=self.bins) * step

    def _double(self) -> None:
        # new bin k covers old bins 2k'..2k'+1 of the centre half: exact merge
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        q = self.bins // 4
        new = np.zeros_like(self.hist)
        new[q : q + merged.size] = merged
        self.hist = new
        self.R *= 2.0

    def merge(self, other: TensorStats) -> TensorStats:
        """Statistics of both streams together (histograms re-binned to the wider range)."""
        out = copy.deepcopy(self)
        o = copy.deepcopy(other)
        out.lo, out.hi = min(out.lo, o.lo), max(out.hi, o.hi)
        out.count += o.count
        out.nonfinite += o.nonfinite
        if out.hist is None or o.hist is None:
            out.hist = None
            return out
        if out.R == 0.0:
            out.hist, out.R = o.hist, o.R
            return out
        if o.R == 0.0:
            return out
        # ranges differ by a power of two only if they started equal; otherwise re-bin by edges
        while out.R < o.R:
            out._double()
        while o.R < out.R and o.R * 2 <= out.R:
            o._double()
        if o.R == out.R:
            out.hist += o.hist
        else:
            centres = (np.arange(o.bins) + 0.5) / o.bins * 2 * o.R - o.R
            h, _ = np.histogram(centres, bins=out.bins, range=(-out.R, out.R), weights=o.hist)
            out.hist += h
        return out

    @property
    def seen(self) -> bool:
        return self.count > 0

    # -- range selection -------------------------------------------------------------------

    def range(self, cal: Calibration) -> tuple[float, float]:
        """(low, high) to quantize this tensor with; always contains 0 and is finite."""
        if not self.seen:
            return 0.0, 0.0
        lo, hi = self.lo, self.hi
        # "auto" is resolved to one concrete method before ranges are taken (autocal.choose); min-max otherwise
        if cal.method not in ("minmax", "auto") and self.hist is not None and self.hist.sum() > 0:
            if cal.method == "percentile":
                lo, hi = self._percentile(cal.percentile)
            elif cal.method == "entropy":
                # KL on sparse histograms (few samples) can clip real signal: never clip more than 0.1 %
                t = max(self._entropy_threshold(), self._abs_quantile(0.999))
                lo, hi = max(lo, -t), min(hi, t)
            elif cal.method == "mse":
                lo, hi = self._mse_range()
        return min(lo, 0.0), max(hi, 0.0)

    def _edges(self) -> np.ndarray:
        return np.linspace(-self.R, self.R, self.bins + 1)

    def _percentile(self, p: float) -> tuple[float, float]:
        cdf = np.cumsum(self.hist)
        total = cdf[-1]
        edges = self._edges()
        lo_i = int(np.searchsorted(cdf, total * (100.0 - p) / 100.0, side="left"))
        hi_i = int(np.searchsorted(cdf, total * p / 100.0, side="left"))
        lo = max(self.lo, float(edges[lo_i]))
        hi = min(self.hi, float(edges[min(hi_i + 1, self.bins)]))
        return lo, hi

    def _abs_quantile(self, q: float) -> float:
        h = self._abs_hist()
        cdf = np.cumsum(h)
        i = int(np.searchsorted(cdf, q * cdf[-1], side="left"))
        return (i + 1) * self.R / h.size

    def _abs_hist(self) -> np.ndarray:
        half = self.bins // 2
        return self.hist[half:] + self.hist[:half][::-1]

    def _entropy_threshold(self, levels: int = 128) -> float:
        """KL-optimal threshold on |x| (TensorRT); candidates every few bins from ``levels`` up.

        All candidate thresholds at once (one row each, bins past a row's threshold zeroed): the
        histogram holds whole counts, so every sum of them is exact in any order."""
        h = self._abs_hist()
        n = h.size
        width = self.R / n
        last = int(np.max(np.nonzero(h))) + 1
        if last <= levels:
            return last * width
        step = max(1, (last - levels) // 128)  # at most ~128 thresholds tried: each costs O(bins)
        ths = np.arange(levels, last + 1, step)  # a row per threshold i: bins 0..i-1
        j = np.arange(last)
        inside = j[None, :] < ths[:, None]
        hl = h[:last]
        p = np.where(inside, hl[None, :], 0.0)
        tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # tail[i] = h[i:].sum()
        rows = np.arange(ths.size)
        p[rows, ths - 1] += tail[ths]  # the clipped mass goes into the last bin kept
        nz = inside & (hl[None, :] > 0)
        # merge each row's i bins into ``levels`` groups, spread each group evenly over its non-empty bins
        grp = np.where(inside, (j[None, :] * levels) // ths[:, None], 0) + rows[:, None] * levels
        sums = np.bincount(grp.ravel(), weights=np.where(inside, hl[None, :], 0.0).ravel(), minlength=ths.size * levels)
        cnts = np.bincount(grp.ravel(), weights=nz.ravel().astype(np.float64), minlength=ths.size * levels)
        q = np.where(nz, sums[grp] / np.maximum(cnts[grp], 1), 0.0)
        ps, qs = p.sum(axis=1), q.sum(axis=1)
        ok = (ps > 0) & (qs > 0)
        pn = p / np.where(ok, ps, 1.0)[:, None]
        qn = q / np.where(ok, qs, 1.0)[:, None]
        m = pn > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(m & (qn > 0), pn * np.log(np.where(m, pn, 1.0) / np.where(qn > 0, qn, 1.0)), 0.0)
        kl = np.where(ok & ~np.any(m & (qn == 0), axis=1), terms.sum(axis=1), math.inf)
        if not np.any(np.isfinite(kl)):
            return last * width
        return int(ths[int(np.argmin(kl))]) * width

    def _mse_range(self, levels: int = 256) -> tuple[float, float]:
        edges = self._edges()
        centres = (edges[:-1] + edges[1:]) / 2
        w = self.hist
        amax = max(abs(self.lo), abs(self.hi))
        if not amax > 0:
            return min(self.lo, 0.0), max(self.hi, 0.0)
        # every threshold at once, a row each
        t = np.geomspace(amax / 1024, amax, 160)
        lo = np.minimum(np.maximum(self.lo, -t), 0.0)
        hi = np.maximum(np.minimum(self.hi, t), 0.0)
        step = np.where(hi > lo, (hi - lo) / (levels - 1), 1e-12)
        clipped = np.clip(centres[None, :], lo[:, None], hi[:, None])
        err = np.sum(w[None, :] * ((centres[None, :] - clipped) ** 2 + (step * step / 12.0)[:, None]), axis=1)
        k = int(np.argmin(err))
        if not err[k] < math.inf:  # as the loop it replaces: no finite error keeps the observed range
            return self.lo, self.hi
        return float(lo[k]), float(hi[k])

    def to_dict(self) -> dict[str, Any]:
        return {
            "min": self.lo if self.seen else None,
            "max": self.hi if self.seen else None,
            "values": self.count,
            "nonfinite": self.nonfinite,
        }


@dataclass
class CalibStats:
    """Statistics of every calibrated tensor, and what was seen while collecting them."""

    tensors: dict[str, TensorStats]
    samples: int
    peak_bytes: int = 0
    _ranges: dict[Calibration, dict[str, tuple[float, float]]] = field(default_factory=dict, repr=False, compare=False)

    def nonfinite(self) -> dict[str, int]:
        return {k: v.nonfinite for k, v in sorted(self.tensors.items()) if v.nonfinite}

    def ranges(self, cal: Calibration) -> dict[str, tuple[float, float]]:
        # kept per method: ``auto`` compares candidates' ranges, then writes the model with them
        if cal not in self._ranges:
            self._ranges[cal] = {k: v.range(cal) for k, v in self.tensors.items() if v.seen}
        return dict(self._ranges[cal])


def collect(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: Iterable[dict[str, np.ndarray]],
    names: Iterable[str],
    *,
    cal: Calibration,
    on_sample: Callable[[], None] | None = None,
) -> CalibStats:
    """Stream ``feeds`` through ``run`` (which returns the named tensors) and keep only statistics."""
    names = list(names)
    stats = {n: TensorStats(cal.bins, histogram=cal.needs_histogram) for n in names}
    n = 0
    for feed in feeds:
        outs = run(feed)
        for name, arr in outs.items():
            st = stats.get(name)
            if st is not None:
                st.update(arr)
        del outs
        n += 1
        if on_sample:
            on_sample()
    return CalibStats(tensors=stats, samples=n)
