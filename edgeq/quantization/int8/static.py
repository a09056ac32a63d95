"""Static INT8 (QDQ) written by edgeq: one streaming calibration pass, subgraphs included,
per-layer SQNR, and an accuracy-budget search that keeps the most sensitive nodes float."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.data import SampleSet
from ...errors import CalibrationError, QuantizationError, first_line
from ...core.onnxutil import default_opset
from . import qdq, qdq_acts
from .calibrate import Calibration, CalibStats, collect
from ..spec import QuantSpec


@dataclass
class Prepared:
    """A float model ready to quantize (named nodes, opset raised) and its calibration statistics."""

    model: Any
    stats: CalibStats
    cal: Calibration
    notes: list[str] = field(default_factory=list)
    weights_dir: Any = None
    """Set when ``model``'s initializers are external data in this folder (see ``prepare``)."""
    choice: dict[str, Any] | None = None
    """``--calibration auto``: the method chosen and every candidate's score."""
    weight_cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Quantized weights shared by every ``write`` of ``model`` (``auto``'s candidates, the final model,
    the ``--max-drop`` steps): only activation ranges differ between them. Clear it when done writing."""


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
            f"the model has opset {have}; {spec.activation_type} QDQ needs {need} and the conversion failed ({first_line(e, 120)})",
            "re-export the model with a newer opset",
        ) from None
    return conv, [f"opset raised from {have} to {need} ({'16-bit activations' if need == 21 else 'per-channel QDQ'} needs it)"]


def probe_runner(
    model: Any, names: Any, feed: dict[str, np.ndarray] | None = None, notes: list[str] | None = None, base_dir: Any = None
) -> qdq.ProbeRunner:
    """A ProbeRunner that reaches into Loop/Scan bodies; without them if onnxruntime refuses those
    probes (e.g. a body tensor whose shape changes between iterations cannot be stacked)."""
    try:
        runner = qdq.ProbeRunner(model, names, base_dir=base_dir)
        if runner.loops and feed is not None:
            runner(feed)
        return runner
    except Exception as e:  # noqa: BLE001
        if not any(n.op_type in ("Loop", "Scan") for _, g, _ in qdq.walk_graphs(model.graph) for n in g.node):
            raise
        if notes is not None:
            notes.append(
                "activations inside Loop/Scan bodies could not be exposed for calibration "
                f"({first_line(e, 120)}): those nodes get int8 weights, float activations"
            )
        return qdq.ProbeRunner(model, names, loops=False, base_dir=base_dir)


def release_memory(collect: bool = True) -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise,
    so a freed model's bytes would still count towards the peak of the next stage).
    ``collect=False``: only hand pages back, where what was freed holds no reference cycles (a
    written model's arrays and protobufs): a full collection walks every object onnx and
    onnxruntime created (8-10 ms each time, and ``auto`` writes six models)."""
    import gc

    if collect:
        gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def externalize(model: Any, folder: Path) -> Any:
    """Move ``model``'s weights into ``folder`` (external data) and return the model without them.

    The caller drops its full model: from here on the weights exist once on disk and once
    in whichever onnxruntime session reads them (one at a time), not in Python copies.
    """
    import onnx

    path = Path(folder) / "float.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="float.weights", size_threshold=1024)
    return onnx.load(str(path), load_external_data=False)


def calibrate_reduced(model: Any, names: Any, data: SampleSet, n: int, cal: Calibration,
                      on_sample: Callable[[], None] | None, weights_dir: Path | None) -> CalibStats | None:
    """One streaming pass with min/max and the histogram's sample reduced inside the graph
    (``reduce.CalibProbe``); None when that probe cannot be built or run on this model."""
    from .reduce import CalibProbe, calibrate

    if any(n.op_type in ("Loop", "Scan") for _, g, _ in qdq.walk_graphs(model.graph) for n in g.node):
        return None  # loop bodies: the general path, which falls back to weight-only where onnxruntime refuses probes
    try:
        probe = CalibProbe(model, names, histogram=cal.needs_histogram, base_dir=weights_dir, loops=False)
    except Exception:  # noqa: BLE001 - a graph the reductions cannot be added to: the general path below
        return None
    counted = [0]

    def count() -> None:
        counted[0] += 1
        if on_sample:
            on_sample()

    try:
        return calibrate(probe, _feeds(data, n), cal=cal, on_sample=count)
    except Exception as e:  # noqa: BLE001
        if counted[0]:  # it ran samples, so the data fits: this is the failure to report
            raise CalibrationError(
                f"running a calibration sample failed: {first_line(e, 200)}",
                "check the calibration data against the model's inputs",
            ) from None
        return None
    finally:
        del probe  # its session holds a copy of the weights


