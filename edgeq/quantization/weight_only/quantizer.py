"""Weight-only block quantization: MatMul/Gemm -> com.microsoft MatMulNBits, Gather -> GatherBlockQuantized.

edgeq writes the codes itself (``blockwise.py``): RTN, HQQ, GPTQ and AWQ choose
them; this module finds the weights in the graph, gathers calibration
statistics where an algorithm needs them, rewrites the nodes and reports what
was achieved (bits per weight, bytes, per-tensor decisions).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...core.artifact import Artifact
from ...core.data import SampleSet
from ...errors import CalibrationError, QuantizationError
from ...core.onnxutil import artifact_from, load_model
from . import blockwise as bw
from ..int8.quantizer import Coverage, QuantResult
from ..spec import BLOCK_SIZES, WEIGHT_ONLY_BITS, QuantSpec
from .roles import HeadFinder
from .tied import find_tied, shared_gather_nodes
from .wsize import dedupe_constants, size_breakdown

MS_DOMAIN = "com.microsoft"
# widths onnxruntime's CPU kernels take (checked against onnxruntime 1.32 in tests/unit/test_int4.py)
MATMUL_BITS = (2, 4, 8)
GATHER_BITS = (2, 4, 8)


@dataclass(frozen=True)
class WeightSite:
    """One weight the pass may rewrite."""

    node_index: int
    op: str  # MatMul | Gemm | Gather
    weight: str  # initializer name
    names: tuple[str, ...]  # node name, weight name, normalised forms: what patterns match
    role: str  # "linear" | "lm_head" | "embed"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class WeightDecision:
    weight: str
    op: str
    role: str
    mode: str  # int4 / int8-weight / int2 / none
    reason: str
    params: int
    bytes_fp32: int
    bytes_quant: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight, "op": self.op, "role": self.role, "mode": self.mode, "reason": self.reason,
            "params": self.params, "bytes_fp32": self.bytes_fp32, "bytes_quantized": self.bytes_quant,
            "bits_per_weight": round(8 * self.bytes_quant / self.params, 4) if self.params else None,
        }


@dataclass(frozen=True)
class WeightOnlyResult(QuantResult):
    decisions: tuple[WeightDecision, ...] = field(default=())
    seconds: float = 0.0
    sizes: dict[str, Any] | None = None  # wsize.size_breakdown of the written file
    accuracy_levels: dict[str, Any] | None = None  # acclevel.compare: both levels measured and the pick

    def weights_summary(self) -> dict[str, Any]:
        q = [d for d in self.decisions if d.mode != "none"]
        params_q = sum(d.params for d in q)
        bytes_q = sum(d.bytes_quant for d in q)
        params_all = sum(d.params for d in self.decisions)
        bytes_all = sum(d.bytes_quant for d in self.decisions)
        return {
            "weights_total": len(self.decisions),
            "weights_quantized": len(q),
            "params_quantized": params_q,
            "params_total": params_all,
            # scales and zero points included: the bits a weight really costs
            "bits_per_weight_quantized": round(8 * bytes_q / params_q, 4) if params_q else None,
            "bits_per_weight_all": round(8 * bytes_all / params_all, 4) if params_all else None,
            "quantize_seconds": round(self.seconds, 3),
            "per_weight": [d.to_dict() for d in self.decisions],
            # every byte of the file by what it holds; bits per parameter of the whole file
            "file_breakdown": self.sizes,
            "bits_per_parameter_file": round(8 * self.sizes["file_bytes"] / params_all, 4) if self.sizes and params_all else None,
        }

    def recipe(self) -> dict[str, Any]:
        d = super().recipe()
        d["engine"] = f"edgeq {self.spec.algo} -> onnxruntime MatMulNBits"
        d["weights"] = self.weights_summary()
        if self.accuracy_levels is not None:
            d["accuracy_levels"] = self.accuracy_levels
        return d


def _norm(name: str) -> str:
    return name.replace("/", ".").replace("::", ".").strip(".")


def _matches(names: tuple[str, ...], pattern: str) -> bool:
    pats = (pattern, "*." + pattern, "*" + pattern.lstrip("*")) if not pattern.startswith("*") else (pattern,)
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in pats)


def find_sites(model: Any) -> list[WeightSite]:
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    sites: list[WeightSite] = []
    heads = HeadFinder(model.graph)  # KV-cache outputs (present.*) are not logits: roles.py

    def float2d(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 2

    for idx, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "MatMul" and len(n.input) == 2 and float2d(n.input[1]) and n.input[0] not in inits:
            w = n.input[1]
        elif n.op_type == "Gemm" and len(n.input) >= 2 and float2d(n.input[1]) and n.input[0] not in inits:
            if attrs.get("transA") and attrs["transA"].i:
                continue
            if ("alpha" in attrs and attrs["alpha"].f != 1.0) or ("beta" in attrs and attrs["beta"].f != 1.0):
                continue
            w = n.input[1]
        elif n.op_type == "Gather" and float2d(n.input[0]) and ("axis" not in attrs or attrs["axis"].i == 0):
            w = n.input[0]
        else:
            continue
        shape = tuple(int(d) for d in inits[w].dims)
        if n.op_type == "Gather":
            role = "embed"
        elif "lm_head" in n.name or "lm_head" in w or heads.feeds_logits(n.output[0]):
            role = "lm_head"
        else:
            role = "linear"
        names = tuple(dict.fromkeys((n.name, _norm(n.name), w, _norm(w))))
        sites.append(WeightSite(idx, n.op_type, w, names, role, shape))
    return sites


def decide(site: WeightSite, spec: QuantSpec) -> tuple[str, str]:
    """(mode, reason) for one weight: --keep, then --override (first match; 'embed' / 'lm_head' also
    name the role), then the embedding default (``spec.embed_mode`` under int4), then the spec's mode."""
    for k in spec.keep:
        if k == site.role or (k not in ("embed", "lm_head") and _matches(site.names, k)):
            return "none", f"--keep {k}"
    for pat, mode in spec.overrides:
        if pat == site.role or _matches(site.names, pat):
            return mode, f"--override {pat}={mode}"
    if site.role == "embed" and spec.mode == "int4" and spec.embed_mode != spec.mode:
        return spec.embed_mode, f"embedding default {spec.embed_mode} (--override embed=int4 for 4 bits)"
    return spec.mode, "default"


