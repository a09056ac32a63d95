"""One verdict, the same wherever a bundle is looked at (export table, --json, manifest,
``edgeq verify BUNDLE``, ``run.py``).

- ``pass``: verified on data, every task check within the target's tolerances;
- ``fail``: verified, a check failed (exit 1 wherever the bundle is opened);
- ``accepted-failed``: failed, and shipped knowingly with ``--accept-failed`` (exit 0, said loudly);
- ``skipped``: no data was given, so nothing was proven (exit 0, said loudly).

A missed accuracy budget (--max-drop search or --prefer gate: no quantized model within it) is a
failed check like a task check (:func:`budget_failure`), whatever the verify report says of the model written.

``run.py`` (edgeq/bundles/runner.py) reads the same manifest field without importing edgeq.
"""

from __future__ import annotations

from typing import Any

STATUSES = ("pass", "fail", "accepted-failed", "skipped")


def generation_failure(generation: dict[str, Any]) -> str:
    """One line for a failed greedy-generation check (edgeq.bundles.genai.GreedyCheck.to_dict())."""
    div = generation.get("first_divergence")
    return (f"greedy generation ({generation.get('runtime', 'bundle')} vs transformers): agreement "
            f"{100 * float(generation.get('agreement', 0.0)):.1f} % < {100 * float(generation.get('min_agreement', 1.0)):.0f} %, "
            f"{generation.get('identical', 0)}/{generation.get('prompts', 0)} prompts identical"
            + (f", first divergence at new token {div}" if div is not None else ""))


def budget_failure(recipe: dict[str, Any] | None) -> str | None:
    """One line when the recipe's accuracy budget was missed (None: met, or no budget asked):
    the --prefer gate shipped fp32, the --max-drop search held only with every weight node float
    (an fp32 model), or the best model the search found is over the budget."""
    recipe = recipe or {}
    gate = recipe.get("gate")
    if gate and gate.get("met") is False:
        return (f"accuracy budget not met: no quantized candidate within --max-drop {gate.get('max_drop')} on "
                f"{gate.get('metric')}; the model written is fp32 (mode none)")
    search = recipe.get("search")
    if search and search.get("all_float"):
        return (f"accuracy budget not met by any quantized model: --max-drop {search.get('max_drop')} on {search.get('metric')} "
                "held only with every weight node float, so the model written is fp32 (mode none)")
    if search and not search.get("met", True):
        best = search.get("best") or {}
        fp32 = (recipe.get("speed") or {}).get("decision") == "fp32"  # the quantized models ran slower: fp32 shipped
        return (f"accuracy budget not met: best {best.get('metric')} drop {float(best.get('drop', 0.0)):.4f} > --max-drop "
                f"{search.get('max_drop')} ({best.get('kept_float')} node(s) kept float); "
                + ("fp32 was written (the quantized models ran slower here)" if fp32 else "the best model found was written"))
    return None


def verdict_of(verify: dict[str, Any] | None, *, accept_failed: bool = False, reason: str = "",
               generation: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``verdict`` object for a verify report (None: verification skipped) and, for
    language-model bundles, the greedy-generation check (``generation``: GreedyCheck.to_dict(),
    None when it did not run): a failed greedy check fails the verdict like a task check, and so
    does an accuracy budget the quantization ``recipe`` missed (:func:`budget_failure`)."""
    budget = budget_failure(recipe)
    gen_failed = generation is not None and not generation.get("passed", False)
    other_failed = gen_failed or budget is not None  # failed checks besides the verify report
    if verify is None and not other_failed:
        why = reason or "no data given: nothing was verified (pass --calib or --eval)"
        if generation is not None:
            why += "; the greedy generation check passed"
        return {"status": "skipped", "reason": why}
    if (verify is None or verify.get("passed")) and not other_failed:
        return {"status": "pass", "reason": "every task check within the target's tolerances"
                + ("; greedy generation matches transformers" if generation is not None else "")}
    fails = ([budget] if budget else []) + list((verify or {}).get("failures", [])) + ([generation_failure(generation)] if gen_failed and generation else [])
    failures = "; ".join(fails)[:2000]
    if accept_failed:
        return {"status": "accepted-failed", "reason": f"shipped with --accept-failed: {failures}"}
    return {"status": "fail", "reason": failures}
