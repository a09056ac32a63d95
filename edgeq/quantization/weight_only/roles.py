"""Which weight is the model's head: the projection that feeds the logits output.

A decoder with a KV cache has two kinds of graph outputs: the logits and one ``present`` key /
value per layer. Only the first is what a head computes. The value projection reaches
``present.N.value`` through a Reshape and a Concat, and in a fused decoder every q/k/v, o and down
projection reaches a ``present`` through the residual stream and ``GroupQueryAttention``; counted
as heads, ``--override lm_head=...`` / ``--keep lm_head`` would reach all of them. So cache outputs
are set apart first (by name, as every KV-cache export names them, or by structure: made by a node
that reads a ``past`` graph input), and a weight is the head when its output reaches a remaining
output through at most a few weightless nodes (a soft-cap, a cast, a reshape). No other projection gets there:
the path to the logits goes through the head, and the search stops at every projection.
"""

from __future__ import annotations

from typing import Any

_PROJECTIONS = ("MatMul", "Gemm", "MatMulNBits")


def cache_outputs(graph: Any) -> set[str]:
    """Names of the graph outputs that are a KV cache (``present*``, or made from a ``past*`` input)."""
    pasts = {i.name for i in graph.input if i.name.lower().startswith("past")}
    producer = {o: n for n in graph.node for o in n.output}
    found = set()
    for o in graph.output:
        node = producer.get(o.name)
        if o.name.lower().startswith("present") or (node is not None and any(i in pasts for i in node.input)):
            found.add(o.name)
    return found


def logit_outputs(graph: Any) -> set[str]:
    """The outputs a head may feed: ``logits`` when the graph has one, else every output not a KV cache."""
    names = [o.name for o in graph.output]
    if "logits" in names:
        return {"logits"}
    return set(names) - cache_outputs(graph)


class HeadFinder:
    """Answers "does this tensor feed the logits through at most ``depth`` weightless nodes?" for one graph."""

    def __init__(self, graph: Any, depth: int = 6) -> None:  # a tied head's Reshape, a soft-cap's Div/Tanh/Mul, Identity
        self.targets = logit_outputs(graph)
        self.depth = depth
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def feeds_logits(self, tensor: str) -> bool:
        frontier = [tensor]
        for _ in range(self.depth + 1):
            if any(t in self.targets for t in frontier):
                return True
            frontier = [o for t in frontier for c in self.consumers.get(t, []) if c.op_type not in _PROJECTIONS for o in c.output]
        return False