@dataclass
class _Stats:
    """Streaming statistics of one activation tensor (the MatMul's A input)."""

    k: int
    hessian: np.ndarray
    abs_sum: np.ndarray
    rows: int = 0

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(-1, self.k).astype(np.float64)
        self.hessian += x.T @ x
        self.abs_sum += np.abs(x).sum(axis=0)
        self.rows += x.shape[0]

    @property
    def h(self) -> np.ndarray:
        return 2.0 * self.hessian / max(self.rows, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.rows, 1)


def _exposing_session(model_path: Path, tensors: Any) -> Any:
    """A session on the float model with each of ``tensors`` exposed as an output, as named."""
    import onnx
    import onnxruntime as ort

    from ...core.onnxutil import has_external_data, session_source

    big = has_external_data(model_path)  # weights in external data: onnxruntime reads them from the model's folder
    model = load_model(model_path, load_weights=not big)
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the tensors as named
    so.log_severity_level = 3
    if big:  # the graph from bytes, its (checked) external data from beside the file: no copy of the weights here
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(model_path).parent))
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with session_source(model) as src:  # a model over 2 GiB goes through a file with external data
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def collect_stats(model_path: Path, tensors: dict[str, int], data: SampleSet, n: int, on_sample: Any = None) -> dict[str, _Stats]:
    """Run the fp32 model on ``n`` samples with each tensor in ``tensors`` exposed as an output."""
    sess = _exposing_session(model_path, tensors)
    names = list(tensors)
    stats = {t: _Stats(k, np.zeros((k, k)), np.zeros(k)) for t, k in tensors.items()}
    for i in range(n):
        outs = sess.run(names, data.feed(i))
        for t, o in zip(names, outs):
            stats[t].add(np.asarray(o))
        if on_sample:
            on_sample()
    return stats


def _codes(w: np.ndarray, mode: str, spec: QuantSpec, st: _Stats | None, *, float_zero: bool,
           awq_h: np.ndarray | None = None) -> bw.BlockCodes:
    bits = WEIGHT_ONLY_BITS[mode]
    bs, sym = spec.block_size, spec.symmetric
    if spec.algo == "hqq":
        return bw.hqq(w, bits, bs, sym, float_zero=float_zero)
    if spec.algo == "gptq" and st is not None:
        return bw.gptq(w, st.h, bits, bs, sym, act_order=spec.gptq_act_order)
    if spec.algo == "awq" and awq_h is not None:
        return bw.awq_clip(w, awq_h, bits, bs, sym)  # the scales are already in w (see _awq_prepare)
    return bw.rtn(w, bits, bs, sym)


