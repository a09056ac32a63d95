"""Attribute-level op-support conditions of an accelerator's provider, as data (``[[ops.conditions]]``).

An op type in ``[ops] supported`` may still fall back: onnxruntime's NNAPI builder takes a
Gemm only with ``transA=0`` and ``alpha=beta=1``, CoreML's only with a constant B. A target
file writes each such condition once, with the reason a user reads::

    [[ops.conditions]]
    op = "Gemm"
    check = "attribute"          # attribute | constant | rank | bias-vector
    attribute = "transA"
    allowed = [0]
    reason = "NNAPI's builder needs transA=0"

Checks (``input`` is the node input's index):

- ``attribute``: the attribute (``default`` when the node leaves it out; edgeq knows the ONNX
  default of transA/transB/alpha/beta) is one of ``allowed`` (numbers or strings);
- ``constant``: input ``input`` is a constant (an initializer, a Constant node, or the
  DequantizeLinear of an initializer, as a QDQ weight is); ``unless_dtype``
  exempts an input of that dtype (NNAPI's Gather takes computed int32 indices);
- ``rank``: input ``input`` has one of the ``ranks``;
- ``float_batch_ok`` (constant, rank): the condition does not apply to a float MatMul (not fed
  by DequantizeLinear) whose inputs share one rank >= 3 and the leading dims (NNAPI's batch MatMul);
- ``when_attribute`` / ``when_value`` (/ ``when_default``) limit an attribute or constant check
  to nodes with that attribute value (NNAPI needs a constant B only when transB=0, asymmetric
  coordinates only for nearest Resize);
- ``bias-vector``: Gemm's C is a vector of B's N columns, or a tensor whose dims are all 1
  but the last (at most ``max_rank`` dims; ``allow_scalar``: a scalar or [1] too).

The conditions are validated when the target loads (one line naming the bad key) and applied
by the placement estimate (``edgeq.profiling.placement.estimate``), each failed one giving
``"<op> <what was found>: <reason>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TargetError
from .safetext import escape_text

CHECKS = ("attribute", "constant", "rank", "bias-vector")
_KEYS = {
    "attribute": {"attribute", "allowed", "default", "when_attribute", "when_value", "when_default"},
    "constant": {"input", "when_attribute", "when_value", "when_default", "unless_dtype", "float_batch_ok"},
    "rank": {"input", "ranks", "float_batch_ok"},
    "bias-vector": {"input", "max_rank", "allow_scalar"},
}
_COMMON = {"op", "check", "reason"}
# ONNX defaults of the attributes conditions name (used when the node leaves them out and the rule gives none)
_ONNX_DEFAULTS = {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0}


@dataclass(frozen=True)
class OpCondition:
    op: str
    check: str
    reason: str
    input: int = 0
    attribute: str = ""
    allowed: tuple[float | str, ...] = ()
    default: float | str | None = None
    when_attribute: str = ""
    when_value: float | str | None = None
    when_default: float | str | None = None
    ranks: tuple[int, ...] = ()
    float_batch_ok: bool = False
    unless_dtype: str = ""
    max_rank: int = 8
    allow_scalar: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The keys of this check only (as a target file writes them)."""
        keys = _COMMON | _KEYS[self.check]
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k in keys}
        return {k: v for k, v in d.items() if v is not False and v not in ("", None, [])}


def _bad(where: str, key: str, problem: str) -> None:
    raise TargetError(f"{where}: [[ops.conditions]] {escape_text(key)[:80]} {problem}",
                      "see docs/npu-export.md (op conditions) and targets/nnapi.toml")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(v: Any) -> float | str:
    """Numbers compare as floats, strings as text."""
    return v if isinstance(v, str) else float(v)