def calibrate_exposed(model: Any, names: Any, data: SampleSet, n: int, cal: Calibration,
                      on_sample: Callable[[], None] | None, weights_dir: Path | None, notes: list[str]) -> CalibStats:
    """One streaming pass that copies every calibrated tensor out of the session (``qdq.ProbeRunner``)."""
    try:
        runner = probe_runner(model, names, data.feed(0) if len(data) else None, notes, base_dir=weights_dir)
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(
            f"cannot run the model for calibration: {first_line(e, 200)}",
            "check that the model runs with onnxruntime (edgeq profile MODEL)",
        ) from None
    try:
        return collect(runner, _feeds(data, n), names, cal=cal, on_sample=on_sample)
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(
            f"running a calibration sample failed: {first_line(e, 200)}",
            "check the calibration data against the model's inputs",
        ) from None
    finally:
        del runner  # its session holds a copy of the weights


def prepare(
    model: Any | Path, spec: QuantSpec, data: SampleSet, *, on_sample: Callable[[], None] | None = None, weights_dir: Path | None = None
) -> Prepared:
    """Raise the opset, name nodes, calibrate in one streaming pass.

    ``model`` is a ModelProto (copied, never modified) or a path. With ``weights_dir`` (an
    empty private folder that outlives the returned ``Prepared``) the weights move to external
    data there, which keeps calibration's peak memory near one copy of the weights; pass a
    path then, so that no caller holds the full model meanwhile.
    """
    import copy

    if isinstance(model, (str, Path)):
        from ...core.onnxutil import load_model

        model = load_model(model)
    elif weights_dir is None:
        model = copy.deepcopy(model)
    model, notes = raise_opset(model, spec)
    qdq.name_nodes(model)
    if weights_dir is not None:
        model = externalize(model, weights_dir)
        release_memory()
    cal = Calibration.parse(spec.calibration, spec.calib_bins)
    full = qdq.plan(model)
    acts = tuple(dict.fromkeys(full.activations + qdq_acts.tensors(model, spec.activation_ops)))  # + the target's activation ops
    if not acts and not full.nodes:
        return Prepared(model, CalibStats({}, 0), cal, notes, weights_dir)
    n = min(spec.calib_samples, len(data))
    stats = calibrate_reduced(model, acts, data, n, cal, on_sample, weights_dir)
    if stats is None:  # the in-graph reductions did not run: every tensor copied out, as before them
        stats = calibrate_exposed(model, acts, data, n, cal, on_sample, weights_dir, notes)
    if weights_dir is not None:
        release_memory()
    notes.append(f"calibrated ({cal}, {cal.bins} bins) on {stats.samples} sample(s) from {data.source} in one streaming pass")
    nf = stats.nonfinite()
    if nf:
        worst = sorted(nf.items(), key=lambda kv: -kv[1])[:3]
        notes.append(
            "non-finite activation values excluded from the ranges (e.g. -inf masks): "
            + ", ".join(f"{k}: {v}" for k, v in worst)
            + (f" and {len(nf) - 3} more tensor(s)" if len(nf) > 3 else "")
        )
    prep = Prepared(model, stats, cal, notes, weights_dir)
    if cal.method == "auto":
        from .autocal import choose

        prep = choose(prep, spec, data, n, write=write)
    return prep


@dataclass
class Written:
    model: Any
    plan: qdq.Plan
    how: dict[str, str]
    wide: dict[str, str] = field(default_factory=dict)
    """Nodes given 16-bit activations, and why."""
    activation_qdq: dict[str, str] = field(default_factory=dict)
    """Nodes of the target's ``activation_ops`` (no weights) given QDQ activations: node -> op type."""


