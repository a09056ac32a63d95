"""A Hugging Face folder's config.json values reach the KV-cache builder and onnxruntime-genai's config before
transformers checks them: a value that is not a number, or a context onnxruntime-genai cannot hold (int32), is one
line (exit 2) before any work, with nothing written. Before: "internal error" (ValueError from the builder, and
onnxruntime-genai's RuntimeError after the whole export had run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.robustness.failsafe import assert_fails_safely  # noqa: E402


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    from fixtures.llm import save_lm

    return save_lm(tmp_path_factory.mktemp("cfg") / "llama", "llama")


CASES = {
    "rope_theta is text": ({"rope_theta": "abc"}, "rope_theta"),
    "context past int32": ({"max_position_embeddings": 10**10}, "max_position_embeddings"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_config_value_the_builder_cannot_use_is_one_line(llama_folder, tmp_path, runner, case):
    change, word = CASES[case]
    folder = tmp_path / "llama"
    shutil.copytree(llama_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(change)
    (folder / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    line = assert_fails_safely(runner, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--no-profile",
                                        "-o", str(out)], out, "config.json", budget_s=30)
    assert word in line or "abc" in line, line
    assert not out.exists()
