"""Per-target graph rewrites, so common ops stay on the accelerator.

A target names the rewrites it wants in its ``[ops]`` table (``rewrites = [...]``);
the optimize stage applies them after folding. Each rewrite is a small function
over the ONNX graph returning how many nodes it changed; :func:`apply` runs the
rewritten graph against the unrewritten one on the same inputs (CPU provider)
and refuses a rewrite whose outputs move beyond the target's export tolerances.

- ``hardsigmoid-decompose``: HardSigmoid(x) -> Clip(x * alpha + beta, 0, 1)
- ``hardswish-decompose``: HardSwish(x) -> x * Clip(x / 6 + 0.5, 0, 1)
  (Mul, Add and Clip: every provider runs them and the QDQ writer quantizes them;
  a HardSigmoid left float inside a QDQ graph stops the HTP compiler)
- ``reducemean-hw-to-gap``: ReduceMean over the last two axes of a 4-D tensor
  (squeeze-excite blocks) -> GlobalAveragePool (+ Squeeze when keepdims=0)
- ``gemm-plain``: Gemm alpha/beta folded into constant B and C, a 2-D bias as [N] or an Add
- ``gemm-transa``: Gemm transA=1 -> Transpose(A) + Gemm transA=0
- ``matmul-2d``: MatMul [..., M, K] x constant [K, N] -> Reshape, 2-D MatMul, Reshape
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, first_line


@dataclass(frozen=True)
class RewriteResult:
    name: str
    nodes: int  # nodes rewritten
    max_abs_diff: float | None  # rewritten vs unrewritten outputs on the check inputs
    samples: int

    def note(self) -> str:
        diff = "" if self.max_abs_diff is None else f", max abs difference {self.max_abs_diff:.3g} on {self.samples} input(s)"
        return f"rewrite {self.name}: {self.nodes} node(s){diff}"


class _Graph:
    """Fresh, unique names and constants for one graph."""

    def __init__(self, model: Any):
        self.model = model
        self.g = model.graph
        self.taken = {n.name for n in self.g.node} | {o for n in self.g.node for o in n.output} | {i.name for i in self.g.initializer}
        self.taken |= {v.name for v in self.g.input}

    def name(self, base: str) -> str:
        i, n = 0, base
        while n in self.taken:
            i += 1
            n = f"{base}_{i}"
        self.taken.add(n)
        return n

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value), n))
        return n


def _replace(g: _Graph, index: int, nodes: list) -> None:
    del g.g.node[index]
    for k, n in enumerate(nodes):
        g.g.node.insert(index + k, n)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _clip01(g: _Graph, x: str, alpha: float, beta: float, out: str, base: str) -> list:
    from onnx import helper

    dt = np.float32
    m, a = g.name(base + "_scaled"), g.name(base + "_shifted")
    return [
        helper.make_node("Mul", [x, g.const(base + "_alpha", np.array(alpha, dt))], [m], name=g.name(base + "_mul")),
        helper.make_node("Add", [m, g.const(base + "_beta", np.array(beta, dt))], [a], name=g.name(base + "_add")),
        helper.make_node("Clip", [a, g.const(base + "_lo", np.array(0.0, dt)), g.const(base + "_hi", np.array(1.0, dt))], [out],
                         name=g.name(base + "_clip")),
    ]


def _each(g: _Graph, op_type: str, make: Callable[[Any], list | None]) -> int:
    """Replace every standard-domain ``op_type`` node by ``make(node)`` (None: leave it); returns how many."""
    count, i = 0, 0
    while i < len(g.g.node):
        n = g.g.node[i]
        new = make(n) if n.op_type == op_type and n.domain in ("", "ai.onnx") else None
        if new is None:
            i += 1
            continue
        _replace(g, i, new)
        i += len(new)
        count += 1
    return count


def hardsigmoid_decompose(g: _Graph) -> int:
    return _each(g, "HardSigmoid", lambda n: _clip01(g, n.input[0], float(_attr(n, "alpha", 0.2)), float(_attr(n, "beta", 0.5)),
                                                      n.output[0], n.name or "hardsigmoid"))


def hardswish_decompose(g: _Graph) -> int:
    from onnx import helper

    def make(n: Any) -> list:
        base = n.name or "hardswish"
        gate = g.name(base + "_gate")
        return _clip01(g, n.input[0], 1.0 / 6.0, 0.5, gate, base) + [
            helper.make_node("Mul", [n.input[0], gate], [n.output[0]], name=g.name(base + "_out"))]

    return _each(g, "HardSwish", make)


def _rank(g: _Graph, name: str) -> int | None:
    for vi in list(g.g.value_info) + list(g.g.input) + list(g.g.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _const_ints(g: _Graph, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for t in g.g.initializer:
        if t.name == name:
            return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    for n in g.g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            from onnx import helper

            v = helper.get_attribute_value(n.attribute[0])
            return [int(x) for x in numpy_helper.to_array(v).reshape(-1)] if hasattr(v, "dims") else None
    return None


def reducemean_hw_to_gap(g: _Graph) -> int:
    from onnx import helper

    def make(n: Any) -> list | None:
        if _rank(g, n.input[0]) != 4 or _attr(n, "noop_with_empty_axes", 0):
            return None
        axes = _attr(n, "axes", None)
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = _const_ints(g, n.input[1])
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            return None
        base = n.name or "reducemean"
        if _attr(n, "keepdims", 1):
            return [helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=g.name(base + "_gap"))]
        pooled = g.name(base + "_pooled")
        return [helper.make_node("GlobalAveragePool", [n.input[0]], [pooled], name=g.name(base + "_gap")),
                helper.make_node("Squeeze", [pooled, g.const(base + "_axes", np.array([2, 3], np.int64))], [n.output[0]],
                                 name=g.name(base + "_squeeze"))]

    return _each(g, "ReduceMean", make)


def _consumers(g: _Graph, t: str) -> list:
    return [n for n in g.g.node if t in n.input]


def _scalar(g: _Graph, name: str) -> float | None:
    from onnx import numpy_helper

    for t in g.g.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return float(a.reshape(-1)[0]) if a.size == 1 else None
    for n in g.g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            from onnx import helper

            v = helper.get_attribute_value(n.attribute[0])
            a = numpy_helper.to_array(v) if hasattr(v, "dims") else np.asarray(v)
            return float(a.reshape(-1)[0]) if a.size == 1 else None
    return None


def _other(n: Any, t: str) -> str | None:
    rest = [i for i in n.input if i != t]
    return rest[0] if len(rest) == 1 else None


def gelu_fuse(g: _Graph) -> int:
    """x * 0.5 * (1 + Erf(x / sqrt 2)), as torch exports GELU -> one Gelu node (com.microsoft below opset 20)."""
    from onnx import helper

    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    domain = "" if opset >= 20 else "com.microsoft"
    outputs = {o.name for o in g.g.output}
    count, tried = 0, set()
    while True:  # one match per pass: the node list is rebuilt after each
        erf = next((n for n in g.g.node if n.op_type == "Erf" and n.domain in ("", "ai.onnx") and n.output[0] not in tried), None)
        if erf is None:
            break
        tried.add(erf.output[0])
        div = next((n for n in g.g.node if n.output[0] == erf.input[0] and n.op_type in ("Div", "Mul")), None)
        if div is None or len(div.input) != 2 or div.output[0] in outputs:
            continue
        x, c = div.input[0], _scalar(g, div.input[1])
        if c is None or abs((c if div.op_type == "Div" else 1.0 / c) - math.sqrt(2.0)) > 1e-4:
            continue
        chain = [div, erf]
        cons = _consumers(g, erf.output[0])
        if len(cons) != 1 or cons[0].op_type != "Add" or _scalar(g, _other(cons[0], erf.output[0]) or "") != 1.0:
            continue
        add = cons[0]
        cons = _consumers(g, add.output[0])
        if len(cons) != 1 or cons[0].op_type != "Mul":
            continue
        m1 = cons[0]
        other = _other(m1, add.output[0])
        if other == x:  # (x * (1 + erf)) * 0.5
            cons = _consumers(g, m1.output[0])
            if len(cons) != 1 or cons[0].op_type != "Mul" or _scalar(g, _other(cons[0], m1.output[0]) or "") != 0.5:
                continue
            last = cons[0]
        else:  # (x * 0.5) * (1 + erf)
            half = next((n for n in g.g.node if n.output[0] == other and n.op_type == "Mul"), None)
            if half is None or x not in half.input or _scalar(g, _other(half, x) or "") != 0.5 or len(_consumers(g, other)) != 1:
                continue
            chain.append(half)
            last = m1
        chain += [add, m1] + ([last] if last is not m1 else [])
        if any(n.output[0] in outputs for n in chain if n is not last) or any(
                len(_consumers(g, n.output[0])) != 1 for n in chain if n is not last):
            continue
        idx = min(i for i, n in enumerate(g.g.node) if any(n is c for c in chain))
        gelu = helper.make_node("Gelu", [x], [last.output[0]], name=g.name((erf.name or "erf") + "_gelu"), domain=domain)
        ids = {id(n) for n in chain}
        keep = [n for n in g.g.node if id(n) not in ids]
        keep.insert(min(idx, len(keep)), gelu)
        copies = [copy.deepcopy(n) for n in keep]
        del g.g.node[:]
        g.g.node.extend(copies)
        if domain and not any(o.domain == domain for o in g.model.opset_import):
            g.model.opset_import.append(helper.make_opsetid(domain, 1))
        count += 1
    return count


def _init(g: _Graph, name: str) -> Any:
    return next((t for t in g.g.initializer if t.name == name), None)


def gemm_plain(g: _Graph) -> int:
    """Gemm with a constant B and alpha/beta != 1 or a 2-D bias -> Gemm(alpha=beta=1, bias [N]) (+ Add of a 2-D bias).

    Measured on the QNN HTP simulator: a Gemm with alpha 0.5 / beta 2 falls back to the CPU
    (40 % of its QDQ nodes on the HTP), one with a [M, N] bias runs 67 %; the plain form runs 100 %.
    alpha goes into B, beta into C (both constants); a bias whose rows are equal becomes [N].
    """
    from onnx import helper, numpy_helper

    def make(n: Any) -> list | None:
        b = _init(g, n.input[1]) if len(n.input) > 1 else None
        c_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        c = _init(g, c_name) if c_name else None
        alpha, beta = float(_attr(n, "alpha", 1.0)), float(_attr(n, "beta", 1.0))
        cv = numpy_helper.to_array(c) if c is not None else None
        bias_2d = cv is not None and cv.ndim == 2
        if b is None or b.data_type != 1 or (c_name and (c is None or c.data_type != 1)) or (alpha == 1.0 and beta == 1.0 and not bias_2d):
            return None
        base = n.name or "gemm"
        bw = numpy_helper.to_array(b).astype(np.float32) * np.float32(alpha)
        inputs = [n.input[0], g.const(base + "_b", bw)]
        extra: list = []
        out = n.output[0]
        if cv is not None and beta != 0.0:
            cv = cv.astype(np.float32) * np.float32(beta)
            if cv.ndim == 2 and cv.shape[0] == 1 or cv.ndim == 2 and np.all(cv == cv[:1]):
                cv = cv[0]
            if cv.ndim <= 1:
                inputs.append(g.const(base + "_c", np.broadcast_to(cv, (bw.shape[0 if _attr(n, "transB", 0) else 1],)).copy()))
            else:  # a true [M, N] bias: an Add after the Gemm (the QDQ writer quantizes both)
                pre = g.name(base + "_mm")
                extra = [helper.make_node("Add", [pre, g.const(base + "_c", cv)], [out], name=g.name(base + "_bias"))]
                out = pre
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name in ("transA", "transB")}
        return [helper.make_node("Gemm", inputs, [out], name=g.name(base + "_plain"), **attrs)] + extra

    count = _each(g, "Gemm", make)
    if count:  # the original B and C, unless another node reads them
        used = {i for n in g.g.node for i in n.input} | {o.name for o in g.g.output}
        for i in reversed([i for i, t in enumerate(g.g.initializer) if t.name not in used]):
            del g.g.initializer[i]
    return count


def _dims(g: _Graph, name: str) -> list[int] | None:
    """Static dims of a value (after shape inference), or None when any is unknown."""
    for vi in list(g.g.value_info) + list(g.g.input) + list(g.g.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
            return dims if all(d > 0 for d in dims) else None
    t = _init(g, name)
    return list(t.dims) if t is not None else None


def gemm_transa(g: _Graph) -> int:
    """Gemm(transA=1) -> Transpose(A) + Gemm(transA=0) (NNAPI's and CoreML's builders need transA=0)."""
    from onnx import helper

    def make(n: Any) -> list | None:
        if not _attr(n, "transA", 0):
            return None
        base = n.name or "gemm"
        at = g.name(base + "_a_t")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name != "transA"}
        return [helper.make_node("Transpose", [n.input[0]], [at], name=g.name(base + "_transpose_a"), perm=[1, 0]),
                helper.make_node("Gemm", [at, *n.input[1:]], list(n.output), name=g.name(base + "_a"), **attrs)]

    return _each(g, "Gemm", make)


def matmul_2d(g: _Graph) -> int:
    """MatMul of a static [..., M, K] input by a constant 2-D [K, N] weight -> Reshape to [-1, K], MatMul, Reshape back.

    NNAPI's builder maps a (QDQ) MatMul to FULLY_CONNECTED only when both inputs are 2-D (its
    batch MatMul path takes float only, with B of A's rank): a transformer's [1, S, H] x [H, H]
    projection falls back to the CPU; the 2-D form with Reshapes (rank <= 4) stays on NNAPI.
    """
    from onnx import helper

    def make(n: Any) -> list | None:
        b = _init(g, n.input[1])
        a = _dims(g, n.input[0])
        if b is None or len(b.dims) != 2 or a is None or len(a) < 3 or a[-1] != b.dims[0]:
            return None
        base = n.name or "matmul"
        a2, y2 = g.name(base + "_a2d"), g.name(base + "_y2d")
        return [
            helper.make_node("Reshape", [n.input[0], g.const(base + "_shape_in", np.array([-1, a[-1]], np.int64))], [a2],
                             name=g.name(base + "_flatten")),
            helper.make_node("MatMul", [a2, n.input[1]], [y2], name=g.name(base + "_2d")),
            helper.make_node("Reshape", [y2, g.const(base + "_shape_out", np.array([*a[:-1], b.dims[1]], np.int64))],
                             list(n.output), name=g.name(base + "_unflatten")),
        ]

    return _each(g, "MatMul", make)


REWRITES: dict[str, Callable[[_Graph], int]] = {
    "gemm-transa": gemm_transa,
    "matmul-2d": matmul_2d,
    "gemm-plain": gemm_plain,
    "gelu-fuse": gelu_fuse,
    "hardswish-decompose": hardswish_decompose,
    "hardsigmoid-decompose": hardsigmoid_decompose,
    "reducemean-hw-to-gap": reducemean_hw_to_gap,
}


def apply(path: Path, names: tuple[str, ...], feeds: list[dict[str, np.ndarray]], *, atol: float, rtol: float) -> list[RewriteResult]:
    """Apply ``names`` in order to the model at ``path`` (in place), each checked against the graph before it."""
    import onnx

    from .onnxutil import load_model, save_model
    from .runtime import create_session, run

    results = []
    for name in names:
        model = load_model(path)
        before = model.SerializeToString()
        try:  # ranks for the rules that need them
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - a rule without a known rank leaves the node alone
            pass
        count = REWRITES[name](_Graph(model))
        if not count:
            continue
        try:
            onnx.checker.check_model(model)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"rewrite {name} produced an invalid graph: {first_line(e, 200)}",
                             f"remove '{name}' from the target's [ops] rewrites and report it") from None
        after = model.SerializeToString()
        diff = 0.0
        ref, new = create_session(before, level="disable"), create_session(after, level="disable")
        for feed in feeds:
            for a, b in zip(run(ref, feed), run(new, feed)):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if a.shape != b.shape or not np.allclose(b, a, atol=atol, rtol=rtol):
                    raise ModelError(
                        f"rewrite {name} changed the model's outputs (max abs difference {float(np.max(np.abs(a - b))) if a.shape == b.shape else 'shape'})",
                        f"remove '{name}' from the target's [ops] rewrites and report it",
                    )
                diff = max(diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
        save_model(model, path)
        results.append(RewriteResult(name, count, diff if feeds else None, len(feeds)))
    return results
