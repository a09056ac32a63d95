"""Weight quantization in QDQ form for static-shape decoders (NPU targets), optionally with activation QDQ.

``--quant int4`` / ``int8-weight`` on a CPU target write com.microsoft ``MatMulNBits``: a CPU
contrib op that an NPU provider cannot run. On a target with static shapes (the fixed-slot
decoder of ``exporters/static_decoder.py``) this module writes the same codes in the form NPU
compilers take: ``DequantizeLinear(codes) -> MatMul``. The codes come from the same solvers
(RTN, GPTQ, AWQ in ``weight_only/``); only the storage differs:

- int8: per output channel, symmetric (zero points stored as int8 zeros);
- int4: block-wise along K (``DequantizeLinear`` with ``block_size``, opset 21), or per output
  channel where the provider takes no block-wise weights (:data:`PER_CHANNEL_INT4`). Zero points
  are always written: the QNN HTP simulator (onnxruntime-qnn 2.7) reads an int4 weight without
  a zero-point input as unsigned (wrong results, correlation -0.7 with the CPU's on a test MatMul).

Where the target runs fixed point only (``[quant] activation_ops``, the HTP), the activations of
those ops get QDQ too (16-bit where the target lists it), calibrated on the static graph: the
``input_ids`` windows are run through the fixed-slot host loop and every step's feed is recorded
(:func:`step_feeds`). The graph is handled generically (any MatMul with a 2-D float initializer
weight), so a prefill graph of the same decoder is quantized the same way.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifact import Artifact, IoSpec, TensorSpec
from ..core.data import SampleSet
from ..errors import CalibrationError, EdgeqError
from .spec import WEIGHT_ONLY_BITS, QuantSpec
from .weight_only import blockwise as bw
from .weight_only.quantizer import (WeightDecision, WeightOnlyResult, collect_stats, coverage_of, decide, find_sites, replace_nodes,
                                     solve_codes)

# providers whose NPU MatMul takes int4 weights per output channel only: block-wise DequantizeLinear
# (opset 21 block_size) left the MatMul on the CPU under onnxruntime-qnn 2.7's HTP simulator (measured)
PER_CHANNEL_INT4 = ("QNNExecutionProvider",)
QDQ_OPSET = 21  # int4 tensors and block-wise DequantizeLinear
# ops the static decoder has beyond a CNN's, put in fixed point too where the target runs fixed point only
# (a float node inside the HTP's partition fails its compile: QNN_COMMON_ERROR_MEM_ALLOC on the simulator)
DECODER_ACT_OPS = ("Concat", "Cos", "Sin", "Neg", "ReduceMax", "Cast")
MASK_FILL = -1.0e3  # the mask's fill in fixed point (-3e38 has no fixed-point form); the Softmax input range below saturates it
SOFTMAX_SPAN = 30.0  # a Softmax input's range reaches SPAN below its lowest unmasked score: exp(-30) ~ 1e-13
MAX_CALIB_STEPS = 256  # static-graph steps recorded for calibration when the caller names no budget


def is_static_decoder(io: IoSpec) -> bool:
    """A fixed-slot KV decoder: ``input_ids`` of static shape and fixed-size ``past_key_values.*`` inputs."""
    names = io.input_names
    if "input_ids" not in names or not any(n.startswith("past_key_values.") for n in names):
        return False
    return all(isinstance(d, int) for t in io.inputs for d in t.shape)


def applies(spec: QuantSpec, io: IoSpec) -> bool:
    """Does ``spec`` on a model of ``io`` take this module's path (a weight-only or int8-static mode on a static decoder)?"""
    return (spec.weight_only or spec.mode == "int8-static") and is_static_decoder(io)


def decoder_spec(spec: QuantSpec) -> tuple[QuantSpec, list[str]]:
    """The weight-only spec this path runs: int8-static (a static-shape target's default) becomes int8 QDQ weights
    with the target's activation QDQ (16-bit where it lists it: 8-bit activations through a whole transformer lose it)."""
    if spec.mode != "int8-static":
        return spec, []
    return spec.with_overrides(mode="int8-weight"), [
        "int8-static on a static-shape decoder: int8 QDQ weights per output channel, activations as the target runs them (below)"]


