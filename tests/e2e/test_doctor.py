"""edgeq doctor: providers (plugins included), optional parts, and the one command that installs what is missing."""

from __future__ import annotations

import importlib.util
import json

import edgeq.cli.doctor as doctor
from edgeq.cli import app

HIDDEN = {"torch", "transformers", "gguf", "onnxruntime-genai"}


def test_doctor_json_names_what_is_missing_and_the_one_command(runner, tmp_path, monkeypatch):
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version",
                        lambda d: None if d in HIDDEN else (real(d) if d == "onnxruntime" else "1.0"))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no qemu, debootstrap or chromium
    monkeypatch.delenv("EDGEQ_QEMU", raising=False)
    monkeypatch.delenv("ONNXRUNTIME_ROOT", raising=False)
    monkeypatch.delenv("EDGEQ_OPTIMUM_PYTHON", raising=False)
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "onnxruntime_cxx_api.h").write_text("// header\n")
    monkeypatch.setenv("EDGEQ_ORT_HEADERS", str(headers))
    monkeypatch.setenv("EDGEQ_OPENVINO_PYTHON", str(tmp_path / "no-such-python"))
    import onnxruntime

    before = onnxruntime.get_available_providers()
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    assert onnxruntime.get_available_providers() == before  # plugins are registered in a child, not in edgeq's process
    d = json.loads(r.stdout)
    parts = {p["name"]: p for p in d["parts"]}
    assert not parts["torch"]["installed"] and not parts["transformers"]["installed"] and parts["cryptography"]["installed"]
    assert parts["onnxruntime C++ headers"]["installed"]
    ov = parts["OpenVINO environment"]
    assert not ov["installed"] and "no-such-python is not a file" in ov["detail"]
    assert not parts["chromium"]["installed"] and not parts["qemu-aarch64-static"]["installed"]
    assert d["install_command"] == (
        "pip install torch==2.13.0 && pip install 'edgeq[gguf,hf,torch]' onnxruntime-genai"
        " && sudo apt-get install -y chromium debootstrap qemu-user-static"
    )
    assert any(line.startswith("OpenVINO environment:") for line in d["to_set_up"])
    names = {p["name"]: p for p in d["providers"]}
    assert names["CPUExecutionProvider"]["kind"] == "built in"
    if importlib.util.find_spec("onnxruntime_qnn") is not None:  # the plugin EP the profiler registers
        assert names["QNNExecutionProvider"]["kind"] == "plugin" and "devices:" in names["QNNExecutionProvider"]["detail"]


def test_doctor_prints_tables_and_the_install_line(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert "CPUExecutionProvider" in r.stdout and "optional parts" in r.stdout
    assert "install what is missing: " in r.stdout and "sudo apt-get install -y chromium debootstrap qemu-user-static" in r.stdout
