"""Hints after a failed check that fit: never an option already on, never a mode the target
or the model cannot use."""

from __future__ import annotations

import math
from typing import Any


def target_allows_dynamic(target: Any) -> bool:
    """A target whose pre-flight rules pin a static format (QNN, NPUs) does not run dynamic INT8."""
    for r in getattr(target, "rules", ()) or ():
        if getattr(r, "check", "") == "activation_types" and getattr(r, "format", None):
            return False
    return True


def pinned_format(target: Any) -> str | None:
    """The INT8 format a target's pre-flight rules pin (QNN: "qdq"), else None."""
    for r in getattr(target, "rules", ()) or ():
        if getattr(r, "check", "") == "activation_types" and getattr(r, "format", None):
            return str(r.format)
    return None


def after_budget_missed(budget: dict[str, Any], *, has_eval: bool) -> str:
    """One hint line when --max-drop / --prefer found no quantized model within the budget.

    ``budget``: the recipe's ``search`` or ``gate`` record. Suggests --eval only when the budget
    was measured on the calibration data, and declaring the deciding output's task only when it
    was inferred (not already declared) on a model with several outputs."""
    tips = ["raise --max-drop", "add calibration data"]
    if not has_eval:
        tips.append("measure on held-out data with --eval")
    scored = [c for c in budget.get("candidates", [])[1:] if c.get("outputs") and c.get("drop") is not None]
    closest = min(scored, key=lambda c: c["drop"], default=None)  # the gate: the candidate nearest the budget
    per = (budget.get("best") or closest or {}).get("outputs") or []
    worst = max(per, key=lambda o: o.get("drop", 0.0), default=None)
    if worst is not None and len(per) > 1 and worst.get("drop", 0.0) > 0 and not worst.get("declared"):
        tips.append(f"if output '{worst['output']}' is not {worst['kind']}, declare its task in the app TOML "
                    f"([outputs.{worst['output']}] task = ..., --preprocess)")
    return ", ".join(tips) + ", or ship fp32 on purpose with --quant none"


def modes_without_calibration(target: Any, dynamic_applies: bool = True) -> str:
    """Modes that need no calibration data and that this target runs (no dynamic INT8 on QNN/NPUs) and
    the model can use (``dynamic_applies``: it has a node type int8-dynamic quantizes)."""
    if not target_allows_dynamic(target):
        return "--quant none (this target runs static INT8 only)"
    if not dynamic_applies:
        return "--quant none (int8-dynamic quantizes MatMul/Gemm/LSTM/Attention nodes, If/Loop/Scan bodies included, and this model has none)"
    return "--quant int8-dynamic / none"


# agreement metrics counted over samples (rows) or decoded sequences: one changed sample moves them by 1/n
_COUNTED = {"top1_agreement": "rows", "top5_agreement": "rows", "decision_agreement": "rows", "sequence_match": "sequences",
            "peak_agreement": "rows_judged_by_position"}


def one_change_over_a_small_set(tasks: Any) -> str | None:
    """A tip when a failed agreement check changed exactly one of n samples and the tolerance allows no change
    at n (0.97 on 32 samples): more --eval samples tell noise from damage; another recipe may not."""
    for t in tasks or ():
        if not isinstance(t, dict) or t.get("passed", True):
            continue
        info, metrics = t.get("info") or {}, t.get("metrics") or {}
        for metric, limit in (t.get("limits") or {}).items():
            n, value = info.get(_COUNTED.get(metric, "")), metrics.get(metric)
            op, _, num = str(limit).partition(" ")
            try:
                need = float(num)
            except ValueError:
                continue
            if op != ">=" or not isinstance(n, int) or n <= 0 or not isinstance(value, (int, float)) or not 0 < need < 1:
                continue
            if value < need and round((1 - value) * n) == 1 and n * (1 - need) < 1:
                enough = math.ceil(1 / (1 - need) - 1e-9)
                return (f"more --eval samples (one of {n} changed in output '{t.get('output')}', and "
                        f"{metric.replace('_', ' ')} >= {need:g} allows none at {n}; {enough} allow one)")
    return None


def after_failed_check(spec: Any, target: Any, *, max_drop: float | None = None, has_eval: bool = True, out: Any = None,
                       dynamic_applies: bool = True, tasks: Any = ()) -> str:
    """One hint line for a quantized model outside the target's tolerances. ``dynamic_applies``: the model has a
    node type int8-dynamic quantizes; ``tasks``: the verify report's per-output checks (verify.tasks)."""
    tips: list[str] = []
    small = one_change_over_a_small_set(tasks) if has_eval else None
    if small:
        tips.append(small)
    mode = getattr(spec, "mode", "")
    if getattr(spec, "weight_only", False):
        if getattr(spec, "block_size", 32) > 32:
            tips.append("a smaller --block-size (e.g. 32)")
        if getattr(spec, "algo", "rtn") == "rtn":
            tips.append("--algo gptq or awq (with --calib)")
        if not getattr(spec, "keep", ()):
            tips.append("--keep lm_head")
    elif mode in ("int8-static", "int8-dynamic"):
        if not getattr(spec, "per_channel", True):
            tips.append("--per-channel")
        if mode == "int8-static":
            if max_drop is None:
                tips.append("--max-drop 0.01 (keeps the most sensitive nodes float)")
            tips.append("more representative calibration data")
            if getattr(spec, "calibration", "auto") == "minmax":
                tips.append("--calibration auto")
            if target_allows_dynamic(target) and dynamic_applies:
                tips.append("--quant int8-dynamic")
        if not has_eval:
            tips.append("--eval with held-out data")
    elif mode == "fp16":
        pass
    if mode != "none":
        tips.append("--quant none")
    where = f"the bundle was written to {out} for inspection; " if out is not None else ""
    return where + ("try " + ", ".join(tips) + "; " if tips else "") + "or ship it knowingly with --accept-failed"
