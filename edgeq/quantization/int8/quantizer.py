"""INT8 (static QDQ/QOperator, dynamic) and fp16 through onnxruntime's quantizer.

onnxruntime is the engine; edgeq chooses the recipe from the target, feeds it
checked data, and refuses results that would ship silently broken: zero
coverage, non-finite scales.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.artifact import Artifact
from ...core.data import SampleSet
from ...errors import CalibrationError, QuantizationError, first_line
from ...core.onnxutil import (ML_DOMAIN, QUANT_OPS, artifact_from, data_file, default_opset, iter_initializers, iter_nodes, load_model, needs_external_data,
                                save_model)
from .checks import bias_overflow, check_operator_scales, explain_quantizer_failure
from .dynamic_scope import (RECURRENT_OPS, RECURRENT_QUANTIZED, has_subgraphs, none_quantized, static_misses_recurrent, subgraph_counts,
                            subgraph_note)
from ..spec import QuantSpec

# Op types whose weights carry the model's size and compute.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QUANTIZED_FORMS = {
    "QLinearConv": "Conv",
    "ConvInteger": "Conv",
    "QLinearMatMul": "MatMul",
    "MatMulInteger": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "QGemm": "Gemm",
    "MatMulNBits": "MatMul",
    "DynamicQuantizeLSTM": "LSTM",
}
# Dynamic INT8 of convolutions (ConvInteger) is several times slower than fp32
# on CPUs: leave convolutions in float unless the user asks for them.
DYNAMIC_DEFAULT_OPS = ("MatMul", "Attention", "LSTM", "Gemm")

_QTYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16"}


@dataclass(frozen=True)
class Coverage:
    """How much of the model's weight compute was quantized, per op type."""

    total: dict[str, int]
    quantized: dict[str, int]
    weight_bytes_total: int
    weight_bytes_quantized: int

    @property
    def nodes_total(self) -> int:
        return sum(self.total.values())

    @property
    def nodes_quantized(self) -> int:
        return sum(self.quantized.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes_total": self.nodes_total,
            "nodes_quantized": self.nodes_quantized,
            "by_op": {k: {"total": v, "quantized": self.quantized.get(k, 0)} for k, v in sorted(self.total.items())},
            "weight_bytes_total": self.weight_bytes_total,
            "weight_bytes_quantized": self.weight_bytes_quantized,
        }


@dataclass(frozen=True)
class QuantResult:
    artifact: Artifact
    spec: QuantSpec
    coverage: Coverage | None
    notes: tuple[str, ...] = field(default=())
    details: dict[str, Any] = field(default_factory=dict)
    """edgeq static QDQ: calibration, per-layer SQNR, nodes kept float and why, budget search log."""
    budget_met: bool = True

    def recipe(self) -> dict[str, Any]:
        engine = self.details.get("engine") or f"onnxruntime {_ort_version()}"
        d = {"engine": engine, **self.spec.to_dict()}
        if self.coverage is not None:
            d["coverage"] = self.coverage.to_dict()
        d["notes"] = list(self.notes)
        d.update({k: v for k, v in self.details.items() if k != "engine"})
        if self.all_float:  # labelled for what it is: an fp32 model, whatever mode was asked for
            d.update(mode="none", requested_mode=self.spec.mode)
        return d

    @property
    def all_float(self) -> bool:
        """An INT8 mode that quantized none of the model's weight nodes (a --max-drop search that kept every one float), or
        wrote no quantized op at all into a model without any (a tree ensemble: nothing to quantize)."""
        cov = self.coverage
        return self.spec.mode in ("int8-static", "int8-dynamic") and cov is not None and (
            (cov.nodes_total > 0 and cov.nodes_quantized == 0) or bool(self.details.get("nothing_quantized")))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class _Reader:
    """onnxruntime CalibrationDataReader over a SampleSet, with a progress callback."""

    def __init__(self, data: SampleSet, n: int, on_sample: Any = None) -> None:
        self.data, self.n, self.i, self.on_sample = data, n, 0, on_sample

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.n:
            return None
        feed = self.data.feed(self.i)
        self.i += 1
        if self.on_sample:
            self.on_sample()
        return feed

    def rewind(self) -> None:
        self.i = 0