def _awq_prepare(model: Any, plan: list, stats: dict[str, _Stats], spec: QuantSpec, data: SampleSet,
                 notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """AWQ's scale search per group of MatMuls sharing an input; scales written into the model's
    float initializers (weights' rows times s, 1/s folded into the op before).

    Returns (E[x^T x] of each scaled input, for the clip search; 1/s of the groups whose
    scale could not be folded and needs a Mul in front)."""
    from onnx import numpy_helper

    from . import awq_graph

    nodes = model.graph.node
    members, bits_of = [], {}
    for s, m, _ in plan:
        if m == "none" or s.op == "Gather":
            continue
        node = nodes[s.node_index]
        k = s.shape[1] if s.op == "Gemm" and _trans_b(node) else s.shape[0]
        members.append((s.node_index, s.weight, k))
        bits_of[s.node_index] = WEIGHT_ONLY_BITS[m]
    groups = awq_graph.plan(model, members)
    groups = awq_graph.check_folds(model, groups, data.feed(0))
    inits = {i.name: i for i in model.graph.initializer}
    orig = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer
            if any(i.name == w for g in groups for w, _ in g.weights)}
    results = [awq_graph.search(g, orig, stats[g.input].h / 2, stats[g.input].mean_abs, [bits_of[i] for i in g.members],
                                spec.block_size, spec.symmetric) for g in groups]
    arrays: dict[str, np.ndarray] = {}
    for r in results:
        for name, _ in (*r.group.weights, *(r.group.fold.inits if r.group.fold else ())):
            arrays.setdefault(name, numpy_helper.to_array(inits[name]).astype(np.float32))
        awq_graph.apply(arrays, r.group, r.scale)
    for name, a in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))
    h_scaled, mul = {}, {}
    for r in results:
        s = r.scale.astype(np.float64)
        h_scaled[r.group.input] = stats[r.group.input].h / 2 / s[:, None] / s[None, :]
        if r.group.fold is None:
            mul[r.group.input] = (1.0 / r.scale).astype(np.float32)
    folded = [r for r in results if r.group.fold is not None]
    kinds = sorted({r.group.fold.what for r in folded})
    notes.append(
        f"awq: {len(groups)} group(s) of MatMuls sharing an input; {len(folded)} scale(s) folded into the op before "
        f"({', '.join(kinds) or 'none'}), {len(mul)} applied by an inserted Mul; output error vs RTN's per group: "
        f"median {np.median([r.error_ratio for r in results]):.2f}x (alpha median {np.median([r.alpha for r in results]):.2f})"
    )
    for r in results:
        if r.group.fold is None:
            notes.append(f"awq: scale for '{r.group.input}' is a Mul in front: {r.group.why_not}")
    return h_scaled, mul


