"""verify --emulate: the bundle's runner under qemu-aarch64 with the aarch64 onnxruntime wheel.

The userland (Debian arm64 + aarch64 wheels, ~2 minutes to build, ~300 MB) is
cached outside tmp_path on purpose: ``EDGEQ_ARM64_ROOT``, default
``~/.cache/edgeq/arm64-root``, so CI and developers build it once. Each
emulated run takes ~10 s (Python + onnxruntime start-up under emulation).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.cli import app
from edgeq.devices.qemu import CPU_MODELS, EmulationConfig, cpuinfo_text, ensure_root, parse_cpus

from tests.models import cnn_data, make_cnn, snapshot


@pytest.fixture(scope="session")
def arm_root():
    cfg = EmulationConfig.from_env()
    missing = [t for t in (cfg.qemu, "debootstrap", "dpkg-deb") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install qemu-user-static debootstrap)")
    return ensure_root(cfg)  # builds it on first use; a failure here is a test failure, not a skip


def _bundle(runner, model: Path, out: Path, calib: Path, *extra: str) -> Path:
    r = runner.invoke(app, ["export", str(model), "-o", str(out), "--calib", str(calib), "--no-profile", *extra])
    assert r.exit_code == 0, r.output
    return out


def _target_variant(tmp_path: Path, name: str, **lines: str) -> Path:
    """targets/arm64.toml with some `key = value` lines replaced."""
    text = (Path(__file__).resolve().parents[2] / "targets" / "arm64.toml").read_text().replace('name = "arm64"', f'name = "{name}"')
    out = []
    for ln in text.splitlines():
        key = ln.split("=")[0].strip()
        out.append(f"{key} = {lines[key]}" if key in lines else ln)
    p = tmp_path / f"{name}.toml"
    p.write_text("\n".join(out) + "\n")
    return p


@pytest.mark.slow
def test_int8_bundle_under_emulated_arm_cpus_matches_x86(runner, arm_root, cnn, cnn_calib, tmp_path):
    import onnxruntime

    b = _bundle(runner, cnn, tmp_path / "b", cnn_calib, "--target", "arm64")
    before = snapshot(b)
    r = runner.invoke(app, ["verify", str(b), "--emulate", "cortex-a53,neoverse-n1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    manifest = json.loads((b / "manifest.json").read_text())
    assert res["atol"] == manifest["golden"]["atol"] == 1e-3  # the arm64 target's golden tolerance
    assert [row["cpu"] for row in res["emulated"]] == ["cortex-a53", "neoverse-n1"]
    for row in res["emulated"]:
        assert row["machine"] == "aarch64"  # really ran the aarch64 wheel, not the host's
        assert row["onnxruntime"] == onnxruntime.__version__.split("+")[0]
        assert row["model"] == "model.ort"
        assert len(row["pairs"]) == len(manifest["golden"]["pairs"]) == 3
        assert row["passed"] and row["max_abs_error"] <= res["atol"]
        assert all("ms" not in p for p in row["pairs"])  # emulated time is never reported as latency
        assert row["emulation_overhead_wall_s"] > 0
    assert res["host"]["arch"] == "x86_64" or res["host"]["arch"] == __import__("platform").machine()
    assert res["host"]["passed"] and res["passed"] and res["failures"] == []
    assert snapshot(b) == before


@pytest.mark.slow
def test_emulated_difference_beyond_target_tolerance_fails_with_exit_1(runner, arm_root, tmp_path):
    # fp32 convolutions on Arm (NEON kernels) round differently from x86 (AVX): a few 1e-7.
    # A target that demands bit-identical golden outputs must therefore fail verification.
    strict = _target_variant(tmp_path, "arm64-exact", golden_atol="0.0", golden_rtol="0.0")
    model = make_cnn(tmp_path / "m.onnx")
    calib = tmp_path / "c.npz"
    np.savez(calib, **cnn_data(16, seed=3))
    b = _bundle(runner, model, tmp_path / "b", calib, "--target", str(strict), "--quant", "none")
    r = runner.invoke(app, ["verify", str(b), "--emulate", "cortex-a53", "--json"])
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    (row,) = res["emulated"]
    assert res["host"]["passed"] and res["host"]["max_abs_error"] == 0.0
    assert not row["passed"] and 0 < row["max_abs_error"] < 1e-4
    assert res["passed"] is False and res["failures"][0].startswith("cortex-a53")
    assert "cortex-a53" in r.stderr and "golden tolerance" in r.stderr


@pytest.mark.slow
def test_x86_only_ort_file_is_caught_as_not_running_on_arm(runner, arm_root, cnn, cnn_calib, tmp_path):
    # ort_optimization "all" bakes x86 NCHWc kernels into model.ort: it loads on x86, not on Arm.
    # edgeq refuses that level for non-x86 targets, so build an x86 bundle and take it to Arm anyway.
    tg = _target_variant(tmp_path, "x86-all", ort_optimization='"all"', arch='"x86_64"')
    b = _bundle(runner, cnn, tmp_path / "b", cnn_calib, "--target", str(tg), "--quant", "none")
    assert b"nchwc" in (b / "model.ort").read_bytes()
    r = runner.invoke(app, ["verify", str(b), "--emulate", "cortex-a53", "--json"])
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    (row,) = res["emulated"]
    assert res["host"]["passed"] and not row["passed"] and row["max_abs_error"] is None and row["pairs"] == []
    assert "com.microsoft.nchwc" in row["error"]
    assert "does not run on emulated Arm" in r.stderr and "'basic' or 'extended'" in r.stderr


@pytest.mark.slow
def test_model_with_reference_and_data_under_emulation(runner, arm_root, cnn, cnn_calib, tmp_path):
    q = tmp_path / "q.onnx"
    r = runner.invoke(app, ["quantize", str(cnn), "-o", str(q), "--target", "arm64", "--calib", str(cnn_calib)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(q), "--reference", str(cnn), "--data", str(cnn_calib), "--target", "arm64",
                            "--emulate", "cortex-a72"])
    assert r.exit_code == 0, r.output
    for word in ("cosine", "cortex-a72 (qemu)", "x86", "not device timing", "PASS"):
        assert word in r.stdout
    assert [p.name for p in tmp_path.iterdir() if "edgeq" in p.name] == []


def test_unknown_cpu_model_is_bad_input(runner, tmp_path):
    r = runner.invoke(app, ["verify", str(tmp_path), "--emulate", "cortex-a53,pentium4"])
    assert r.exit_code == 2 and "pentium4" in r.stderr and "neoverse-n1" in r.stderr
    assert parse_cpus("default") == ("cortex-a53", "cortex-a72", "neoverse-n1")
    assert parse_cpus(" Cortex-A76 ,cortex-a76") == ("cortex-a76",)


def test_missing_emulator_is_reported_and_nothing_is_built(runner, cnn, cnn_calib, tmp_path, monkeypatch):
    b = _bundle(runner, cnn, tmp_path / "b", cnn_calib)
    root = tmp_path / "cache" / "arm64-root"
    monkeypatch.setenv("EDGEQ_ARM64_ROOT", str(root))
    monkeypatch.setenv("EDGEQ_QEMU", str(tmp_path / "no-such-qemu"))
    r = runner.invoke(app, ["verify", str(b), "--emulate", "cortex-a53"])
    assert r.exit_code == 2
    assert "no-such-qemu is not installed" in r.stderr and "qemu-user-static" in r.stderr
    assert not root.exists()


def test_cpuinfo_matches_the_emulated_core():
    a53 = cpuinfo_text("cortex-a53", 2)
    n1 = cpuinfo_text("neoverse-n1", 2)
    assert a53.count("processor\t:") == 2 and "CPU part\t: 0xd03" in a53 and "CPU implementer\t: 0x41" in a53
    assert "CPU part\t: 0xd0c" in n1
    # the dot-product extension (ARMv8.2) is what changes integer kernels: A53 lacks it, N1 has it
    assert "asimddp" not in a53 and "asimddp" in n1
    assert set(CPU_MODELS) >= {"cortex-a53", "cortex-a72", "neoverse-n1", "cortex-a76", "max"}