@contextlib.contextmanager
def _cwd(path: Path):
    # onnxruntime's pre-processing leaves stray files in the working directory when it fails
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _preprocess(src: Path, dst: Path) -> list[str]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _cwd(dst.parent):
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=True)
            return []
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on many real models
            pass
        try:
            quant_pre_process(str(src), str(dst), skip_optimization=True, skip_symbolic_shape=True)
            return ["symbolic shape inference failed; used ONNX shape inference only"]
        except Exception as e:  # noqa: BLE001
            raise QuantizationError(
                f"quantization pre-processing failed: {first_line(e, 200)}",
                "check the model with `edgeq inspect`",
            ) from None


def coverage(fp32_model: Any, q_model: Any, ops: tuple[str, ...] = WEIGHT_OPS) -> Coverage:
    """Count nodes of ``ops`` (Conv/Gemm/MatMul; dynamic INT8 adds LSTM/GRU/RNN) with constant weights
    (and their bytes) before and after. A recurrent node's weights are W and R (inputs 1 and 2)."""
    import onnx

    total: collections.Counter[str] = collections.Counter()
    weight_bytes_total = 0
    from .qdq import const_names

    inits = const_names(fp32_model)  # initializers and Constant nodes, subgraphs included
    for n in iter_nodes(fp32_model.graph):
        if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits:
            total[n.op_type] += 1
            weight_bytes_total += sum(int(np.prod(inits[w].dims)) * 4 for w in _weights(n, inits))
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    q_inits = {i.name: i for i in iter_initializers(q_model.graph)}
    produced_by = {o: n for n in iter_nodes(q_model.graph) for o in n.output}

    def int_weight(name: str) -> int:
        init = q_inits.get(name)
        if init is not None and init.data_type in int_types and len(init.dims) >= 2:
            return int(np.prod(init.dims))
        return 0

    quantized: collections.Counter[str] = collections.Counter()
    weight_bytes_q = 0
    for n in iter_nodes(q_model.graph):
        if n.op_type == "DynamicQuantizeLSTM":  # int8 W and R
            quantized["LSTM"] += 1
            weight_bytes_q += 4 * sum(int_weight(i) for i in n.input[1:3])
        elif n.op_type in QUANTIZED_FORMS:
            quantized[QUANTIZED_FORMS[n.op_type]] += 1
            weight_bytes_q += 4 * max((int_weight(i) for i in n.input), default=0)
        elif n.op_type in WEIGHT_OPS and len(n.input) > 1:
            src = produced_by.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear" and int_weight(src.input[0]):
                quantized[n.op_type] += 1
                weight_bytes_q += 4 * int_weight(src.input[0])
    moved = min(max(quantized["MatMul"] - total["MatMul"], 0), total["Gemm"])  # dynamic INT8 rewrites Gemm as MatMul first
    if moved:
        quantized["MatMul"] -= moved
        quantized["Gemm"] += moved
    return Coverage(
        total=dict(total),
        quantized={k: min(v, total.get(k, v)) for k, v in quantized.items() if v},
        weight_bytes_total=weight_bytes_total,
        weight_bytes_quantized=min(weight_bytes_q, weight_bytes_total),
    )


def _weights(node: Any, consts: dict[str, Any]) -> list[str]:
    """A weight node's constant weights: input 1, and R (input 2) of a recurrent op."""
    names = node.input[1:3] if node.op_type in RECURRENT_OPS else node.input[1:2]
    return [w for w in names if w in consts]


def static_misses(path: Path, dynamic_ok: bool) -> tuple[str, str] | None:
    """Before any work: (message, hint) when int8-static cannot quantize the model's weight nodes
    (all LSTM/GRU/RNN), else None. ``dynamic_ok``: the target runs int8-dynamic."""
    model = load_model(path, load_weights=False)
    return static_misses_recurrent(coverage(model, model, WEIGHT_OPS + RECURRENT_OPS).total, WEIGHT_OPS, dynamic_ok)