def quantize(
    artifact: Artifact,
    spec: QuantSpec,
    out_path: Path,
    *,
    data: SampleSet | None = None,
    on_sample: Any = None,
) -> WeightOnlyResult:
    """Rewrite the model's MatMul/Gemm/Gather weights per ``spec`` into ``out_path``."""
    from onnx import TensorProto, helper, numpy_helper

    from ...core.lazyweights import load_rest, tensor_array
    from ...core.onnxutil import has_external_data

    t0 = time.perf_counter()
    out_path = Path(out_path)
    # weights in external data (a 1B LLM): read one at a time, never all at once (AWQ's scale search reads them all)
    lazy = spec.algo != "awq" and has_external_data(artifact.path)
    base = Path(artifact.path).parent
    model = load_model(artifact.path, load_weights=not lazy)
    sites = find_sites(model)
    if not sites:
        raise QuantizationError(
            f"{spec.mode} found no MatMul/Gemm/Gather with a constant 2-D float weight",
            "weight-only modes apply to transformer-style models; try --quant int8-static",
        )
    plan = [(s, *decide(s, spec)) for s in sites]
    notes: list[str] = []
    inits = {i.name: i for i in model.graph.initializer}
    tied = find_tied(plan, inits, base, spec, WEIGHT_ONLY_BITS, model.graph.node)  # a tied embedding + lm_head: one packed copy (tied.py)
    if tied:
        plan = [(s, tied.mode, tied.reason) if s in (tied.embed, tied.head) else (s, m, r) for s, m, r in plan]
        notes.append(f"tied embedding '{tied.embed.weight}' and lm_head stored once ({tied.mode}, {spec.algo} codes) for both "
                     "GatherBlockQuantized and MatMulNBits" + ("" if tied.mode != "int4" else "; --override embed=int8-weight for an 8-bit shared copy"))
    # calibration statistics for the MatMul inputs that GPTQ / AWQ will use
    stats: dict[str, _Stats] = {}
    if spec.algo in ("gptq", "awq") and any(m != "none" and s.op != "Gather" for s, m, _ in plan):
        if data is None:
            raise CalibrationError(
                f"--algo {spec.algo} needs calibration data", "pass --calib DATA.npz (token ids for a language model), or --algo rtn/hqq"
            )
        nodes = model.graph.node
        wanted = {nodes[s.node_index].input[0]: (s.shape[1] if s.op == "Gemm" and _trans_b(nodes[s.node_index]) else s.shape[0])
                  for s, m, _ in plan if m != "none" and s.op != "Gather"}
        n = min(spec.calib_samples, len(data))
        stats = collect_stats(artifact.path, wanted, data, n, on_sample)
        notes.append(f"{spec.algo}: statistics of {len(wanted)} activation tensor(s) from {n} sample(s) of {data.source}")
    # float16 scales run MatMulNBits on float16 activations: inputs that exceed float16's range stay float32
    too_wide: set[str] = set()
    if spec.scale_dtype == "float16":
        mm_inputs = {model.graph.node[s.node_index].input[0] for s, m, _ in plan if m != "none" and s.op != "Gather"}
        if data is not None and mm_inputs:
            peaks = act_absmax(artifact.path, mm_inputs, data, min(HALF_CHECK_SAMPLES, len(data)))
            too_wide = {t for t, v in peaks.items() if not v <= HALF_MAX_ACT}
            if too_wide:
                notes.append(f"{len(too_wide)} MatMul input(s) reach |x| > {HALF_MAX_ACT:g} on the data: their weights keep float32 scales")
        elif mm_inputs:
            notes.append("float16 scales: activations not range-checked against float16 (no data given); verification checks the outputs")
    awq_h: dict[str, np.ndarray] = {}
    awq_mul: dict[str, np.ndarray] = {}
    awq_mul_done: dict[str, str] = {}
    if spec.algo == "awq" and stats:
        # AWQ scales a weight's initializer in place: a tied lm_head (its scale would reach the embedding rows), or any
        # weight another node reads too (the fp32 decoder's tied Gemm reads the Gather's table), takes the clip search alone
        readers: dict[str, int] = {}
        for n in model.graph.node:
            for i in set(n.input):
                readers[i] = readers.get(i, 0) + 1
        alone = [p for p in plan if (tied and p[0] is tied.head) or (p[0].op != "Gather" and readers.get(p[0].weight, 0) > 1)]
        awq_h, awq_mul = _awq_prepare(model, [p for p in plan if p not in alone], stats, spec, data, notes)
        for s, m, _ in alone:
            h_in = model.graph.node[s.node_index].input[0]
            if m != "none" and h_in in stats:
                awq_h.setdefault(h_in, stats[h_in].h / 2)
    new_nodes: dict[int, list[Any]] = {}
    new_inits: list[Any] = []
    decisions: list[WeightDecision] = []
    gather_skipped = 0
    casts16: dict[str, str] = {}  # float32 activation -> its float16 Cast (shared by MatMulNBits on one input)
    for site, mode, reason in plan:
        node = model.graph.node[site.node_index]
        w = tensor_array(inits[site.weight], base).astype(np.float32)
        params = int(w.size)
        if mode == "none":
            decisions.append(WeightDecision(site.weight, site.op, site.role, "none", reason, params, params * 4, params * 4))
            continue
        shared = tied is not None and site is tied.head
        if tied is not None and site is tied.embed:  # written with lm_head's copy (below); it stores nothing of its own
            decisions.append(WeightDecision(site.weight, site.op, site.role, mode, reason, params, params * 4, 0))
            continue
        bits = WEIGHT_ONLY_BITS[mode]
        tag = _norm(node.name or site.weight).replace(".", "_") + f"_{site.node_index}"
        if site.op == "Gather":
            if bits not in GATHER_BITS:
                mode_g = "int8-weight"
                reason = f"{reason}; GatherBlockQuantized has no {bits}-bit kernel: 8 bits"
            else:
                mode_g = mode
            # GatherBlockQuantized needs whole blocks along the embedding width
            gbs = next((b for b in sorted(BLOCK_SIZES, reverse=True) if b <= spec.block_size and w.shape[1] % b == 0), None)
            if gbs is None:
                gather_skipped += 1
                decisions.append(WeightDecision(site.weight, site.op, site.role, "none", f"width {w.shape[1]} is not a multiple of 16", params, params * 4, params * 4))
                continue
            if gbs != spec.block_size:
                notes.append(f"embedding '{site.weight}' (width {w.shape[1]}) quantized with block {gbs}: {spec.block_size} does not divide its width")
            # blocks along the embedding width: quantize E^T [D, V]; HQQ's float zeros do not fit this op
            gspec = replace(spec, block_size=gbs, algo="hqq" if spec.algo == "hqq" else "rtn")
            codes = _codes(w.T, mode_g, gspec, None, float_zero=False)
            packed = bw.pack_gather(codes)
            scales, half = _scales_for(packed.scales, spec, site.weight, notes, levels=2 ** WEIGHT_ONLY_BITS[mode_g] - 1)
            ins = [tag + "_data", node.input[1], tag + "_scales"]
            new_inits += [numpy_helper.from_array(packed.data, ins[0]), numpy_helper.from_array(scales, ins[2])]
            stored = packed.data.nbytes + scales.nbytes
            if packed.zero_points is not None:
                ins.append(tag + "_zp")
                new_inits.append(numpy_helper.from_array(packed.zero_points, ins[3]))
                stored += packed.zero_points.nbytes
            # float16 scales make the gathered rows float16: cast them back for the float32 graph
            g_out = tag + "_f16" if half else node.output[0]
            gnodes = [helper.make_node(
                "GatherBlockQuantized", ins, [g_out], name=(node.name or tag) + "_Q", domain=MS_DOMAIN,
                gather_axis=0, quantize_axis=1, block_size=gbs, bits=WEIGHT_ONLY_BITS[mode_g],
            )]
            if half:
                gnodes.append(helper.make_node("Cast", [g_out], [node.output[0]], to=TensorProto.FLOAT, name=tag + "_cast"))
            new_nodes[site.node_index] = gnodes
            decisions.append(WeightDecision(site.weight, site.op, site.role, mode_g, reason, params, params * 4, int(stored)))
            continue
        trans = site.op == "Gemm" and _trans_b(node)
        if trans:
            w = w.T
        k, n_out = w.shape
        st = stats.get(node.input[0])
        # HQQ's zero points stay float where the kernel takes them (2 and 4 bits; 8-bit needs uint8)
        codes = _codes(w, mode, spec, st, float_zero=bits in (2, 4) and not shared, awq_h=awq_h.get(node.input[0]))
        packed = bw.pack_matmulnbits(codes)
        a_in = node.input[0]
        nodes_out = []
        extra = 0
        if a_in in awq_mul_done:  # AWQ scale of a group without a fold: one Mul shared by the group
            a_in = awq_mul_done[a_in]
        elif a_in in awq_mul:
            scaled = tag + "_awq_in"
            new_inits.append(numpy_helper.from_array(awq_mul[a_in], tag + "_awq_scale"))
            nodes_out.append(helper.make_node("Mul", [a_in, tag + "_awq_scale"], [scaled], name=tag + "_awq"))
            awq_mul_done[a_in] = scaled
            a_in, extra = scaled, 4 * k
        if codes.act_scale is not None:
            a_scaled = tag + "_awq_in"
            new_inits.append(numpy_helper.from_array(codes.act_scale.astype(np.float32), tag + "_awq_scale"))
            nodes_out.append(helper.make_node("Mul", [a_in, tag + "_awq_scale"], [a_scaled], name=tag + "_awq"))
            a_in = a_scaled
        scales, half = _scales_for(packed.scales.reshape(-1), spec if node.input[0] not in too_wide else replace(spec, scale_dtype="float32"), site.weight, notes)
        if half:  # MatMulNBits takes its scales in the activation type: run it in float16 between Casts
            if a_in not in casts16:
                casts16[a_in] = tag + "_a16"
                nodes_out.append(helper.make_node("Cast", [a_in], [casts16[a_in]], to=TensorProto.FLOAT16, name=tag + "_cast_in"))
            a_in = casts16[a_in]
        if shared:  # the gather reads them too: [vocab, hidden / block] as GatherBlockQuantized wants them
            scales = scales.reshape(packed.scales.shape)
        ins = [a_in, tag + "_B", tag + "_scales"]
        new_inits += [numpy_helper.from_array(packed.b, ins[1]), numpy_helper.from_array(scales, ins[2])]
        stored = packed.b.nbytes + scales.nbytes
        if packed.zero_points is not None:
            zp = packed.zero_points if shared else packed.zero_points.reshape(-1)
            if half and zp.dtype.kind == "f":  # float zero points (HQQ) follow the activation type too
                zp = zp.astype(np.float16)
            ins.append(tag + "_zp")
            new_inits.append(numpy_helper.from_array(zp, ins[3]))
            stored += zp.nbytes
        c = node.input[2] if site.op == "Gemm" and len(node.input) > 2 and node.input[2] else None
        bias_1d = not half and c is not None and c in inits and list(inits[c].dims) == [n_out]
        if bias_1d:
            ins += [""] * (5 - len(ins)) + [c]
        y = node.output[0] if (c is None or bias_1d) else tag + "_mm"
        y_nbits = tag + "_y16" if half else y
        nodes_out.append(helper.make_node(
            "MatMulNBits", ins, [y_nbits], name=(node.name or tag) + "_Q", domain=MS_DOMAIN,
            K=k, N=n_out, bits=bits, block_size=spec.block_size, accuracy_level=spec.accuracy_level,
        ))
        if half:
            nodes_out.append(helper.make_node("Cast", [y_nbits], [y], to=TensorProto.FLOAT, name=tag + "_cast_out"))
        if y != node.output[0]:  # Gemm's C that is not a per-column bias (or any bias in float16 mode): add it after (beta is 1)
            nodes_out.append(helper.make_node("Add", [y, c], [node.output[0]], name=tag + "_bias"))
        new_nodes[site.node_index] = nodes_out
        if shared:
            gnodes, ginits = shared_gather_nodes(tied, model.graph.node[tied.embed.node_index], ins[1], ins[2],
                                                 ins[3] if len(ins) > 3 and ins[3] else None, bits=bits,
                                                 block_size=spec.block_size, half=half, tag=tag + "_embed")
            new_nodes[tied.embed.node_index] = gnodes
            new_inits += ginits
        extra += 4 * k if codes.act_scale is not None else 0
        decisions.append(WeightDecision(site.weight, site.op, site.role, mode, reason, params, params * 4, int(stored) + extra))
    if any(d.op != "Gather" and d.mode in ("int4", "int2") for d in decisions) and spec.algo == "hqq":
        notes.append(
            "hqq: float zero points are stored; onnxruntime 1.32 runs MatMulNBits with float zero points on a slow "
            "path (measured 3.7x fp32 decode latency vs 0.14x for rtn at accuracy level 4): use it for accuracy, not speed"
        )
    if gather_skipped:
        notes.append(f"{gather_skipped} embedding(s) kept fp32: their width is not a multiple of 16")
    if not new_nodes:
        raise QuantizationError(
            "every weight was kept in fp32 (--keep / --override none)", "drop --keep entries or use --quant none"
        )
    replace_nodes(model, new_nodes, new_inits)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if lazy:
        load_rest(model, base)  # what stays float (norms, biases, kept weights)
    removed, saved = dedupe_constants(model)
    if removed:
        notes.append(f"{removed} duplicated constant(s) stored once ({saved / 1e6:.3f} MB saved; e.g. a causal mask or rotary table repeated per layer)")
    save_model(model, out_path)
    cov = coverage_of(decisions, notes)
    step = f"quantize({spec.mode}, algo={spec.algo}, block={spec.block_size}, {'sym' if spec.symmetric else 'asym'}, accuracy_level={spec.accuracy_level}"
    step += ", scales=float16)" if spec.scale_dtype == "float16" else ")"
    return WeightOnlyResult(
        artifact_from(out_path, artifact.provenance + (step,)), spec, cov, tuple(notes),
        decisions=tuple(decisions), seconds=time.perf_counter() - t0, sizes=size_breakdown(out_path),
    )


