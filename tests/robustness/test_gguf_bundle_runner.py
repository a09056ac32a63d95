"""The GGUF bundle's own run.py (edgeq/llamacpp/gguf_run.py, stdlib + llama-cpp-python) opening a hostile bundle
whose checksums are right: a context that is not a count, a GGUF llama.cpp refuses, and a file name holding terminal
controls are each one FAIL line, exit 2, printed without the controls (before: TypeError and ValueError tracebacks,
and the file name printed raw)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from fixtures.llm import run_script

RUNNER = Path(__file__).resolve().parents[2] / "edgeq" / "llamacpp" / "gguf_run.py"


def gguf_bundle(root: Path, *, model: dict | None = None, gguf: bytes | None = None, extra: str | None = None) -> Path:
    """A llama.cpp bundle folder: run.py, model.gguf (a header declaring 2^40 tensors by default) and a manifest
    listing both with their checksums; ``extra``: a file added after the manifest was written."""
    root.mkdir()
    shutil.copyfile(RUNNER, root / "run.py")
    (root / "model.gguf").write_bytes(gguf if gguf is not None else b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 1 << 40) + bytes(64))
    files = {}
    for name in ("model.gguf", "run.py"):
        data = (root / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"schema_version": 1, "runtime": "llama.cpp", "files": files,
                "model": {"gguf": "model.gguf", "context": 64, "params": {"context_length": 128}, **(model or {})}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    if extra is not None:
        (root / extra).write_bytes(b"x")
    return root


def _fails_in_one_line(p, *words: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL "), p.stderr
    assert "\x1b" not in p.stderr and "\x07" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.parametrize("context", [{"a": 1}, "64", -1, True])
def test_a_context_that_is_not_a_count_is_one_line(tmp_path, context):
    b = gguf_bundle(tmp_path / "b", model={"context": context})
    _fails_in_one_line(run_script(b / "run.py", ["--prompt", "hi"], tmp_path / "cwd", timeout=60), "bundle corrupt", "model.context")


def test_a_gguf_llama_cpp_refuses_is_one_line(tmp_path):
    pytest.importorskip("llama_cpp")
    b = gguf_bundle(tmp_path / "b")
    _fails_in_one_line(run_script(b / "run.py", ["--prompt", "hi"], tmp_path / "cwd", timeout=60), "llama.cpp cannot load model.gguf")


def test_a_file_name_with_terminal_controls_is_printed_without_them(tmp_path):
    b = gguf_bundle(tmp_path / "b", extra="x\x1b]0;owned\x07\nFAIL forged")
    _fails_in_one_line(run_script(b / "run.py", ["--prompt", "hi"], tmp_path / "cwd", timeout=60), "not in the manifest")
