"""Where a weight-only model's bytes go, and removing duplicated constants before it is written.

``size_breakdown`` sorts every tensor byte of a saved model into what it is for (MatMulNBits
codes, scales, zero points, quantized embeddings, float weights left unquantized, other
constants such as norms, attention masks and rotary tables) and charges the rest of the file to
the graph itself (node definitions, names, protobuf framing). ``dedupe_constants`` stores
identical constant tensors once: exporters repeat the same causal mask or rotary table in every
layer, and after onnxruntime's constant folding each copy becomes its own initializer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ...core.onnxutil import iter_nodes, load_model, model_size

# categories, in the order reports list them
CATEGORIES = (
    "matmul_codes", "matmul_scales", "matmul_zero_points", "embedding_codes", "embedding_scales",
    "embedding_zero_points", "float_weights", "other_constants", "graph",
)
LABELS = {
    "matmul_codes": "MatMulNBits codes", "matmul_scales": "MatMulNBits scales", "matmul_zero_points": "MatMulNBits zero points",
    "embedding_codes": "GatherBlockQuantized codes", "embedding_scales": "GatherBlockQuantized scales",
    "embedding_zero_points": "GatherBlockQuantized zero points", "float_weights": "float MatMul/Gemm/Gather weights",
    "other_constants": "other constants (norms, biases, masks, rotary tables, AWQ scales)", "graph": "graph (nodes, names, framing)",
}
MIN_CONSTANT_ELEMENTS = 16  # Constant nodes at least this big move to (deduplicated) initializers
MIN_RESHAPE_BYTES = 1024  # same values under another shape: stored once behind a Reshape from this size on


def _tensor_bytes(t: Any) -> int:
    from onnx import numpy_helper

    return int(numpy_helper.to_array(t).nbytes)


def size_breakdown(path: Path | str) -> dict[str, Any]:
    """Bytes per category for the model at ``path`` (file + external data); they sum to the file size."""
    model = load_model(Path(path))
    total = model_size(Path(path))
    role: dict[str, str] = {}
    # MatMulNBits first: a tied embedding's GatherBlockQuantized reads lm_head's copy (tied.py), counted once, as lm_head's
    for n in sorted(iter_nodes(model.graph), key=lambda n: n.op_type != "MatMulNBits"):
        ins = list(n.input)
        if n.op_type == "MatMulNBits":
            for i, cat in zip(ins[1:4], ("matmul_codes", "matmul_scales", "matmul_zero_points")):
                role.setdefault(i, cat)
        elif n.op_type == "GatherBlockQuantized":
            for i, cat in zip([ins[0], *ins[2:4]], ("embedding_codes", "embedding_scales", "embedding_zero_points")):
                role.setdefault(i, cat)
        elif n.op_type in ("MatMul", "Gemm") and len(ins) > 1:
            role.setdefault(ins[1], "float_weights")
        elif n.op_type == "Gather" and ins:
            role.setdefault(ins[0], "float_weights")
    cats = dict.fromkeys(CATEGORIES, 0)
    for t in model.graph.initializer:
        cat = role.get(t.name, "other_constants")
        if cat == "float_weights" and len(t.dims) != 2:
            cat = "other_constants"
        cats[cat] += _tensor_bytes(t)
    for n in iter_nodes(model.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    cats["other_constants"] += _tensor_bytes(a.t)
    cats["graph"] = max(total - sum(cats.values()), 0)
    return {"file_bytes": total, "bytes": cats, "fractions": {k: round(v / total, 4) if total else None for k, v in cats.items()}}


def breakdown_line(b: dict[str, Any]) -> str:
    """One line for a table: the largest categories first, with their share of the file."""
    from ...core.units import human_bytes

    items = sorted(((v, k) for k, v in b["bytes"].items() if v), reverse=True)
    return "; ".join(f"{LABELS[k].split(' (')[0]} {human_bytes(v)} ({100 * v / b['file_bytes']:.1f} %)" for v, k in items)


def dedupe_constants(model: Any) -> tuple[int, int]:
    """Store identical constant tensors once (in place); returns (tensors removed, bytes saved).

    Top-level ``Constant`` nodes of at least ``MIN_CONSTANT_ELEMENTS`` elements become
    initializers first (what onnxruntime does at load anyway). Initializers that are also graph
    inputs (overridable at run time) or graph outputs are left alone.
    """
    from onnx import numpy_helper

    g = model.graph
    pinned = {i.name for i in g.input} | {o.name for o in g.output}
    have = {t.name for t in g.initializer}
    keep_nodes = []
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = n.attribute[0].t
            size = 1
            for d in t.dims:
                size *= d
            if size >= MIN_CONSTANT_ELEMENTS and n.output[0] not in have and n.output[0] not in pinned:
                c = g.initializer.add()
                c.CopyFrom(t)
                c.name = n.output[0]
                have.add(c.name)
                continue
        keep_nodes.append(n)
    if len(keep_nodes) != len(g.node):
        del g.node[:]
        g.node.extend(keep_nodes)
    from onnx import helper

    first: dict[tuple, tuple[str, tuple[int, ...]]] = {}
    rename: dict[str, str] = {}
    reshapes: list[Any] = []
    shape_inits: list[Any] = []
    saved = 0
    for t in g.initializer:
        if t.name in pinned:
            continue
        arr = numpy_helper.to_array(t)
        key = (t.data_type, hashlib.sha256(arr.tobytes()).hexdigest())
        if key not in first:
            first[key] = (t.name, tuple(t.dims))
            continue
        name, dims = first[key]
        if dims == tuple(t.dims):
            rename[t.name] = name
        elif arr.nbytes >= MIN_RESHAPE_BYTES:  # same values, other shape: a Reshape that onnxruntime folds at load
            shape = numpy_helper.from_array(np.array(t.dims, np.int64), t.name + "__shape")
            shape_inits.append(shape)
            reshapes.append(helper.make_node("Reshape", [name, shape.name], [t.name], name=t.name + "__dedup"))
            rename[t.name] = t.name  # dropped below; consumers keep the name
        else:
            continue
        saved += int(arr.nbytes)
    if not rename:
        return 0, 0
    for n in iter_nodes(g):
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    kept = [t for t in g.initializer if t.name not in rename]
    del g.initializer[:]
    g.initializer.extend(kept + shape_inits)
    if reshapes:
        nodes = reshapes + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return len(rename), saved - sum(8 * int(s.dims[0]) for s in shape_inits)
