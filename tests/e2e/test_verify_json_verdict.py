"""`edgeq verify BUNDLE --json` on a bundle whose export check failed: the JSON is printed (passed
false, verdict fail) and the command exits 1, as `edgeq export --json` and `run.py --json` do. It
printed nothing on stdout (the failure was raised before the result was emitted), so a CI script
reading the JSON found none.
"""

from __future__ import annotations

import json

import pytest

from edgeq.cli import app
from tests.unit.test_verdict import _strict


@pytest.mark.slow
def test_verify_json_of_a_failed_bundle_says_fail_and_exits_1(runner, cnn, cnn_calib, tmp_path):
    target, appt = _strict(tmp_path)
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(cnn), "--target", str(target), "-o", str(out), "--calib", str(cnn_calib),
                            "--no-profile", "--preprocess", str(appt)])
    assert r.exit_code == 1
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is False and res["golden_passed"] is True and res["verdict"] == "fail", res
    assert "cosine" in res["verdict_reason"]
    assert "failed its export check" in r.stderr
    # without --json: the one error line, no PASS table before it
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "failed its export check" in r.stderr and "PASS" not in r.stdout, r.output
