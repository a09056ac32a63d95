"""Every key and value of a target file checked when it loads (type, finite, range, unknown keys).

A target decides what a verdict means: a ``nan`` tolerance would turn every check off,
``inf`` would write non-standard JSON into manifests, a string would fail only after the
whole pipeline ran. ``check_target_data`` raises one ``TargetError`` naming the key.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields
from typing import Any

from ..errors import TargetError
from .safetext import escape_text

OPSET_BOUNDS = (7, 30)  # ONNX default-domain opsets onnxruntime has implemented, with room to grow
MAX_THREADS = 1024
MAX_CALIB_SAMPLES = 1_000_000
MAX_GGUF_CONTEXT = 1 << 20

# known keys per table (the top level is checked by targets._TOP_KEYS)
SESSION_KEYS = {"graph_optimization_level": str, "intra_op_num_threads": int, "ort_optimization": str, "ort_optimization_style": str}
OPS_KEYS = {"supported": list, "dtypes": list, "rewrites": list, "conditions": list, "conditions_source": str}
STATIC_DECODER_KEYS = {"slots": int, "prefill_chunk": int}
MAX_STATIC_SLOTS = 1 << 16
PROVIDER_KEYS = {"name", "options"}
GGUF_TOLERANCE_KEYS = ("max_kl", "min_top1", "max_ppl_ratio")
# tolerance name -> (low, high) inclusive, for those with a tighter range than "finite and >= 0"
TOLERANCE_RANGES = {
    "min_cosine": (0.0, 1.0),
    "min_top1_agreement": (0.0, 1.0),
    "max_accuracy_drop": (0.0, 1.0),
    "golden_atol": (0.0, math.inf),
    "golden_rtol": (0.0, math.inf),
    "export_atol": (0.0, math.inf),
    "export_rtol": (0.0, math.inf),
}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}


def _fail(where: str, key: str, problem: str, hint: str = "fix the target file (see targets/cpu-x86_64.toml)") -> None:
    raise TargetError(f"{where}: '{escape_text(key)[:80]}' {problem}", hint)


def _shown(value: Any) -> str:
    return escape_text(repr(value))[:60]


def check_type(where: str, key: str, value: Any, kind: type) -> None:
    """``value`` is of ``kind`` (bool is not a number; an integer is a number; numbers are finite)."""
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            _fail(where, key, f"must be a finite number, not {_shown(value)}")
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        _fail(where, key, f"must be {_TYPE_WORDS.get(kind, kind.__name__)}, not {_shown(value)}")


def check_number(where: str, key: str, value: Any, low: float, high: float, *, integer: bool = False) -> None:
    check_type(where, key, value, int if integer else float)
    if not low <= value <= high:
        bound = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        _fail(where, key, f"must be {bound}, not {_shown(value)}")


def check_str_list(where: str, key: str, value: Any) -> None:
    check_type(where, key, value, list)
    for v in value:
        if not isinstance(v, str):
            _fail(where, key, f"must be a list of strings, not one holding {_shown(v)}")


def _table(where: str, key: str, value: Any, known: set[str] | dict[str, Any]) -> dict[str, Any]:
    check_type(where, key, value, dict)
    unknown = sorted(set(value) - set(known))
    if unknown:
        _fail(where, f"{key}.{unknown[0]}", "is not a known key", f"known keys in [{key}]: {', '.join(sorted(known))}")
    return value


def _quant(where: str, data: Any) -> None:
    from ..quantization.spec import QuantSpec

    hints = typing.get_type_hints(QuantSpec)
    table = _table(where, "quant", data, {f.name for f in fields(QuantSpec)})
    for key, value in table.items():
        hint = hints[key]
        name = f"quant.{key}"
        if hint in (str, bool):
            check_type(where, name, value, hint)
        elif hint is int:
            check_number(where, name, value, 0 if key != "calib_samples" else 1,
                         MAX_CALIB_SAMPLES if key == "calib_samples" else 1 << 24, integer=True)
        elif hint is float:
            check_type(where, name, value, float)
        elif key == "overrides":
            check_type(where, name, value, list)
            for o in value:
                if not (isinstance(o, list) and len(o) == 2 and all(isinstance(x, str) for x in o)):
                    _fail(where, name, f"must be a list of [pattern, mode] pairs, not one holding {_shown(o)}")
        elif typing.get_origin(hint) is tuple:  # tuple[str, ...]
            check_str_list(where, name, value)
        # other field types are left to QuantSpec's own checks


def _providers(where: str, data: Any) -> None:
    check_type(where, "providers", data, list)
    for p in data:
        check_type(where, "providers", p, dict)
        unknown = sorted(set(p) - PROVIDER_KEYS)
        if unknown:
            _fail(where, f"providers.{unknown[0]}", "is not a known key", "a [[providers]] entry has name and options")
        if "name" in p:
            check_type(where, "providers.name", p["name"], str)
        for k, v in _table(where, "providers.options", p.get("options", {}), set(p.get("options", {}))).items():
            if isinstance(v, float) and not math.isfinite(v):
                _fail(where, f"providers.options.{k}", f"must be finite, not {_shown(v)}")
            if not isinstance(v, (str, int, float, bool)):
                _fail(where, f"providers.options.{k}", f"must be a string, number or true/false, not {_shown(v)}")


def _opset(where: str, data: Any) -> None:
    table = _table(where, "opset", data, {"min", "max", "preferred"})
    lo, hi = OPSET_BOUNDS
    for key, value in table.items():
        check_number(where, f"opset.{key}", value, lo, hi, integer=True)


def _gguf(where: str, data: Any) -> None:
    table = _table(where, "gguf", data, {"quant", "context", "tolerances"})
    if "quant" in table:
        check_type(where, "gguf.quant", table["quant"], str)
    if "context" in table:
        check_number(where, "gguf.context", table["context"], 1, MAX_GGUF_CONTEXT, integer=True)
    tols = table.get("tolerances", {})
    check_type(where, "gguf.tolerances", tols, dict)
    for q, t in tols.items():
        t = _table(where, f"gguf.tolerances.{q}", t, set(GGUF_TOLERANCE_KEYS))
        for key, value in t.items():
            high = 1.0 if key == "min_top1" else math.inf
            check_number(where, f"gguf.tolerances.{q}.{key}", value, 0.0, high)


def check_target_data(data: dict[str, Any], where: str, tolerance_defaults: dict[str, Any]) -> None:
    """Raise ``TargetError`` for the first key of a parsed target file with a bad type or value.

    ``tolerance_defaults``: the ``Tolerances`` fields and their defaults (known keys; a
    number default means a finite number >= 0, narrowed by ``TOLERANCE_RANGES``).
    """
    for key in ("name", "description", "arch", "runtime"):
        if key in data:
            check_type(where, key, data[key], str)
    if "name" in data and not data["name"].strip():
        _fail(where, "name", "must not be empty")
    if "notes" in data:
        check_str_list(where, "notes", data["notes"])
    if "static_shapes" in data:
        check_type(where, "static_shapes", data["static_shapes"], bool)
    if "providers" in data:
        _providers(where, data["providers"])
    if "session" in data:
        session = _table(where, "session", data["session"], SESSION_KEYS)
        for key in ("graph_optimization_level", "ort_optimization", "ort_optimization_style"):
            if key in session:
                check_type(where, f"session.{key}", session[key], str)
        if "intra_op_num_threads" in session:
            check_number(where, "session.intra_op_num_threads", session["intra_op_num_threads"], 0, MAX_THREADS, integer=True)
    if "quant" in data:
        _quant(where, data["quant"])
    if "opset" in data:
        _opset(where, data["opset"])
    if "tolerances" in data:
        for key, value in _table(where, "tolerances", data["tolerances"], tolerance_defaults).items():
            default = tolerance_defaults[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                low, high = TOLERANCE_RANGES.get(key, (0.0, math.inf))
                check_number(where, f"tolerances.{key}", value, low, high)
            else:
                check_type(where, f"tolerances.{key}", value, type(default))
    if "ops" in data:
        for key, value in _table(where, "ops", data["ops"], OPS_KEYS).items():
            if key == "conditions":  # attribute-level rules (edgeq.core.op_conditions), each checked
                from .op_conditions import parse_conditions

                parse_conditions(value, where)
            elif key == "conditions_source":
                check_type(where, f"ops.{key}", value, str)
            else:
                check_str_list(where, f"ops.{key}", value)
    if "gguf" in data:
        _gguf(where, data["gguf"])
    if "static_decoder" in data:  # static-shape LLM decoders: cache slots, prefill chunk (bounded by the slots when built)
        for key, value in _table(where, "static_decoder", data["static_decoder"], STATIC_DECODER_KEYS).items():
            check_number(where, f"static_decoder.{key}", value, 1, MAX_STATIC_SLOTS, integer=True)
    if "rules" in data:
        check_type(where, "rules", data["rules"], list)
        for r in data["rules"]:
            check_type(where, "rules", r, dict)
            for k, v in r.items():
                if k == "allowed":
                    check_str_list(where, "rules.allowed", v)
                else:
                    check_type(where, f"rules.{k}", v, str)