def windows_io(io: IoSpec) -> IoSpec:
    """The IoSpec an ``input_ids``-windows file is checked against for a static decoder: [1, T] tokens."""
    ids = io.input("input_ids")
    return IoSpec((TensorSpec("input_ids", ids.dtype, (1, None)),), ())


def load_windows(io: IoSpec, calib: Any, evals: Any) -> dict[str, SampleSet]:
    """``--calib`` / ``--eval`` files of ``input_ids`` windows [n, T] for a static decoder, checked, by role."""
    from ..core.data import load_samples, require_stacked

    sets = {what: load_samples(path, windows_io(io), what=what) for what, path in (("calibration", calib), ("evaluation", evals)) if path}
    for what, data in sets.items():
        require_stacked(data, what, "a static decoder takes input_ids windows of one length [n, T]")
    return sets


@dataclass(frozen=True)
class Form:
    """What is written and why."""

    weight: str  # "per-channel" | "blockwise"
    activations: str | None  # activation QDQ type, or None (float activations)
    ops: tuple[str, ...]  # op types whose activations get QDQ
    why: str

    def describe(self, bits: int, block: int) -> str:
        w = f"int{bits} {'per output channel' if self.weight == 'per-channel' or bits == 8 else f'blocks of {block} along K'}"
        a = f"{self.activations} activations" if self.activations else "float activations"
        return f"QDQ static decoder: DequantizeLinear({w}, symmetric, zero points stored) -> MatMul, {a}: {self.why}"


def choose_form(target: Any, spec: QuantSpec, *, has_data: bool) -> Form:
    """The QDQ form ``target`` runs for ``spec`` (a weight-only mode); refuses what it cannot run."""
    providers = tuple(target.provider_names)
    per_channel = spec.bits == 8 or any(p in PER_CHANNEL_INT4 for p in providers)
    weight = "per-channel" if per_channel else "blockwise"
    ops = tuple(target.quant.activation_ops)
    if spec.bits not in (4, 8):
        raise EdgeqError(f"--quant {spec.mode} has no QDQ form for {target.name}'s static decoder",
                         "use --quant int4 or --quant int8-weight")
    if spec.algo == "hqq":
        raise EdgeqError(f"--algo hqq stores float zero points, which {target.name}'s QDQ form cannot hold",
                         "use --algo rtn, gptq or awq")
    if not ops:
        why = (f"{target.name} lists no fixed-point-only ops ([quant] activation_ops): activations stay float"
               + ("" if per_channel else "; int4 block-wise (opset 21)"))
        return Form(weight, None, (), why)
    wide = [t for t in target.quant.activation_dtypes if t in ("uint16", "int16")]
    act = wide[0] if wide else target.quant.activation_type
    if not has_data:
        raise CalibrationError(
            f"{target.name} runs fixed point only: its static decoder needs {act} activation QDQ, calibrated from token windows",
            "pass --calib DATA.npz with input_ids windows [n, T] (the export runs them through the fixed-slot loop)")
    why = (f"{target.name} runs fixed point only, so activations of {len(ops)} op types get {act} QDQ calibrated on the "
           f"fixed-slot loop" + ("; int4 per output channel: its MatMul takes no block-wise weights"
                                 if spec.bits == 4 and per_channel else ""))
    return Form(weight, act, tuple(dict.fromkeys(ops + DECODER_ACT_OPS)), why)


# -- calibration feeds of the static graph -------------------------------------------------------------------------