def static_finds_nothing(path: Path, spec: QuantSpec) -> tuple[str, str] | None:
    """Before asking for calibration data: (message, hint) when int8-static would write no quantized op into the model
    (no Conv/Gemm/MatMul/LSTM/GRU/RNN, no quantized op already, no target activation op: a tree ensemble, a
    scaler, an SVM from ai.onnx.ml), else None. Calibration data would calibrate nothing; the model ships fp32."""
    model = load_model(path, load_weights=False)
    ops = {n.op_type for n in iter_nodes(model.graph)}
    if ops & set(WEIGHT_OPS + RECURRENT_OPS) or ops & set(QUANT_OPS) or ops & set(spec.activation_ops):
        return None
    ml = sorted({n.op_type for n in iter_nodes(model.graph) if n.domain == ML_DOMAIN})
    return (f"{spec.mode} has nothing to quantize in this model: no Conv/Gemm/MatMul nodes"
            + (f" ({', '.join(ml)} from ai.onnx.ml run in float)" if ml else ""),
            "use --quant none: the model ships fp32 (pass --eval DATA.npz to check the bundle on your data)")


_LAYOUT_OPS = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})  # no arithmetic to do in fp16


def check_scales(model: Any) -> None:
    """A quantized model with a zero, negative or non-finite scale is never written."""
    from onnx import numpy_helper

    scale_inputs = set()
    for n in iter_nodes(model.graph):
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1:
            scale_inputs.add(n.input[1])
    for init in iter_initializers(model.graph):
        if init.name in scale_inputs:
            v = numpy_helper.to_array(init).astype(np.float64)
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise QuantizationError(
                    f"quantization produced an invalid scale for '{init.name}' ({v.ravel()[:4].tolist()})",
                    "check the calibration data for extreme or constant values",
                )