HALF_MAX_ACT = 32768.0  # largest MatMul input kept float16 (float16 max 65504: headroom for unseen inputs)
HALF_CHECK_SAMPLES = 8


def act_absmax(model_path: Path, tensors: set[str], data: SampleSet, n: int) -> dict[str, float]:
    """Largest |value| of each tensor over ``n`` samples of the float model (NaN counts as out of range)."""
    sess = _exposing_session(model_path, tensors)
    names = sorted(tensors)
    peak = dict.fromkeys(names, 0.0)
    for i in range(n):
        for t, o in zip(names, sess.run(names, data.feed(i))):
            o = np.asarray(o)
            peak[t] = max(peak[t], float(np.abs(o).max())) if o.size and np.all(np.isfinite(o)) else float("inf") if o.size else peak[t]
    return peak


HALF_REL_ERROR = 2.0**-10  # float16 keeps 11 significant bits: a normal value rounds within 2^-11


def _scales_for(scales: np.ndarray, spec: QuantSpec, weight: str, notes: list[str], levels: int = 0) -> tuple[np.ndarray, bool]:
    """The scales as stored: float16 when asked for and every nonzero scale survives the rounding
    (and, with ``levels``, every dequantized value ``code * scale`` fits float16 too)."""
    scales = np.ascontiguousarray(scales, dtype=np.float32)
    if spec.scale_dtype != "float16":
        return scales, False
    with np.errstate(over="ignore"):
        half = scales.astype(np.float16)
    back = half.astype(np.float32)
    nz = scales != 0
    rel = np.abs(back[nz] - scales[nz]) / np.abs(scales[nz]) if nz.any() else np.zeros(1)
    too_big = levels and float(np.abs(scales).max(initial=0.0)) * levels > float(np.finfo(np.float16).max)
    if not np.all(np.isfinite(back)) or float(rel.max()) > HALF_REL_ERROR or too_big:
        notes.append(f"'{weight}': float32 scales kept (some scales are out of float16's normal range)")
        return scales, False
    return np.ascontiguousarray(half), True


