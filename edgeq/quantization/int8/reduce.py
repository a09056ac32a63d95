"""In-graph reductions: calibration and per-layer SQNR pull small results out of onnxruntime.

Exposing every calibrated tensor as a graph output costs twice: onnxruntime keeps every graph
output alive to the end of the run (no buffer reuse), and each one is copied out and walked in
Python per sample. onnxruntime's own MinMax calibrator reduces inside the graph instead; so
does edgeq here. Per calibrated float tensor of the main graph, ``CalibProbe`` adds:

- ``ReduceMin``/``ReduceMax`` over every value and ``Size``;
- for histogram methods, a strided sample of the flattened tensor (``Slice`` with the prime
  stride of ``calibrate.sample_step``), at most ``HIST_VALUES`` values. The graph looks the stride
  up itself from the tensor's ``Size`` (``calibrate.step_table``), so no run is spent learning
  sizes first and a sample whose size changed is sampled at its own stride.

``TensorStats.update_reduced`` takes those; the statistics equal ``TensorStats.update`` on the
whole tensor. A tensor whose min or max comes out non-finite (an -inf mask; NaN where the
reduction propagated it or the sample holds one) is exposed whole from then on, the probe
is rebuilt and that sample run again, so non-finite values are counted and excluded as
before. A NaN that neither the reductions nor the sample see is not counted (ranges are right
either way: onnxruntime's min/max skip it). Tensors inside If branches are exposed whole (a
branch not taken gives an empty tensor); models with Loop/Scan keep the copying probe
(``static.calibrate_exposed``), which falls back to weight-only bodies where onnxruntime refuses.

``SqnrProbe`` puts the float and the quantized model into one graph (shared inputs, the quantized
copy's names prefixed) and reduces in the graph the signal energy ``ReduceSumSquare(x)`` and
the noise energy ``ReduceSumSquare(x - x_q)`` of every measured tensor: only scalars leave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import qdq
from .calibrate import HIST_VALUES, STEP_TABLE, Calibration, CalibStats, TensorStats, graph_step, step_table

_SUFFIXES = ("__edgeq_min", "__edgeq_max", "__edgeq_size", "__edgeq_sample", "__edgeq_step")
_Q = "__edgeq_q/"  # prefix of the quantized copy's names in the paired SQNR graph


def _session(model: Any, base_dir: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # no fusions: every probed tensor must exist as computed by the reference graph
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # no memory pattern: its one block per run made the arena grow to about twice the live tensors
    # (measured on a 3x320x320 conv net: 136 vs 114 MB calibrating, 206 vs 103 MB for the paired SQNR)
    so.enable_mem_pattern = False
    return qdq.open_session(model, so, ["CPUExecutionProvider"], base_dir)


def _scalar(v: Any) -> float:
    """The one value of a reduction kept with keepdims=1 (onnxruntime refuses keepdims=0 on a 0-sized axis)."""
    return float(np.asarray(v).reshape(-1)[0])


def _main_tensors(graph: Any) -> set[str]:
    return {i.name for i in graph.input} | {o for n in graph.node for o in n.output}


class CalibProbe:
    """A probe session that returns per calibrated tensor either its reductions or (``whole``) the tensor."""

    def __init__(self, model: Any, names: Iterable[str], *, histogram: bool, base_dir: Any = None, loops: bool = True) -> None:
        self.model, self.names, self.histogram, self.base_dir, self.loops = model, list(names), histogram, base_dir, loops
        floats = qdq.float_tensors(model)
        main = _main_tensors(model.graph)
        inits = {i.name for i in model.graph.initializer}
        self.reducible = {n for n in self.names if n in floats and n in main and n not in inits}
        self.whole: set[str] = set()
        self.sess: Any = None
        self.build()

    def build(self) -> None:
        """(Re)build the probe: the ``whole`` tensors and those that cannot be reduced are graph outputs."""
        from onnx import TensorProto, helper, numpy_helper

        self.sess = None
        reduced = sorted(self.reducible - self.whole)
        pm, exposed = qdq.probe_model(self.model, [n for n in self.names if n not in reduced], self.loops)
        self.exposed = exposed  # output name -> tensor, exposed whole
        g = pm.graph
        g.initializer.append(helper.make_tensor("__edgeq_flat", TensorProto.INT64, [1], [-1]))
        g.initializer.append(helper.make_tensor("__edgeq_zero", TensorProto.INT64, [1], [0]))
        g.initializer.append(helper.make_tensor("__edgeq_end", TensorProto.INT64, [1], [2**62]))
        if self.histogram:  # each tensor's stride from its own size: step_table[min(ceil(size / HIST_VALUES), last)]
            g.initializer.append(numpy_helper.from_array(step_table(), "__edgeq_steps"))
            for name, v in (("__edgeq_hist_m1", HIST_VALUES - 1), ("__edgeq_hist", HIST_VALUES), ("__edgeq_last", STEP_TABLE - 1)):
                g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [], [v]))
        self.red: dict[str, tuple[str, ...]] = {}
        for i, t in enumerate(reduced):
            mn, mx, size, sample, step = (f"{t}{s}{i}" for s in _SUFFIXES)
            g.node.append(helper.make_node("ReduceMin", [t], [mn], name=mn, keepdims=1))
            g.node.append(helper.make_node("ReduceMax", [t], [mx], name=mx, keepdims=1))
            g.node.append(helper.make_node("Size", [t], [size], name=size))
            outs = [mn, mx, size]
            if self.histogram:
                g.node.extend([
                    helper.make_node("Add", [size, "__edgeq_hist_m1"], [step + "_a"], name=step + "_a"),
                    helper.make_node("Div", [step + "_a", "__edgeq_hist"], [step + "_k"], name=step + "_k"),
                    helper.make_node("Min", [step + "_k", "__edgeq_last"], [step + "_m"], name=step + "_m"),
                    helper.make_node("Reshape", [step + "_m", "__edgeq_flat"], [step + "_i"], name=step + "_i"),
                    helper.make_node("Gather", ["__edgeq_steps", step + "_i"], [step], name=step, axis=0),
                ])
                g.node.append(helper.make_node("Reshape", [t, "__edgeq_flat"], [sample + "_flat"], name=sample + "_flat"))
                g.node.append(helper.make_node("Slice", [sample + "_flat", "__edgeq_zero", "__edgeq_end", "__edgeq_zero", step],
                                               [sample], name=sample))
                outs.append(sample)
            for o in outs:
                g.output.append(helper.make_tensor_value_info(o, TensorProto.INT64 if o == size else TensorProto.FLOAT, None))
            self.red[t] = (mn, mx, size, sample, step)
        self.sess = _session(pm, self.base_dir)
        del pm
        self.input_names = {i.name for i in self.sess.get_inputs()}

    def _feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in feed.items() if k in self.input_names}

    def run(self, feed: dict[str, np.ndarray], stats: dict[str, TensorStats]) -> list[str]:
        """Add one sample to ``stats``; returns the tensors found non-finite (nothing added for them)."""
        outs = [o for o in self.sess.get_outputs() if o.name in self.exposed]
        want = [o.name for o in outs]
        red = list(self.red.items())
        for _, r in red:
            want += list(r[:4] if self.histogram else r[:3])
        vals = dict(zip(want, self.sess.run(want, self._feed(feed))))
        bad: list[str] = []
        for t, r in red:
            mn, mx, size = _scalar(vals[r[0]]), _scalar(vals[r[1]]), int(vals[r[2]])
            sample = vals.get(r[3]) if self.histogram else None
            if size and not (math.isfinite(mn) and math.isfinite(mx) and (sample is None or np.isfinite(sample).all())):
                bad.append(t)
        if bad:
            return bad
        for t, r in red:
            mn, mx, size = _scalar(vals[r[0]]), _scalar(vals[r[1]]), int(vals[r[2]])
            stats[t].update_reduced(mn, mx, size, vals.get(r[3]) if self.histogram else None, graph_step(size))
        done: set[str] = set()
        for o in want:
            t = self.exposed.get(o)
            v = vals[o] if t is not None else None
            if t is not None and t not in done and isinstance(v, np.ndarray) and v.size:
                stats[t].update(v)
                done.add(t)
        for k, v in feed.items():  # graph inputs that were not reduced are tensors too
            if k in stats and k not in done and k not in self.red and k in self.exposed.values():
                stats[k].update(v)
        return []


def run_exposing(probe: Any, feed: dict[str, np.ndarray], into: Any) -> None:
    """``probe.run(feed, into)``; tensors it reports non-finite are exposed whole, the probe rebuilt and
    the sample run again (``run`` adds nothing for a sample it reports tensors of)."""
    for _ in range(len(probe.names) + 1):
        bad = probe.run(feed, into)
        if not bad:
            return
        probe.whole |= set(bad)
        probe.build()


def calibrate(
    probe: CalibProbe,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    cal: Calibration,
    on_sample: Callable[[], None] | None = None,
) -> CalibStats:
    """Stream ``feeds`` through ``probe``; a sample with non-finite tensors runs again with those exposed whole."""
    stats = {n: TensorStats(cal.bins, histogram=cal.needs_histogram) for n in probe.names}
    n = 0
    for feed in feeds:
        run_exposing(probe, feed, stats)
        n += 1
        if on_sample:
            on_sample()
    return CalibStats(tensors=stats, samples=n)


def _has_subgraphs(model: Any) -> bool:
    return any(True for _, _, owner in qdq.walk_graphs(model.graph) if owner is not None)


class SqnrProbe:
    """The float and the quantized model in one session; per tensor, signal and noise energy reduced in the graph."""

    def __init__(self, ref: Any, cand: Any, names: Iterable[str], *, base_dir: Any = None) -> None:
        if _has_subgraphs(ref) or _has_subgraphs(cand):
            raise ValueError("models with subgraphs are measured with two probe sessions")
        floats = qdq.float_tensors(ref)
        here = _main_tensors(ref.graph) & _main_tensors(cand.graph)
        self.ref, self.cand, self.base_dir = ref, cand, base_dir
        self.names = [n for n in dict.fromkeys(names) if n in floats and n in here]
        self.whole: set[str] = set()
        self.build()

    def build(self) -> None:
        from onnx import TensorProto, helper

        self.sess = None
        shared = {i.name for i in self.ref.graph.input}

        def q(name: str) -> str:
            return name if not name or name in shared else _Q + name

        m = helper.make_model(helper.make_graph([], "edgeq_sqnr", [], []), ir_version=max(self.ref.ir_version, self.cand.ir_version))
        del m.opset_import[:]
        versions: dict[str, int] = {}
        for o in list(self.ref.opset_import) + list(self.cand.opset_import):
            versions[o.domain] = max(versions.get(o.domain, 0), o.version)
        m.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
        m.functions.extend(self.ref.functions)  # model-local functions (the quantized copy calls the same ones)
        g = m.graph
        g.input.extend(self.ref.graph.input)
        g.initializer.extend(self.ref.graph.initializer)
        g.node.extend(self.ref.graph.node)
        inits = {i.name for i in self.ref.graph.initializer}
        for init in self.cand.graph.initializer:
            t = g.initializer.add()
            t.CopyFrom(init)
            t.name = q(init.name)
        for node in self.cand.graph.node:
            n = g.node.add()
            n.CopyFrom(node)
            n.name = _Q + node.name
            n.input[:] = [q(i) for i in node.input]
            n.output[:] = [q(o) for o in node.output]
        self.outs: dict[str, tuple[str, str]] = {}
        # onnxruntime orders nodes depth first from the graph's last leaf: the last-added reduction
        # is computed first. Added deepest tensor first, the twins are compared (and released) in model order
        for i, t in reversed(list(enumerate(self.names))):
            if t in inits:
                continue
            if t in self.whole:
                for o in (t, q(t)):
                    g.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
                continue
            sig, nse = f"{t}__edgeq_sig{i}", f"{t}__edgeq_nse{i}"
            g.node.append(helper.make_node("ReduceSumSquare", [t], [sig], name=sig, keepdims=1))
            g.node.append(helper.make_node("Sub", [t, q(t)], [nse + "_d"], name=nse + "_d"))
            g.node.append(helper.make_node("ReduceSumSquare", [nse + "_d"], [nse], name=nse, keepdims=1))
            g.output.extend([helper.make_tensor_value_info(sig, TensorProto.FLOAT, None),
                             helper.make_tensor_value_info(nse, TensorProto.FLOAT, None)])
            self.outs[t] = (sig, nse)
        self.sess = _session(m, self.base_dir)
        del m
        self.input_names = {i.name for i in self.sess.get_inputs()}
        self.q = q

    def run(self, feed: dict[str, np.ndarray], acc: dict[str, qdq.Sqnr]) -> list[str]:
        """Add one sample's energies to ``acc``; returns the tensors whose energies were not finite."""
        f = {k: v for k, v in feed.items() if k in self.input_names}
        whole = [t for t in self.names if t in self.whole]
        want = [o for t in whole for o in (t, self.q(t))] + [o for r in self.outs.values() for o in r]
        vals = dict(zip(want, self.sess.run(want, f)))
        bad = [t for t, (s, e) in self.outs.items() if not (math.isfinite(_scalar(vals[s])) and math.isfinite(_scalar(vals[e])))]
        if bad:
            return bad
        for t, (s, e) in self.outs.items():
            acc[t].signal += _scalar(vals[s])
            acc[t].noise += _scalar(vals[e])
        if whole:  # finite entries only, as qdq.sqnr compares them
            got = qdq.sqnr(lambda _: {t: vals[t] for t in whole}, lambda _: {t: vals[self.q(t)] for t in whole}, [f])
            for t, v in got.items():
                acc[t].signal += v.signal
                acc[t].noise += v.noise
        return []


def paired_sqnr(ref: Any, cand: Any, names: Iterable[str], feeds: Iterable[dict[str, np.ndarray]], *,
                base_dir: Any = None) -> dict[str, qdq.Sqnr]:
    """Per-tensor signal and noise energy of ``cand`` against ``ref`` (as ``qdq.sqnr``), reduced in one session."""
    from collections import defaultdict

    probe = SqnrProbe(ref, cand, names, base_dir=base_dir)
    acc: dict[str, qdq.Sqnr] = defaultdict(qdq.Sqnr)
    for feed in feeds:
        run_exposing(probe, feed, acc)
    return dict(acc)
