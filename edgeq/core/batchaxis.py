"""Which axis of each model input carries the batch, read from the declared shapes alone.

Calibration and evaluation arrays may hold their samples along that axis (edgeq.core.data); the
rule is documented for users in docs/calibration-data.md:

1. a rank-0 input (a sample rate, a flag) has no batch axis;
2. the batch symbol: a symbolic axis name that looks like one (holds "batch") or that sits first in
   one input of rank 2 or more and is shared by another (a rank-1 input's only axis is first
   whatever it means: ``pos [L]`` beside ``tokens [N, L]`` does not make ``L`` the batch); an input
   holding it exactly once has its batch axis there (an RNN state ``[layers, batch, hidden]`` beside
   ``x [batch, time, features]``);
3. otherwise a first axis that is dynamic (symbolic, ``-1`` or unnamed) or declared 1 (today's rule);
4. a first axis fixed to another size: the only dynamic axis, else the only axis declared 1;
   with none of either every axis is fixed and the input has no batch axis (one array of its
   shape is one sample); with several of either edgeq cannot tell, and only samples stacked on
   a new first axis are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .artifact import Dim, TensorSpec


@dataclass(frozen=True)
class BatchAxis:
    """One input's batch axis: ``axis`` None when it has none (``known``) or edgeq cannot tell (not ``known``)."""

    axis: int | None
    why: str
    known: bool = True

    def describe(self) -> str:
        if self.axis is not None:
            return f"batch axis {self.axis}: {self.why}"
        return f"no batch axis: {self.why}" if self.known else f"batch axis unknown: {self.why}"


def _dynamic(d: Dim) -> bool:
    return not isinstance(d, int)


def _axes_str(axes: list[int]) -> str:
    return ", ".join(str(a) for a in axes)


def batch_symbol(specs: Sequence[TensorSpec]) -> str | None:
    """The symbolic name of the batch axis shared across inputs, or None when there is none or it is unclear."""
    holders: dict[str, list[bool]] = {}  # symbol -> per input holding it: is it the first of two or more axes there
    for spec in specs:
        for sym in dict.fromkeys(d for d in spec.shape if isinstance(d, str) and d):
            holders.setdefault(sym, []).append(len(spec.shape) >= 2 and spec.shape[0] == sym)

    def key(sym: str) -> tuple[bool, int, int]:
        return "batch" in sym.lower(), len(holders[sym]), sum(holders[sym])

    cands = [s for s, first in holders.items() if "batch" in s.lower() or (len(first) >= 2 and any(first))]
    if not cands:
        return None
    ranked = sorted(cands, key=key, reverse=True)
    if len(ranked) > 1 and key(ranked[0]) == key(ranked[1]):
        return None  # two equally likely names: leave it to the per-input rules
    return ranked[0]


def batch_axes(specs: Sequence[TensorSpec]) -> dict[str, BatchAxis]:
    """Each input's batch axis (the module doc's rule); the inputs are read together for the shared symbol."""
    sym = batch_symbol(specs)
    return {spec.name: _batch_axis(spec.shape, sym) for spec in specs}


def _batch_axis(shape: tuple[Dim, ...], sym: str | None) -> BatchAxis:
    if not shape:
        return BatchAxis(None, "a scalar input")
    if sym is not None and shape.count(sym) == 1:
        return BatchAxis(shape.index(sym), f"named '{sym}'")
    if _dynamic(shape[0]):
        return BatchAxis(0, "the first axis, dynamic")
    if shape[0] == 1:
        return BatchAxis(0, "the first axis, declared 1")
    dynamic = [i for i, d in enumerate(shape) if _dynamic(d)]
    if len(dynamic) == 1:
        return BatchAxis(dynamic[0], f"the only dynamic axis (axis 0 is fixed to {shape[0]})")
    if len(dynamic) > 1:
        return BatchAxis(None, f"axis 0 is fixed to {shape[0]} and axes {_axes_str(dynamic)} are dynamic", known=False)
    ones = [i for i, d in enumerate(shape) if d == 1]
    if len(ones) == 1:
        return BatchAxis(ones[0], f"the only axis declared 1 (axis 0 is fixed to {shape[0]})")
    if len(ones) > 1:
        return BatchAxis(None, f"axis 0 is fixed to {shape[0]} and axes {_axes_str(ones)} are declared 1", known=False)
    return BatchAxis(None, "every axis is fixed and none is 1")