def step_feeds(model_path: Path, windows: np.ndarray, max_steps: int = MAX_CALIB_STEPS) -> tuple[SampleSet, int]:
    """The feeds the fixed-slot host loop gives the graph at ``model_path`` (fp32) over ``windows`` [n, T].

    Each window starts an empty cache; its tokens go in ``chunk`` at a time (the graph's
    ``input_ids`` width), the presents coming back as the next pasts. The windows start at
    positions spread over the fixed context (window i of n at i * (slots - T) / (n - 1)), so
    tensors that grow with the position (rotary angles) are calibrated over every slot, not only
    the first T. Returns (feeds, windows used).
    """
    from ..core.runtime import create_session
    from ..exporters.static_decoder import StaticLayout, host_inputs

    sess = create_session(model_path)
    lay = StaticLayout.of_session(sess)  # the host inputs (bias, rotary rows, cache writes) as the bundle's loop makes them
    ins = {i.name: tuple(int(d) for d in i.shape) for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    chunk, slots = lay.chunk, lay.context
    pasts = lay.pasts
    rows: dict[str, list[np.ndarray]] = {n: [] for n in ins}
    wins = np.asarray(windows).reshape(len(windows), -1)[:, :slots]
    per_window = -(-wins.shape[1] // chunk)
    wins = wins[: max(1, -(-max_steps // per_window))]  # the windows the step budget covers, spread over the slots below
    span = slots - wins.shape[1]
    starts = [round(i * span / (len(wins) - 1)) if len(wins) > 1 else 0 for i in range(len(wins))]
    starts = [s - s % chunk for s in starts]  # chunk-aligned, as the loop writes them
    used = 0
    for w, first in zip(wins, starts):
        if len(rows["input_ids"]) >= max_steps:
            break
        used += 1
        past = {n: np.zeros(ins[n], np.float32) for n in pasts}
        for i in range(0, len(w), chunk):
            toks, at = w[i : i + chunk], first + i
            ids = np.zeros((1, chunk), np.int64)
            ids[0, : len(toks)] = toks
            feed = {"input_ids": ids, **host_inputs(lay, at, len(toks), first=first), **past}  # slots before `first` are empty
            for n in ins:
                rows[n].append(feed[n])
            res = dict(zip(outs, sess.run(None, feed)))
            past = {n: res[n.replace("past_key_values.", "present.")] for n in pasts}
            if len(rows["input_ids"]) >= max_steps:
                break
    arrays = {n: np.stack(v) for n, v in rows.items()}
    return SampleSet(arrays=arrays, stacked=dict.fromkeys(arrays, True), labels=None,
                     source=f"{used} input_ids window(s) through the fixed-slot loop, spread over its {slots} slots"), used


def lm_quality(reference: Path, candidate: Path, windows: np.ndarray, max_windows: int = 16):
    """Perplexity / KL / same-top-token of ``candidate`` vs ``reference``, each through its own fixed-slot loop."""
    from ..checks.lmeval import LMQuality, compare_logits
    from ..core.runtime import create_session
    from ..exporters.static_decoder import StaticLayout, logits_static

    rs, cs = create_session(reference), create_session(candidate)
    slots = StaticLayout.of_session(rs).context
    parts: dict[str, list[np.ndarray]] = {}
    rows = np.asarray(windows).reshape(len(windows), -1)[:max_windows]
    for w in rows:
        w = w[: slots] if slots else w
        r = logits_static(rs, w, len(w))[None]
        c = logits_static(cs, w, len(w))[None]
        for k, v in compare_logits(r, c, w[None]).items():
            parts.setdefault(k, []).append(v)
    st = {k: np.concatenate(v) for k, v in parts.items()}
    return LMQuality(windows=len(rows), tokens=int(st["kl"].size), perplexity_fp32=float(np.exp(st["nll_ref"].mean())),
                     perplexity_quant=float(np.exp(st["nll_cand"].mean())), kl_mean=float(st["kl"].mean()),
                     kl_p99=float(np.quantile(st["kl"], 0.99)), same_top_token=float(st["same"].mean()),
                     input_name="input_ids", output_name="logits")


@dataclass(frozen=True)
class QdqDecoderResult(WeightOnlyResult):
    def recipe(self) -> dict[str, Any]:
        d = super().recipe()
        d["engine"] = f"edgeq {self.spec.algo} -> DequantizeLinear + MatMul (QDQ)"
        return d


# -- the writer ----------------------------------------------------------------------------------------------------


def _int4_tensor(name: str, codes: np.ndarray) -> Any:
    """An INT4 initializer of signed ``codes`` (-8..7), two per byte, low nibble first."""
    from onnx import TensorProto, helper

    flat = (codes.astype(np.int16).reshape(-1) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, list(codes.shape), packed.tobytes(), raw=True)


def _code_tensor(name: str, codes: np.ndarray, bits: int) -> Any:
    from onnx import numpy_helper

    return _int4_tensor(name, codes) if bits == 4 else numpy_helper.from_array(codes.astype(np.int8), name)


def _signed(codes: bw.BlockCodes) -> tuple[np.ndarray, np.ndarray, int]:
    """(signed codes [K, N], positive scales [n_blocks, N], codes clipped) of symmetric ``codes``.

    The solvers map each block's value of largest magnitude to the most negative code, so a block whose
    largest value is positive has a negative scale; the HTP simulator computed wrong MatMuls with negative
    weight scales (logits off by 9 on the test decoder), so such blocks store -codes with -scale, and the one
    code of -2**(bits-1) that flips out of range is clipped to 2**(bits-1) - 1 (counted)."""
    bs = codes.block_size
    q = codes.q.astype(np.int16) - codes.zero.astype(np.int16).repeat(bs, axis=0)
    scale = codes.scale.astype(np.float32).copy()
    neg = np.repeat(scale < 0, bs, axis=0)
    q = np.where(neg, -q, q)
    top = 2 ** (codes.bits - 1) - 1
    clipped = int(np.count_nonzero(q[: codes.k] > top))
    q = np.minimum(q, top)
    return q[: codes.k], np.abs(scale), clipped


def _ranges(model: Any, names: list[str], data: SampleSet, n: int,
            unmasked: set[str] = frozenset()) -> dict[str, tuple[float, float]]:
    """(min, max) of each float tensor in ``names`` over ``n`` feeds of the float ``model``; for the ``unmasked``
    ones (Softmax inputs) the min is over the values above MASK_FILL / 2, the scores the mask left alone."""
    import onnx
    import onnxruntime as ort

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for i in range(n):
        for t, v in zip(names, sess.run(names, data.feed(i))):
            v = np.asarray(v, np.float64)
            v = v[np.isfinite(v) & (v > MASK_FILL / 2)] if t in unmasked else v[np.isfinite(v)]
            if v.size:
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in names if np.isfinite(lo[t])}


def _arithmetic_mask(model: Any) -> int:
    """``Where(cond, 0, fill)`` with a fill below -1e30 (the attention mask) becomes ``(float(cond) - 1) * -MASK_FILL``:
    the same probabilities after the Softmax, in ops the fixed-point graph holds (a -3e38 constant has no
    fixed-point form, and a Where failed the HTP simulator's compile, float or QDQ)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}

    def const(t: str) -> float | None:
        a = numpy_helper.to_array(inits[t]) if t in inits and inits[t].data_type == TensorProto.FLOAT else None
        return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None

    out, n = [], 0
    for node in model.graph.node:
        x, y = (const(t) for t in node.input[1:3]) if node.op_type == "Where" else (None, None)
        if x != 0.0 or y is None or not y < -1e30:
            out.append(node)
            continue
        tag, n = f"{node.output[0]}__edgeq_mask", n + 1
        model.graph.initializer.extend([numpy_helper.from_array(np.array(1.0, np.float32), tag + "_one"),
                                        numpy_helper.from_array(np.array(-MASK_FILL, np.float32), tag + "_fill")])
        out += [helper.make_node("Cast", [node.input[0]], [tag + "_f"], to=TensorProto.FLOAT, name=tag + "_cast"),
                helper.make_node("Sub", [tag + "_f", tag + "_one"], [tag + "_off"], name=tag + "_sub"),
                helper.make_node("Mul", [tag + "_off", tag + "_fill"], list(node.output), name=tag + "_mul")]
    del model.graph.node[:]
    model.graph.node.extend(out)
    return n


def _wide_constants(model: Any, act_type: str) -> int:
    """Re-encode the uint8 constants ``qdq_acts`` gives element-wise ops in the 16-bit activation type: onnxruntime's
    QNN provider took Sub/Add/Mul with a uint8 constant beside a uint16 activation as a float op on the HTP (which
    then failed to compile, or computed them in float)."""
    from onnx import helper, numpy_helper

    from .int8.qdq import ACT_TYPES

    elem, qmin, qmax = ACT_TYPES[act_type]
    if qmax <= 255:
        return 0
    zdt = helper.tensor_dtype_to_np_dtype(elem)
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for t in n.input:
            users.setdefault(t, []).append(n)
    n_done = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not all(t in inits for t in node.input[:3]):
            continue
        if inits[node.input[2]].data_type != 2 or not all(u.op_type in ("Add", "Sub", "Mul", "Div") for u in users.get(node.output[0], [])):
            continue
        if any(len(users.get(t, [])) != 1 for t in node.input[:3]):
            continue
        w = (numpy_helper.to_array(inits[node.input[0]]).astype(np.float64) - float(numpy_helper.to_array(inits[node.input[2]])))
        w = w * float(numpy_helper.to_array(inits[node.input[1]]))
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        sc = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        zp = int(np.clip(round(qmin - lo / sc), qmin, qmax))
        q = np.clip(np.round(w / sc) + zp, qmin, qmax).astype(zdt)
        for t, a in zip(node.input[:3], (q, np.array(sc, np.float32), np.array(zp, zdt))):
            inits[t].CopyFrom(numpy_helper.from_array(a, t))
        n_done += 1
    return n_done


def _reciprocal_as_div(model: Any) -> int:
    """``Reciprocal(x)`` becomes ``Div(1, x)``: the HTP simulator's 16-bit Reciprocal was off by 2.8 on outputs up to 4.1
    (an RMSNorm's 1/rms), its Div is not."""
    from onnx import helper, numpy_helper

    out, n = [], 0
    for node in model.graph.node:
        if node.op_type != "Reciprocal" or node.domain not in ("", "ai.onnx"):
            out.append(node)
            continue
        one = f"{node.output[0]}__edgeq_one"
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
        out.append(helper.make_node("Div", [one, node.input[0]], list(node.output), name=node.name))
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(out)
    return n


def _softmax_inputs(model: Any) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "Softmax"}


def _widen_softmax_inputs(ranges: dict[str, tuple[float, float]], names: set[str]) -> int:
    """A Softmax input's range (min over the unmasked scores) gets SOFTMAX_SPAN below it: masked scores saturate there,
    at least SOFTMAX_SPAN under every row's own maximum (exp(-30) ~ 1e-13), so no row's own scores are cut."""
    n = 0
    for t in names & set(ranges):
        lo, hi = ranges[t]
        ranges[t] = (lo - SOFTMAX_SPAN, hi)
        n += 1
    return n


def quantize(artifact: Artifact, spec: QuantSpec, out_path: Path, *, target: Any, data: SampleSet | None = None,
             on_sample: Any = None) -> QdqDecoderResult:
    """Write ``artifact``'s MatMul weights as QDQ codes (and activation QDQ where ``target`` needs it) to ``out_path``."""
    from onnx import helper, numpy_helper

    from ..core.onnxutil import artifact_from, load_model, save_model
    from .int8 import qdq, qdq_acts

    t0 = time.perf_counter()
    form = choose_form(target, spec, has_data=data is not None)
    if spec.algo in ("gptq", "awq") and data is None:
        raise CalibrationError(f"--algo {spec.algo} needs calibration data",
                               "pass --calib DATA.npz with input_ids windows, or --algo rtn")
    model = load_model(artifact.path)
    int4 = any(WEIGHT_ONLY_BITS.get(m) == 4 for m in (spec.mode, *(o for _, o in spec.overrides)))
    if int4 or form.activations in ("uint16", "int16"):
        model = _to_opset(model, QDQ_OPSET)  # int4 tensors, block-wise and 16-bit DequantizeLinear
    filled = _arithmetic_mask(model) if form.activations else 0
    recips = _reciprocal_as_div(model) if form.activations else 0
    model_fp32 = copy.deepcopy(model)  # the converted float graph: its tensors are calibrated
    float_names = qdq.float_tensors(model) if form.activations else set()
    sites = [s for s in find_sites(model) if s.op == "MatMul" or (s.op == "Gather" and not form.activations)]
    plan = [(s, *decide(s, spec)) for s in sites]
    if not any(m != "none" for _, m, _ in plan):
        raise EdgeqError("every weight was kept in fp32 (--keep / --override none)", "drop --keep entries or use --quant none")
    kept = [s.weight for s, m, _ in plan if m == "none"]
    if form.activations and kept:  # its activation pass would code the float weight per tensor: worse than any kept
        raise EdgeqError(f"{target.name} runs fixed point only: weight '{kept[0]}' cannot stay fp32 (--keep / --override none)",
                         "drop the --keep entry, or give the weight 8 bits: --override NAME=int8")
    notes: list[str] = [form.describe(spec.bits or 8, spec.block_size)]
    bits_of = {m: WEIGHT_ONLY_BITS.get(m, 8) for _, m, _ in plan if m != "none"}
    if any(b not in (4, 8) for b in bits_of.values()):
        raise EdgeqError("an --override asks for 2 bits, which has no QDQ form", "override to int4, int8 or none")
    nodes = model.graph.node
    inits = {i.name: i for i in model.graph.initializer}
    stats: dict[str, Any] = {}
    awq_h: dict[str, np.ndarray] = {}
    awq_mul: dict[str, np.ndarray] = {}  # AWQ scales with no op before to fold into: a Mul in front, shared per input
    awq_in: dict[str, str] = {}
    linear = [(s, m) for s, m, _ in plan if m != "none" and s.op == "MatMul"]
    if spec.algo in ("gptq", "awq") and linear:
        wanted = {nodes[s.node_index].input[0]: s.shape[0] for s, _ in linear}
        n = min(spec.calib_samples, len(data))
        stats = collect_stats(artifact.path, wanted, data, n, on_sample)
        notes.append(f"{spec.algo}: statistics of {len(wanted)} activation tensor(s) from {n} step(s) of {data.source}")
        if spec.algo == "awq":
            from .weight_only.quantizer import awq_prepare

            awq_h, awq_mul = awq_prepare(model, plan, stats, spec, data, notes)
    new_nodes: dict[int, list[Any]] = {}
    new_inits: list[Any] = []
    decisions: list[WeightDecision] = []
    clipped = 0
    for site, mode, reason in plan:
        node = nodes[site.node_index]
        w = numpy_helper.to_array(inits[site.weight]).astype(np.float32)
        params = int(w.size)
        if mode == "none":
            decisions.append(WeightDecision(site.weight, site.op, site.role, "none", reason, params, params * 4, params * 4))
            continue
        bits = bits_of[mode]
        tag = f"{site.weight.replace('/', '_')}_qdq{site.node_index}"
        if site.op == "Gather":  # embedding rows, int8 per row (float activations only: the HTP path codes it itself)
            codes = bw.rtn(w.T, 8, w.shape[1], True)
            q, scale, clip = _signed(codes)
            q, scale = q.T, scale.reshape(-1)
            axis, block = 0, None
            bits = 8
        else:
            k = w.shape[0]
            block = spec.block_size if (form.weight == "blockwise" and bits == 4 and k % spec.block_size == 0) else k
            st = stats.get(node.input[0])
            codes = solve_codes(w, mode, replace(spec, block_size=block, symmetric=True), st, float_zero=False,
                                awq_h=awq_h.get(node.input[0]))
            q, scale, clip = _signed(codes)
            if block == k:
                scale, axis, block = scale.reshape(-1), 1, None
            else:
                axis = 0
        clipped += clip
        zero = np.zeros(scale.shape, np.int8)
        new_inits += [_code_tensor(tag + "_q", q, bits), numpy_helper.from_array(scale, tag + "_s"),
                      _code_tensor(tag + "_z", zero, bits)]
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        dq = helper.make_node("DequantizeLinear", [tag + "_q", tag + "_s", tag + "_z"], [tag + "_w"], name=tag + "_DQ", **attrs)
        rewired = helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name)
        rewired.attribute.extend(node.attribute)
        rewired.input[0 if site.op == "Gather" else 1] = tag + "_w"
        new_nodes[site.node_index] = [dq, rewired]
        a_in = node.input[0]
        if site.op == "MatMul" and a_in in awq_mul:
            if a_in not in awq_in:
                awq_in[a_in] = tag + "_awq_in"
                new_inits.append(numpy_helper.from_array(awq_mul[a_in].astype(np.float32), tag + "_awq_scale"))
                new_nodes[site.node_index].insert(0, helper.make_node("Mul", [a_in, tag + "_awq_scale"], [awq_in[a_in]], name=tag + "_awq"))
            rewired.input[0] = awq_in[a_in]
        stored = (q.size * bits + 7) // 8 + scale.nbytes + (zero.size * bits + 7) // 8
        decisions.append(WeightDecision(site.weight, site.op, site.role, "int8-weight" if bits == 8 else mode, reason,
                                        params, params * 4, int(stored)))
    if clipped:
        notes.append(f"{clipped} code(s) clipped by one step where a block's largest value is positive (scales stored positive)")
    replace_nodes(model, new_nodes, new_inits)
    if form.activations:
        names = list(qdq_acts.tensors(model, form.ops, float_names))
        n = min(spec.calib_samples, len(data))
        soft = _softmax_inputs(model)  # masked scores (MASK_FILL here, any fill far below from a host mask) left out of the min
        ranges = _ranges(model_fp32, [t for t in names if t in float_names], data, n, soft)
        capped = _widen_softmax_inputs(ranges, soft)
        model, how = qdq_acts.quantize(model, form.ops, ranges, lambda lo, hi: qdq.act_qparams(lo, hi, form.activations),
                                       form.activations, float_names=float_names)
        widened = _wide_constants(model, form.activations)
        notes.append(f"activation ranges from {n} step(s) of {data.source}; {len(how)} node(s) with {form.activations} QDQ"
                     + (f"; {filled} attention mask(s) Where(cond, 0, -3e38) written as (cond - 1) * {-MASK_FILL:g}" if filled else "")
                     + (f"; {recips} Reciprocal(s) written as Div(1, x)" if recips else "")
                     + (f"; {widened} constant(s) of element-wise ops in {form.activations}" if widened else "")
                     + (f"; {capped} Softmax input(s) ranged over the unmasked scores less {SOFTMAX_SPAN:g} (masked ones saturate there)" if capped else "")
                     + ("; constant Gather tables (embeddings, rotary) stored in their output's codes" if any(n.op_type == "Gather" for n in model.graph.node) else ""))
    cov = coverage_of(decisions, notes)
    save_model(model, out_path)
    from .weight_only.wsize import size_breakdown

    step = (f"quantize({spec.mode} QDQ {form.weight}, algo={spec.algo}"
            + (f", block={spec.block_size}" if form.weight == "blockwise" and spec.bits == 4 else "")
            + (f", activations={form.activations})" if form.activations else ")"))
    res = QdqDecoderResult(artifact_from(Path(out_path), artifact.provenance + (step,)), replace(spec, symmetric=True), cov, tuple(notes),
                           details={"engine": "edgeq weight QDQ (static decoder)",
                                    "qdq_form": {"weights": form.weight, "activations": form.activations, "why": form.why}},
                           decisions=tuple(decisions), seconds=time.perf_counter() - t0, sizes=size_breakdown(Path(out_path)))
    return res


def _to_opset(model: Any, opset: int) -> Any:
    """``model`` converted to ``opset`` (ReduceMean's axes become an input at 18, and so on) by onnx's converter."""
    from onnx import version_converter

    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if have >= opset:
        return model
    out = version_converter.convert_version(model, opset)
    out.ir_version = max(out.ir_version, 10)
    return out
