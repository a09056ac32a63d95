"""Issue 13 item 5: text from a model never drives the terminal, rich markup or the HTML report.

Producer strings, names, op types and domains holding ESC/OSC/CSI sequences (window
title, clear screen, OSC 52 clipboard write), BEL, C1 controls and rich markup
(``[link=...]``, ``[/]``) are printed as visible text: no ESC byte reaches the output,
no markup is interpreted (``[/]`` used to crash ``inspect`` with an internal error).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.cli import app
from edgeq.core.safetext import escape_html, escape_markup, escape_text
from tests.robustness.failsafe import assert_one_error_line, invoke

EVIL = "\x1b]0;pwned-title\x07\x1b[2J\x1b]52;c;SGVsbG8=\x07[link=https://evil.example]click[/link][/]\x9b31m<script>x</script>"
CONTROL = ("\x1b", "\x07", "\x9b", "\x9d")


def _model(path: Path, *, op_type: str = "Relu", domain: str = "") -> Path:
    x = helper.make_tensor_value_info("in" + EVIL, TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("out" + EVIL, TensorProto.FLOAT, [1, 4])
    node = helper.make_node(op_type, ["in" + EVIL], ["out" + EVIL], name="node" + EVIL, domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(helper.make_graph([node], "g" + EVIL, [x], [y]), opset_imports=opsets,
                          producer_name="producer" + EVIL, producer_version="1" + EVIL)
    m.ir_version = 8
    helper.set_model_props(m, {"k" + EVIL: "v" + EVIL})
    onnx.save(m, str(path))
    return path


def _clean(text: str) -> None:
    for c in CONTROL:
        assert c not in text, repr(text[:400])


@pytest.fixture
def wide(monkeypatch):
    """A wide console, so table cells are not wrapped and the literal markup can be found."""
    from edgeq.reporting import tables as report

    monkeypatch.setattr(report.out, "_width", 4000)
    monkeypatch.setattr(report.err, "_width", 4000)


@pytest.mark.parametrize("kind", ["plain-op", "hostile-op-type-and-domain"])
def test_inspect_prints_hostile_strings_as_text(runner, tmp_path, wide, kind):
    op = {"plain-op": ("Relu", ""), "hostile-op-type-and-domain": ("Op" + EVIL, "dom" + EVIL)}[kind]
    model = _model(tmp_path / "m.onnx", op_type=op[0], domain=op[1])
    r = invoke(runner, "inspect", str(model))
    assert r.exit_code == 0, r.output
    _clean(r.output)
    assert "[link=https://evil.example]" in r.output and "[/]" in r.output  # shown, not interpreted
    assert "\\x1b]0;pwned-title\\x07" in r.output  # visible
    if kind != "plain-op":
        assert "Op\\x1b" in r.output


def test_inspect_json_has_the_exact_strings_escaped_by_json(runner, tmp_path):
    r = invoke(runner, "inspect", str(_model(tmp_path / "m.onnx")), "--json")
    assert r.exit_code == 0
    _clean(r.stdout)
    d = json.loads(r.stdout)
    assert d["inputs"][0]["name"] == "in" + EVIL  # data stays exact; only its display is escaped


def test_an_error_quoting_a_name_from_the_model_is_escaped(runner, tmp_path):
    model = _model(tmp_path / "m.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, other=np.zeros((4, 4), np.float32))
    r = invoke(runner, "export", str(model), "--calib", str(calib), "-o", str(tmp_path / "out"), "--no-profile")
    assert r.exit_code == 2, r.output
    _clean(r.stderr)
    assert_one_error_line(r.stderr)


def test_export_and_profile_tables_and_html_report_escape_names(runner, tmp_path, wide):
    model = _model(tmp_path / "m.onnx")
    html = tmp_path / "report.html"
    r = invoke(runner, "profile", str(model), "--runs", "3", "--warmup", "1", "--budget", "0.5", "--html", str(html), budget_s=120)
    assert r.exit_code == 0, r.output
    _clean(r.output)
    page = html.read_text(encoding="utf-8")
    _clean(page)
    assert "<script>" not in page
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{"in" + EVIL: np.random.default_rng(0).random((16, 1, 4), dtype=np.float32)})
    r = invoke(runner, "export", str(model), "--calib", str(calib), "-o", str(tmp_path / "out"), "--no-profile",
               "--quant", "int8-dynamic", budget_s=120)
    _clean(r.output)
    assert r.exit_code in (0, 1), r.output
    assert "internal error" not in r.output


def test_the_escaping_functions():
    for f in (escape_text, escape_markup, escape_html):
        out = f(EVIL + "\u202e\x00\r\n")
        _clean(out)
        assert "\x00" not in out and "\r" not in out and "\n" not in out and "\u202e" not in out
    assert escape_text("tab\tand ünïcode 名") == "tab\tand ünïcode 名"
    assert escape_markup("[link=x]a[/]") == "\\[link=x]a\\[/]"
    assert "&lt;script&gt;" in escape_html("<script>") and "&quot;" in escape_html('"')