def quantize(
    artifact: Artifact,
    spec: QuantSpec,
    out_path: Path,
    *,
    data: SampleSet | None = None,
    on_sample: Any = None,
    evals: SampleSet | None = None,
    max_drop: float | None = None,
    outputs_of: Any = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> QuantResult:
    """Quantize ``artifact`` per ``spec`` into ``out_path``.

    ``outputs_of`` (static QDQ with ``max_drop``): runs the search's candidates on the
    target's accelerator (``edgeq.profiling.accel.accelerator_outputs``) instead of the CPU provider.
    ``tasks``: the app TOML's ``[outputs.NAME] task = ...`` overrides; the search scores every
    output with that task's metric, as the verdict does.

    Static QDQ is written by edgeq (streaming calibration, subgraphs, budget search);
    QOperator and dynamic go through onnxruntime's quantizer.
    """
    out_path = Path(out_path)
    if spec.mode == "none":
        import shutil

        shutil.copyfile(artifact.path, out_path)
        return QuantResult(artifact.then(out_path, "quantize(none)"), spec, None, ("kept fp32",))
    if spec.mode == "fp16":
        return _fp16(artifact, spec, out_path)
    data_file(out_path).unlink(missing_ok=True)  # writers with external data append to it
    if spec.mode == "int8-static" and spec.format == "qdq":  # reads the model itself (weights once, on disk)
        return _edgeq_static(artifact, spec, out_path, data, on_sample, evals, max_drop, outputs_of, tasks)
    head = load_model(artifact.path, load_weights=False)  # inline weights are in it all the same
    big = needs_external_data(head)  # weights in external data: never one in-memory protobuf
    fp32 = head
    opset = default_opset(fp32)
    if opset < 13 and spec.per_channel:
        raise QuantizationError(
            f"per-channel quantization needs opset 13 or later, the model has {opset}",
            "run the optimize stage first (it raises the opset to the target's minimum)",
        )
    from onnxruntime import quantization as q

    notes: list[str] = []
    if big:
        # optimize already ran ONNX shape inference on the file; onnxruntime's pre-processing
        # would load and rewrite every weight once more
        pre = Path(artifact.path)
        notes.append("weights in external data: onnxruntime's pre-processing skipped (shapes inferred by optimize)")
    else:
        pre = out_path.with_name(out_path.stem + ".prep.onnx")
        notes += _preprocess(artifact.path, pre)
    op_types = list(spec.op_types) or None
    extra = {"WeightSymmetric": spec.symmetric_weights, "ActivationSymmetric": False}
    try:
        if spec.mode == "int8-static":
            if data is None:
                raise CalibrationError(
                    "int8-static needs calibration data", "pass --calib DATA.npz (or --quant int8-dynamic)"
                )
            n = min(spec.calib_samples, len(data))
            q.quantize_static(
                str(pre),
                str(out_path),
                _Reader(data, n, on_sample),
                quant_format=q.QuantFormat.QDQ if spec.format == "qdq" else q.QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                nodes_to_exclude=list(spec.nodes_to_exclude) or None,
                per_channel=spec.per_channel,
                reduce_range=spec.reduce_range,
                activation_type=getattr(q.QuantType, _QTYPES[spec.activation_type]),
                weight_type=getattr(q.QuantType, _QTYPES[spec.weight_type]),
                calibrate_method=q.CalibrationMethod.MinMax,
                extra_options=extra,
                use_external_data_format=big,
            )
            notes.append(f"calibrated on {n} sample(s) from {data.source}")
        else:
            op_types = op_types or list(DYNAMIC_DEFAULT_OPS)
            notes += _dynamic(q, pre, out_path, spec, op_types, big, subgraphs=has_subgraphs(head))
            if "Conv" not in op_types and any(n.op_type == "Conv" for n in iter_nodes(head.graph)):  # only where there are some
                notes.append("convolutions kept in float (dynamic ConvInteger is slower than fp32 on CPUs)")
    except (CalibrationError, QuantizationError):
        raise
    except Exception as e:  # noqa: BLE001
        clear = explain_quantizer_failure(e)
        if clear is not None:
            raise clear from None
        raise QuantizationError(
            f"onnxruntime's quantizer failed: {first_line(e, 200)}",
            "try --quant int8-dynamic or --quant none, and report the model to edgeq",
        ) from None
    finally:
        if not big:
            pre.unlink(missing_ok=True)
    qmodel = load_model(out_path)
    if big and spec.mode == "int8-static":  # its int32 bias checks compare fp32 and quantized weights
        fp32 = load_model(artifact.path)
    check_scales(qmodel)
    check_operator_scales(qmodel)
    bias = bias_overflow(fp32, qmodel, reduce_range=spec.reduce_range)
    if bias.clipped:  # onnxruntime clipped an int32 bias: keep those nodes in float and redo
        import dataclasses

        res = quantize(artifact, spec.with_overrides(nodes_to_exclude=spec.nodes_to_exclude + bias.clipped), out_path, data=data)
        kept = f"kept {', '.join(repr(n) for n in bias.clipped)} in float: the int32 bias would overflow (tiny weights, large bias)"
        return dataclasses.replace(res, notes=(kept, *res.notes))
    notes += bias.notes()
    dynamic = spec.mode == "int8-dynamic"
    cov = coverage(fp32, qmodel, WEIGHT_OPS + RECURRENT_OPS if dynamic else WEIGHT_OPS)
    details: dict[str, Any] = _dynamic_details(qmodel, cov, notes) if dynamic else {}
    none = none_quantized(op_types or DYNAMIC_DEFAULT_OPS, cov.total, cov.quantized) if dynamic else None
    if none is not None:  # counts the op types it was asked for: convolutions (float by default) and GRU/RNN are named apart
        out_path.unlink(missing_ok=True)
        raise QuantizationError(*none)
    if not dynamic and cov.nodes_total and cov.nodes_quantized == 0:
        out_path.unlink(missing_ok=True)
        raise QuantizationError(
            f"{spec.mode} quantized none of the model's {cov.nodes_total} Conv/Gemm/MatMul nodes",
            "report the model to edgeq",  # int8-dynamic's own refusal is none_quantized's, above
        )
    if cov.nodes_total == 0:
        if any(n.op_type in QUANT_OPS for n in iter_nodes(qmodel.graph)):
            notes.append(_no_weight_nodes(fp32, "only activations were quantized"))
        else:  # e.g. trees (ai.onnx.ml): nothing written, the model is fp32 and labelled so
            notes.append(_no_weight_nodes(fp32, "nothing to quantize"))
            details["nothing_quantized"] = True
    step = f"quantize({spec.mode}, {spec.format}, a={spec.activation_type}, w={spec.weight_type}, per_channel={spec.per_channel})"
    return QuantResult(artifact_from(out_path, artifact.provenance + (step,)), spec, cov, tuple(notes), details)


def _dynamic(q: Any, pre: Path, out_path: Path, spec: QuantSpec, op_types: list[str], big: bool, *, subgraphs: bool) -> list[str]:
    """onnxruntime's dynamic quantizer, reaching into If/Loop/Scan bodies when the model has them.

    Should its subgraph pass fail on a model, the run is redone on the main graph only and says so."""
    def run(enable_subgraph: bool) -> None:
        q.quantize_dynamic(
            str(pre),
            str(out_path),
            op_types_to_quantize=op_types,
            nodes_to_exclude=list(spec.nodes_to_exclude) or None,  # the speed decision's per-node mix, bias overflow
            per_channel=spec.per_channel,
            reduce_range=spec.reduce_range,
            weight_type=getattr(q.QuantType, _QTYPES[spec.weight_type]),
            extra_options={"WeightSymmetric": spec.symmetric_weights, **({"EnableSubgraph": True} if enable_subgraph else {})},
            use_external_data_format=big,
        )

    if not subgraphs:
        run(False)
        return []
    try:
        run(True)
        return []
    except Exception as e:  # noqa: BLE001 - onnxruntime's subgraph pass on a graph it cannot handle: main graph only
        why = first_line(e, 200)
    out_path.unlink(missing_ok=True)
    data_file(out_path).unlink(missing_ok=True)
    run(False)
    return [f"onnxruntime's quantizer failed inside If/Loop/Scan bodies ({why}): nodes there kept float"]


def _dynamic_details(qmodel: Any, cov: Coverage, notes: list[str]) -> dict[str, Any]:
    """What dynamic INT8 reached: nodes inside subgraphs, the float share, recurrent ops left float (appends notes)."""
    details: dict[str, Any] = {}
    counts = subgraph_counts(qmodel, QUANTIZED_FORMS)
    if counts:
        details["subgraphs"] = counts
        notes.append(subgraph_note(counts))
    float_rnn = {op: cov.total[op] for op in RECURRENT_OPS if op not in RECURRENT_QUANTIZED and cov.total.get(op)}
    if float_rnn:
        notes.append(", ".join(f"{n} {op}" for op, n in float_rnn.items()) + " node(s) kept float: onnxruntime has no dynamic INT8 kernel for them")
    if cov.nodes_total and cov.weight_bytes_total and cov.nodes_quantized:
        details["float_share"] = round(1 - cov.weight_bytes_quantized / cov.weight_bytes_total, 4)
        if details["float_share"] >= 0.05:
            left = {op: n - cov.quantized.get(op, 0) for op, n in cov.total.items() if n - cov.quantized.get(op, 0)}
            notes.append(f"{details['float_share']:.0%} of the weight bytes stay float ("
                         + ", ".join(f"{n} {op}" for op, n in sorted(left.items())) + " node(s))")
    return details


def _no_weight_nodes(model: Any, then: str) -> str:
    """The note for a model without float Conv/Gemm/MatMul: a pre-quantized one says so."""
    done = sorted({n.op_type for n in iter_nodes(model.graph) if n.op_type in QUANT_OPS})
    if done:
        return (f"the model is already quantized ({', '.join(done)}): no Conv/Gemm/MatMul left in float, {then}; "
                "its own int8 nodes ship as they are")
    return f"the model has no Conv/Gemm/MatMul nodes: {then}"


def _fp16(artifact: Artifact, spec: QuantSpec, out_path: Path) -> QuantResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_model(artifact.path)
    ml_only = sorted({n.op_type for n in iter_nodes(model.graph) if n.domain == ML_DOMAIN})
    if ml_only and all(n.domain == ML_DOMAIN or n.op_type in _LAYOUT_OPS for n in iter_nodes(model.graph)):
        import shutil  # every compute node is ai.onnx.ml, which runs in fp32: a converted file would be fp32 with Casts

        shutil.copyfile(artifact.path, out_path)
        return QuantResult(artifact.then(out_path, "quantize(none)"), spec.with_overrides(mode="none"), None,
                           (f"fp16 has nothing to convert: the model's compute is ai.onnx.ml ({', '.join(ml_only)}), which runs "
                            "in fp32; kept fp32 (mode none)",), {"requested_mode": "fp16"})
    # in-memory shape inference serializes the model: not for one over 2 GiB (optimize inferred shapes on the file)
    try:
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=needs_external_data(model))
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(f"fp16 conversion failed: {first_line(e, 200)}", "try --quant none") from None
    save_model(half, out_path)
    return QuantResult(
        artifact_from(out_path, artifact.provenance + ("quantize(fp16, keep_io_types)",)),
        spec,
        None,
        ("weights and compute in fp16; inputs and outputs stay fp32",),
    )


