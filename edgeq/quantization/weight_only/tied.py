"""A tied embedding and lm_head stored once under weight-only quantization.

A decoder whose lm_head is its embedding table (``tie_word_embeddings``) holds the same
``[vocab, hidden]`` matrix twice in its fp32 graph: the Gather's table ``E`` and the
lm_head MatMul's ``E^T``. Quantized apart they cost 1.5 bytes per parameter on the largest
matrix of a small LLM (8-bit embedding + 4-bit lm_head). onnxruntime's MatMulNBits stores its
``B`` as ``[N, K / block, block * bits / 8]``: for ``N = vocab, K = hidden`` that is ``E``'s own
row layout in blocks along ``hidden``, which GatherBlockQuantized (``quantize_axis=1``) reads after
a Reshape to ``[vocab, hidden * bits / 8]``, with the same scales ``[vocab, hidden / block]``
and zero points. So one packed copy serves both nodes (as onnxruntime-genai's builder does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED_BITS = (4, 8)  # MatMulNBits and GatherBlockQuantized read the same layout at these widths (tests/unit/test_llm_tied_shared.py)


@dataclass(frozen=True)
class TiedPair:
    """The embedding Gather and the lm_head MatMul (or Gemm) that read one matrix, and the mode of their one copy."""

    embed: Any  # WeightSite of the Gather
    head: Any  # WeightSite of the MatMul / Gemm
    mode: str
    reason: str


def find_tied(plan: list, inits: dict[str, Any], base: Path, spec: Any, bits_of: dict[str, int], nodes: Any = ()) -> TiedPair | None:
    """The tied pair in ``plan`` ((site, mode, reason) per weight) whose two weights hold the same numbers, or None.

    ``nodes``: the graph's nodes (a Gemm head must transpose its B). The shared copy takes lm_head's mode
    (its algorithm's codes serve the gather too), unless the embedding's mode was set by ``--override``
    (e.g. ``embed=int8-weight`` for a higher-precision copy)."""
    from ...core.lazyweights import tensor_array

    embeds = [(s, m, r) for s, m, r in plan if s.op == "Gather" and s.role == "embed" and len(s.shape) == 2]
    if len(embeds) != 1:
        return None
    # the head multiplies by E^T: a MatMul of E^T [hidden, vocab] (written apart), or a Gemm (transB) of E [vocab, hidden]
    # itself, as the fp32 decoder writes it (one copy); the shape check keeps any other projection out
    heads = [(s, m, r) for s, m, r in plan if s.role == "lm_head" and (s.op, tuple(s.shape)) in
             (("MatMul", embeds[0][0].shape[::-1]), ("Gemm", embeds[0][0].shape))]
    if len(heads) != 1:
        return None
    (e, em, er), (h, hm, hr) = embeds[0], heads[0]
    if h.op == "Gemm" and not (nodes and any(a.name == "transB" and a.i for a in nodes[h.node_index].attribute)):
        return None
    if "none" in (em, hm):
        return None
    mode, why = (em, er) if er.startswith("--override") else (hm, hr)
    if bits_of.get(mode) not in SHARED_BITS or e.shape[1] % spec.block_size:
        return None
    a = tensor_array(inits[e.weight], base)
    b = a if h.weight == e.weight else tensor_array(inits[h.weight], base)
    if a.dtype != b.dtype or not np.array_equal(a.T if h.op == "MatMul" else a, b):  # lm_head computes x @ E^T
        return None
    reason = f"{why}; one packed copy shared by the embedding and lm_head (tied)"
    return TiedPair(e, h, mode, reason)


def shared_gather_nodes(pair: TiedPair, gather: Any, b_name: str, scales: str, zp: str | None, *, bits: int,
                        block_size: int, half: bool, tag: str) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) that replace the embedding Gather: GatherBlockQuantized over lm_head's packed ``B``,
    reshaped to ``[vocab, hidden * bits / 8]``, with lm_head's scales and zero points."""
    from onnx import TensorProto, helper, numpy_helper

    vocab, hidden = pair.embed.shape
    shape = numpy_helper.from_array(np.array([vocab, hidden * bits // 8], np.int64), tag + "_rows_shape")
    rows = tag + "_rows"
    out = tag + "_f16" if half else gather.output[0]
    ins = [rows, gather.input[1], scales] + ([zp] if zp else [])
    nodes = [
        helper.make_node("Reshape", [b_name, shape.name], [rows], name=tag + "_rows"),
        helper.make_node("GatherBlockQuantized", ins, [out], name=(gather.name or tag) + "_Q", domain="com.microsoft",
                         gather_axis=0, quantize_axis=1, block_size=block_size, bits=bits),
    ]
    if half:  # float16 scales make the gathered rows float16: back to float32 for the graph
        nodes.append(helper.make_node("Cast", [out], [gather.output[0]], to=TensorProto.FLOAT, name=tag + "_cast"))
    return nodes, [shape]
