"""AWQ on an ONNX graph: which weights share a scale, and where ``1/s`` is folded.

AWQ (Lin et al., 2023) multiplies the weights that read one activation tensor by a
per-input-channel scale ``s`` and divides the activation by ``s``. As in llm-awq, the
division is not a new op: it is folded into the op that produces the activation,

- an RMSNorm / LayerNorm weight (``Mul`` by a 1-D constant, ``LayerNormalization``, onnxruntime's
  ``SkipSimplifiedLayerNormalization`` / ``SkipLayerNormalization`` / ``SimplifiedLayerNormalization``):
  q/k/v read the attention norm, gate/up the MLP norm, the LM head the final norm;
- the output columns of the MatMul (with its bias) whose output reaches the activation
  through channel-preserving ops only: v_proj -> (Reshape/Transpose/attention MatMul)
  -> o_proj, and up_proj -> (``silu(gate) * up``) -> down_proj; where up is one output of a
  ``Split`` of a packed gate/up MatMul, into that MatMul's up columns.

Every fold is checked numerically before it is used: the float model with random
scales folded in must give the original outputs on a calibration sample. Where no fold
exists (or the check fails) the scale is applied by a ``Mul`` in front of the quantized
MatMuls and ``quantize()`` says so in its notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import blockwise as bw

CHANNEL_OPS = ("Reshape", "Transpose")
# onnxruntime's fused norms: input index of the weight (gamma) and of a bias added after the norm (beta), if any
NORM_OPS = {"SkipSimplifiedLayerNormalization": (2, None), "SkipLayerNormalization": (2, 3), "SimplifiedLayerNormalization": (1, None)}


@dataclass(frozen=True)
class Fold:
    """Initializers to divide by ``s``: (name, axis the channels run along)."""

    inits: tuple[tuple[str, int], ...]
    what: str  # "norm" | "layernorm" | "matmul"
    source: str  # the node the scale is folded into
    starts: tuple[int, ...] = ()  # per init: first channel of the scaled range along its axis (a packed MatMul); () = all 0


@dataclass(frozen=True)
class Group:
    """Quantized MatMuls that read one activation tensor and share one AWQ scale."""

    input: str
    members: tuple[int, ...]  # node indices
    weights: tuple[tuple[str, int], ...]  # (initializer, axis of the input channels) per member
    fold: Fold | None
    why_not: str = ""


def _graph_maps(model: Any) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, int], set[str]]:
    producers: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for o in n.output:
            producers[o] = n
        for i in n.input:
            consumers.setdefault(i, []).append(n)
            uses[i] = uses.get(i, 0) + 1
    outs = {o.name for o in model.graph.output}
    return producers, consumers, uses, outs


def _is_trans_b(node: Any) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def _matmul_fold(node: Any, k: int, inits: dict[str, Any], uses: dict[str, int], bias: str | None = None,
                 start: int | None = None) -> Fold | None:
    """Fold into the output columns of a MatMul/Gemm with a constant weight (and its bias); ``start``: into
    columns start .. start + k of a wider (packed) MatMul only."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    w = inits[node.input[1]]
    if len(w.dims) != 2 or uses.get(node.input[1], 0) != 1:
        return None
    axis = 0 if (node.op_type == "Gemm" and _is_trans_b(node)) else 1
    if start is not None:
        if node.op_type != "MatMul" or w.dims[axis] < start + k:
            return None
        if bias is not None and (list(inits[bias].dims) != [w.dims[axis]] or uses.get(bias, 0) != 1):
            return None
        folds = ((node.input[1], axis),) + (((bias, 0),) if bias is not None else ())
        return Fold(folds, "matmul", node.name or node.output[0], starts=(start,) * len(folds))
    if w.dims[axis] != k:
        return None
    folds = [(node.input[1], axis)]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        if c not in inits or list(inits[c].dims) != [k] or uses.get(c, 0) != 1:
            return None
        folds.append((c, 0))
    if bias is not None:
        folds.append((bias, 0))
    return Fold(tuple(folds), "matmul", node.name or node.output[0])


def _split_fold(split: Any, out: str, k: int, maps: tuple, inits: dict[str, Any]) -> Fold | None:
    """``out`` is one last-axis piece of a Split of a packed MatMul (+ bias): fold into that piece's columns."""
    from onnx import numpy_helper

    producers, consumers, uses, outs = maps
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    sizes = None
    if len(split.input) > 1 and split.input[1] in inits:
        sizes = [int(v) for v in numpy_helper.to_array(inits[split.input[1]]).reshape(-1)]
    elif any(a.name == "split" for a in split.attribute):
        sizes = [int(v) for v in next(a.ints for a in split.attribute if a.name == "split")]
    if axis != -1 or sizes is None or len(sizes) != len(split.output):
        return None
    j = list(split.output).index(out)
    src = split.input[0]
    if sizes[j] != k or len(consumers.get(src, [])) != 1 or src in outs:
        return None
    start = sum(sizes[:j])
    q = producers.get(src)
    if q is None:
        return None
    if q.op_type == "Add":
        for c, other in ((q.input[0], q.input[1]), (q.input[1], q.input[0])):
            m = producers.get(other)
            if c in inits and other not in inits and m is not None and len(consumers.get(other, [])) == 1 and other not in outs:
                return _matmul_fold(m, k, inits, uses, bias=c, start=start)
        return None
    return _matmul_fold(q, k, inits, uses, start=start)


