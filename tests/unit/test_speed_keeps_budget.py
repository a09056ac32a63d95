"""--max-drop missed, then the speed check ships fp32: the export still fails (exit 1).

Seen on rapidocr's text detector: `edgeq export det.onnx --max-drop 0.01` found the budget met
only with every weight node float; the speed check then shipped fp32 (the int8 model.ort ran
slower here) and dropped the search record with it, so the export said nothing of the missed
budget and exited 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeq.core.onnxutil import artifact_from, copy_model
from edgeq.core.targets import load_target
from edgeq.errors import CheckFailed
from edgeq.pipeline import check_budget
from edgeq.quantization.int8.quantizer import QuantResult
from edgeq.quantization.selection import speed
from edgeq.quantization.spec import QuantSpec
from tests.models import make_cnn

SEARCH = {"max_drop": 0.01, "metric": "map_iou", "met": False, "all_float": False,
          "best": {"metric": "map_iou", "drop": 0.03, "kept_float": 4, "kept_16bit": 0}, "steps": []}


@dataclass
class _App:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    note: str = ""


def _slow(app, fp32, onnx, ort, feed, opts, name):  # every quantized model.ort "runs" at twice fp32's time
    return speed.SpeedCheck({}, 1.0, {name: 2.0 if name != "fp32" else 1.0}, name, 2.0 if name != "fp32" else 1.0, 1.0)


@pytest.mark.parametrize("search", [SEARCH, dict(SEARCH, met=False, all_float=True)])
def test_fp32_shipped_for_speed_keeps_the_missed_budget(tmp_path, monkeypatch, search):
    fp32 = artifact_from(make_cnn(tmp_path / "fp32.onnx"))
    out = tmp_path / "model.onnx"
    copy_model(fp32.path, out)  # stands in for the quantized model the search wrote
    qres = QuantResult(artifact_from(out), QuantSpec(mode="int8-static"), None, (), {"search": search}, budget_met=False)
    monkeypatch.setattr(speed, "_app_for", lambda *a: (_App(), ""))
    monkeypatch.setattr(speed, "shipped_ort", lambda path, target, work: Path(path))
    monkeypatch.setattr(speed, "measure_shipped", _slow)
    res, check, lines = speed.decide(fp32, qres, load_target("cpu-x86_64"), {}, tmp_path / "speed")
    assert res.spec.mode == "none" and res.details["speed"]["decision"] == "fp32"
    assert res.details["search"] == search and res.budget_met is False
    with pytest.raises(CheckFailed) as e:
        check_budget({**res.details, "mode": "none"}, tmp_path / "b")
    assert "budget not met" in e.value.message and "fp32" in (e.value.message + " " + str(e.value.hint))