def write(prep: Prepared, spec: QuantSpec, keep_float: dict[str, str] | None = None, wide: dict[str, str] | None = None) -> Written:
    """QDQ per ``spec``; ``keep_float`` nodes stay float, ``wide`` nodes get 16-bit activations
    (``spec.wide_activation_type``); both map node name -> why."""
    op_types = tuple(o for o in spec.op_types if o in qdq.WEIGHT_OPS) or qdq.WEIGHT_OPS
    # a node reading or writing -inf/NaN stays float: QDQ would replace -inf by the range minimum,
    # and onnxruntime's int8-weight MatMul kernels quantize their float input (NaN from -inf)
    nonfinite = set(prep.stats.nonfinite())
    keep = dict(keep_float or {})
    for name in spec.nodes_to_exclude:  # e.g. nodes whose integer kernel ran slower than float (quantize.speed)
        keep.setdefault(name, "excluded (nodes_to_exclude)")
    for qn in qdq.plan(prep.model, op_types=op_types).nodes if nonfinite else ():  # (a plan costs ~4 ms a write on a detector)
        if qn.act_input in nonfinite or qn.output in nonfinite:
            keep.setdefault(qn.name, "its activations hold non-finite values (e.g. -inf masks): kept float")
    p = qdq.plan(prep.model, op_types=op_types, keep_float=keep)
    ranges = {k: v for k, v in prep.stats.ranges(prep.cal).items() if k not in nonfinite}
    wide_type = spec.wide_activation_type if wide else None
    opts = qdq.WriteOptions(spec.activation_type, spec.weight_type, spec.per_channel, spec.reduce_range,
                            tuple(sorted(wide)) if wide_type else (), wide_type or "uint16")
    model, how = qdq.write(prep.model, p, ranges, opts, base_dir=prep.weights_dir, weights=prep.weight_cache)
    act_nodes: dict[str, str] = {}
    if spec.activation_ops:  # the target runs fixed point only: QDQ around the other ops too
        model, act_how = qdq_acts.quantize(
            model, spec.activation_ops, ranges, lambda lo, hi: qdq.act_qparams(lo, hi, spec.activation_type), spec.activation_type,
            float_names=qdq.float_tensors(prep.model), keep=keep)
        how.update({k: v for k, v in act_how.items() if k not in how})
        ops = {n.name: n.op_type for n in prep.model.graph.node}
        act_nodes = {k: ops[k] for k, v in act_how.items() if k in ops and not v.startswith("activations float")}
    for name, why in (wide or {}).items():
        if wide_type and name in how and not how[name].startswith("weights int8, activations float"):
            how[name] += f" ({why})"
    if prep.weights_dir is not None:
        release_memory(collect=False)  # each weight was read, converted and quantized: return those pages
    got = {n: w for n, w in (wide or {}).items() if wide_type and n in how and "activations float" not in how[n]}
    return Written(model, p, how, got, act_nodes)


# -- evaluation ---------------------------------------------------------------------------------


def first_outputs(model: Any, data: SampleSet, n: int, base_dir: Any = None) -> list[np.ndarray]:
    sess = qdq.cpu_session(model, base_dir)
    name = sess.get_outputs()[0].name
    names = {i.name for i in sess.get_inputs()}
    out = []
    for feed in _feeds(data, n):
        out.append(sess.run([name], {k: v for k, v in feed.items() if k in names})[0])
    return out


def all_outputs(model: Any, data: SampleSet, n: int, base_dir: Any = None,
                tasks: dict[str, dict[str, Any]] | None = None, pairs: Any = None) -> list[list[np.ndarray]]:
    """Every output of ``model`` on the first ``n`` samples, ``[output][sample]`` (what --max-drop scores).
    Outputs fed back as inputs (edgeq.checks.recurrent; ``tasks``: the app TOML's overrides; ``pairs``: the
    fp32 reference's, else found here): the samples run in order as one stream, each call fed the model's
    own previous state, as the verdict runs them."""
    from ...checks.recurrent import session_rollout

    return session_rollout(qdq.cpu_session(model, base_dir), data, n, tasks, pairs)[0]


