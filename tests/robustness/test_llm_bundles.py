"""Hostile LLM (KV-cache decoder) bundles opened by ``edgeq generate`` and the bundle's own ``run.py --prompt``.

Each bundle here is internally consistent: its manifest lists and checksums the hostile file, as a
stranger's bundle would, so the checks that matter are the ones after the checksums. A safe
failure is exit 2 with one line and no traceback (before: ``KeyError``/``TypeError`` tracebacks
from run.py and "internal error" from edgeq generate); text from the bundle reaches the terminal
with its control characters escaped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from edgeq.bundles.reader import manifest_files, write_manifest  # noqa: E402
from edgeq.cli import app  # noqa: E402
from fixtures.llm import run_script, save_lm  # noqa: E402
from tests.robustness.failsafe import assert_fails_safely, assert_one_error_line  # noqa: E402

ESC = "\x1b"


@pytest.fixture(scope="module")
def llm_bundle(tmp_path_factory) -> Path:
    """A real fp32 LLM bundle of a tiny llama (about 6 s)."""
    from typer.testing import CliRunner

    base = tmp_path_factory.mktemp("llm")
    folder = save_lm(base / "src", "llama")
    out = base / "bundle"
    r = CliRunner().invoke(app, ["export", str(folder), "--task", "text-generation", "--quant", "none", "--no-profile", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def hostile(src: Path, dst: Path, change) -> Path:
    """A copy of ``src`` changed by ``change(folder)``, its manifest re-written with every file's checksum."""
    shutil.copytree(src, dst)
    change(dst)
    write_manifest(dst, json.loads((dst / "manifest.json").read_text()), kind="genai")
    return dst


def _config(edit):
    def change(d: Path) -> None:
        cfg = json.loads((d / "genai_config.json").read_text())
        edit(cfg)
        (d / "genai_config.json").write_text(json.dumps(cfg))
    return change