def parse_conditions(value: Any, where: str) -> tuple[OpCondition, ...]:
    """Each ``[[ops.conditions]]`` entry checked (known check, its keys, their types) and built."""
    if not isinstance(value, list):
        _bad(where, "", "must be a list of tables")
    out = []
    for i, d in enumerate(value):
        if not isinstance(d, dict):
            _bad(where, f"#{i + 1}", "must be a table")
        check = d.get("check")
        if check not in CHECKS:
            _bad(where, f"#{i + 1} check", f"must be one of {', '.join(CHECKS)}, not {escape_text(repr(check))[:40]}")
        for key in ("op", "reason"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                _bad(where, f"#{i + 1} {key}", "must be a non-empty string")
        unknown = sorted(set(d) - _COMMON - _KEYS[check])
        if unknown:
            _bad(where, f"#{i + 1} {unknown[0]}", f"is not a key of check '{check}' (known: {', '.join(sorted(_KEYS[check]))})")
        kw: dict[str, Any] = {"op": d["op"], "check": check, "reason": d["reason"]}
        if "float_batch_ok" in d:
            if not isinstance(d["float_batch_ok"], bool):
                _bad(where, f"#{i + 1} float_batch_ok", "must be true or false")
            kw["float_batch_ok"] = d["float_batch_ok"]
        if "input" in d:
            if not isinstance(d["input"], int) or isinstance(d["input"], bool) or not 0 <= d["input"] < 16:
                _bad(where, f"#{i + 1} input", "must be an input index between 0 and 15")
            kw["input"] = d["input"]
        if "when_attribute" in d or "when_value" in d:
            if not ("when_attribute" in d and "when_value" in d):
                _bad(where, f"#{i + 1} when_attribute", "and when_value go together")
            if not isinstance(d["when_attribute"], str) or not d["when_attribute"]:
                _bad(where, f"#{i + 1} when_attribute", "must name an attribute")
            if not (_number(d["when_value"]) or isinstance(d["when_value"], str)):
                _bad(where, f"#{i + 1} when_value", "must be a number or a string")
            wd = d.get("when_default", _ONNX_DEFAULTS.get(d["when_attribute"]))
            if wd is None or not (_number(wd) or isinstance(wd, str)):
                _bad(where, f"#{i + 1} when_default", f"is needed: edgeq knows no ONNX default for '{escape_text(d['when_attribute'])[:40]}'")
            kw.update(when_attribute=d["when_attribute"], when_value=_value(d["when_value"]), when_default=_value(wd))
        elif "when_default" in d:
            _bad(where, f"#{i + 1} when_default", "needs when_attribute and when_value")
        if check == "attribute":
            if not isinstance(d.get("attribute"), str) or not d["attribute"]:
                _bad(where, f"#{i + 1} attribute", "must name the attribute")
            allowed = d.get("allowed")
            if not isinstance(allowed, list) or not allowed or not (all(_number(v) for v in allowed) or all(isinstance(v, str) for v in allowed)):
                _bad(where, f"#{i + 1} allowed", "must be a non-empty list of numbers or of strings")
            default = d.get("default", _ONNX_DEFAULTS.get(d["attribute"]))
            if default is None:
                _bad(where, f"#{i + 1} default", f"is needed: edgeq knows no ONNX default for '{escape_text(d['attribute'])[:40]}'")
            if not (_number(default) or isinstance(default, str)):
                _bad(where, f"#{i + 1} default", "must be a number or a string")
            kw.update(attribute=d["attribute"], allowed=tuple(_value(v) for v in allowed), default=_value(default))
        elif check == "constant":
            if "unless_dtype" in d:
                if not isinstance(d["unless_dtype"], str) or not d["unless_dtype"]:
                    _bad(where, f"#{i + 1} unless_dtype", "must name a dtype (e.g. int32)")
                kw["unless_dtype"] = d["unless_dtype"]
        elif check == "rank":
            ranks = d.get("ranks")
            if not isinstance(ranks, list) or not ranks or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 8 for r in ranks):
                _bad(where, f"#{i + 1} ranks", "must be a non-empty list of ranks (0 to 8)")
            kw["ranks"] = tuple(ranks)
        else:  # bias-vector
            if "max_rank" in d:
                if not isinstance(d["max_rank"], int) or isinstance(d["max_rank"], bool) or not 1 <= d["max_rank"] <= 8:
                    _bad(where, f"#{i + 1} max_rank", "must be a rank between 1 and 8")
                kw["max_rank"] = d["max_rank"]
            if "allow_scalar" in d:
                if not isinstance(d["allow_scalar"], bool):
                    _bad(where, f"#{i + 1} allow_scalar", "must be true or false")
                kw["allow_scalar"] = d["allow_scalar"]
            kw.setdefault("input", 2)
        out.append(OpCondition(**kw))
    return tuple(out)


