"""Placement: which execution provider runs each node.

Two sources, never mixed up:
- *measured*: onnxruntime's own record of the partitioning
  (``session.record_ep_graph_assignment_info``) and, for time shares, its profiler;
- *estimate*: for providers no package brings to this host (NNAPI, CoreML), a static
  reading of the ONNX graph against the target's op-support rules
  (``[ops] supported``, ``dtypes`` and the attribute-level ``[[ops.conditions]]`` in the target
  file), labelled as an estimate,
  naming each node that would fall back and why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

# Providers whose absence means "a CPU provider can stand in, labelled as such".
CPU_FAMILY = ("CPUExecutionProvider", "XnnpackExecutionProvider")

# dtypes every accelerator rule accepts when the target names none
_DEFAULT_DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")


def accelerator_of(provider_names: tuple[str, ...]) -> str | None:
    """The first provider that is not a CPU provider, or None for CPU-only targets."""
    for p in provider_names:
        if p not in CPU_FAMILY:
            return p
    return None


def summarize_measured(
    subgraphs: list[dict[str, Any]],
    node_times: list[dict[str, Any]] | None,
    accelerator: str | None,
) -> dict[str, Any]:
    """Per-provider node counts, partitions, node and time shares from a measured session."""
    per: dict[str, dict[str, Any]] = {}
    for sg in subgraphs:
        d = per.setdefault(sg["ep"], {"provider": sg["ep"], "nodes": 0, "partitions": 0, "node_names": [], "us": 0.0})
        d["nodes"] += len(sg["nodes"])
        d["partitions"] += 1
        d["node_names"] += [f"{n} ({t})" for n, t in sg["nodes"]]
    total_us = 0.0
    for n in node_times or []:
        d = per.setdefault(n["provider"], {"provider": n["provider"], "nodes": 0, "partitions": 0, "node_names": [], "us": 0.0})
        d["us"] += n["us"]
        total_us += n["us"]
    total_nodes = sum(d["nodes"] for d in per.values())
    providers = []
    for d in sorted(per.values(), key=lambda d: (d["provider"] == "CPUExecutionProvider", d["provider"])):
        providers.append({
            "provider": d["provider"],
            "nodes": d["nodes"],
            # onnxruntime records each CPU node as its own group: partitions matter for the accelerator
            "partitions": d["partitions"] if d["provider"] not in CPU_FAMILY else None,
            "node_share": d["nodes"] / total_nodes if total_nodes else None,
            "time_share": d["us"] / total_us if total_us else None,
            "node_names": d["node_names"],
        })
    acc = next((p for p in providers if p["provider"] == accelerator), None)
    fallback = []
    if accelerator:
        for p in providers:
            if p["provider"] != accelerator:
                fallback += [{"node": nm, "provider": p["provider"], "reason": "not taken by " + accelerator} for nm in p["node_names"]]
    return {
        "kind": "measured",
        "accelerator": accelerator,
        "nodes_total": total_nodes,
        "providers": providers,
        "accel_node_share": (acc["node_share"] if acc else 0.0) if accelerator and total_nodes else None,
        "accel_time_share": (acc["time_share"] or 0.0 if acc else 0.0) if accelerator and total_us else None,
        "accel_partitions": acc["partitions"] if acc else 0,
        "fallback": fallback,
    }


def _shapes(model: Any) -> dict[str, tuple[str, list]]:
    """name -> (dtype, dims) for every typed value (after ONNX shape inference)."""
    import onnx

    from ..core.onnxutil import np_dtype

    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - estimates work on what is known
        pass
    out: dict[str, tuple[str, list]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] if t.HasField("shape") else None
        out[vi.name] = (np_dtype(t.elem_type), dims)
    for init in model.graph.initializer:
        out[init.name] = (np_dtype(init.data_type), list(init.dims))
    return out


def estimate(model_path: Path, target: Any) -> dict[str, Any]:
    """Static placement estimate from the target's op-support rules (no provider runs)."""
    from ..core.onnxutil import load_model

    accelerator = accelerator_of(target.provider_names)
    if not target.supported_ops:
        from ..errors import TargetError

        raise TargetError(
            f"target {target.name} has no [ops] supported list: no placement estimate possible",
            "add the accelerator's op types to the target file's [ops] table",
        )
    model = load_model(model_path, load_weights=False)
    shapes = _shapes(model)
    supported = set(target.supported_ops)
    dtypes = set(target.supported_dtypes or _DEFAULT_DTYPES)
    inits = {i.name for i in model.graph.initializer}
    from ..core.op_conditions import constants_of, failures

    conditions = tuple(getattr(target, "op_conditions", ()))
    consts = constants_of(model) if conditions else set()
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    rows = []
    for i, node in enumerate(model.graph.node):
        reasons: list[str] = []
        dynamic: list[str] = []
        if node.op_type not in supported or node.domain not in ("", "ai.onnx"):
            reasons.append(f"op {node.op_type} is not in {target.name}'s supported ops")
        elif conditions:  # attribute-level rules read from the provider's op builders ([[ops.conditions]])
            reasons += failures(node, conditions, shapes, consts, dequantized)
        for name in list(node.input) + list(node.output):
            if not name or name not in shapes:
                continue
            dt, dims = shapes[name]
            if dt not in dtypes and name not in inits:  # constants (shapes, biases) are the EP's business
                reasons.append(f"tensor {name} has dtype {dt}")
            if dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
                shown = "unknown rank" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
                dynamic.append(f"{name} {shown}")
        if dynamic:
            reasons.append("dynamic shape: " + ", ".join(dynamic))
        rows.append({"index": i, "node": node.name or f"#{i}", "op_type": node.op_type, "on_accelerator": not reasons, "reasons": _dedupe(reasons)})
    partitions = _partitions(model, [r["on_accelerator"] for r in rows])
    n_acc = sum(r["on_accelerator"] for r in rows)
    total = len(rows)
    cpu = target.provider_names[-1] if target.provider_names[-1] in CPU_FAMILY else "CPUExecutionProvider"
    providers = [
        {"provider": accelerator, "nodes": n_acc, "partitions": partitions, "node_share": n_acc / total if total else None,
         "time_share": None, "node_names": [f"{r['node']} ({r['op_type']})" for r in rows if r["on_accelerator"]]},
        {"provider": cpu, "nodes": total - n_acc, "partitions": None, "node_share": (total - n_acc) / total if total else None,
         "time_share": None, "node_names": [f"{r['node']} ({r['op_type']})" for r in rows if not r["on_accelerator"]]},
    ]
    fallback = [{"node": f"{r['node']} ({r['op_type']})", "provider": cpu, "reason": "; ".join(r["reasons"])} for r in rows if not r["on_accelerator"]]
    return {
        "kind": "estimate",
        "accelerator": accelerator,
        "nodes_total": total,
        "providers": providers,
        "accel_node_share": n_acc / total if total else None,
        "accel_time_share": None,
        "accel_partitions": partitions,
        "fallback": fallback,
        "basis": f"static estimate from {Path(target.source).name or target.name} [ops] rules"
                 + (f" (op conditions read from {target.conditions_source})" if getattr(target, "conditions_source", "") else "")
                 + f"; {accelerator} did not run",
        "by_reason": dict(Counter(_reason_kind(r) for r in rows for r in r["reasons"])),
    }


def _reason_kind(reason: str) -> str:
    if reason.startswith("op "):
        return "op type"
    if reason.startswith("dynamic"):
        return "dynamic shape"
    return "dtype" if reason.startswith("tensor ") else "op condition"


def _dedupe(items: list[str]) -> list[str]:
    seen: list[str] = []
    for x in items:
        if x not in seen:
            seen.append(x)
    return seen


def _partitions(model: Any, on_acc: list[bool]) -> int:
    """Connected groups of accelerator nodes (an edge joins a producer and a consumer)."""
    parent = list(range(len(on_acc)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {}
    for i, node in enumerate(model.graph.node):
        for o in node.output:
            producer[o] = i
    for i, node in enumerate(model.graph.node):
        if not on_acc[i]:
            continue
        for name in node.input:
            j = producer.get(name)
            if j is not None and on_acc[j]:
                parent[find(i)] = find(j)
    return len({find(i) for i, ok in enumerate(on_acc) if ok})
