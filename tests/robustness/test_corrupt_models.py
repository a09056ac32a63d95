"""Item 3: truncated, bit-flipped and random-byte ``.onnx`` files, and protobufs that are
not models. Each one either exports cleanly or fails with one line; the CLI never dies
and never leaves output behind. Native crashes in onnx/onnxruntime are caught by a probe
in a child process (edgeq/core/isolate.py) before the in-process session.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.core import isolate
from edgeq.errors import ModelError

from tests.models import cnn_data, make_cnn
from tests.robustness.failsafe import assert_one_error_line, invoke, npz, tree


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[bytes, Path]:
    d = tmp_path_factory.mktemp("base")
    model = make_cnn(d / "cnn.onnx")
    calib = npz(d / "calib.npz", **cnn_data(4))
    return model.read_bytes(), calib


def _structural_offsets(data: bytes) -> list[int]:
    """Byte offsets outside the weights' raw bytes (flips there hit the graph, not a number)."""
    m = onnx.load_model_from_string(data)
    spans = []
    for t in m.graph.initializer:
        i = data.find(t.raw_data)
        spans.append((i, i + len(t.raw_data)))
    return [i for i in range(len(data)) if not any(a <= i < b for a, b in spans)]


def _bitflip(data: bytes, seed: int) -> bytes:
    rnd = random.Random(seed)
    d = bytearray(data)
    offsets = _structural_offsets(data)
    for _ in range(rnd.randint(1, 4)):
        i = rnd.choice(offsets)
        d[i] ^= 1 << rnd.randrange(8)
    return bytes(d)


def _not_models() -> dict[str, bytes]:
    t = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "t")
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    empty_graph = helper.make_model(helper.make_graph([], "g", [], []))
    return {
        "empty-file": b"",
        "text": b"this is not a model\n",
        "tensor-proto": t.SerializeToString(),
        "graph-proto": g.SerializeToString(),
        "node-proto": node.SerializeToString(),
        "model-without-nodes": empty_graph.SerializeToString(),
        "ir-version-only": onnx.ModelProto(ir_version=8).SerializeToString(),
        "zip": b"PK\x03\x04" + bytes(60),
        "random-64": random.Random(1).randbytes(64),
        "random-6000": random.Random(2).randbytes(6000),
    }


def _check_export(runner, tmp_path: Path, calib: Path, name: str, data: bytes) -> int:
    src = tmp_path / "in" / f"{name}.onnx"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    out = tmp_path / "out" / name
    out.parent.mkdir(exist_ok=True)
    r = invoke(runner, "export", src, "-o", out, "--quant", "none", "--calib", calib, "--no-profile", "--golden", "1", budget_s=60)
    if r.exit_code == 0:  # a harmless mutation: a whole bundle
        assert (out / "manifest.json").is_file() and (out / "model.onnx").is_file()
    else:
        assert r.exit_code == 2, (name, r.exit_code, r.output)
        assert_one_error_line(r.stderr)
        assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name != name] == [], "temporaries left behind"
    return r.exit_code


def test_non_models_and_random_bytes_fail_with_one_line(runner, tmp_path, base):
    _, calib = base
    for name, data in _not_models().items():
        assert _check_export(runner, tmp_path, calib, name, data) == 2, name


def test_truncated_models_fail_with_one_line(runner, tmp_path, base):
    data, calib = base
    for n in (1, 10, 50, 120, 300, len(data) // 2, len(data) - 100, len(data) - 1):
        assert _check_export(runner, tmp_path, calib, f"trunc-{n}", data[:n]) == 2, n


@pytest.mark.slow
def test_bit_flipped_models_export_or_fail_with_one_line(runner, tmp_path, base):
    data, calib = base
    codes = [_check_export(runner, tmp_path, calib, f"flip-{seed}", _bitflip(data, seed)) for seed in range(16)]
    assert 2 in codes  # the corpus does reach the error paths


def test_a_native_crash_while_opening_becomes_one_error(runner, tmp_path, base, monkeypatch):
    # the probe child really dies by SIGSEGV (as onnxruntime would on a crafted model):
    # the CLI reports it, exits 2 and writes nothing
    data, calib = base
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    monkeypatch.setattr(isolate, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    out = tmp_path / "out"
    r = invoke(runner, "export", src, "-o", out, "--calib", calib, "--no-profile")
    assert r.exit_code == 2
    assert_one_error_line(r.stderr, "crashed (SIGSEGV)", "m.onnx", "nothing was written")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_probe_reports_hangs_and_memory_exhaustion(tmp_path, base, monkeypatch):
    data, _ = base
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    isolate.probe_model(src)  # a sound model passes
    with pytest.raises(ModelError, match="longer than"):
        monkeypatch.setattr(isolate, "_CHILD", "import time; time.sleep(60)")
        isolate.probe_model(src, timeout_s=2)
    monkeypatch.setattr(isolate, "_CHILD", "import sys; from edgeq.core.isolate import _child; _child(sys.argv[1])")
    # under a 64 MiB address-space limit the runtime cannot even load: refused, not passed
    with pytest.raises(ModelError, match="more than 0.1 GiB of memory"):
        isolate.probe_model(src, memory_bytes=64 * 2**20)
