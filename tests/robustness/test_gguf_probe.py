"""``edgeq verify`` of a GGUF bundle opens the stranger's GGUF with llama.cpp in an isolated child first
(edgeq/llamacpp/probe.py): a child that really dies by SIGSEGV (as llama.cpp would on a crafted file) or hangs is
one error line, exit 2, and llama.cpp never opens the file in edgeq's own process. The control: the real child
passes an intact bundle, which then verifies."""

from __future__ import annotations

import pytest

from edgeq.cli import app
from tests.robustness.failsafe import assert_fails_safely

pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_a_crash_or_hang_opening_a_bundle_gguf_is_one_error(runner, tmp_path, monkeypatch):
    from edgeq.llamacpp import gguf, probe
    from fixtures.llm import save_lm

    folder = save_lm(tmp_path / "llama", "llama")
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", str(folder), "--target", "llamacpp-x86_64", "--quant", "f16", "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0, r.output  # control: the real probe child opens the intact GGUF

    opened = []

    def in_process(*args, **kwargs):
        opened.append(args)
        raise AssertionError("llama.cpp opened the GGUF in edgeq's process")

    monkeypatch.setattr(gguf, "llama_cpp_logits", in_process)
    monkeypatch.setattr(probe, "CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert_fails_safely(runner, ["verify", str(out)], out, "llama.cpp crashed (SIGSEGV)", "model.gguf")
    monkeypatch.setattr(probe, "CHILD", "import time; time.sleep(60)")
    monkeypatch.setenv("EDGEQ_PROBE_TIMEOUT", "2")
    assert_fails_safely(runner, ["verify", str(out)], out, "longer than 2 s", "model.gguf")
    assert not opened  # llama.cpp never opened the file in this process