def _write(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


def _unknown_head_size(d: Path) -> None:
    import onnx

    m = onnx.load(str(d / "model.onnx"))
    past = next(i for i in m.graph.input if i.name.startswith("past_key_values."))
    past.type.tensor_type.shape.dim[3].Clear()  # neither a size nor a name: onnxruntime reports None
    onnx.save(m, str(d / "model.onnx"))


def _external_data_outside(d: Path) -> None:
    """An initializer of model.onnx read from '../outside.bin', beside the bundle."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(d / "model.onnx"))
    t = max(m.graph.initializer, key=lambda x: len(x.raw_data))
    arr = numpy_helper.to_array(t)
    (d.parent / "outside.bin").write_bytes(np.ascontiguousarray(arr).tobytes())
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../outside.bin"), ("offset", "0"), ("length", str(arr.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    onnx.save(m, str(d / "model.onnx"))


CASES = {
    "no model object": (_config(lambda c: c.pop("model")), "genai_config.json"),
    "model is a list": (_config(lambda c: c.__setitem__("model", [1])), "genai_config.json"),
    "context is an object": (_config(lambda c: c["model"].__setitem__("context_length", {"a": 1})), "context_length"),
    "config nested 100k deep": (_write("genai_config.json", b"[" * 100_000 + b"]" * 100_000), "nested"),
    "tokenizer is not one": (_write("tokenizer.json", b'{"model": 5}'), "tokenizer.json"),
    "model is not a model": (_write("model.onnx", b"\x08garbage"), "model.onnx"),
    "past has no head size": (_unknown_head_size, "KV-cache decoder"),
    "external data outside the bundle": (_external_data_outside, "model.onnx"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_llm_bundle_is_one_line_from_generate_and_run_py(llm_bundle, tmp_path, runner, case):
    change, word = CASES[case]
    b = hostile(llm_bundle, tmp_path / "b", change)
    assert_fails_safely(runner, ["generate", str(b), "--prompt", "the", "--max-new-tokens", "3"], b, word)
    p = run_script(b / "run.py", ["--prompt", "the", "--max-new-tokens", "3"], tmp_path / "cwd", timeout=120)
    assert p.returncode == 2, p.stderr
    assert word.lower() in assert_one_error_line(p.stderr).lower()


def test_the_intact_bundle_generates(llm_bundle, tmp_path, runner):
    """Control: the same bundle unchanged (and re-written by ``hostile``) generates with both."""
    b = hostile(llm_bundle, tmp_path / "b", lambda d: None)
    r = runner.invoke(app, ["generate", str(b), "--prompt", "the", "--max-new-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    p = run_script(b / "run.py", ["--prompt", "the", "--max-new-tokens", "3", "--json"], tmp_path / "cwd", timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tokens"] == json.loads(r.stdout)["tokens"]


def test_run_py_escapes_names_from_the_bundle(llm_bundle, tmp_path):
    """A file named with an OSC title sequence and a newline, and a golden pair id holding one: printed escaped."""
    b = tmp_path / "b"
    shutil.copytree(llm_bundle, b)
    (b / "golden" / f"x{ESC}]0;owned\x07\nFAIL forged line.npy").write_bytes(b"1")
    for args in ([], ["--prompt", "the", "--max-new-tokens", "2"]):
        p = run_script(b / "run.py", args, tmp_path / "cwd", timeout=120)
        assert p.returncode == 2 and "not in the manifest" in p.stderr, p.stderr
        assert ESC not in p.stderr and "\x07" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    c = tmp_path / "c"
    shutil.copytree(llm_bundle, c)
    m = json.loads((c / "manifest.json").read_text())
    m["golden"]["pairs"][0]["id"] = f"000{ESC}]52;c;b3duZWQ=\x07{ESC}[2J\u202e"  # OSC 52 clipboard write, clear screen
    m["files"] = manifest_files(c)  # run.py checks no schema: only the file list and checksums
    (c / "manifest.json").write_text(json.dumps(m))
    p = run_script(c / "run.py", ["--model", "onnx"], tmp_path / "cwd", timeout=120)
    assert p.returncode == 0 and "golden 000" in p.stdout, p.stdout + p.stderr
    assert ESC not in p.stdout and "\x07" not in p.stdout and "\u202e" not in p.stdout, p.stdout


def test_generated_text_is_printed_with_c1_and_bidi_controls_escaped():
    """A hostile tokenizer can decode to any text: 8-bit CSI (0x9b), bidi overrides and line separators are escaped
    like ESC; newlines and tabs of the text stay; error lines escape newlines too."""
    from edgeq.bundles.llmgen import one_line, printable
    from edgeq.llamacpp.gguf_run import _printable as gguf_printable

    for show in (printable, gguf_printable):
        got = show("a\x9b2J\u202eb\u2028c\x1b]0;t\x07\n\td\u00e9")
        assert got == "a\\x9b2J\\u202eb\\u2028c\\x1b]0;t\\x07\n\td\u00e9"
    assert one_line("x\ny\tz\x85") == "x\\x0ay\\x09z\\x85"


@pytest.mark.slow
def test_a_chat_template_payload_is_never_rendered(tmp_path, runner):
    """A chat template is data: shipped in the bundle and the GGUF, never rendered by edgeq. A template that writes a
    file when rendered by plain jinja2 (the control below proves it live) leaves no file after export to both runtimes,
    edgeq generate, run.py --prompt, edgeq verify (llama.cpp loading the GGUF included) and edgeq profile."""
    import jinja2

    canary = tmp_path / "canary"
    payload = "{{ cycler.__init__.__globals__.os.system('touch " + str(canary) + "') }}"
    folder = save_lm(tmp_path / "src", "llama", chat_template=payload)
    for args in (["--task", "text-generation", "--quant", "none", "--no-profile", "-o", str(tmp_path / "b")],
                 ["--target", "llamacpp-x86_64", "--quant", "f16", "-o", str(tmp_path / "g")]):
        r = runner.invoke(app, ["export", str(folder), *args])
        assert r.exit_code == 0, r.output
    assert payload in (tmp_path / "b" / "tokenizer_config.json").read_text() or (tmp_path / "b" / "chat_template.jinja").is_file()
    r = runner.invoke(app, ["generate", str(tmp_path / "b"), "--prompt", "the", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    p = run_script(tmp_path / "b" / "run.py", ["--prompt", "the", "--max-new-tokens", "3"], tmp_path / "cwd", timeout=120)
    assert p.returncode == 0, p.stderr
    for args in (["verify", str(tmp_path / "g")], ["verify", str(tmp_path / "b")], ["profile", str(tmp_path / "b")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    assert not canary.exists()
    jinja2.Template(payload).render()  # control: the payload is live where a template is rendered unsandboxed
    assert canary.exists()


def test_run_py_prompt_reports_a_malformed_file_entry_in_one_line(llm_bundle, tmp_path):
    """``run.py --prompt`` checks the file list before generate.py runs: an entry that is not an object is a corrupt
    bundle (before: an AttributeError traceback on this path; the golden path reported it)."""
    b = tmp_path / "b"
    shutil.copytree(llm_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["tokenizer.json"] = "x"
    (b / "manifest.json").write_text(json.dumps(m))
    for args in (["--prompt", "the"], []):
        p = run_script(b / "run.py", args, tmp_path / "cwd", timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith("FAIL bundle corrupt") and len(p.stderr.strip().splitlines()) == 1, p.stderr