def _top1(o: np.ndarray) -> np.ndarray:
    o = np.asarray(o)
    if o.ndim == 0:
        return (o.reshape(1) > 0.5).astype(np.int64)
    if o.shape[-1] == 1:  # one score (e.g. speech probability): threshold at 0.5
        return (o.reshape(-1) > 0.5).astype(np.int64)
    return o.reshape(-1, o.shape[-1]).argmax(-1)


@dataclass(frozen=True)
class Metric:
    name: str  # "accuracy" | "agreement" | "perplexity" | "mean_kl"
    value: float

    def drop_from(self, fp32: Metric) -> float:
        """How much worse than fp32: the quantity ``--max-drop`` bounds."""
        if self.name == "perplexity":  # relative increase
            return self.value / fp32.value - 1.0 if fp32.value > 0 else math.inf
        if self.name == "mean_kl":  # fp32 against itself is 0
            return self.value - fp32.value
        return fp32.value - self.value

    @property
    def drop_means(self) -> str:
        return {
            "accuracy": "fp32 top-1 accuracy minus quantized top-1 accuracy on the labels",
            "agreement": "1 - fraction of top-1 predictions identical to fp32",
            "perplexity": "relative perplexity increase over fp32 on the next-token labels (ppl_q / ppl_fp32 - 1)",
            "mean_kl": "mean KL divergence KL(fp32 || quantized) of the next-token distributions, in nats per token",
            "state": "none: a state fed back as an input is information (edgeq.checks.recurrent); the task outputs, "
                     "scored over the rolled-out calls, decide",
        }.get(self.name, f"1 - {self.name.replace('_', ' ')} of the quantized model's task output against fp32's (edgeq/checks)")


LM_MIN_VOCAB = 32


def looks_like_lm(model: Any, ref: list[np.ndarray]) -> bool:
    """Token ids in (an integer input) and [batch, positions, vocabulary] logits out."""
    ints = {6, 7}  # INT32, INT64
    inits = {i.name for i in model.graph.initializer}
    has_ids = any(i.type.tensor_type.elem_type in ints for i in model.graph.input if i.name not in inits)
    return bool(ref) and has_ids and np.asarray(ref[0]).ndim == 3 and np.asarray(ref[0]).shape[-1] >= LM_MIN_VOCAB


def _log_softmax(o: np.ndarray) -> np.ndarray:
    x = np.asarray(o, np.float64).reshape(-1, np.asarray(o).shape[-1])
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _token_labels(labels: np.ndarray | None, outs: list[np.ndarray]) -> bool:
    """Labels hold one next token per position (not one class per sample)."""
    return labels is not None and labels.ndim >= 2 and len(labels) >= len(outs) and all(
        np.asarray(labels[i]).size == int(np.prod(np.asarray(o).shape[:-1])) for i, o in enumerate(outs)
    )


def metric(outs: list[np.ndarray], ref: list[np.ndarray], labels: np.ndarray | None, *, lm: bool = False, task: Any = None,
           ref_all: list[dict[str, np.ndarray]] | None = None, cand_all: list[dict[str, np.ndarray]] | None = None) -> Metric:
    """Accuracy (labels) or top-1 agreement with fp32; for LM logits (``lm``) perplexity on next-token
    labels, or without them the mean KL(fp32 || quantized) per token. For outputs that are not class
    scores (``task``: edgeq.checks.TaskSpec of the output) the task's own metric against fp32:
    detection F1, map IoU, decoded-sequence match, embedding cosine, exact match of indices, ...
    ``ref_all``/``cand_all``: every output per sample, by name (post-NMS detections read their
    scores and classes there)."""
    if task is not None and task.kind == "state" and not task.params.get("judged"):
        return Metric("state", 1.0)  # fed back as an input: information, the task outputs over the rollout decide
    # a multi-label head decides each label apart (label F1): its top-1 would hide a label that never fires
    if not lm and task is not None and (task.kind not in ("classification", "lm-logits") or task.params.get("multilabel")
                                     or task.params.get("binned")):
        from ...checks.metrics import primary

        name, value = primary(task, ref, outs, ref_all, cand_all)
        return Metric(name, float(value))
    if lm:
        if _token_labels(labels, outs):
            nll, n = 0.0, 0
            for i, o in enumerate(outs):
                lab = np.asarray(labels[i]).reshape(-1).astype(np.int64)
                lp = _log_softmax(o)
                ok = (lab >= 0) & (lab < lp.shape[-1])  # e.g. -100: position not scored
                nll -= float(lp[np.nonzero(ok)[0], lab[ok]].sum())
                n += int(ok.sum())
            return Metric("perplexity", float(np.exp(nll / max(n, 1))))
        kl, n = 0.0, 0
        for o, r in zip(outs, ref):
            lp, lq = _log_softmax(r), _log_softmax(o)
            kl += float((np.exp(lp) * (lp - lq)).sum())
            n += lp.shape[0]
        return Metric("mean_kl", kl / max(n, 1))
    if labels is not None:
        pred = np.concatenate([_top1(o) for o in outs])
        lab = labels[: len(pred)]
        return Metric("accuracy", float(np.mean(pred[: len(lab)] == lab)))
    a = np.concatenate([_top1(o) for o in outs])
    b = np.concatenate([_top1(o) for o in ref])
    return Metric("agreement", float(np.mean(a == b)) if len(a) else 1.0)