def _attr(node: Any, name: str, default: float) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def constants_of(model: Any) -> set[str]:
    """Tensor names a provider sees as constant: initializers, Constant outputs, DequantizeLinear of an initializer."""
    inits = {t.name for t in model.graph.initializer}
    out = set(inits)
    for n in model.graph.node:
        if n.op_type == "Constant":
            out.update(n.output)
        elif n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits:
            out.update(n.output)
    return out


def _norm(v: Any) -> Any:
    """An attribute value as conditions compare it: bytes as text, numbers as float."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _shown(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else escape_text(str(v))[:40]


def _float_batch(node: Any, types: dict[str, tuple[str, list | None]], dequantized: set[str]) -> bool:
    """A float MatMul, not fed by DequantizeLinear, whose inputs share one rank >= 3 and the leading dims."""
    if len(node.input) < 2 or any(i in dequantized for i in node.input[:2]):
        return False
    (ta, a), (tb, b) = (types.get(node.input[0], ("", None)), types.get(node.input[1], ("", None)))
    return ta == "float32" and a is not None and b is not None and len(a) == len(b) >= 3 and a[:-2] == b[:-2]


def failures(node: Any, conditions: tuple[OpCondition, ...], types: dict[str, tuple[str, list | None]],
             constants: set[str], dequantized: set[str] = frozenset()) -> list[str]:
    """The reason of each condition ``node`` breaks.

    ``types``: tensor name -> (dtype, dims or None when unknown); ``dequantized``: outputs of DequantizeLinear nodes.
    """
    dims = {k: v[1] for k, v in types.items()}
    out = []
    inputs = list(node.input)
    for c in conditions:
        if c.op != node.op_type:
            continue
        name = inputs[c.input] if c.input < len(inputs) else ""
        if c.when_attribute and _norm(_attr(node, c.when_attribute, c.when_default)) != c.when_value:
            continue
        if c.check == "attribute":
            v = _norm(_attr(node, c.attribute, c.default))
            if v not in c.allowed:
                out.append(f"{node.op_type} {c.attribute}={_shown(v)}: {c.reason}")
        elif c.check == "constant":
            if c.unless_dtype and types.get(name, ("", None))[0] == c.unless_dtype:
                continue
            if name and name not in constants and not (c.float_batch_ok and _float_batch(node, types, dequantized)):
                out.append(f"{node.op_type} input {c.input} ({name}) is not a constant: {c.reason}")
        elif c.check == "rank":
            shape = dims.get(name) if name else None
            if shape is not None and len(shape) not in c.ranks and not (c.float_batch_ok and _float_batch(node, types, dequantized)):
                out.append(f"{node.op_type} input {c.input} has rank {len(shape)}: {c.reason}")
        elif name:  # bias-vector: C against B's N (transB picks the axis)
            c_dims, b_dims = dims.get(name), dims.get(inputs[1]) if len(inputs) > 1 else None
            if c_dims is None or b_dims is None or len(b_dims) != 2:
                continue
            n = b_dims[0] if _attr(node, "transB", 0) else b_dims[1]
            ok = (len(c_dims) == 0 and c.allow_scalar) or (
                1 <= len(c_dims) <= c.max_rank and all(d == 1 for d in c_dims[:-1])
                and (c_dims[-1] == n or (c.allow_scalar and len(c_dims) == 1 and c_dims[0] == 1)))
            if not ok:
                out.append(f"{node.op_type} bias C [{', '.join(str(d) for d in c_dims)}] with N={n}: {c.reason}")
    return out