def _const_1d(name: str, k: int, inits: dict[str, Any], uses: dict[str, int]) -> bool:
    t = inits.get(name)
    return t is not None and [d for d in t.dims if d != 1] == [k] and t.dims[-1] == k and uses.get(name, 0) == 1


def find_fold(model: Any, tensor: str, k: int, maps: tuple, inits: dict[str, Any]) -> tuple[Fold | None, str]:
    """Where ``1/s`` for activation ``tensor`` (``k`` channels on the last axis) can be folded."""
    producers, consumers, uses, outs = maps
    t = tensor
    for _ in range(12):
        p = producers.get(t)
        if p is None:
            return None, "a graph input"
        if p.op_type == "Mul":
            a, b = p.input[0], p.input[1]
            for c, other in ((a, b), (b, a)):
                if _const_1d(c, k, inits, uses) and other not in inits:
                    return Fold(((c, -1),), "norm", p.name or t), ""
            if t != tensor:
                return None, "an elementwise Mul inside the path"
            # silu(gate) * up: fold into the MatMul that makes one factor and feeds nothing else
            for c in (a, b):
                q = producers.get(c)
                if q is not None and len(consumers.get(c, [])) == 1 and c not in outs:
                    f = _matmul_fold(q, k, inits, uses)
                    if f is None and q.op_type == "Add":
                        f = _bias_add_fold(q, k, maps, inits)
                    if f is None and q.op_type == "Split":
                        f = _split_fold(q, c, k, maps, inits)
                    if f is not None:
                        return f, ""
            return None, "a Mul of two activations, neither from a foldable MatMul"
        if p.op_type in NORM_OPS and p.domain == "com.microsoft" or (p.op_type == "SimplifiedLayerNormalization" and p.domain in ("", "ai.onnx")):
            gi, bi = NORM_OPS[p.op_type]
            ins = [p.input[i] for i in (gi, bi) if i is not None and i < len(p.input) and p.input[i]]
            if t == p.output[0] and ins and all(_const_1d(i, k, inits, uses) for i in ins):
                return Fold(tuple((i, -1) for i in ins), "norm", p.name or t), ""
            return None, f"a {p.op_type} with shared or non-constant weights"
        if p.op_type == "LayerNormalization":
            ins = [i for i in p.input[1:3] if i]
            if all(_const_1d(i, k, inits, uses) for i in ins) and ins:
                return Fold(tuple((i, -1) for i in ins), "layernorm", p.name or t), ""
            return None, "a LayerNormalization with shared or non-constant weights"
        if p.op_type in ("MatMul", "Gemm"):
            f = _matmul_fold(p, k, inits, uses)
            if f is not None:
                return f, ""
            if p.op_type == "MatMul" and p.input[0] not in inits and p.input[1] not in inits and t == p.output[0]:
                nxt = p.input[1]  # attention: probs @ V keeps V's last-axis channels
            else:
                return None, f"{p.op_type} {p.name} cannot take the scale"
        elif p.op_type == "Add":
            f = _bias_add_fold(p, k, maps, inits)
            if f is not None:
                return f, ""
            return None, "an Add (residual) in front"
        elif p.op_type in CHANNEL_OPS:
            nxt = p.input[0]
        else:
            return None, f"a {p.op_type} in front"
        if len(consumers.get(nxt, [])) != 1 or nxt in outs:
            return None, f"'{nxt}' feeds other ops or is a model output"
        t = nxt
    return None, "no foldable op within 12 steps"


def _bias_add_fold(add: Any, k: int, maps: tuple, inits: dict[str, Any]) -> Fold | None:
    """MatMul + Add(bias): fold into the MatMul's columns and the bias."""
    producers, consumers, uses, outs = maps
    for c, other in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if _const_1d(c, k, inits, uses) and other not in inits:
            q = producers.get(other)
            if q is not None and len(consumers.get(other, [])) == 1 and other not in outs:
                return _matmul_fold(q, k, inits, uses, bias=c)
    return None


