"""Per-layer error: intermediate tensors a candidate shares by name with its fp32 reference.

Quantizers keep the names of the float tensors they wrap in Q/DQ pairs, so the
tensors both graphs produce under the same name are the layer outputs to
compare. Both models are run with those tensors added as graph outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.onnxutil import load_model


def _typed_outputs(model: Any) -> dict[str, Any]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - compare what can be typed
        inferred = model
    typed = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = {}
    for node in model.graph.node:
        for name in node.output:
            vi = typed.get(name)
            if vi is not None and vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                out[name] = vi
    return out


def _after_qdq(model: Any) -> dict[str, str]:
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dq = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if dq:
            out[node.input[0]] = dq[0].output[0]
    return out


def _retyped(vi: Any, name: str) -> Any:
    import onnx

    v = onnx.ValueInfoProto()
    v.CopyFrom(vi)
    v.name = name
    return v


def _with_outputs(model: Any, names: list[str], typed: dict[str, Any]) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(typed[n])
    return m


def layer_errors(reference: Path, candidate: Path, feeds: tuple[dict[str, np.ndarray], ...], *, limit: int = 200) -> list[dict[str, Any]]:
    """Relative RMS error and cosine per shared float tensor, in the reference's node order."""
    import onnxruntime as ort

    ref = load_model(reference)
    cand = load_model(candidate)
    rt, ct = _typed_outputs(ref), _typed_outputs(cand)
    # a tensor the candidate quantizes is seen by the next layer through Q -> DQ: compare that
    seen_as = _after_qdq(cand)
    shared = [n for n in rt if n in ct][:limit]
    cand_name = {n: seen_as.get(n, n) for n in shared}
    ct.update({v: _retyped(ct[k], v) for k, v in cand_name.items() if v != k and v not in ct})
    if not shared:
        return []
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    from ..core.onnxutil import session_source

    with session_source(_with_outputs(ref, shared, rt)) as src:  # a large model goes through a file
        rs = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    with session_source(_with_outputs(cand, [cand_name[n] for n in shared], ct)) as src:
        cs = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    acc: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in shared}
    from ..core.runtime import fit_empty  # an empty past in each model's own cache type (fp32 reference, int8-cache candidate)

    for feed in feeds:
        r = dict(zip([o.name for o in rs.get_outputs()], rs.run(None, fit_empty(rs, feed))))
        c = dict(zip([o.name for o in cs.get_outputs()], cs.run(None, fit_empty(cs, feed))))
        for n in shared:
            acc[n].append((np.asarray(r[n], np.float64).ravel(), np.asarray(c[cand_name[n]], np.float64).ravel()))
    op_of = {o: node.op_type for node in ref.graph.node for o in node.output}
    rows = []
    for n in shared:
        a = np.concatenate([p[0] for p in acc[n]])
        b = np.concatenate([p[1] for p in acc[n]])
        if a.shape != b.shape:
            continue
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        rel = float(np.linalg.norm(a - b) / na) if na else float(np.linalg.norm(b) > 0)
        cos = float(a @ b / (na * nb)) if na and nb else float(na == nb)
        rows.append({"tensor": n, "op_type": op_of.get(n, "?"), "rel_rms_error": rel, "cosine": cos, "max_abs": float(np.abs(a - b).max())})
    return rows