def _edgeq_static(
    artifact: Artifact,
    spec: QuantSpec,
    out_path: Path,
    data: SampleSet | None,
    on_sample: Any,
    evals: SampleSet | None,
    max_drop: float | None,
    outputs_of: Any = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> QuantResult:
    import tempfile

    if data is None:
        raise CalibrationError("int8-static needs calibration data", "pass --calib DATA.npz (or --quant int8-dynamic)")
    # the float weights live once, as external data in a private folder next to the output,
    # while calibration, writing and measuring run (peak memory ~ one copy of the weights)
    with tempfile.TemporaryDirectory(prefix=".edgeq-weights-", dir=str(out_path.parent)) as wdir:
        return _edgeq_static_in(artifact, spec, out_path, data, on_sample, evals, max_drop, Path(wdir), outputs_of, tasks)


def _edgeq_static_in(
    artifact: Artifact,
    spec: QuantSpec,
    out_path: Path,
    data: SampleSet,
    on_sample: Any,
    evals: SampleSet | None,
    max_drop: float | None,
    wdir: Path,
    outputs_of: Any = None,
    tasks: dict[str, dict[str, Any]] | None = None,
) -> QuantResult:
    from . import static

    prep = static.prepare(artifact.path, spec, data, on_sample=on_sample, weights_dir=wdir)
    notes = list(prep.notes)
    details: dict[str, Any] = {"engine": "edgeq static QDQ (calibration and QDQ written by edgeq)"}
    if data.synthetic:
        notes.insert(0, "WARNING: calibrated on RANDOM data: ranges do not reflect real inputs; accuracy is unknown")
    met = True
    check = evals if evals is not None else data
    if max_drop is not None:
        if evals is None:
            notes.append("--max-drop measured on the calibration data (pass --eval for held-out data)")
        res = static.search(prep, spec, check, max_drop, outputs_of=outputs_of, tasks=tasks)
        written = res.written
        if res.fp32_metric.name in ("perplexity", "mean_kl"):
            notes.append(f"--max-drop on LM logits: drop = {res.fp32_metric.drop_means} (top-1 token agreement is far harsher)")
        layers = res.layers
        met = res.met
        details["search"] = {
            "max_drop": max_drop,
            "metric": res.fp32_metric.name,
            "drop_means": res.fp32_metric.drop_means,
            "fp32": round(res.fp32_metric.value, 5),
            "outputs": [{k: v for k, v in o.items() if k != "drop"} for o in res.fp32_metric.per_output(res.fp32_metric)],
            "steps": [s.to_dict() for s in res.steps],
            "best": res.best.to_dict(),
            "met": res.met,
            "activation_16bit": spec.wide_activation_type,
            "candidates_run_on": (None if "state" in res.fp32_metric.kinds else getattr(outputs_of, "label", None))  # a rollout runs here
            or "CPUExecutionProvider",
        }
        if len(res.best.outputs) > 1:  # every output is held to the budget: say where each stands
            notes.append(f"--max-drop per output ({res.best.kept_float} node(s) kept float): " + ", ".join(
                f"{o['output']} {o['metric']} drop {o['drop']:.4f}" for o in res.best.outputs))
        if not res.met:
            notes.append(
                f"BUDGET NOT MET: best {res.best.metric} drop {res.best.drop:.4f} > --max-drop {max_drop} "
                f"(with {res.best.kept_float} node(s) kept float"
                + (f", {res.best.kept_16bit} with 16-bit activations" if res.best.kept_16bit else "")
                + "); the best model found was written"
            )
    else:
        written = static.write(prep, spec)
        prep.weight_cache.clear()  # the last write from prep: its int8 weights need not sit beside the SQNR session
        layers = static.layer_sqnr(prep, written, check, static.layer_samples(prep, written))
    prep.weight_cache.clear()  # (after --max-drop's search) nothing more is written from prep
    save_model(written.model, out_path)
    written.model = None  # written out: keep one quantized model in memory, not two
    qmodel = load_model(out_path)
    check_scales(qmodel)
    cov = coverage(prep.model, qmodel, WEIGHT_OPS + RECURRENT_OPS)  # LSTM/GRU/RNN stay float here: counted, so labelled
    rnn_only = static_misses_recurrent(cov.total, WEIGHT_OPS)
    if rnn_only is not None:
        out_path.unlink(missing_ok=True)
        raise QuantizationError(*rnn_only)
    if cov.nodes_total and cov.nodes_quantized == 0 and not written.plan.kept_float:
        out_path.unlink(missing_ok=True)
        raise QuantizationError(
            f"int8-static quantized none of the model's {cov.nodes_total} Conv/Gemm/MatMul nodes",
            "report the model to edgeq",
        )
    if cov.nodes_total and cov.nodes_quantized == 0 and max_drop is None:
        out_path.unlink(missing_ok=True)
        reasons = sorted({r.split(":")[0] for r in written.plan.kept_float.values()})
        nonfinite = any("non-finite" in r for r in reasons)
        raise QuantizationError(
            f"int8-static quantized none of the model's {cov.nodes_total} Conv/Gemm/MatMul nodes: every one stays float "
            f"({'; '.join(reasons) or 'excluded'})",
            "the calibration data drives activations to a non-finite range (overflow to Inf): check its scale"
            if nonfinite else "quantize fewer exclusions or use --quant none",
        )
    if cov.nodes_total == 0:
        notes.append(_no_weight_nodes(prep.model, "nothing to quantize"))
        if not any(n.op_type in QUANT_OPS for n in iter_nodes(qmodel.graph)):  # e.g. trees (ai.onnx.ml): the model is fp32
            details["nothing_quantized"] = True
    if max_drop is not None and cov.nodes_total and cov.nodes_quantized == 0 and "search" in details:
        met = False  # "met" only with every weight node float: no quantized model is within the budget
        details["search"].update(met=False, all_float=True)
        notes.append(f"BUDGET NOT MET by any quantized model: only keeping all {cov.nodes_total} weight nodes float met --max-drop "
                     f"{max_drop}; the model written is fp32")
    if cov.nodes_total and cov.weight_bytes_total:  # what the model is, whatever the mode's name says
        details["float_share"] = round(1 - cov.weight_bytes_quantized / cov.weight_bytes_total, 4)
        if cov.nodes_quantized == 0:
            notes.append(f"every one of the {cov.nodes_total} weight nodes stayed float: this model is fp32, labelled mode none")
        elif details["float_share"] >= 0.05:
            notes.append(f"{details['float_share']:.0%} of the weight bytes stay float ({cov.nodes_total - cov.nodes_quantized} of {cov.nodes_total} weight nodes)")
    sub = [qn.name for qn in written.plan.nodes if qn.in_subgraph]
    if sub:
        details["subgraphs"] = _subgraph_coverage(prep.model, written)
        notes.append(f"{len(sub)} node(s) inside If/Loop/Scan subgraphs quantized (" + "; ".join(
            f"{op}: {c['quantized']}, {c['activations_calibrated']} with calibrated activations"
            for op, c in details["subgraphs"].items()) + ")")
    for key, h in sorted(written.how.items()):
        if key.endswith("#raised"):
            notes.append(f"weight scale of '{key[: -len('#raised')]}' raised so its int32 bias fits ({h.split('raised ', 1)[-1].split(' so')[0]})")
    weight_only = [n for n, h in written.how.items() if h.startswith("weights int8, activations float")]
    if weight_only:
        notes.append(f"{len(weight_only)} node(s) weight-only, activations float: " + "; ".join(sorted({written.how[n].split("(", 1)[-1].rstrip(")") for n in weight_only})))
    if written.activation_qdq:  # the target's [quant] activation_ops (fixed-point-only accelerators)
        from collections import Counter

        by_op = Counter(written.activation_qdq.values())
        details["activation_qdq"] = dict(sorted(by_op.items()))
        notes.append(f"{len(written.activation_qdq)} node(s) without weights quantized for the accelerator (the target's activation_ops): "
                     + ", ".join(f"{op} x{k}" for op, k in sorted(by_op.items(), key=lambda kv: (-kv[1], kv[0]))))
    worst = sorted((r for r in layers if r["sqnr_db"] is not None), key=lambda r: r["sqnr_db"])[:10]
    details["calibration"] = {
        "method": str(prep.cal),
        "bins": prep.cal.bins,
        "samples": prep.stats.samples,
        "synthetic": bool(data.synthetic),
        "nonfinite_values": prep.stats.nonfinite(),
    }
    if prep.choice is not None:
        details["calibration"]["auto"] = prep.choice
    for r in layers:  # as shipped (the search measured SQNR on the all-int8 model)
        r["quantized_as"] = written.how.get(r["node"]) or f"float: {written.plan.kept_float.get(r['node'], '')}".rstrip(": ")
    details["layers"] = [{k: v for k, v in r.items() if k != "sensitivity"} for r in layers]
    details["worst_layers"] = [r["node"] for r in worst]
    details["kept_float"] = dict(sorted(written.plan.kept_float.items()))
    details["activations_16bit"] = dict(sorted(written.wide.items()))
    if written.wide:
        notes.append(f"{len(written.wide)} sensitive node(s) with {spec.wide_activation_type} activations instead of fp32 "
                     f"(int8 weights): {', '.join(sorted(written.wide))}")
    step = f"quantize(int8-static, qdq, edgeq, a={spec.activation_type}, w={spec.weight_type}, per_channel={spec.per_channel}, calib={prep.cal})"
    return QuantResult(
        artifact_from(out_path, artifact.provenance + (step,)), spec, cov, tuple(notes), details, met
    )


def _subgraph_coverage(model: Any, written: Any) -> dict[str, dict[str, int]]:
    """Per op type owning a subgraph (innermost If/Loop/Scan): nodes quantized, with calibrated activations."""
    from .qdq import walk_graphs

    owner = {path: node.op_type for path, _, node in walk_graphs(model.graph) if node is not None}
    out: dict[str, dict[str, int]] = {}
    for qn in written.plan.nodes:
        if not qn.in_subgraph:
            continue
        c = out.setdefault(owner.get(qn.graph, "?"), {"quantized": 0, "activations_calibrated": 0, "weight_only": 0})
        c["quantized"] += 1
        if written.how.get(qn.name, "").startswith("weights int8, activations float"):
            c["weight_only"] += 1
        else:
            c["activations_calibrated"] += 1
    return dict(sorted(out.items()))
