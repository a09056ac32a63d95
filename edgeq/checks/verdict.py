"""One verdict, the same wherever a bundle is looked at (export table, --json, manifest,
``edgeq verify BUNDLE``, ``run.py``).

- ``pass``: verified on data, every task check within the target's tolerances;
- ``fail``: verified, a check failed (exit 1 wherever the bundle is opened);
- ``accepted-failed``: failed, and shipped knowingly with ``--accept-failed`` (exit 0, said loudly);
- ``skipped``: no data was given, so nothing was proven (exit 0, said loudly).

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


def verdict_of(verify: dict[str, Any] | None, *, accept_failed: bool = False, reason: str = "",
               generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``verdict`` object for a verify report (None: verification skipped) and, for
    language-model bundles, the greedy-generation check (``generation``: GreedyCheck.to_dict(),
    None when it did not run): a failed greedy check fails the verdict like a task check."""
    gen_failed = generation is not None and not generation.get("passed", False)
    if verify is None and not gen_failed:
        why = reason or "no data given: nothing was verified (pass --calib or --eval)"
        if generation is not None:
            why += "; the greedy generation check passed"
        return {"status": "skipped", "reason": why}
    if (verify is None or verify.get("passed")) and not gen_failed:
        return {"status": "pass", "reason": "every task check within the target's tolerances"
                + ("; greedy generation matches transformers" if generation is not None else "")}
    fails = list((verify or {}).get("failures", [])) + ([generation_failure(generation)] if gen_failed and generation else [])
    failures = "; ".join(fails)[:2000]
    if accept_failed:
        return {"status": "accepted-failed", "reason": f"shipped with --accept-failed: {failures}"}
    return {"status": "fail", "reason": failures}
