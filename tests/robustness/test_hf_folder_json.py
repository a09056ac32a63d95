"""A Hugging Face folder's JSON files are read bounded: size checked with stat before reading, nesting too deep
for the parser and non-regular files refused in one line (exit 2), on every path that reads them (export, the GGUF
export, inspect of a folder). Before: a deeply nested config.json was an "internal error" (RecursionError), and an
oversized one was read whole into memory before the parser refused it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.robustness.failsafe import assert_fails_safely, bounded

DEEP = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _folder(root: Path, **files: bytes) -> Path:
    folder = root / "hf"
    folder.mkdir()
    (folder / "config.json").write_bytes(b'{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"")
    for name, data in files.items():
        (folder / name.replace("_json", ".json")).write_bytes(data)
    return folder


COMMANDS = {
    "export": lambda f, out: ["export", str(f), "--task", "text-generation", "--no-profile", "-o", str(out)],
    "export to GGUF": lambda f, out: ["export", str(f), "--target", "llamacpp-x86_64", "-o", str(out)],
    "inspect": lambda f, out: ["inspect", str(f)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_deeply_nested_config_is_one_line(runner, tmp_path, command):
    folder = _folder(tmp_path, config_json=DEEP)
    out = tmp_path / "out"
    assert_fails_safely(runner, COMMANDS[command](folder, out), out, "config.json", "nested too deeply")
    assert not out.exists()


def test_a_deeply_nested_tokenizer_config_is_one_line(runner, tmp_path):
    """tokenizer_config.json is read for auto_map before anything is imported: the same rules."""
    folder = _folder(tmp_path, tokenizer_config_json=DEEP)
    out = tmp_path / "out"
    assert_fails_safely(runner, COMMANDS["export"](folder, out), out, "tokenizer_config.json", "nested too deeply")


def test_an_oversized_config_is_refused_by_its_size_before_reading(runner, tmp_path):
    folder = _folder(tmp_path)
    with open(folder / "config.json", "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no disk used
    out = tmp_path / "out"
    seconds, peak = bounded(lambda: assert_fails_safely(runner, COMMANDS["export"](folder, out), out, "config.json", "larger than 64 MiB"))
    assert peak < 16 << 20, f"{peak >> 20} MiB traced: the file was read"  # before: the whole 64 MiB (and its text) in memory
    assert seconds < 10



def test_a_fifo_tokenizer_json_never_hangs_the_gguf_export(tmp_path):
    """The GGUF export reads the folder's tokenizer.json itself: a FIFO there is refused by stat (before: read_text on it
    blocked forever)."""
    import os

    from tests.robustness.failsafe import assert_one_error_line, run_edgeq

    import json

    folder = _folder(tmp_path, config_json=json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}).encode())
    os.mkfifo(folder / "tokenizer.json")
    out = tmp_path / "out"
    p = run_edgeq(["export", str(folder), "--target", "llamacpp-x86_64", "-o", str(out)], timeout=60, cwd=tmp_path)
    assert p.rc == 2, (p.rc, p.stderr)
    assert "not a regular file" in assert_one_error_line(p.stderr, "tokenizer.json")
    assert not out.exists()
