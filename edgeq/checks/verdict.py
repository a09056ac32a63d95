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


def verdict_of(verify: dict[str, Any] | None, *, accept_failed: bool = False, reason: str = "") -> dict[str, Any]:
    """The manifest's ``verdict`` object for a verify report (None: verification skipped)."""
    if verify is None:
        return {"status": "skipped", "reason": reason or "no data given: nothing was verified (pass --calib or --eval)"}
    if verify.get("passed"):
        return {"status": "pass", "reason": "every task check within the target's tolerances"}
    failures = "; ".join(verify.get("failures", []))[:2000]
    if accept_failed:
        return {"status": "accepted-failed", "reason": f"shipped with --accept-failed: {failures}"}
    return {"status": "fail", "reason": failures}
