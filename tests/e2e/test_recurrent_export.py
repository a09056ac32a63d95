"""`edgeq export` on a tiny recurrent model (hn fed back as h) with --calib: the state is found, the samples
are rolled out, the probability head decides and the state is reported as information; the bundle's own
checks (`edgeq verify BUNDLE`, `python BUNDLE/run.py`) and `edgeq verify BUNDLE --reference` agree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from edgeq.cli import app
from tests.unit.test_recurrent_verdict import healthy, stream


def test_export_recurrent_model_judges_the_task_over_the_rollout(runner, tmp_path):
    ref, _ = healthy(tmp_path)
    np.savez(tmp_path / "calib.npz", **stream(32))
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(ref), "--target", "cpu-x86_64", "--calib", str(tmp_path / "calib.npz"), "--no-profile",
                            "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    tasks = {t["output"]: t for t in m["verify"]["tasks"]}
    assert m["verdict"]["status"] == "pass" and m["quantization"]["mode"] == "int8-static"
    assert any("calibrated 'h' on fp32's own rolled-out state" in n for n in m["quantization"]["notes"])
    assert tasks["hn"]["kind"] == "state" and not tasks["hn"]["metrics"] and tasks["hn"]["info"]["steps"] == 32
    assert tasks["prob"]["kind"] == "classification" and "32-call rollout" in tasks["prob"]["why"]
    res = json.loads(r.stdout)
    assert any("checked as state" in n and "'h'" in n for n in res["notes"]), res["notes"]
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0, r.output
    p = subprocess.run([sys.executable, str(out / "run.py")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr
    r = runner.invoke(app, ["verify", str(out), "--reference", str(ref), "--data", str(tmp_path / "calib.npz"), "--json"])
    assert r.exit_code == 0, r.output
    check = {t["output"]: t for t in json.loads(r.stdout)["reference_check"]["tasks"]}
    assert check["hn"]["kind"] == "state" and check["prob"]["passed"]


def test_export_with_a_declared_state(runner, tmp_path):
    """Names edgeq would not pair ('z' fed back as 'memory'): declared in the app TOML, recorded in the manifest."""
    ref, _ = healthy(tmp_path, names=("memory", "z", "prob"))
    np.savez(tmp_path / "calib.npz", **stream(32, h_name="memory"))
    (tmp_path / "app.toml").write_text('[outputs.z]\ntask = "state"\nfeeds = "memory"\n')
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(ref), "--calib", str(tmp_path / "calib.npz"), "--preprocess", str(tmp_path / "app.toml"),
                            "--no-profile", "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    tasks = {t["output"]: t for t in m["verify"]["tasks"]}
    assert tasks["z"]["kind"] == "state" and tasks["z"]["info"]["feeds"] == "memory" and "declared in the app TOML" in tasks["z"]["why"]
    assert next(o for o in m["outputs"] if o["name"] == "z")["postprocess"] == {"task": "state", "feeds": "memory"}
    r = runner.invoke(app, ["verify", str(out)])  # the manifest (schema) takes the declared state
    assert r.exit_code == 0, r.output
    # verify BUNDLE --reference applies the declaration the manifest records (it judged 'z' per call as class scores:
    # exit 1 where the export passed); a hostile manifest's declaration is refused in one line (exit 2)
    check = ["verify", str(out), "--reference", str(ref), "--data", str(tmp_path / "calib.npz"), "--json"]
    r = runner.invoke(app, check)
    assert r.exit_code == 0, r.output
    checked = {t["output"]: t for t in json.loads(r.stdout)["reference_check"]["tasks"]}
    assert checked["z"]["kind"] == "state" and checked["z"]["info"]["feeds"] == "memory" and checked["prob"]["passed"]
    for feeds, says in (("nope", "feeds names no input of the model ('nope'"), ("x", "declared to feed input 'x' but cannot")):
        next(o for o in m["outputs"] if o["name"] == "z")["postprocess"]["feeds"] = feeds
        (out / "manifest.json").write_text(json.dumps(m))
        r = runner.invoke(app, check)
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    (tmp_path / "app.toml").write_text('[outputs.z]\ntask = "state"\nfeeds = "hidden"\n')
    r = runner.invoke(app, ["export", str(ref), "--calib", str(tmp_path / "calib.npz"), "--preprocess", str(tmp_path / "app.toml"),
                            "--no-profile", "-o", str(tmp_path / "b2")])
    assert r.exit_code == 2 and "feeds names no input of the model ('hidden'" in r.output and not (tmp_path / "b2").exists(), r.output