def _trans_b(node: Any) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def save_model(model: Any, path: Path) -> None:
    from ...core.onnxutil import save_model

    save_model(model, path)  # external data (one file beside it) over the threshold


def solve_codes(w: np.ndarray, mode: str, spec: QuantSpec, st: _Stats | None, *, float_zero: bool,
                awq_h: np.ndarray | None = None) -> bw.BlockCodes:
    """The codes ``spec.algo`` chooses for one ``[K, N]`` weight (RTN, HQQ, GPTQ with ``st``, AWQ's clip with ``awq_h``);
    the storage form is the caller's (MatMulNBits here, QDQ in ``quantization/npu_qdq.py``)."""
    return _codes(w, mode, spec, st, float_zero=float_zero, awq_h=awq_h)


def awq_prepare(model: Any, plan: list, stats: dict[str, _Stats], spec: QuantSpec, data: SampleSet,
                notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """AWQ's scale search folded into ``model`` (see ``_awq_prepare``): (scaled E[x^T x] per input, 1/s needing a Mul)."""
    return _awq_prepare(model, plan, stats, spec, data, notes)


def coverage_of(decisions: tuple[WeightDecision, ...] | list[WeightDecision], notes: list[str]) -> Coverage:
    """Weights per op type, quantized or not, from the per-weight decisions; a note names the reasons weights stayed fp32."""
    counts_total: dict[str, int] = {}
    counts_q: dict[str, int] = {}
    for d in decisions:
        counts_total[d.op] = counts_total.get(d.op, 0) + 1
        if d.mode != "none":
            counts_q[d.op] = counts_q.get(d.op, 0) + 1
    kept = [d for d in decisions if d.mode == "none"]
    if kept:
        notes.append(f"{len(kept)} weight(s) kept fp32: " + ", ".join(sorted({d.reason for d in kept})))
    return Coverage(
        total=counts_total, quantized=counts_q,
        weight_bytes_total=sum(d.bytes_fp32 for d in decisions),
        weight_bytes_quantized=sum(d.bytes_fp32 for d in decisions if d.mode != "none"),
    )


def replace_nodes(model: Any, new_nodes: dict[int, list[Any]], new_inits: list[Any]) -> None:
    """Node ``i`` of ``model``'s graph replaced by ``new_nodes[i]`` (in place), ``new_inits`` added, unused initializers dropped."""
    rebuilt = []
    for i, n in enumerate(model.graph.node):
        rebuilt.extend(new_nodes.get(i, [n]))
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep_inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_inits)
