""".npy files inside a bundle are data: numpy sizes its buffer from the header, so a 100-byte golden file declaring
4 GiB made run.py, ``edgeq verify`` and ``edgeq profile BUNDLE`` allocate 4 GiB before failing (run.py then with a
ValueError traceback and exit 1, "outside tolerance"; profile with an internal error). Every golden array is now read
through one reader (``runner.load_npy``; ``Bundle.array`` in edgeq) that checks the header against the file's size,
and refuses object arrays, before numpy allocates: one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeq.bundles.reader import write_manifest
from tests.bundles import build
from tests.robustness.failsafe import assert_fails_safely, bounded


def _npy(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


CASES = {
    "declares 4 GiB": _npy("<f4", (1 << 30,), bytes(16)),
    "object array": _npy("|O", (2,), bytes(16)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_golden_npy_header_is_checked_before_numpy_allocates(runner, tmp_path, case):
    out = build(tmp_path / "b")
    (out / "golden" / "000" / "in_0.npy").write_bytes(CASES[case])
    write_manifest(out, json.loads((out / "manifest.json").read_text()), kind="onnx")  # every checksum right
    for args in ([], ["--json"]):
        p = subprocess.run([sys.executable, "-I", str(out / "run.py"), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
        text = json.loads(p.stdout)["error"] if args else p.stderr.strip()
        assert "in_0.npy" in text and len(text.splitlines()) == 1, text
    seconds, peak = bounded(lambda: assert_fails_safely(runner, ["verify", str(out)], None, "in_0.npy"))
    assert peak < 64 << 20, f"{peak >> 20} MiB traced"
    assert_fails_safely(runner, ["profile", str(out)], None, "in_0.npy")


@pytest.mark.parametrize("case", ["model.ort onnxruntime refuses", "tolerance is text"])
def test_run_py_reports_an_unrunnable_model_or_a_bad_tolerance_in_one_line(tmp_path, case):
    """Exit 1 means a golden pair outside tolerance: a model onnxruntime cannot load, or a tolerance that is not a
    number, is a bad bundle (exit 2, one line), not a traceback with exit 1."""
    from edgeq.bundles.reader import manifest_files

    out = build(tmp_path / "b")
    m = json.loads((out / "manifest.json").read_text())
    if case == "tolerance is text":
        m["golden"]["atol"] = "abc"
    else:
        (out / "model.ort").write_bytes(b"\x08garbage")
    m["files"] = manifest_files(out)  # run.py checks no schema: the file list and checksums are right
    (out / "manifest.json").write_text(json.dumps(m))
    for args in ([], ["--json"]):
        p = subprocess.run([sys.executable, "-I", str(out / "run.py"), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
        text = json.loads(p.stdout)["error"] if args else p.stderr.strip()
        assert len(text.splitlines()) == 1 and ("onnxruntime" in text or "atol" in text or "abc" in text), text
