"""Issue 17 item 3: one bundle reader and one manifest writer.

An ONNX bundle (signed and unsigned) and a GGUF bundle are opened and tampered with;
every tampering is refused by ``edgeq.bundles.reader`` and, where the rule is a file
rule, by the standalone runners shipped inside bundles (run.py and the GGUF run.py),
with the same words. The callers (verify, profile, LLM profile, generate, qemu, ssh,
GGUF verify) are shown to open bundles through the reader.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.bundles import reader
from edgeq.bundles import runner as onnx_runner
from edgeq.errors import BundleError
from edgeq.llamacpp import gguf_run

from tests.bundles import build, keypair


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    key, pub = keypair(d / "key.pem")
    _, other_pub = keypair(d / "other.pem")
    return {"onnx": build(d / "onnx"), "signed": build(d / "signed", sign_key=key, bundle_version=3),
            "gguf": _gguf_bundle(d / "gguf"), "key": key, "pub": pub, "other_pub": other_pub}


def _gguf_bundle(root: Path) -> Path:
    """A llama.cpp bundle's layout with a stand-in model file, written by the one manifest writer."""
    (root / "golden").mkdir(parents=True)
    (root / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    (root / "Modelfile").write_text("FROM ./model.gguf\n", encoding="utf-8")
    shutil.copyfile(gguf_run.__file__, root / "run.py")
    np.save(root / "golden/000_tokens.npy", np.arange(5, dtype=np.int32), allow_pickle=False)
    np.save(root / "golden/000_logits.npy", np.zeros(16, np.float32), allow_pickle=False)
    manifest = {
        "schema_version": 1, "runtime": "llama.cpp", "created_by": {"edgeq": "test"},
        "target": {"name": "llamacpp-arm64", "description": "", "arch": "arm64", "runtime": "llama.cpp"},
        "model": {"gguf": "model.gguf", "modelfile": "Modelfile"},
        "verify": {"passed": True, "failures": []},
        "golden": {"atol": 0.01, "rtol": 0.01, "pairs": [{"id": "000", "tokens": "golden/000_tokens.npy", "logits": "golden/000_logits.npy"}]},
    }
    reader.write_manifest(root, manifest, kind="gguf")
    return root


@pytest.fixture
def copy(made, tmp_path):
    def _copy(name: str) -> Path:
        return Path(shutil.copytree(made[name], tmp_path / name))

    return _copy


def _refused(path: Path, *words: str, **kw) -> str:
    with pytest.raises(BundleError) as e:
        reader.read_bundle(path, **kw)
    msg = e.value.one_line()
    assert len(msg.splitlines()) == 1
    for w in words:
        assert w in msg, msg
    return msg


def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


# ------------------------------------------------------------------ intact bundles


def test_intact_bundles_open_as_typed_frozen_records(made):
    b = reader.read_bundle(made["onnx"])
    assert b.kind == "onnx" and b.target == "arm64" and b.signed_by is None and b.archive is None
    assert b.files == tuple(sorted(json.loads((made["onnx"] / "manifest.json").read_text())["files"]))
    assert "model.ort" in b.files and "manifest.json" not in b.files
    assert b.verdict["status"] == "skipped"  # built without reference data
    assert b.path("model.ort") == made["onnx"] / "model.ort"
    with pytest.raises(BundleError, match="not in its file list"):
        b.path("../model.ort")
    with pytest.raises(AttributeError):
        b.kind = "gguf"  # frozen
    g = reader.read_bundle(made["gguf"])
    assert g.kind == "gguf" and g.target == "llamacpp-arm64" and g.verdict["status"] == "pass"
    assert g.files == ("Modelfile", "golden/000_logits.npy", "golden/000_tokens.npy", "model.gguf", "run.py")
    s = reader.read_bundle(made["signed"], pubkey=made["pub"], min_version=3)
    assert s.signed_by and s.bundle_version == 3


def test_the_standalone_runners_accept_the_intact_bundles(made):
    for name in ("onnx", "gguf"):
        root = str(made[name])
        assert onnx_runner.check_files(root, onnx_runner.load_manifest(root)) == len(reader.read_bundle(made[name]).files)
        assert gguf_run.check_files(root)["files"] == json.loads((made[name] / "manifest.json").read_text())["files"]


# ------------------------------------------------------------------ tampering: the reader and the shipped runners agree


def _flip(root: Path, rel: str) -> None:
    data = bytearray((root / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (root / rel).write_bytes(bytes(data))


def _symlink(root: Path, rel: str) -> None:
    real = root.parent / f"{root.name}-outside"
    shutil.move(root / rel, real)
    (root / rel).symlink_to(real)


TAMPER = {
    "flipped byte": (lambda r, f: _flip(r, f), "checksum mismatch: {f}"),
    "extra file": (lambda r, f: (r / "golden" / "extra.npy").write_bytes(b"x"), "file not in the manifest: golden/extra.npy"),
    "missing file": (lambda r, f: (r / f).unlink(), "file missing from the bundle: {f}"),
    "symlinked file": (_symlink, "not a regular file: {f}"),
    "size changed": (lambda r, f: (r / f).write_bytes((r / f).read_bytes() + b"\0"), "checksum mismatch: {f}"),
    "unsupported schema_version": (lambda r, f: _edit_manifest(r, lambda m: m.update(schema_version=2)), "schema_version"),
}
VICTIM = {"onnx": "model.ort", "gguf": "model.gguf"}


@pytest.mark.parametrize("kind", ["onnx", "gguf"])
@pytest.mark.parametrize("case", list(TAMPER))
def test_tampering_is_refused_by_the_reader_and_by_both_shipped_runners(copy, kind, case):
    root = copy(kind)
    tamper, words = TAMPER[case]
    tamper(root, VICTIM[kind])
    words = words.format(f=VICTIM[kind])
    _refused(root, words)
    with pytest.raises(onnx_runner.BundleCorrupt, match=words):  # run.py of ONNX bundles
        onnx_runner.check_files(str(root), onnx_runner.load_manifest(str(root)))
    with pytest.raises(ValueError, match=words):  # run.py of GGUF bundles
        gguf_run.check_files(str(root))


@pytest.mark.parametrize("kind, edit, where", [
    ("onnx", lambda m: m["golden"]["pairs"][0]["inputs"].__setitem__(0, "../../etc/passwd"), "golden/pairs/0/inputs/0"),
    ("onnx", lambda m: m.update(unexpected=1), "(top level)"),
    ("gguf", lambda m: m["model"].update(gguf="/etc/passwd"), "model/gguf"),
    ("gguf", lambda m: m["golden"].pop("pairs"), "golden"),
    ("gguf", lambda m: m.update(target={"name": 3}), "target/name"),
])
def test_a_manifest_outside_its_schema_is_refused(copy, kind, edit, where):
    root = copy(kind)
    _edit_manifest(root, edit)
    _refused(root, "does not match the", "schema", where)


@pytest.mark.parametrize("kind", ["onnx", "gguf"])
def test_a_target_named_by_a_path_is_refused(copy, kind):
    from edgeq.errors import TargetError

    root = copy(kind)
    _edit_manifest(root, lambda m: m["target"].update(name="../../x.toml"))
    with pytest.raises(TargetError, match="not a target shipped with edgeq") as e:
        reader.read_bundle(root)
    assert e.value.exit_code == 2


def test_manifest_that_is_not_json_too_big_or_absent(copy):
    root = copy("onnx")
    (root / "manifest.json").write_bytes(b"\xff{")
    _refused(root, "not valid JSON")
    (root / "manifest.json").write_bytes(b"[]")
    _refused(root, "not a JSON object")
    (root / "manifest.json").write_bytes(b" " * ((16 << 20) + 1))
    _refused(root, "larger than")
    (root / "manifest.json").unlink()
    _refused(root, "no manifest.json")
    _refused(root / "nowhere", "bundle not found")


def test_signature_rules(made, copy):
    _refused(made["onnx"], "not signed", pubkey=made["pub"])
    _refused(made["signed"], "signed by another key", pubkey=made["other_pub"])
    _refused(made["signed"], "--min-version needs --pubkey", min_version=1)
    _refused(made["signed"], "version 3 is older than the minimum 4", pubkey=made["pub"], min_version=4)
    root = copy("signed")
    _edit_manifest(root, lambda m: m.update(bundle_version=9))
    _refused(root, "signature does not match manifest.json", pubkey=made["pub"])
    assert reader.read_bundle(root).bundle_version == 9  # without a key the signature is not a rule


# ------------------------------------------------------------------ archives


def _tar(src: Path, dest: Path, extra: tuple[tuple[str, bytes], ...] = ()) -> Path:
    import io

    with tarfile.open(dest, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                tf.add(p, p.relative_to(src).as_posix())
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def test_archives_are_extracted_safely_then_checked_like_folders(made, copy, tmp_path):
    arc = _tar(made["signed"], tmp_path / "b.tar.gz")
    with reader.open_bundle(arc, pubkey=made["pub"]) as b:
        assert b.archive == "b.tar.gz" and b.shown == arc and b.signed_by and b.kind == "onnx"
        extracted = b.root
        assert (extracted / "model.ort").is_file()
    assert not extracted.exists()  # the extracted copy is gone after use
    with pytest.raises(BundleError, match="escapes the folder") as e:
        with reader.open_bundle(_tar(made["onnx"], tmp_path / "evil.tar.gz", (("../evil.txt", b"x"),))):
            pass
    assert "nothing was extracted" in e.value.hint
    root = copy("gguf")
    (root / "Modelfile").write_text("FROM ./other.gguf\n")
    with pytest.raises(BundleError, match="checksum mismatch: Modelfile") as e:
        with reader.open_bundle(_tar(root, tmp_path / "g.tar.gz")):
            pass
    assert "g.tar.gz" in e.value.message
    from edgeq.bundles.bundle import check_bundle

    with pytest.raises(BundleError, match="llama.cpp .GGUF. bundle in an archive"):  # intact, but its check needs the folder
        check_bundle(_tar(made["gguf"], tmp_path / "g2.tar.gz"))


# ------------------------------------------------------------------ the one manifest writer


def test_writer_checksums_schema_and_atomic_write(tmp_path, made):
    from edgeq.bundles.signing import load_private_key
    from edgeq.core.fsutil import sha256_file

    root = tmp_path / "w"
    shutil.copytree(made["gguf"], root)
    (root / "manifest.json").unlink()
    m = json.loads((made["gguf"] / "manifest.json").read_text())
    m.pop("files")
    (root / "Modelfile").write_text("FROM ./model.gguf\nPARAMETER temperature 0\n")
    data = reader.write_manifest(root, m, kind="gguf", signer=load_private_key(made["key"]))
    written = json.loads(data)
    assert (root / "manifest.json").read_bytes() == data
    assert written["files"]["Modelfile"] == {"sha256": sha256_file(root / "Modelfile"), "bytes": (root / "Modelfile").stat().st_size}
    assert sorted(written["files"]) == list(reader.read_bundle(made["gguf"]).files)
    assert reader.read_bundle(root, pubkey=made["pub"]).signed_by  # signed as written
    assert sorted(p.name for p in root.iterdir()) == ["Modelfile", "golden", "manifest.json", "manifest.json.sig", "model.gguf", "run.py"]
    bad = tmp_path / "bad"
    shutil.copytree(made["gguf"], bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(BundleError, match="does not match the GGUF manifest schema"):
        reader.write_manifest(bad, {**m, "model": {"gguf": "../model.gguf"}}, kind="gguf")
    assert not (bad / "manifest.json").exists() and not list(bad.glob(".*"))  # nothing half-written


# ------------------------------------------------------------------ every caller opens bundles through the reader


class _Opened(Exception):
    pass


@pytest.fixture
def spy(monkeypatch):
    calls = []

    def read_bundle(root, **kw):
        calls.append(Path(root))
        raise _Opened(str(root))

    monkeypatch.setattr(reader, "read_bundle", read_bundle)
    return calls


def test_callers_open_bundles_through_the_reader(spy, made, tmp_path):
    from edgeq.bundles.bundle import check_bundle
    from edgeq.cli.generate import generate_cli
    from edgeq.devices.qemu import emulate_bundle
    from edgeq.devices.ssh import run_on_device
    from edgeq.llamacpp.gguf import check_gguf_bundle
    from edgeq.profiling.llm import profile_llm
    from edgeq.profiling.profiler import load_input

    callers = {
        "verify": lambda b: check_bundle(b),
        "verify (archive)": lambda b: check_bundle(_tar(b, tmp_path / "a.tar.gz")),
        "profile": lambda b: load_input(b),
        "profile (LLM)": lambda b: profile_llm(b),
        "generate": lambda b: generate_cli(b, prompt="x", max_new_tokens=1, temperature=0, top_k=0, top_p=1.0, seed=0),
        "qemu emulation": lambda b: emulate_bundle(b, ("cortex-a53",)),
        "ssh device": lambda b: run_on_device(b, "ssh://nobody@device.invalid"),
        "GGUF verify": lambda b: check_gguf_bundle(made["gguf"]),
    }
    for name, call in callers.items():
        before = len(spy)
        with pytest.raises(_Opened):
            call(made["onnx"])
        assert len(spy) == before + 1, name


def test_every_bundle_kind_is_written_through_the_one_writer(monkeypatch, tmp_path):
    """ONNX and genai bundles (write_bundle) and GGUF bundles (export_llamacpp) call reader.write_manifest."""
    import edgeq.bundles.bundle as bundle_mod
    from edgeq.llamacpp.gguf import export_llamacpp

    kinds = []
    real = reader.write_manifest

    def write_manifest(root, manifest, *, kind, signer=None):
        kinds.append(kind)
        return real(root, manifest, kind=kind, signer=signer)

    monkeypatch.setattr(bundle_mod, "write_manifest", write_manifest)
    build(tmp_path / "plain")
    build(tmp_path / "llm", extra_files=(("generate.py", b"# stand-in\n"), ("genai_config.json", b"{}")))
    assert kinds == ["onnx", "genai"]
    assert reader.read_bundle(tmp_path / "llm").kind == "genai"
    # the GGUF writer imports it where it writes (building a real GGUF bundle needs llama.cpp: tests/test_gguf.py, slow)
    assert "write_manifest" in export_llamacpp.__code__.co_varnames


def test_generate_py_run_directly_applies_the_bundle_rules(tmp_path):
    """generate.py ships inside LLM bundles and cannot import edgeq: run directly, it checks through the sibling run.py."""
    from edgeq.bundles import llmgen

    from fixtures.llm import run_script

    root = build(tmp_path / "llm", extra_files=(("generate.py", Path(llmgen.__file__).read_bytes()),))
    intact = run_script(root / "generate.py", ["--prompt", "x"], tmp_path / "cwd", timeout=120)
    assert "FAIL bundle corrupt" not in intact.stderr and "tokenizer.json not found" in intact.stderr, intact.stderr  # past the checks
    (root / "golden" / "000" / "in_0.npy").write_bytes(b"changed")
    bad = run_script(root / "generate.py", ["--prompt", "x"], tmp_path / "cwd", timeout=120)
    assert bad.returncode == 2 and "FAIL bundle corrupt: checksum mismatch: golden/000/in_0.npy" in bad.stderr, bad.stderr
    assert not (root / "__pycache__").exists()