def _exposed_sqnr(prep: Prepared, written: Written, names: list[str], data: SampleSet, n: int) -> dict[str, qdq.Sqnr]:
    """Per-tensor energies from two probe sessions that copy every tensor out (subgraphs included)."""
    # the quantized model first: building its probe copies it (inline weights); those pages are
    # returned before the float session reads its weights
    feed = data.feed(0) if len(data) else None
    cand = probe_runner(written.model, names, feed, base_dir=prep.weights_dir)
    if prep.weights_dir is not None:
        release_memory()
    ref = probe_runner(prep.model, names, feed, base_dir=prep.weights_dir)
    return qdq.sqnr(ref, cand, _feeds(data, n))


def layer_samples(prep: Prepared, written: Written) -> int:
    """Samples for the per-layer SQNR report: enough for ``autocal.SCORE_VALUES`` values of the typical
    (median-sized) measured tensor, from the values per sample calibration counted (1 for a conv
    net's feature maps, up to 8 for small tensors). Each sample runs the float and the quantized model once more."""
    from .autocal import SCORE_SAMPLES, SCORE_VALUES

    per = sorted(st.count / max(prep.stats.samples, 1) for qn in written.plan.nodes
                 for st in [prep.stats.tensors.get(qn.output)] if st is not None and st.seen)
    return max(1, min(SCORE_SAMPLES, -(-SCORE_VALUES // max(int(per[len(per) // 2]), 1)))) if per else SCORE_SAMPLES


def layer_sqnr(prep: Prepared, written: Written, data: SampleSet, n: int) -> list[dict[str, Any]]:
    """SQNR (dB) of every quantized node's output against fp32, and its local sensitivity."""
    names: list[str] = []
    for qn in written.plan.nodes:
        names += [qn.output] + ([qn.act_input] if qn.act_input else [])
    names = list(dict.fromkeys(names))
    from .reduce import paired_sqnr

    try:  # both models in one session, energies reduced in the graph: no activation leaves it
        acc = paired_sqnr(prep.model, written.model, names, _feeds(data, n), base_dir=prep.weights_dir)
    except Exception:  # noqa: BLE001 - subgraphs (If/Loop/Scan) or a graph the pairing cannot build
        acc = _exposed_sqnr(prep, written, names, data, n)
    if prep.weights_dir is not None:
        release_memory()
    rows = []
    for qn in written.plan.nodes:
        out = acc.get(qn.output)
        if out is None:  # a branch or loop body the data did not reach
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


@dataclass(frozen=True)
class OutputScores:
    """Every output scored with its task's metric against fp32: what ``--max-drop`` and the gate
    bound. The budget applies per output, so the worst output's drop decides."""

    outputs: tuple[str, ...]
    kinds: tuple[str, ...]
    metrics: tuple[Metric, ...]
    declared: tuple[bool, ...] = ()
    """Whether each output's task was declared in the app TOML (else inferred)."""

    def drops_from(self, fp32: OutputScores) -> tuple[float, ...]:
        return tuple(m.drop_from(f) for m, f in zip(self.metrics, fp32.metrics))

    def drop_from(self, fp32: OutputScores) -> float:
        """The worst output's drop (0 for a model whose outputs are all parts checked elsewhere)."""
        return max(self.drops_from(fp32), default=0.0)

    def worst(self, fp32: OutputScores) -> int:
        drops = self.drops_from(fp32)
        return max(range(len(drops)), key=lambda i: (drops[i], -i)) if drops else 0

    def label(self, i: int) -> str:
        """Output ``i``'s metric as reports print it: the bare name for a one-output model."""
        return self.metrics[i].name if len(self.metrics) == 1 else f"{self.outputs[i]}: {self.metrics[i].name}"

    @property
    def name(self) -> str:
        if len(self.metrics) == 1:
            return self.metrics[0].name
        return "worst of " + ", ".join(self.label(i) for i in range(len(self.metrics)))

    @property
    def value(self) -> float:
        """The first output's value (one-output models: the metric's value)."""
        return self.metrics[0].value if self.metrics else 1.0

    @property
    def drop_means(self) -> str:
        if len(self.metrics) == 1:
            return self.metrics[0].drop_means
        return "the largest drop over the outputs, each by its task metric: " + "; ".join(
            f"{o}: {m.drop_means}" for o, m in zip(self.outputs, self.metrics))

    def per_output(self, fp32: OutputScores) -> list[dict[str, Any]]:
        declared = self.declared or (False,) * len(self.outputs)
        return [{"output": o, "kind": k, "metric": m.name, "value": round(m.value, 5), "drop": round(d, 5), "declared": dc}
                for o, k, m, d, dc in zip(self.outputs, self.kinds, self.metrics, self.drops_from(fp32), declared)]


def output_tasks(model: Any, ref: list[list[np.ndarray]], tasks: dict[str, dict[str, Any]] | None = None, *,
                 pairs: Any = None) -> list[Any]:
    """Each output's TaskSpec (edgeq.checks) from its fp32 values ``ref[output][sample]`` and the app
    TOML's ``[outputs.NAME] task = ...`` overrides ``tasks``: the same inference the verdict uses.
    Outputs fed back as inputs (``state`` kind): ``pairs``, those of the rollout ``ref`` comes from
    (edgeq.checks.recurrent.session_rollout)."""
    from ...checks.kinds import context_from_model, infer_all
    from ...checks.recurrent import mark_states

    names = tuple(o.name for o in model.graph.output)
    specs = infer_all(names, ref, context_from_model(model), tasks)
    if not pairs or not ref or not ref[0]:
        return specs
    return mark_states(specs, pairs, len(ref[0]))


def score_outputs(specs: list[Any], outs: list[list[np.ndarray]], ref: list[list[np.ndarray]],
                  labels: np.ndarray | None, masks: list[np.ndarray] | None = None) -> OutputScores:
    """Every output against fp32 with its task's metric (``specs`` from :func:`output_tasks`);
    ``masks`` (edgeq.checks.masking.token_masks): embedding outputs scored on the real tokens, as the verdict does.

    Labels score the first classification output (accuracy), or the first LM logits whose shape
    they fit (perplexity); every other output is scored against fp32.
    """
    n = min(len(ref[0]) if ref else 0, len(outs[0]) if outs else 0)
    from ...checks.masking import masked

    outs, ref = masked(specs, outs, masks), masked(specs, ref, masks)
    names = [s.output for s in specs]
    ref_all = [{nm: ref[k][i] for k, nm in enumerate(names)} for i in range(n)]
    cand_all = [{nm: outs[k][i] for k, nm in enumerate(names)} for i in range(n)]
    metrics: list[Metric] = []
    labels_used = False
    for k, spec in enumerate(specs):
        lm = spec.kind == "lm-logits" and bool(ref[k]) and np.asarray(ref[k][0]).ndim >= 2  # perplexity / mean KL
        lab = None
        if labels is not None and not labels_used and (spec.kind == "classification" or (lm and _token_labels(labels, outs[k]))):
            lab, labels_used = labels, True
        metrics.append(metric(outs[k][:n], ref[k][:n], lab, lm=lm, task=spec, ref_all=ref_all, cand_all=cand_all))
    return OutputScores(tuple(names), tuple(s.kind for s in specs), tuple(metrics), tuple(bool(s.declared) for s in specs))


@dataclass
class SearchStep:
    kept_float: int
    metric: str
    value: float
    drop: float
    kept_16bit: int = 0
    """Nodes given 16-bit activations at this step (instead of fp32)."""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Every output's metric and drop (``metric``/``value`` above: the worst output's, which decides)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept_float, "kept_16bit": self.kept_16bit, "metric": self.metric,
                "value": round(self.value, 5), "drop": round(self.drop, 5), "outputs": list(self.outputs)}


@dataclass
class SearchResult:
    written: Written
    steps: list[SearchStep]
    met: bool
    fp32_metric: OutputScores
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
    outputs_of: Any = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> SearchResult:
    """Keep the most sensitive nodes float (1, 2, 4, ... of them) until the drop is within budget.

    Where the target allows 16-bit activations (``spec.wide_activation_type``), each step first
    gives those nodes 16-bit activations (weights stay int8) and keeps them fp32 only if that
    misses the budget. The best model seen is always returned, with every step in the log.
    Every output is scored with its task's metric (``tasks``: the app TOML's per-output overrides)
    and the worst output's drop is held to ``max_drop``. ``outputs_of.every`` (same arguments and
    result as :func:`all_outputs`) runs the candidates elsewhere, e.g. on the target's
    accelerator; the fp32 reference always runs on the CPU provider.
    """
    from ...checks.recurrent import session_rollout

    ref, pairs = session_rollout(qdq.cpu_session(prep.model, prep.weights_dir), evals, n_eval, tasks)  # as all_outputs, and the pairs
    specs = output_tasks(prep.model, ref, tasks, pairs=pairs)  # every output, app TOML overrides included: what the verdict judges
    stateful = any(s.kind == "state" for s in specs)  # rolled out here on the CPU: the accelerator's runner takes one call at a time

    def run_candidate(model: Any, data: SampleSet, n: int, base_dir: Any = None) -> list[list[np.ndarray]]:
        if outputs_of is not None and not stateful:
            return outputs_of.every(model, data, n, base_dir)
        return all_outputs(model, data, n, base_dir, tasks, pairs)  # streamed as fp32 was
    from ...checks.masking import token_masks

    masks = token_masks(evals, n_eval)
    fp32 = score_outputs(specs, ref, ref, evals.labels, masks)
    written = write(prep, spec)
    layers = layer_sqnr(prep, written, evals, n_sqnr)
    order = [r["node"] for r in sorted(layers, key=lambda r: -r["sensitivity"])]
    steps: list[SearchStep] = []
    best_w, best = None, None
    wide_type = spec.wide_activation_type
    k = 0
    met = False
    for _ in range(max_steps):
        for kind in ("16bit", "float") if k and wide_type else ("float",):
            if kind == "16bit":
                wide = {n: f"{wide_type} activations by --max-drop search (sensitivity rank {i + 1})" for i, n in enumerate(order[:k])}
                w = write(prep, spec, wide=wide)
                step_k = (0, k)
            else:
                keep = {n: f"kept float by --max-drop search (sensitivity rank {i + 1})" for i, n in enumerate(order[:k])}
                w = written if k == 0 else write(prep, spec, keep)
                step_k = (k, 0)
            m = score_outputs(specs, run_candidate(w.model, evals, n_eval, prep.weights_dir), ref, evals.labels, masks)
            drop, i = m.drop_from(fp32), m.worst(fp32)
            step = SearchStep(step_k[0], m.label(i), m.metrics[i].value if m.metrics else 1.0, drop, step_k[1], m.per_output(fp32))
            steps.append(step)
            if best is None or drop < best.drop - 1e-12:
                best_w, best = w, step
            if drop <= max_drop:
                met = True
                break
        if met or k >= len(order):
            break
        k = 1 if k == 0 else min(2 * k, len(order))
    assert best_w is not None and best is not None
    return SearchResult(best_w, steps, best.drop <= max_drop, fp32, best, layers)
