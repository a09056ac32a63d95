"""The bundle's C++ runner (edgeq/bundles/cpp/runner.cpp) reads golden .npy files whose headers are data: a header
declaring far more elements than the file holds is refused before any allocation, in one FAIL line, exit 2.
Before, the runner sized its buffer from the header and zero-filled it (a 16-byte file declaring 4 GiB allocated 4 GiB;
under the 3 GiB address-space limit used here it died of std::bad_alloc instead of naming the file)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.bundles import build
from tests.e2e.test_bundle import build_cpp_runner, need_cpp_headers

def _npy(shape: tuple[int, ...], data: bytes) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++")
def test_a_golden_npy_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path, monkeypatch):
    need_cpp_headers(monkeypatch)
    out = build(tmp_path / "b")
    runner = [str(build_cpp_runner(out, tmp_path)), str(out)]
    limit = ["prlimit", f"--as={3 << 30}"] if shutil.which("prlimit") else []
    r = subprocess.run(limit + runner, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("PASS golden 000"), r.stdout + r.stderr  # control: the intact bundle
    golden = out / "golden" / "000" / "in_0.npy"
    shape = np.load(golden).shape
    for declared in ((1 << 30,), (*shape[:-1], shape[-1] * 1000), (-1,), (1 << 62, 1 << 62)):
        golden.write_bytes(_npy(declared, bytes(16)))
        r = subprocess.run(limit + runner, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (declared, r.returncode, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("FAIL ") and "in_0.npy" in lines[0], (declared, r.stderr)
    assert os.path.getsize(golden) < 1024
