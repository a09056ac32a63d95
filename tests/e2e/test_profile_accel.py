"""Real execution providers from PyPI (QNN HTP simulator, OpenVINO) and the HTML report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeq.cli import app

from tests.e2e.test_profile import FAST, models  # noqa: F401 - shared module fixture

pytestmark = pytest.mark.slow

qnn = pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn not installed (pip install edgeq[profile])"
)


def _json(runner, *args):
    r = runner.invoke(app, ["profile", *map(str, args), "--json"])
    return r, (json.loads(r.stdout) if r.exit_code in (0, 1) and r.stdout.strip() else None)


@qnn
def test_qnn_static_qdq_runs_fully_on_htp_without_cpu_fallback(runner, models):  # noqa: F811
    r, res = _json(runner, models["int8"], "--target", "qnn-htp", *FAST, "--reference", models["fp32"],
                   "--data", models["calib"], "--min-accel-coverage", "0.95")
    assert r.exit_code == 0, r.output
    rep = res["results"][0]
    assert rep["backend"] == "qnn-plugin" and rep["provider"] == "QNNExecutionProvider"
    assert rep["cpu_fallback_disabled"] is True
    pl = rep["placement"]
    assert pl["kind"] == "measured" and pl["accel_node_share"] == 1.0 and pl["accel_partitions"] == 1
    assert pl["accel_time_share"] == 1.0 and pl["fallback"] == []
    assert {"Conv", "Gemm", "QuantizeLinear"} <= {n.split(" (")[1][:-1] for n in pl["providers"][0]["node_names"]}
    # the simulator's own numerics, verified like any candidate
    num = rep["numerics"]
    assert num["vs_reference"]["passed"] and num["vs_reference"]["outputs"][0]["cosine"] > 0.99
    assert num["vs_cpu_provider"][0]["cosine"] > 0.999
    # labelled: not device timing
    assert rep["device_measurement"] is False and "not device timing" in rep["note"]


@qnn
def test_qnn_dynamic_batch_falls_back_and_fails_coverage(runner, models):  # noqa: F811
    r, res = _json(runner, models["dyn_int8"], "--target", "qnn-htp", *FAST, "--min-accel-coverage", "0.95")
    assert r.exit_code == 1 and "coverage below 95%" in r.stderr
    rep = res["results"][0]
    assert rep["cpu_fallback_disabled"] is False
    assert rep["provider"] == "CPUExecutionProvider"  # QNN was registered but took no node
    assert any("CPU fallback allowed" in n for n in rep["notes"])
    pl = rep["placement"]
    assert pl["accel_node_share"] < 0.95 and len(pl["fallback"]) >= 7
    reasons = {f["node"]: f["reason"] for f in pl["fallback"]}
    assert "dynamic shape" in reasons["conv1 (Conv)"]  # the target's rules explain the measured fallback


@qnn
def test_qnn_bundle_carries_context_binary(runner, models, tmp_path):  # noqa: F811
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(models["fp32"]), "-o", str(out), "--target", "qnn-htp", "--calib", str(models["calib"]), "--no-profile"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    ctx = manifest["model"]["ep_context"]
    assert ctx["provider"] == "QNNExecutionProvider" and ctx["model"] == "model_ctx.onnx"
    assert set(ctx["files"]) <= set(manifest["files"]) and any(f.endswith(".bin") for f in ctx["files"])
    assert ctx["nodes_on_provider"] >= ctx["nodes_total"] - 2  # graph input Q and output DQ may stay on the CPU
    m = onnx.load(str(out / "model_ctx.onnx"))
    ep = [n for n in m.graph.node if n.op_type == "EPContext"]
    assert len(ep) == 1
    cache = {a.name: a.s.decode() for a in ep[0].attribute if a.type == onnx.AttributeProto.STRING}["ep_cache_context"]
    assert (out / cache).stat().st_size > 1000
    r = runner.invoke(app, ["verify", str(out)])  # checksums cover the context files
    assert r.exit_code == 0, r.output
    # same inputs, same bytes: the partition is named after the graph, not the temporary path
    again = tmp_path / "again"
    r = runner.invoke(app, ["export", str(models["fp32"]), "-o", str(again), "--target", "qnn-htp", "--calib", str(models["calib"]), "--no-profile"])
    assert r.exit_code == 0, r.output
    for f in ctx["files"]:
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    # the compiled model runs on the simulator and agrees with the fp32 reference
    r, res = _json(runner, out / "model_ctx.onnx", "--target", "qnn-htp", *FAST, "--reference", models["fp32"], "--data", models["calib"])
    assert r.exit_code == 0, r.output
    rep = res["results"][0]
    assert rep["provider"] == "QNNExecutionProvider" and rep["numerics"]["vs_reference"]["passed"]
    assert rep["numerics"]["vs_cpu_provider"] is None  # an EPContext model has no CPU form
    # the bundle profiles from model.ort; placement comes from the same graph in ONNX form
    r, res = _json(runner, out, *FAST)
    assert r.exit_code == 0, r.output
    rep = res["results"][0]
    assert res["target"] == "qnn-htp" and rep["model_file"] == "model.ort"
    assert rep["placement"]["accel_node_share"] == 1.0 and rep["placement"]["from"] == "model.onnx"


@pytest.mark.skipif(not os.environ.get("EDGEQ_OPENVINO_PYTHON"), reason="set EDGEQ_OPENVINO_PYTHON to an environment with onnxruntime-openvino")
def test_openvino_runs_in_its_own_environment(runner, models):  # noqa: F811
    r, res = _json(runner, models["fp32"], models["int8"], "--target", "openvino-cpu", *FAST, "--reference", models["fp32"],
                   "--data", models["calib"])
    assert r.exit_code == 0, r.output
    for rep in res["results"]:
        assert rep["backend"] == "openvino-env" and rep["provider"] == "OpenVINOExecutionProvider"
        assert "OpenVINOExecutionProvider" not in __import__("onnxruntime").get_available_providers()  # not this process
        assert rep["placement"]["accel_node_share"] == 1.0
        assert rep["numerics"]["vs_reference"]["outputs"][0]["cosine"] > 0.99
        assert rep["p50_ms"] > 0 and rep["device_measurement"] is True
    # the NPU target is refused on a host without an NPU, instead of silently timing the CPU
    r = runner.invoke(app, ["profile", str(models["fp32"]), "--target", "openvino-npu", *FAST])
    assert r.exit_code == 2 and "did not start" in r.stderr


# --------------------------------------------------------------------------- HTML


def _png_pixels(path: Path) -> tuple[int, int, np.ndarray]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into an array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
            ch = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * ch
    out = np.zeros((h, stride), np.uint8)
    prev = bytes(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if f == 0:
            cur = np.frombuffer(line, np.uint8)
        elif f == 1:  # Sub: running sum per channel
            cur = (np.cumsum(np.frombuffer(line, np.uint8).reshape(w, ch).astype(np.int64), axis=0) & 0xFF).astype(np.uint8).ravel()
        elif f == 2:  # Up
            cur = ((np.frombuffer(line, np.uint8).astype(np.int32) + np.frombuffer(prev, np.uint8)) & 0xFF).astype(np.uint8)
        else:  # Average, Paeth: sequential
            c_ = bytearray(stride)
            for x in range(stride):
                a = c_[x - ch] if x >= ch else 0
                b = prev[x]
                if f == 3:
                    v = line[x] + (a + b) // 2
                else:
                    c = prev[x - ch] if x >= ch else 0
                    p_ = a + b - c
                    pa, pb, pc = abs(p_ - a), abs(p_ - b), abs(p_ - c)
                    v = line[x] + (a if pa <= pb and pa <= pc else (b if pb <= pc else c))
                c_[x] = v & 0xFF
            cur = np.frombuffer(bytes(c_), np.uint8)
        out[y] = cur
        prev = cur.tobytes()
    return w, h, out.reshape(h, w, ch)


class _Svgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, int] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and a.get("id"):
            self.current = a["id"]
            self.svgs[self.current] = 0
        elif tag == "rect" and self.current and a.get("class") in ("bar", "seg"):
            self.svgs[self.current] += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(runner, models, tmp_path):  # noqa: F811
    report = tmp_path / "report.html"
    r = runner.invoke(app, ["profile", str(models["fp32"]), str(models["int8"]), *FAST, "--reference", str(models["fp32"]),
                            "--data", str(models["calib"]), "--html", str(report)])
    assert r.exit_code == 0, r.output
    text = report.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    p = _Svgs()
    p.feed(dom)
    for sid in ("latency-0", "latency-1", "optypes-0", "optypes-1", "placement", "layers-1"):
        assert sid in p.svgs, f"{sid} missing from the rendered DOM ({sorted(p.svgs)})"
    assert p.svgs["latency-0"] >= 1 and p.svgs["optypes-1"] >= 4 and p.svgs["placement"] >= 2 and p.svgs["layers-1"] >= 3
    assert re.search(r"<td>cnn_int8\.onnx</td>", dom)
    png = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, "--window-size=1000,1600", f"--screenshot={png}", report.as_uri()],
                   capture_output=True, timeout=120)
    w, h, px = _png_pixels(png)
    assert (w, h) == (1000, 1600)
    rgb = px[..., :3].reshape(-1, 3)
    # the first variant's bars (#4269d0) and the second's (#efb118) are painted
    for color in ((0x42, 0x69, 0xD0), (0xEF, 0xB1, 0x18)):
        assert (np.abs(rgb.astype(int) - color).sum(axis=1) < 12).sum() > 200, f"no pixels of color {color}"
