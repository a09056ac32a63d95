"""Golden pairs with 8-bit integer outputs: an int8 KV cache's ``present`` outputs are quantized codes, and the float
each code was rounded from differs in its last bits between CPU kernels (AVX2, AVX-512, VNNI, NEON), so a healthy
bundle can be one code off on another machine. run.py, ``edgeq verify`` and the C++ runner allow one code on 8-bit
integer outputs; wider integers (class ids, indices) and floats keep the manifest's tolerance exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.bundles.reader import write_manifest
from tests.bundles import build


def _model(path: Path) -> Path:
    """x [1, 16] -> codes (int8, QuantizeLinear), ids (int64, ArgMax), y (float)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["codes"]),
        helper.make_node("ArgMax", ["x"], ["ids"], axis=1, keepdims=1),
        helper.make_node("Mul", ["x", "s"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    g = helper.make_graph(nodes, "codes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("codes", TensorProto.INT8, [1, 16]),
                           helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1]),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _bundle(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    feeds = ({"x": rng.uniform(-1, 1, (1, 16)).astype(np.float32)},)
    return build(tmp_path / "b", model=_model(tmp_path / "codes.onnx"), target="cpu-x86_64", golden_feeds=feeds)


def _shift(out: Path, index: int, by: int) -> None:
    """Move the first element of golden output ``index`` by ``by`` units and put every checksum right."""
    f = out / "golden" / "000" / f"out_{index}.npy"
    a = np.load(f)
    flat = a.reshape(-1)
    flat[0] = flat[0] + by if flat[0] + by <= np.iinfo(a.dtype).max else flat[0] - by
    np.save(f, a)
    write_manifest(out, json.loads((out / "manifest.json").read_text()), kind="onnx")


def _run_py(out: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(out / "run.py"), "--json"], capture_output=True, text=True, cwd=cwd, timeout=120)


def _outputs(out: Path) -> list[str]:
    return [np.load(out / "golden" / "000" / f"out_{i}.npy").dtype.name for i in range(3)]


def test_an_8bit_code_one_off_passes_two_off_fails(runner, tmp_path):
    from edgeq.cli import app

    out = _bundle(tmp_path)
    assert _outputs(out) == ["int8", "int64", "float32"]
    assert _run_py(out, tmp_path).returncode == 0
    _shift(out, 0, 1)
    p = _run_py(out, tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["max_abs_error"] == 1.0, p.stdout + p.stderr
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    _shift(out, 0, 1)  # two codes off: not rounding
    assert _run_py(out, tmp_path).returncode == 1
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 1


def test_wider_integers_and_floats_stay_exact(runner, tmp_path):
    from edgeq.cli import app

    out = _bundle(tmp_path)
    _shift(out, 1, 1)  # a class id one off is another class
    assert _run_py(out, tmp_path).returncode == 1
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 1
    out2 = _bundle(tmp_path / "f")
    f = out2 / "golden" / "000" / "out_2.npy"
    np.save(f, np.load(f) + np.float32(0.5))
    write_manifest(out2, json.loads((out2 / "manifest.json").read_text()), kind="onnx")
    assert _run_py(out2, tmp_path).returncode == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++")
def test_cpp_runner_allows_one_code_on_8bit_outputs_only(tmp_path, monkeypatch):
    from tests.e2e.test_bundle import build_cpp_runner, need_cpp_headers

    need_cpp_headers(monkeypatch)
    out = _bundle(tmp_path)
    exe = build_cpp_runner(out, tmp_path)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), str(out)], capture_output=True, text=True, timeout=120)

    assert run().stdout.startswith("PASS golden 000")
    _shift(out, 0, 1)
    r = run()
    assert r.stdout.startswith("PASS golden 000"), r.stdout + r.stderr
    _shift(out, 1, 1)
    r = run()
    assert r.returncode == 1 and r.stdout.startswith("FAIL golden 000"), r.stdout + r.stderr
