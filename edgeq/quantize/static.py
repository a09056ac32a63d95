"""Static INT8 (QDQ) written by edgeq: one streaming calibration pass, subgraphs included,
per-layer SQNR, and an accuracy-budget search that keeps the most sensitive nodes float."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import SampleSet
from ..errors import CalibrationError, QuantizationError
from ..onnxutil import default_opset
from . import qdq
from .calibrate import Calibration, CalibStats, collect
from .spec import QuantSpec


@dataclass
class Prepared:
    """A float model ready to quantize (named nodes, opset raised) and its calibration statistics."""

    model: Any
    stats: CalibStats
    cal: Calibration
    notes: list[str] = field(default_factory=list)


def _feeds(data: SampleSet, n: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(min(n, len(data))):
        yield data.feed(i)


def raise_opset(model: Any, spec: QuantSpec) -> tuple[Any, list[str]]:
    """Per-channel QDQ (axis) needs opset 13; 16-bit QuantizeLinear needs 21."""
    need = 21 if spec.activation_type in ("uint16", "int16") else 13
    have = default_opset(model)
    if have >= need:
        return model, []
    from onnx import version_converter

    try:
        conv = version_converter.convert_version(model, need)
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(
            f"the model has opset {have}; {spec.activation_type} QDQ needs {need} and the conversion failed ({str(e).splitlines()[0][:120]})",
            "re-export the model with a newer opset",
        ) from None
    return conv, [f"opset raised from {have} to {need} ({'16-bit activations' if need == 21 else 'per-channel QDQ'} needs it)"]


def prepare(model: Any, spec: QuantSpec, data: SampleSet, *, on_sample: Callable[[], None] | None = None) -> Prepared:
    import copy

    model = copy.deepcopy(model)
    model, notes = raise_opset(model, spec)
    qdq.name_nodes(model)
    cal = Calibration.parse(spec.calibration, spec.calib_bins)
    full = qdq.plan(model)
    if not full.activations and not full.nodes:
        return Prepared(model, CalibStats({}, 0), cal, notes)
    try:
        runner = qdq.ProbeRunner(model, full.activations)
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(
            f"cannot run the model for calibration: {str(e).strip().splitlines()[0][:200]}",
            "check that the model runs with onnxruntime (edgeq profile MODEL)",
        ) from None
    n = min(spec.calib_samples, len(data))
    try:
        stats = collect(runner, _feeds(data, n), full.activations, cal=cal, on_sample=on_sample)
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(
            f"running a calibration sample failed: {str(e).strip().splitlines()[0][:200]}",
            "check the calibration data against the model's inputs",
        ) from None
    notes.append(f"calibrated ({cal}, {cal.bins} bins) on {stats.samples} sample(s) from {data.source} in one streaming pass")
    nf = stats.nonfinite()
    if nf:
        worst = sorted(nf.items(), key=lambda kv: -kv[1])[:3]
        notes.append(
            "non-finite activation values excluded from the ranges (e.g. -inf masks): "
            + ", ".join(f"{k}: {v}" for k, v in worst)
            + (f" and {len(nf) - 3} more tensor(s)" if len(nf) > 3 else "")
        )
    return Prepared(model, stats, cal, notes)


@dataclass
class Written:
    model: Any
    plan: qdq.Plan
    how: dict[str, str]


def write(prep: Prepared, spec: QuantSpec, keep_float: dict[str, str] | None = None) -> Written:
    op_types = tuple(o for o in spec.op_types if o in qdq.WEIGHT_OPS) or qdq.WEIGHT_OPS
    # a node reading or writing -inf/NaN stays float: QDQ would replace -inf by the range minimum,
    # and onnxruntime's int8-weight MatMul kernels quantize their float input (NaN from -inf)
    nonfinite = set(prep.stats.nonfinite())
    keep = dict(keep_float or {})
    for qn in qdq.plan(prep.model, op_types=op_types).nodes:
        if qn.act_input in nonfinite or qn.output in nonfinite:
            keep.setdefault(qn.name, "its activations hold non-finite values (e.g. -inf masks): kept float")
    p = qdq.plan(prep.model, op_types=op_types, keep_float=keep)
    ranges = {k: v for k, v in prep.stats.ranges(prep.cal).items() if k not in nonfinite}
    opts = qdq.WriteOptions(spec.activation_type, spec.weight_type, spec.per_channel, spec.reduce_range)
    model, how = qdq.write(prep.model, p, ranges, opts)
    return Written(model, p, how)


# -- evaluation ---------------------------------------------------------------------------------


def _session(model: Any):
    import copy

    import onnxruntime as ort

    from ..onnxutil import needs_external_data, session_source

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # a large model goes to onnxruntime through a file with external data, which moves its
    # weights out of the message: hand over a copy, the caller keeps using the model
    with session_source(copy.deepcopy(model) if needs_external_data(model) else model) as src:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def first_outputs(model: Any, data: SampleSet, n: int) -> list[np.ndarray]:
    sess = _session(model)
    name = sess.get_outputs()[0].name
    names = {i.name for i in sess.get_inputs()}
    out = []
    for feed in _feeds(data, n):
        out.append(sess.run([name], {k: v for k, v in feed.items() if k in names})[0])
    return out


def _top1(o: np.ndarray) -> np.ndarray:
    o = np.asarray(o)
    if o.ndim == 0:
        return (o.reshape(1) > 0.5).astype(np.int64)
    if o.shape[-1] == 1:  # one score (e.g. speech probability): threshold at 0.5
        return (o.reshape(-1) > 0.5).astype(np.int64)
    return o.reshape(-1, o.shape[-1]).argmax(-1)


@dataclass(frozen=True)
class Metric:
    name: str  # "accuracy" | "agreement"
    value: float


def metric(outs: list[np.ndarray], ref: list[np.ndarray], labels: np.ndarray | None) -> Metric:
    if labels is not None:
        pred = np.concatenate([_top1(o) for o in outs])
        lab = labels[: len(pred)]
        return Metric("accuracy", float(np.mean(pred[: len(lab)] == lab)))
    a = np.concatenate([_top1(o) for o in outs])
    b = np.concatenate([_top1(o) for o in ref])
    return Metric("agreement", float(np.mean(a == b)) if len(a) else 1.0)


def layer_sqnr(prep: Prepared, written: Written, data: SampleSet, n: int) -> list[dict[str, Any]]:
    """SQNR (dB) of every quantized node's output against fp32, and its local sensitivity."""
    names: list[str] = []
    for qn in written.plan.nodes:
        names += [qn.output] + ([qn.act_input] if qn.act_input else [])
    names = list(dict.fromkeys(names))
    ref = qdq.ProbeRunner(prep.model, names)
    cand = qdq.ProbeRunner(written.model, names)
    acc = qdq.sqnr(ref, cand, _feeds(data, n))
    rows = []
    for qn in written.plan.nodes:
        out = acc.get(qn.output)
        if out is None:  # inside a Loop/Scan body, or a branch the data did not take
            rows.append({"node": qn.name, "op": qn.op_type, "tensor": qn.output, "sqnr_db": None,
                         "sensitivity": 0.0, "quantized_as": written.how.get(qn.name, "")})
            continue
        nsr_out = out.noise / out.signal if out.signal > 0 else math.inf
        inp = acc.get(qn.act_input) if qn.act_input else None
        nsr_in = inp.noise / inp.signal if inp is not None and inp.signal > 0 else 0.0
        rows.append({
            "node": qn.name,
            "op": qn.op_type,
            "tensor": qn.output,
            "sqnr_db": round(out.db, 2) if math.isfinite(out.db) else (999.0 if out.db > 0 else -999.0),
            "sensitivity": max(nsr_out - nsr_in, 0.0) if math.isfinite(nsr_out) else math.inf,
            "quantized_as": written.how.get(qn.name, ""),
        })
    return rows


