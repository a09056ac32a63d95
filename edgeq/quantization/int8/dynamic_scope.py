"""What dynamic INT8 reaches: its op types in every graph, If/Loop/Scan bodies included, and
recurrent ops; and how the result says what it reached.

onnxruntime's dynamic quantizer leaves subgraphs alone unless its ``EnableSubgraph`` option is
on; with it, each body is quantized by a nested quantizer (weights may be the body's own
initializers or the enclosing graph's). Checked on onnxruntime 1.32: MatMul, Conv and LSTM
inside If branches (nested too) and MatMul in Loop and Scan bodies quantize, run and match fp32
on every branch (tests/unit/test_int8_dynamic_subgraph.py). Weights must be initializers: the optimize stage
folds Constant nodes and constant Slice/Concat chains into them.

Recurrent ops: onnxruntime has a dynamic kernel for LSTM only (com.microsoft
DynamicQuantizeLSTM, int8 weights, activations quantized at run time); GRU and RNN stay float
in every mode. A batch-major LSTM (layout = 1) does not run on onnxruntime's CPU provider at all.
"""

from __future__ import annotations

import collections
from typing import Any

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
RECURRENT_QUANTIZED = ("LSTM",)
"""Recurrent op types onnxruntime quantizes dynamically (DynamicQuantizeLSTM)."""


def has_subgraphs(model: Any) -> bool:
    import onnx

    from ...core.onnxutil import iter_nodes

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in iter_nodes(model.graph) for a in n.attribute)


def subgraph_counts(q_model: Any, forms: dict[str, str]) -> dict[str, dict[str, int]]:
    """Quantized nodes (op types in ``forms``) inside subgraphs, per op type owning the innermost body:
    ``{"If": {"quantized": 16, "ConvInteger": 12, "DynamicQuantizeLSTM": 4}}``."""
    from .qdq import walk_graphs

    out: dict[str, collections.Counter[str]] = {}
    for path, graph, owner in walk_graphs(q_model.graph):
        if owner is None:
            continue
        for n in graph.node:
            if n.op_type in forms:
                c = out.setdefault(owner.op_type, collections.Counter())
                c["quantized"] += 1
                c[n.op_type] += 1
    return {op: {"quantized": c["quantized"], **{k: v for k, v in sorted(c.items()) if k != "quantized"}} for op, c in sorted(out.items())}


def subgraph_note(counts: dict[str, dict[str, int]]) -> str | None:
    """The note, worded as the static path's: "16 node(s) inside If/Loop/Scan subgraphs quantized (If: 16 ...)"."""
    total = sum(c["quantized"] for c in counts.values())
    if not total:
        return None
    parts = [f"{op}: {c['quantized']} (" + ", ".join(f"{k} x{v}" for k, v in c.items() if k != "quantized") + ")"
             for op, c in counts.items()]
    return f"{total} node(s) inside If/Loop/Scan subgraphs quantized ({'; '.join(parts)}; activations quantized at run time)"


def considered(op_types: list[str] | tuple[str, ...], total: dict[str, int]) -> dict[str, int]:
    """The model's weight nodes of the op types this run asked onnxruntime to quantize."""
    return {op: n for op, n in sorted(total.items()) if op in op_types and n}


def none_quantized(op_types: list[str] | tuple[str, ...], total: dict[str, int], quantized: dict[str, int]) -> tuple[str, str] | None:
    """(message, hint) when dynamic INT8 quantized none of the nodes it was asked for; None otherwise.

    The message counts the op types actually considered; nodes of other types (convolutions
    left float by default, GRU/RNN that no mode quantizes) are named as what they are."""
    asked = considered(op_types, total)
    if sum(quantized.values()):
        return None
    if not sum(total.values()):
        return None
    others = {op: n for op, n in total.items() if op not in asked and n}
    listed = ", ".join(f"{n} {op}" for op, n in sorted(others.items()))
    if asked:
        msg = f"int8-dynamic quantized none of the model's {_count(asked)} nodes"
    else:
        msg = (f"int8-dynamic quantized none of the model's {sum(others.values())} weight nodes: they are {listed}, "
               f"and this mode quantizes {'/'.join(op for op in op_types if op != 'Attention')} nodes")
    if others.get("Conv") or others.get("ConvTranspose") or others.get("Gemm") or others.get("MatMul"):
        hint = "this mode does not apply to this model: try --quant int8-static"
        if "Conv" in others and "Conv" not in op_types:
            hint += " (int8-dynamic leaves convolutions float: dynamic ConvInteger is slower than fp32 on CPUs)"
    elif asked:
        hint = "report the model to edgeq, or use --quant none"
    else:
        hint = "no INT8 mode quantizes GRU/RNN nodes: use --quant none"
    return msg, hint


def _count(by_op: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in by_op.items())


def static_misses_recurrent(total: dict[str, int], weight_ops: tuple[str, ...], dynamic_ok: bool | None = None) -> tuple[str, str] | None:
    """(message, hint) for int8-static on a model whose weight nodes are all recurrent (static QDQ
    quantizes Conv/Gemm/MatMul only): an fp32 model is never shipped under an int8 label.
    ``dynamic_ok``: the target runs int8-dynamic (None: unknown here, the hint says where it applies)."""
    if any(total.get(op) for op in weight_ops) or not sum(total.values()):
        return None
    rnn = {op: n for op, n in sorted(total.items()) if n}
    msg = f"int8-static quantizes {'/'.join(weight_ops)} nodes and the model has none: its weights are in {_count(rnn)} node(s)"
    if not any(op in RECURRENT_QUANTIZED for op in rnn):
        return msg, "no INT8 mode quantizes GRU/RNN nodes: use --quant none"
    if dynamic_ok is None:
        return msg, "--quant int8-dynamic quantizes LSTM nodes (CPU targets), else use --quant none"
    return msg, "try --quant int8-dynamic (it quantizes LSTM nodes) or --quant none" if dynamic_ok else "use --quant none (this target runs static INT8 only)"


def dynamic_reaches(coverage: dict[str, Any] | None) -> bool:
    """From a recipe's coverage (static or dynamic): the model has a MatMul/Gemm/LSTM weight node, in any graph,
    that int8-dynamic's default op types quantize (unknown coverage: assume it does)."""
    if not coverage:
        return True
    by_op = coverage.get("by_op") or {}
    return any((by_op.get(op) or {}).get("total") for op in ("MatMul", "Gemm", *RECURRENT_QUANTIZED))
