"""QDQ around the activations of non-weight ops, for accelerators that run fixed point only.

edgeq's QDQ writer (``qdq.write``) quantizes the nodes whose weights carry the compute
(Conv, Gemm, MatMul) and leaves LayerNormalization, Softmax, residual Adds, GELU's Mul/Erf,
attention's activation x activation MatMuls and the reshapes between them float. A CPU
runs that mix well. The Qualcomm HTP does not: a float node inside a QDQ graph stops its
compiler (``QNN_COMMON_ERROR_MEM_ALLOC`` on the simulator). A target that needs the whole
graph fixed point lists the op types in ``[quant] activation_ops``; this pass then, after
``qdq.write``:

- puts a QuantizeLinear/DequantizeLinear pair on every float activation those nodes read or
  write (one pair per tensor; a tensor the writer already quantized is left as it is), with
  the ranges from the same calibration pass (``tensors`` names what to calibrate);
- gives their float constants (LayerNorm scale, an attention scale, a bias added after a
  MatMul) uint8 per-tensor codes (the HTP's LayerNorm refuses an int8 scale), a
  LayerNormalization bias int32 codes at input scale x scale's scale, and a Gather's
  constant table (embeddings) the codes of the Gather's output, so it moves codes only;
- keeps one scale through pure data movement (Reshape, Transpose, Squeeze, Unsqueeze,
  Flatten, Identity): their output takes the input's range, so nothing is requantized;
- leaves a tensor the writer already quantizes for a weight node (16-bit after --max-drop)
  to the writer's quantizer, and gives its other consumers their own pair.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import qdq

MOVEMENT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# inputs that are never activations (shapes, axes, indices, Clip bounds stay as they are)
_NOT_DATA = {"Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4), "Gather": (1,), "Split": (1,),
             "Clip": (1, 2), "Resize": (1, 2, 3), "Pad": (1, 2, 3), "ReduceMean": (1,), "ReduceSum": (1,), "Expand": (1,),
             "Tile": (1,), "TopK": (1,)}


def _data_inputs(node: Any) -> list[tuple[int, str]]:
    skip = _NOT_DATA.get(node.op_type, ())
    return [(i, t) for i, t in enumerate(node.input) if t and i not in skip]


def selected(model: Any, ops: Iterable[str], keep: Iterable[str] = ()) -> list[Any]:
    """Main-graph nodes of the ``ops`` types, less ``keep`` (names), in graph order."""
    want, kept = set(ops), set(keep)
    return [n for n in model.graph.node if n.op_type in want and n.domain in ("", "ai.onnx") and n.name not in kept]


def tensors(model: Any, ops: Iterable[str], float_names: set[str] | None = None) -> tuple[str, ...]:
    """Float activations read or written by ``ops`` nodes: the tensors calibration must see."""
    ops = tuple(ops)
    if not ops:
        return ()
    floats = qdq.float_tensors(model) if float_names is None else float_names
    consts = qdq.const_names(model)
    out: list[str] = []
    for n in selected(model, ops):
        for _, t in _data_inputs(n):
            if t in floats and t not in consts:
                out.append(t)
        out += [t for t in n.output if t in floats]
    seen: set[str] = set()
    return tuple(t for t in out if not (t in seen or seen.add(t)))


def quantize(
    model: Any,
    ops: Iterable[str],
    ranges: dict[str, tuple[float, float]],
    qparams: Callable[[float, float], tuple[float, int]],
    act_type: str,
    *,
    float_names: set[str],
    keep: Iterable[str] = (),
) -> tuple[Any, dict[str, str]]:
    """QDQ on the activations and constants of the ``ops`` nodes of ``model`` (a copy is returned).

    ``ranges``: calibrated (lo, hi) per tensor; ``qparams(lo, hi)`` -> (scale, zero point) in
    ``act_type``; ``float_names``: float tensors of the model before ``qdq.write`` (shape
    inference); ``keep``: nodes that stay float. Returns (model, node -> how it was quantized).
    """
    from onnx import helper, numpy_helper

    if not selected(model, ops, keep):
        return model, {}
    m = copy.deepcopy(model)
    nodes = selected(m, ops, keep)
    g = m.graph
    consts = qdq.const_names(m)
    elem, _, _ = qdq.ACT_TYPES[act_type]
    zdt = helper.tensor_dtype_to_np_dtype(elem)
    inits = {t.name: t for t in g.initializer}
    dequantized = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    taken = {n.name for n in g.node} | {o for n in g.node for o in n.output} | {i.name for i in g.initializer}
    # a movement op's output keeps its input's range: one scale, no requantization
    rng = dict(ranges)
    for n in g.node:
        if n.op_type in MOVEMENT_OPS and n.input and n.input[0] in rng and n.output[0] in rng:
            rng[n.output[0]] = rng[n.input[0]]
    # a Gather from a constant table (embeddings) reads codes in the output's own scale: the table's range
    for n in g.node:
        if n.op_type == "Gather" and n.input[0] in consts and n.output[0] in rng and consts[n.input[0]].data_type == 1:
            w = numpy_helper.to_array(consts[n.input[0]])
            if w.size and np.all(np.isfinite(w)):
                rng[n.output[0]] = (float(w.min()), float(w.max()))
    qp: dict[str, tuple[float, int]] = {}

    def fresh(base: str) -> str:
        i, name = 0, base
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def params(t: str) -> tuple[float, int]:
        if t not in qp:
            qp[t] = qparams(*rng[t])
        return qp[t]

    def pair(src: str, dst: str, t: str) -> list[Any]:
        s, z = params(t)
        sn, zn = fresh(dst + "_qs"), fresh(dst + "_qz")
        g.initializer.append(numpy_helper.from_array(np.array(s, np.float32), sn))
        g.initializer.append(numpy_helper.from_array(np.array(z, zdt), zn))
        q = fresh(dst + "_q")
        dequantized.add(dst)
        return [helper.make_node("QuantizeLinear", [src, sn, zn], [q], name=fresh(dst + "_Q")),
                helper.make_node("DequantizeLinear", [q, sn, zn], [dst], name=fresh(dst + "_DQ"))]

    def scale_of(t: str) -> float | None:
        """The scale a dequantized activation ``t`` carries (None: unknown or per-channel)."""
        if t in qp:  # an output this pass quantized
            return qp[t][0]
        src = next((k for k, d in shared.items() if d == t), None)
        if src is not None:
            return params(src)[0]
        dq = next((n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == t), None)
        if dq is None or len(dq.input) < 2 or dq.input[1] not in inits:
            return None
        s = numpy_helper.to_array(inits[dq.input[1]])
        return float(s) if s.size == 1 else None

    def const_dq(t: str, node_name: str, *, bias_scale: float | None = None) -> tuple[str, float] | None:
        w = numpy_helper.to_array(consts[t]).astype(np.float32)
        if not np.all(np.isfinite(w)):
            return None
        base = fresh(t + "__edgeq_c")
        if bias_scale is not None:
            s = np.float32(bias_scale)
            q = np.round(w / s)
            if not np.all(np.abs(q) < 2**31 - 1):
                return None
            qa, za = q.astype(np.int32), np.array(0, np.int32)
        else:  # uint8 asymmetric per tensor over [min(w, 0), max(w, 0)]: the HTP's LayerNorm takes no int8 scale
            lo, hi = (min(float(w.min()), 0.0), max(float(w.max()), 0.0)) if w.size else (0.0, 0.0)
            s = np.float32((hi - lo) / 255.0 if hi > lo else 1.0)
            z = int(np.clip(round(-lo / float(s)), 0, 255))
            qa, za = np.clip(np.round(w / s) + z, 0, 255).astype(np.uint8), np.array(z, np.uint8)
        g.initializer.append(numpy_helper.from_array(qa, base + "_q"))
        g.initializer.append(numpy_helper.from_array(np.array(s, np.float32), base + "_s"))
        g.initializer.append(numpy_helper.from_array(za, base + "_z"))
        before.setdefault(node_name, []).append(
            helper.make_node("DequantizeLinear", [base + "_q", base + "_s", base + "_z"], [base], name=fresh(base + "_DQ")))
        return base, float(s)

    def table_dq(t: str, out: str, node_name: str) -> str:
        """``t`` (a Gather's table) in ``out``'s activation codes: the Gather moves codes, no requantization."""
        sc, zp = params(out)
        _, qmin, qmax = qdq.ACT_TYPES[act_type]
        w = numpy_helper.to_array(consts[t]).astype(np.float32)
        base = fresh(t + "__edgeq_t")
        g.initializer.append(numpy_helper.from_array(np.clip(np.round(w / sc) + zp, qmin, qmax).astype(zdt), base + "_q"))
        g.initializer.append(numpy_helper.from_array(np.array(sc, np.float32), base + "_s"))
        g.initializer.append(numpy_helper.from_array(np.array(zp, zdt), base + "_z"))
        before.setdefault(node_name, []).append(
            helper.make_node("DequantizeLinear", [base + "_q", base + "_s", base + "_z"], [base], name=fresh(base + "_DQ")))
        return base

    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    shared: dict[str, str] = {}  # activation -> its dequantized copy
    how: dict[str, str] = {}
    graph_outputs = {o.name for o in g.output}
    for node in nodes:
        node_name = node.name
        done, missing = 0, []
        scales: dict[int, float] = {}
        for i, t in _data_inputs(node):
            if t in dequantized:
                continue
            if t in consts and node.op_type == "Gather" and i == 0 and node.output[0] in rng and consts[t].data_type == 1:
                node.input[i] = table_dq(t, node.output[0], node_name)
                done += 1
                continue
            if t in consts:
                if consts[t].data_type != 1 or (node.op_type == "LayerNormalization" and i == 2):
                    continue  # non-float constants; the LayerNorm bias comes after its scale
                got = const_dq(t, node_name)
                if got is not None:
                    node.input[i], scales[i] = got
                    done += 1
                continue
            if t not in float_names:
                continue
            if t not in rng:
                missing.append(t)
                continue
            if t not in shared:
                shared[t] = fresh(t + "__edgeq_adq")
                before.setdefault(node_name, []).extend(pair(t, shared[t], t))
            node.input[i] = shared[t]
            done += 1
        if node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2] in consts and 1 in scales:
            s_in = scale_of(node.input[0])
            if s_in is not None and consts[node.input[2]].data_type == 1:
                got = const_dq(node.input[2], node_name, bias_scale=s_in * scales[1])
                if got is not None:
                    node.input[2] = got[0]
        for k, t in enumerate(node.output):
            if not t or t not in float_names or t in dequantized:
                continue
            if t not in rng:
                missing.append(t)
                continue
            quantizers = [c for c in consumers.get(t, []) if c.op_type == "QuantizeLinear"]
            if quantizers:  # the weight-op writer quantizes t for its consumer (maybe 16-bit): keep those codes
                others = [c for c in consumers[t] if c.op_type != "QuantizeLinear"]
                if others:
                    shared[t] = fresh(t + "__edgeq_adq")
                    after.setdefault(node_name, []).extend(pair(t, shared[t], t))
                    for c in others:
                        for j, name in enumerate(c.input):
                            if name == t:
                                c.input[j] = shared[t]
                done += 1
                continue
            pre = fresh(t + "__edgeq_apre")
            node.output[k] = pre
            after.setdefault(node_name, []).extend(pair(pre, t, t))
            done += 1
        if done:
            how[node_name] = f"{act_type} activations (QDQ around {node.op_type})" + (
                f"; {len(missing)} tensor(s) not reached by the calibration data stay float" if missing else "")
        elif missing:
            how[node_name] = "activations float (not reached by the calibration data)"
    new = []
    for n in g.node:
        new.extend(before.get(n.name, []))
        new.append(n)
        new.extend(after.get(n.name, []))
    copies = [copy.deepcopy(n) for n in new]
    del g.node[:]
    g.node.extend(copies)
    from ...core.onnxutil import iter_nodes

    used = {i for n in iter_nodes(g) for i in n.input} | graph_outputs
    for i in reversed([i for i, t in enumerate(g.initializer) if t.name not in used]):
        del g.initializer[i]
    return m, how