@dataclass
class SearchStep:
    kept_float: int
    metric: str
    value: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept_float, "metric": self.metric, "value": round(self.value, 5), "drop": round(self.drop, 5)}


@dataclass
class SearchResult:
    written: Written
    steps: list[SearchStep]
    met: bool
    fp32_metric: Metric
    best: SearchStep
    layers: list[dict[str, Any]]


def search(
    prep: Prepared,
    spec: QuantSpec,
    evals: SampleSet,
    max_drop: float,
    *,
    n_eval: int = 1000,
    n_sqnr: int = 32,
    max_steps: int = 10,
) -> SearchResult:
    """Keep the most sensitive nodes float (1, 2, 4, ... of them) until the drop is within budget.

    The best model seen is always returned, with every step in the log.
    """
    ref = first_outputs(prep.model, evals, n_eval)
    fp32 = metric(ref, ref, evals.labels)
    written = write(prep, spec)
    layers = layer_sqnr(prep, written, evals, n_sqnr)
    order = [r["node"] for r in sorted(layers, key=lambda r: -r["sensitivity"])]
    steps: list[SearchStep] = []
    best_w, best = None, None
    k = 0
    for _ in range(max_steps):
        keep = {n: f"kept float by --max-drop search (sensitivity rank {i + 1})" for i, n in enumerate(order[:k])}
        w = written if k == 0 else write(prep, spec, keep)
        m = metric(first_outputs(w.model, evals, n_eval), ref, evals.labels)
        drop = fp32.value - m.value
        step = SearchStep(k, m.name, m.value, drop)
        steps.append(step)
        if best is None or drop < best.drop - 1e-12:
            best_w, best = w, step
        if drop <= max_drop or k >= len(order):
            break
        k = 1 if k == 0 else min(2 * k, len(order))
    assert best_w is not None and best is not None
    return SearchResult(best_w, steps, best.drop <= max_drop, fp32, best, layers)