def plan(model: Any, members: list[tuple[int, str, int]]) -> list[Group]:
    """Group the quantized MatMuls by input tensor and find each group's fold.

    ``members``: (node index, weight initializer, K) of every MatMul/Gemm being quantized.
    """
    inits = {i.name: i for i in model.graph.initializer}
    maps = _graph_maps(model)
    _, consumers, uses, outs = maps
    nodes = model.graph.node
    by_input: dict[str, list[tuple[int, str, int]]] = {}
    for m in members:
        by_input.setdefault(nodes[m[0]].input[0], []).append(m)
    groups = []
    for tensor, ms in by_input.items():
        k = ms[0][2]
        idx = tuple(m[0] for m in ms)
        weights = tuple((m[1], 0 if not (nodes[m[0]].op_type == "Gemm" and _is_trans_b(nodes[m[0]])) else 1) for m in ms)
        if any(uses.get(w, 0) != 1 for w, _ in weights) or any(m[2] != k for m in ms):
            groups.append(Group(tensor, idx, weights, None, "a weight is shared with another op: not scaled"))
            continue
        readers = consumers.get(tensor, [])
        if len(readers) != len(ms) or tensor in outs:
            groups.append(Group(tensor, idx, weights, None, "the activation also feeds ops that are not quantized here"))
            continue
        fold, why = find_fold(model, tensor, k, maps, inits)
        # a fold target may not be one of this group's own weights (a MatMul feeding itself)
        if fold is not None and any(name in {w for w, _ in weights} for name, _ in fold.inits):
            fold, why = None, "the fold target is in the group"
        groups.append(Group(tensor, idx, weights, fold, why))
    return groups


def _scale_along(a: np.ndarray, s: np.ndarray, axis: int, divide: bool, start: int = 0) -> np.ndarray:
    shape = [1] * a.ndim
    axis = axis % a.ndim
    shape[axis] = -1
    f = s.reshape(shape).astype(np.float64)
    if start or a.shape[axis] != s.size:  # a channel range of a packed weight
        out = a.copy()
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, start + s.size)
        part = a[tuple(idx)]
        out[tuple(idx)] = (part / f if divide else part * f).astype(a.dtype)
        return out
    return (a / f if divide else a * f).astype(a.dtype)


def apply(arrays: dict[str, np.ndarray], group: Group, s: np.ndarray, *, fold: bool = True) -> None:
    """Scale the members' input rows by ``s`` and (if ``fold``) divide the fold target by ``s``, in ``arrays``."""
    for name, axis in group.weights:
        arrays[name] = _scale_along(arrays[name], s, axis, divide=False)
    if fold and group.fold is not None:
        starts = group.fold.starts or (0,) * len(group.fold.inits)
        for (name, axis), start in zip(group.fold.inits, starts):
            arrays[name] = _scale_along(arrays[name], s, axis, divide=True, start=start)


def check_folds(model: Any, groups: list[Group], feed: dict[str, np.ndarray], seed: int = 0) -> list[Group]:
    """Fold random scales into a copy of the float model; keep the folds that leave its outputs unchanged."""
    import onnx
    from onnx import numpy_helper

    foldable = [g for g in groups if g.fold is not None]
    if not foldable:
        return groups
    base_arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    rand = {g.input: np.exp(rng.uniform(-0.7, 0.7, _k(base_arrays, g))).astype(np.float32)
            for g in foldable}
    ref = _run(model, feed)

    def ok(subset: list[Group]) -> bool:
        arrays = {}
        for g in subset:
            for name, _ in (*g.weights, *g.fold.inits):
                arrays.setdefault(name, base_arrays[name].copy())
            apply(arrays, g, rand[g.input])
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for init in m.graph.initializer:
            if init.name in arrays:
                init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
        got = _run(m, feed)
        return all(np.allclose(g_, r_, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(r_).max()))) for g_, r_ in zip(got, ref))

    if ok(foldable):
        return groups
    bad = {g.input for g in foldable if not ok([g])}
    return [Group(g.input, g.members, g.weights, None, "folding the scale changed the float model's outputs") if g.input in bad else g
            for g in groups]


def _k(arrays: dict[str, np.ndarray], g: Group) -> int:
    name, axis = g.weights[0]
    return int(arrays[name].shape[axis])


def _run(model: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feed)]


@dataclass(frozen=True)
class GroupResult:
    group: Group
    scale: np.ndarray  # s: weights' rows were multiplied by it, the activation divided
    alpha: float
    error_ratio: float  # output error with s / with s = 1 (RTN), summed over the members


def search(group: Group, arrays: dict[str, np.ndarray], h: np.ndarray, mean_abs: np.ndarray, bits: list[int],
           block_size: int, symmetric: bool) -> GroupResult:
    """AWQ's scale search for one group on the original float weights."""
    ws = [arrays[name] if axis == 0 else arrays[name].T for name, axis in group.weights]
    s, alpha, e, base = bw.awq_scale(ws, h, mean_abs, bits, block_size, symmetric)
    return GroupResult(group, s, alpha, e / base if base > 0 else 1.0)
